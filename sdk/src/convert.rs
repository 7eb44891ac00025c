//! Conversions between the wit-bindgen types and the SDK's own (wasm only).

use crate::bindings::weir::plugin::types as w;
use crate::*;

pub fn stage_to_wit(s: Stage) -> w::Stage {
    match s {
        Stage::Connect => w::Stage::Connect,
        Stage::Helo => w::Stage::Helo,
        Stage::Auth => w::Stage::Auth,
        Stage::MailFrom => w::Stage::MailFrom,
        Stage::RcptTo => w::Stage::RcptTo,
        Stage::Data => w::Stage::Data,
        Stage::Route => w::Stage::Route,
    }
}

fn stage_from_wit(s: w::Stage) -> Stage {
    match s {
        w::Stage::Connect => Stage::Connect,
        w::Stage::Helo => Stage::Helo,
        w::Stage::Auth => Stage::Auth,
        w::Stage::MailFrom => Stage::MailFrom,
        w::Stage::RcptTo => Stage::RcptTo,
        w::Stage::Data => Stage::Data,
        w::Stage::Route => Stage::Route,
    }
}

fn param(p: w::Param) -> Param {
    Param { name: p.name, value: p.value }
}

pub fn context_from_wit(c: w::Context) -> Context {
    Context {
        stage: stage_from_wit(c.stage),
        connection: Connection {
            remote_ip: c.connection.remote_ip,
            remote_port: c.connection.remote_port,
            local_addr: c.connection.local_addr,
            listener: c.connection.listener,
            tls_version: c.connection.tls_version,
            tls_cipher: c.connection.tls_cipher,
            reverse_dns: c.connection.reverse_dns,
            helo: c.connection.helo,
            auth_user: c.connection.auth_user,
        },
        envelope: Envelope {
            sender: c.envelope.sender,
            sender_params: c.envelope.sender_params.into_iter().map(param).collect(),
            recipients: c.envelope.recipients,
        },
        recipient: c.recipient,
        recipient_params: c.recipient_params.into_iter().map(param).collect(),
        tags: c.tags,
        symbols: c.symbols,
        size: c.size,
        headers: c.headers.into_iter().map(|h| Header { name: h.name, value: h.value }).collect(),
    }
}

fn reply(r: Reply) -> w::Reply {
    w::Reply { code: r.code, enhanced: r.enhanced, text: r.text }
}

fn header(h: Header) -> w::Header {
    w::Header { name: h.name, value: h.value }
}

pub fn decision_to_wit(d: Decision) -> w::Decision {
    let verdict = match d.verdict {
        Verdict::Continue => w::Verdict::Continue,
        Verdict::Accept => w::Verdict::Accept,
        Verdict::Reject(r) => w::Verdict::Reject(reply(r)),
        Verdict::Tempfail(r) => w::Verdict::Tempfail(reply(r)),
        Verdict::Discard => w::Verdict::Discard,
        Verdict::Quarantine(s) => w::Verdict::Quarantine(s),
        Verdict::Disconnect(r) => w::Verdict::Disconnect(reply(r)),
    };
    let changes = d
        .changes
        .into_iter()
        .map(|c| match c {
            Change::AddHeader(h) => w::Change::AddHeader(header(h)),
            Change::RemoveHeader(n) => w::Change::RemoveHeader(n),
            Change::ReplaceHeader(h) => w::Change::ReplaceHeader(header(h)),
            Change::SetSender(s) => w::Change::SetSender(s),
            Change::AddRecipient(s) => w::Change::AddRecipient(s),
            Change::RemoveRecipient(s) => w::Change::RemoveRecipient(s),
            Change::RewriteRecipient(a, b) => w::Change::RewriteRecipient((a, b)),
            Change::SetRoute(r) => w::Change::SetRoute(r),
            Change::AddSymbol(n, s) => w::Change::AddSymbol((n, s)),
            Change::SetTag(k, v) => w::Change::SetTag((k, v)),
        })
        .collect();
    w::Decision { verdict, reason: d.reason, changes }
}
