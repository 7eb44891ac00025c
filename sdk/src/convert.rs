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

/// Sets the one connection fact the host told.
fn set_fact(c: &mut Connection, f: w::ConnectionFact) {
    match f {
        w::ConnectionFact::RemoteIp(v) => c.remote_ip = v,
        w::ConnectionFact::LocalAddr(v) => c.local_addr = v,
        w::ConnectionFact::Listener(v) => c.listener = v,
        w::ConnectionFact::TlsVersion(v) => c.tls_version = v,
        w::ConnectionFact::TlsCipher(v) => c.tls_cipher = v,
        w::ConnectionFact::ReverseDns(v) => c.reverse_dns = v,
        w::ConnectionFact::Helo(v) => c.helo = v,
        w::ConnectionFact::AuthUser(v) => c.auth_user = v,
    }
}

/// Keeps the first `keep` items and appends `items`.
fn splice<T>(list: &mut Vec<T>, keep: u32, items: Vec<T>) {
    list.truncate(keep as usize);
    list.extend(items);
}

/// Brings the session's context up to date with what the host told, and
/// returns the sessions it says ended.
fn apply(c: &mut Context, call: w::Call, updates: Option<Vec<w::Update>>) -> Vec<u64> {
    c.stage = stage_from_wit(call.stage);
    c.connection.remote_port = call.remote_port;
    c.recipient = call.recipient;
    c.size = call.size;
    // Told only at rcpt-to, and only when the recipient has any.
    c.recipient_params.clear();
    let mut ended = Vec::new();
    for u in updates.into_iter().flatten() {
        match u {
            w::Update::Connection(f) => set_fact(&mut c.connection, f),
            w::Update::MailFrom(m) => {
                c.envelope.sender = m.address;
                c.envelope.sender_params = m.params.into_iter().map(param).collect();
            }
            w::Update::Recipients(r) => splice(&mut c.envelope.recipients, r.keep, r.items),
            w::Update::Tags(t) => splice(&mut c.tags, t.keep, t.items),
            w::Update::Symbols(s) => splice(&mut c.symbols, s.keep, s.items),
            w::Update::Headers(h) => c.set_header_section(h),
            w::Update::RecipientParams(p) => c.recipient_params = p.into_iter().map(param).collect(),
            w::Update::Ended(e) => ended = e,
        }
    }
    ended
}

/// What an exported plugin keeps between calls: the plugin value (a
/// stateless plugin's, renewed at each new session; a stateful plugin's,
/// one for each session the instance holds), and the context as the host
/// last told it.
pub struct Exported<P> {
    plugin: P,
    sessions: Sessions<P>,
    ctx: Context,
}

/// The body of the exported `on-stage`: the updates bring the context up
/// to date (from whatever the host told this instance last, in this
/// session or another); the method for the stage decides, on the
/// session's plugin value.
pub fn on_stage<P: Plugin>(slot: &core::cell::RefCell<Option<Exported<P>>>, call: w::Call, updates: Option<Vec<w::Update>>) -> w::Decision {
    let mut slot = slot.borrow_mut();
    let s = slot.get_or_insert_with(|| Exported { plugin: P::default(), sessions: Sessions::default(), ctx: Context::new(Stage::Connect) });
    let (session, new_session) = (call.session, call.new_session);
    crate::host::set_config_id(call.config_id);
    let ended = apply(&mut s.ctx, call, updates);
    let plugin = if P::STATELESS {
        if new_session {
            s.plugin = P::default();
        }
        &mut s.plugin
    } else {
        s.sessions.for_call(session, &ended)
    };
    decision_to_wit(dispatch(plugin, &s.ctx))
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
