//! One SMTP session (RFC 5321 with ESMTP extensions): the state machine from
//! the greeting to QUIT. Command syntax is parsed by smtp-proto; this module
//! decides what each command means in the current state, enforces the
//! listener's limits, and hands a finished transaction to the queue, replying
//! 250 only once the queue says the message is on disk.

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::Request;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, SaslError};
use crate::config::{AuthMode, LongLines, TlsMode};
use crate::queue::id::{new_id, now_ms};
use crate::queue::message::{BodyType, DsnRet, MessageMeta, MessageState, Notify, Recipient, SessionFacts};
use crate::smtp::conn::{Conn, Line, ReadError, TlsInfo};
use crate::smtp::data::{DataDecoder, DataProblem};
use crate::smtp::reply::{canned, Reply};
use crate::smtp::ListenerCtx;
use crate::plugin::{self, wit};
use crate::policy::types::StageName;
use crate::policy::{checked_reply, DecisionRecord, Final, SessionPolicy, StageOutcome};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 §4: an AUTH command or SASL response line may be up to 12288 octets.
pub const MAX_AUTH_LINE: usize = 12288;
/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets (with the angle brackets).
const MAX_PATH: usize = 254;

struct Transaction {
    sender: String,
    /// MAIL's ESMTP parameters as the client sent them (for plugins).
    sender_params: Vec<wit::Param>,
    body_type: BodyType,
    smtputf8: bool,
    declared_size: Option<u64>,
    ret: Option<DsnRet>,
    envid: Option<String>,
    rcpts: Vec<Recipient>,
    /// Set once the first BDAT chunk arrived.
    bdat: Option<BdatBody>,
    /// Lengths of the session's tags, symbols and decision trail when the
    /// transaction began (a reset goes back to them).
    marks: (usize, usize, usize),
    /// A policy step said discard: accept, but do not queue.
    discard: bool,
}

struct BdatBody {
    id: String,
    header_len: usize,
    body: Vec<u8>,
    too_large: bool,
}

enum Flow {
    Continue,
    Close,
}

pub struct Session {
    ctx: Arc<ListenerCtx>,
    conn: Conn,
    peer: SocketAddr,
    local: SocketAddr,
    /// `peer`'s address and `local` as text, made once for the session's
    /// queue records and trace headers.
    client_ip: String,
    local_text: String,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    shutdown: CancellationToken,
    policy: SessionPolicy,
    /// What plugins see, kept between stages and brought up to date before
    /// each (see `plugin_ctx`); None until a stage first runs.
    pctx: Option<plugin::Context>,
    /// The client's reverse DNS name, when the listener looks it up.
    rdns: Option<String>,
    /// A policy verdict said disconnect after the current reply.
    shutdown_after_reply: bool,
    tags: Vec<(String, String)>,
    symbols: Vec<(String, f64)>,
    trail: Vec<DecisionRecord>,
}

impl Session {
    pub fn new(ctx: Arc<ListenerCtx>, conn: Conn, peer: SocketAddr, local: SocketAddr, shutdown: CancellationToken) -> Self {
        Session {
            ctx: ctx.clone(),
            conn,
            peer,
            local,
            client_ip: peer.ip().to_string(),
            local_text: local.to_string(),
            helo: None,
            esmtp: false,
            tls: None,
            auth_user: None,
            tx: None,
            errors: 0,
            shutdown,
            policy: SessionPolicy::new(ctx.policy.get(), ctx.cfg.pipeline.clone()),
            pctx: None,
            shutdown_after_reply: false,
            rdns: None,
            tags: Vec::new(),
            symbols: Vec::new(),
            trail: Vec::new(),
        }
    }

    /// Runs the session to its end. Never panics on client input; every way
    /// out closes the connection.
    pub async fn run(mut self) {
        if self.ctx.cfg.tls == TlsMode::Implicit {
            let Some(acceptor) = self.ctx.tls.clone() else {
                return;
            };
            match self.conn.start_tls(&acceptor, self.ctx.cfg.limits.tls_handshake_timeout).await {
                Ok(info) => self.tls = Some(info),
                Err(e) => {
                    tracing::info!(peer = %self.peer, listener = %self.ctx.name, error = %e, "TLS handshake failed");
                    metrics::counter!("weir_tls_handshake_failures_total", "listener" => self.ctx.name.clone()).increment(1);
                    return;
                }
            }
        }
        if self.ctx.cfg.reverse_dns {
            let dns = self.ctx.dns.clone();
            let ip = self.peer.ip().to_string();
            if let Ok(Ok(names)) = tokio::time::timeout(std::time::Duration::from_secs(3), dns.ptr(&ip)).await {
                self.rdns = names.into_iter().next().filter(|n| !n.is_empty());
            }
        }
        if self.policy.is_active(StageName::Connect) {
            let out = self.run_stage(StageName::Connect, None, None).await;
            if let Some((r, _)) = refusal(&out) {
                tracing::info!(peer = %self.peer, listener = %self.ctx.name, code = r.code, "connection refused by policy");
                self.reply(r);
                self.conn.shutdown().await;
                return;
            }
        }
        let greeting = Reply::bare(
            220,
            format!("{} {}", self.ctx.hostname, self.ctx.cfg.banner.as_deref().unwrap_or("ESMTP Weir")),
        );
        self.reply(greeting);
        loop {
            let read = {
                let limits = &self.ctx.cfg.limits;
                let idle = self.tx.is_none();
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled(), if idle => {
                        self.reply(canned::shutting_down());
                        break;
                    }
                    r = self.conn.read_line(MAX_AUTH_LINE + 2, limits.command_timeout) => r,
                }
            };
            let flow = match read {
                Ok(Line::TooLong) => {
                    self.reply(canned::line_too_long());
                    Flow::Continue
                }
                Ok(Line::Complete(line)) => {
                    if line.len() > MAX_COMMAND_LINE && !starts_with_ci(&line, b"AUTH ") {
                        self.reply(canned::line_too_long());
                        Flow::Continue
                    } else {
                        self.command(&line).await
                    }
                }
                Err(ReadError::Timeout) => {
                    self.reply(canned::timeout());
                    break;
                }
                Err(ReadError::Closed) | Err(ReadError::Io(_)) => break,
            };
            if matches!(flow, Flow::Close) {
                break;
            }
            if self.errors >= self.ctx.cfg.limits.max_errors {
                self.reply(canned::too_many_errors());
                break;
            }
        }
        self.conn.shutdown().await;
    }

    /// Queues a reply, counting it (and errors) as it goes.
    fn reply(&mut self, r: Reply) {
        self.ctx.counters.reply(r.code);
        if r.is_permanent_error() {
            self.errors += 1;
        }
        self.conn.queue_reply(&r);
    }

    fn reset_transaction(&mut self) {
        if let Some(tx) = self.tx.take() {
            let (t, sy, tr) = tx.marks;
            self.tags.truncate(t);
            self.symbols.truncate(sy);
            self.trail.truncate(tr);
        }
    }

    /// The context a plugin sees now: the one kept from the last stage,
    /// with what changed since copied in (rebuilding it cost a dozen
    /// allocations per stage), and the session's tags and symbols moved in
    /// (`run_stage` moves them back).
    fn plugin_ctx(&mut self, recipient: Option<(&str, Vec<wit::Param>)>) -> plugin::Context {
        fn set(slot: &mut Option<String>, now: Option<&str>) {
            if slot.as_deref() != now {
                *slot = now.map(str::to_string);
            }
        }
        let mut ctx = self.pctx.take().unwrap_or_else(|| {
            plugin::Context::new(wit::Connection {
                remote_ip: self.peer.ip().to_string(),
                remote_port: self.peer.port(),
                local_addr: self.local.to_string(),
                listener: self.ctx.name.clone(),
                tls_version: None,
                tls_cipher: None,
                reverse_dns: None,
                helo: None,
                auth_user: None,
            })
        });
        let tls_version = self.tls.as_ref().map(|t| t.version.as_str());
        let tls_cipher = self.tls.as_ref().map(|t| t.cipher.as_str());
        let c = &ctx.connection;
        if (c.tls_version.as_deref(), c.tls_cipher.as_deref(), c.reverse_dns.as_deref(), c.helo.as_deref(), c.auth_user.as_deref())
            != (tls_version, tls_cipher, self.rdns.as_deref(), self.helo.as_deref(), self.auth_user.as_deref())
        {
            // Only a change makes a new connection value: instances tell
            // whether they are up to date by its address.
            let c = Arc::make_mut(&mut ctx.connection);
            set(&mut c.tls_version, tls_version);
            set(&mut c.tls_cipher, tls_cipher);
            set(&mut c.reverse_dns, self.rdns.as_deref());
            set(&mut c.helo, self.helo.as_deref());
            set(&mut c.auth_user, self.auth_user.as_deref());
        }
        let env = &mut ctx.envelope;
        match &self.tx {
            None => {
                if env.sender.is_some() || !env.recipients.is_empty() || !env.sender_params.is_empty() {
                    *env = plugin::Envelope::default();
                }
            }
            Some(tx) => {
                set(&mut env.sender, Some(&tx.sender));
                if env.sender_params != tx.sender_params {
                    env.sender_params.clone_from(&tx.sender_params);
                }
                // Recipients are mostly appended: copy only the new ones.
                let kept = env.recipients.iter().zip(&tx.rcpts).take_while(|(a, r)| **a == r.address).count();
                env.recipients.truncate(kept);
                env.recipients.extend(tx.rcpts[kept..].iter().map(|r| r.address.clone()));
            }
        }
        let (recipient, params) = match recipient {
            Some((r, p)) => (Some(r.to_string()), p),
            None => (None, Vec::new()),
        };
        ctx.recipient = recipient;
        ctx.recipient_params = params;
        ctx.tags = std::mem::take(&mut self.tags);
        ctx.symbols = std::mem::take(&mut self.symbols);
        ctx.size = 0;
        ctx.headers = None;
        ctx
    }

    /// Runs a stage's pipeline and keeps its tags, symbols and decisions.
    async fn run_stage(&mut self, stage: StageName, recipient: Option<(&str, Vec<wit::Param>)>, message: Option<(Arc<Vec<u8>>, Arc<str>)>) -> StageOutcome {
        let mut ctx = self.plugin_ctx(recipient);
        let body = message.map(|(b, h)| {
            ctx.size = b.len() as u64;
            ctx.headers = Some(h);
            b
        });
        let mut out = self.policy.run(stage, &mut ctx, body).await;
        self.tags = std::mem::take(&mut ctx.tags);
        self.symbols = std::mem::take(&mut ctx.symbols);
        ctx.headers = None;
        if refusal(&out).is_some() {
            tracing::info!(
                peer = %self.peer, listener = %self.ctx.name, stage = stage.as_str(),
                sender = ?self.tx.as_ref().map(|t| t.sender.clone()), recipient = ?ctx.recipient,
                decisions = ?out.trail, "refused by policy"
            );
        }
        // Moved, not copied: callers look at the verdict and changes only.
        self.trail.append(&mut out.trail);
        self.pctx = Some(ctx);
        out
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        let parsed = Request::parse(&mut line.iter());
        let name = match &parsed {
            Ok(r) => r.name(),
            Err(smtp_proto::Error::UnknownCommand) => "unknown",
            Err(_) => command_word(line),
        };
        self.ctx.counters.command(name);
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.reply(syntax_reply(e, line));
                return Flow::Continue;
            }
        };

        // With `require_tls`, only these may come before STARTTLS.
        if self.ctx.cfg.require_tls
            && self.tls.is_none()
            && !matches!(
                req,
                Request::Ehlo { .. } | Request::Helo { .. } | Request::StartTls | Request::Noop { .. } | Request::Rset | Request::Quit
            )
        {
            self.reply(canned::tls_required());
            return Flow::Continue;
        }

        match req {
            Request::Ehlo { host } | Request::Helo { host } => {
                let esmtp = matches!(req_kind(line), HelloKind::Ehlo);
                self.reset_transaction();
                let previous = self.helo.replace(host.into_owned());
                if self.policy.is_active(StageName::Helo) {
                    let out = self.run_stage(StageName::Helo, None, None).await;
                    if let Some((r, close)) = refusal(&out) {
                        self.helo = previous;
                        self.reply(r);
                        return if close { Flow::Close } else { Flow::Continue };
                    }
                }
                self.esmtp = esmtp;
                let r = if esmtp { self.ehlo_reply() } else { Reply::bare(250, self.ctx.hostname.clone()) };
                self.reply(r);
            }
            Request::Lhlo { .. } => self.reply(Reply::new(500, "5.5.1", "LHLO is for LMTP, this is SMTP")),
            Request::Mail { from } => {
                let mut r = self.mail(from);
                if r.code == 250 && self.policy.is_enabled() {
                    if let Some(tx) = self.tx.as_mut() {
                        tx.sender_params = esmtp_params(line);
                    }
                }
                if r.code == 250 && self.policy.is_active(StageName::MailFrom) {
                    let out = self.run_stage(StageName::MailFrom, None, None).await;
                    if let Some((refused, close)) = refusal(&out) {
                        self.reset_transaction();
                        self.reply(refused);
                        return if close { Flow::Close } else { Flow::Continue };
                    }
                    self.apply_envelope_changes(&out, None);
                    if let Some(tx) = &self.tx {
                        r = Reply::new(250, "2.1.0", format!("Sender <{}> OK", tx.sender));
                    }
                }
                self.reply(r);
            }
            Request::Rcpt { mut to } => {
                if to.address.is_empty() && is_bare_postmaster(line) {
                    to.address = "postmaster".into();
                }
                let address = to.address.to_string();
                let (r, added) = self.rcpt(to);
                if added && self.policy.is_active(StageName::RcptTo) {
                    let out = self.run_stage(StageName::RcptTo, Some((&address, esmtp_params(line))), None).await;
                    if let Some((refused, close)) = refusal(&out) {
                        if let Some(tx) = self.tx.as_mut() {
                            tx.rcpts.retain(|r| r.address != address);
                        }
                        self.reply(refused);
                        return if close { Flow::Close } else { Flow::Continue };
                    }
                    if matches!(out.verdict, Some(Final::Discard)) {
                        if let Some(tx) = self.tx.as_mut() {
                            tx.discard = true;
                        }
                    }
                    self.apply_envelope_changes(&out, Some(&address));
                }
                self.reply(r);
            }
            Request::Data => return self.data().await,
            Request::Bdat { chunk_size, is_last } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.reset_transaction();
                self.reply(canned::ok());
            }
            Request::Noop { .. } => self.reply(canned::ok()),
            Request::Vrfy { .. } => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Expn { .. } => self.reply(Reply::new(502, "5.5.1", "EXPN is not supported")),
            Request::Help { .. } => self.reply(Reply {
                code: 214,
                enhanced: Some("2.0.0".into()),
                lines: vec![
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH".into(),
                    "End of HELP info".into(),
                ],
            }),
            Request::Quit => {
                let r = Reply::new(221, "2.0.0", format!("{} closing connection", self.ctx.hostname));
                self.reply(r);
                return Flow::Close;
            }
            Request::StartTls => return self.starttls().await,
            Request::Auth { mechanism, initial_response } => {
                return self.auth(mechanism, initial_response.into_owned()).await;
            }
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.reply(Reply::new(502, "5.5.1", "Command not implemented"))
            }
        }
        Flow::Continue
    }

    /// Applies sender, recipient and route changes from a stage.
    fn apply_envelope_changes(&mut self, out: &StageOutcome, current_rcpt: Option<&str>) {
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        // The recipient being decided on, followed through rewrites.
        let mut current = current_rcpt.map(str::to_string);
        for (plugin, c) in &out.changes {
            match c {
                wit::Change::SetSender(s) => tx.sender = s.clone(),
                wit::Change::AddRecipient(a) => {
                    if !tx.rcpts.iter().any(|r| &r.address == a) {
                        tx.rcpts.push(Recipient::new(a.clone()));
                    }
                }
                wit::Change::RemoveRecipient(a) => tx.rcpts.retain(|r| &r.address != a),
                wit::Change::RewriteRecipient((from, to)) => {
                    for r in tx.rcpts.iter_mut().filter(|r| &r.address == from) {
                        r.address = to.clone();
                    }
                    if current.as_deref() == Some(from.as_str()) {
                        current = Some(to.clone());
                    }
                }
                wit::Change::SetRoute(route) => {
                    for r in tx.rcpts.iter_mut() {
                        if current.as_deref().is_none_or(|c| c == r.address) {
                            r.route = Some(route.clone());
                        }
                    }
                }
                // Header changes are applied to the message at data/route
                // (policy::headers); elsewhere there is no message yet.
                wit::Change::AddHeader(_) | wit::Change::RemoveHeader(_) | wit::Change::ReplaceHeader(_) => {
                    if current_rcpt.is_some() {
                        tracing::debug!(plugin = %plugin, "header change before data ignored");
                    }
                }
                wit::Change::AddSymbol(_) | wit::Change::SetTag(_) => {}
            }
        }
    }

    fn auth_offered(&self) -> bool {
        self.ctx.cfg.auth != AuthMode::None && (self.tls.is_some() || self.ctx.cfg.auth_over_plaintext)
    }

    fn ehlo_reply(&self) -> Reply {
        let helo = self.helo.as_deref().unwrap_or("");
        let mut lines = vec![format!("{} Hello {} [{}]", self.ctx.hostname, helo, self.peer.ip())];
        lines.push("PIPELINING".into());
        lines.push(format!("SIZE {}", self.ctx.cfg.limits.max_message_size));
        lines.push("8BITMIME".into());
        lines.push("SMTPUTF8".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        lines.push("CHUNKING".into());
        lines.push("DSN".into());
        if self.ctx.cfg.tls == TlsMode::Starttls && self.tls.is_none() && self.ctx.tls.is_some() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::multiline(250, lines)
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>) -> Reply {
        if self.helo.is_none() {
            return canned::bad_sequence("send HELO or EHLO first");
        }
        if self.tx.is_some() {
            return canned::bad_sequence("sender already specified");
        }
        if self.ctx.cfg.auth == AuthMode::Require && self.auth_user.is_none() {
            return canned::auth_required();
        }
        let address = from.address.into_owned();
        let has_params = from.flags != 0 || from.size != 0 || from.env_id.is_some() || from.auth.is_some();
        if !self.esmtp && has_params {
            return Reply::new(555, "5.5.4", "MAIL parameters need EHLO, not HELO");
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return Reply::new(555, "5.5.4", "BODY=BINARYMIME is not supported");
        }
        const UNSUPPORTED: u64 = smtp_proto::MAIL_REQUIRETLS
            | smtp_proto::MAIL_CONPERM
            | smtp_proto::MAIL_BY_NOTIFY
            | smtp_proto::MAIL_BY_RETURN
            | smtp_proto::MAIL_BY_TRACE;
        if from.flags & UNSUPPORTED != 0
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0
            || from.trans_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
        {
            return Reply::new(555, "5.5.4", "MAIL parameter not supported");
        }
        if address.len() > MAX_PATH {
            return Reply::new(501, "5.1.7", "Sender address too long");
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !address.is_ascii() && !smtputf8 {
            return Reply::new(553, "5.6.7", "Non-ASCII sender address needs the SMTPUTF8 parameter");
        }
        let max = self.ctx.cfg.limits.max_message_size;
        if from.size as u64 > max {
            return canned::too_large(max);
        }
        let ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some(DsnRet::Full)
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(DsnRet::Hdrs)
        } else {
            None
        };
        let r = Reply::new(250, "2.1.0", format!("Sender <{address}> OK"));
        self.tx = Some(Transaction {
            sender: address,
            sender_params: Vec::new(),
            body_type: if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8,
            declared_size: (from.size > 0).then_some(from.size as u64),
            ret,
            envid: from.env_id.map(|e| e.into_owned()),
            rcpts: Vec::new(),
            bdat: None,
            marks: (self.tags.len(), self.symbols.len(), self.trail.len()),
            discard: false,
        });
        r
    }

    fn relay_allowed(&self, address: &str) -> bool {
        let domain = match address.rsplit_once('@') {
            Some((_, d)) => d,
            // `<postmaster>` without a domain must always be accepted (RFC 5321 §4.5.1).
            None => return address.eq_ignore_ascii_case("postmaster"),
        };
        if self.ctx.relay.is_local(domain) {
            return true;
        }
        self.auth_user.is_some() || self.ctx.relay.network_allowed(self.peer.ip())
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) -> (Reply, bool) {
        let before = self.tx.as_ref().map_or(0, |t| t.rcpts.len());
        let r = self.rcpt_inner(to);
        let after = self.tx.as_ref().map_or(0, |t| t.rcpts.len());
        (r, after > before)
    }

    fn rcpt_inner(&mut self, to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) -> Reply {
        let max = self.ctx.cfg.limits.max_recipients;
        let esmtp = self.esmtp;
        let Some(tx) = self.tx.as_ref() else {
            return canned::bad_sequence("need MAIL before RCPT");
        };
        if tx.bdat.is_some() {
            return canned::bad_sequence("RCPT after BDAT");
        }
        if tx.rcpts.len() >= max {
            return Reply::new(452, "4.5.3", format!("Too many recipients (at most {max} per message)"));
        }
        let smtputf8 = tx.smtputf8;
        let address = to.address.into_owned();
        if address.is_empty() || address.len() > MAX_PATH {
            return Reply::new(501, "5.1.3", "Bad recipient address syntax");
        }
        if !esmtp && (to.flags != 0 || to.orcpt.is_some()) {
            return Reply::new(555, "5.5.4", "RCPT parameters need EHLO, not HELO");
        }
        if to.flags & !(smtp_proto::RCPT_NOTIFY_NEVER
            | smtp_proto::RCPT_NOTIFY_SUCCESS
            | smtp_proto::RCPT_NOTIFY_FAILURE
            | smtp_proto::RCPT_NOTIFY_DELAY)
            != 0
            || to.rrvs != 0
        {
            return Reply::new(555, "5.5.4", "RCPT parameter not supported");
        }
        if !address.is_ascii() && !smtputf8 {
            return Reply::new(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8 on MAIL FROM");
        }
        if !address.contains('@') && !address.eq_ignore_ascii_case("postmaster") {
            return Reply::new(501, "5.1.3", "Recipient address must have a domain");
        }
        if !self.relay_allowed(&address) {
            return Reply::new(554, "5.7.1", format!("<{address}>: Relay access denied"));
        }
        let r = Reply::new(250, "2.1.5", format!("Recipient <{address}> OK"));
        let Some(tx) = self.tx.as_mut() else {
            return canned::bad_sequence("need MAIL before RCPT");
        };
        if !tx.rcpts.iter().any(|r| r.address == address) {
            tx.rcpts.push(Recipient {
                orcpt: to.orcpt.map(|o| o.into_owned()),
                notify: Notify::from_flags(to.flags),
                ..Recipient::new(address)
            });
        }
        r
    }

    /// The check shared by DATA and BDAT before content is taken.
    fn content_allowed(&self) -> Result<(), Reply> {
        match &self.tx {
            None => Err(canned::bad_sequence("need MAIL and RCPT first")),
            Some(tx) if tx.rcpts.is_empty() => Err(Reply::new(554, "5.5.1", "No valid recipients")),
            Some(_) => Ok(()),
        }
    }

    async fn data(&mut self) -> Flow {
        if let Err(r) = self.content_allowed() {
            self.reply(r);
            return Flow::Continue;
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            self.reply(canned::bad_sequence("DATA after BDAT"));
            return Flow::Continue;
        }
        self.reply(Reply::bare(354, "End data with <CR><LF>.<CR><LF>"));
        let id = new_id();
        let header = self.received_header(&id);
        let header_len = header.len();
        let cfg = &self.ctx.cfg;
        let mut decoder = DataDecoder::new(
            header,
            cfg.limits.max_message_size,
            cfg.bare_line_endings,
            cfg.long_lines == LongLines::Reject,
        );
        let timeout = cfg.limits.data_timeout;
        loop {
            let buf = self.conn.buffered();
            if !buf.is_empty() {
                let n = buf.len();
                if let Some(used) = decoder.feed(buf) {
                    self.conn.consume(used);
                    break;
                }
                self.conn.consume(n);
            }
            match self.conn.fill(timeout).await {
                Ok(()) => {}
                Err(ReadError::Timeout) => {
                    self.reply(canned::timeout());
                    return Flow::Close;
                }
                Err(_) => return Flow::Close,
            }
        }
        let result = decoder.finish();
        let r = match result {
            Err(DataProblem::TooLarge) => canned::too_large(self.ctx.cfg.limits.max_message_size),
            Err(DataProblem::BareLineEnding) => Reply::new(
                550,
                "5.6.0",
                "Message refused: bare CR or LF line ending (lines must end with CRLF, RFC 5321 2.3.8)",
            ),
            Err(DataProblem::LineTooLong) => Reply::new(
                500,
                "5.6.0",
                "Message refused: a line is longer than 1000 octets (RFC 5321 4.5.3.1.6)",
            ),
            Ok(body) => self.enqueue(id, header_len, body).await,
        };
        self.reset_transaction();
        self.reply(r);
        if std::mem::take(&mut self.shutdown_after_reply) {
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Flow {
        // The chunk is read whatever happens, so the command stream stays in step.
        let allowed = self.content_allowed();
        let max = usize::try_from(self.ctx.cfg.limits.max_message_size).unwrap_or(usize::MAX);
        if allowed.is_ok() {
            let needs_start = self.tx.as_ref().is_some_and(|t| t.bdat.is_none());
            if needs_start {
                let id = new_id();
                let header = self.received_header(&id);
                if let Some(tx) = self.tx.as_mut() {
                    tx.bdat = Some(BdatBody {
                        id,
                        header_len: header.len(),
                        body: header,
                        too_large: false,
                    });
                }
            }
        }
        let timeout = self.ctx.cfg.limits.data_timeout;
        let mut left = chunk_size;
        while left > 0 {
            let bytes = match self.conn.read_some(left.min(64 * 1024), timeout).await {
                Ok(b) => b,
                Err(ReadError::Timeout) => {
                    self.reply(canned::timeout());
                    return Flow::Close;
                }
                Err(_) => return Flow::Close,
            };
            left -= bytes.len();
            if let Some(b) = self.tx.as_mut().and_then(|t| t.bdat.as_mut()) {
                if !b.too_large {
                    if b.body.len() - b.header_len + bytes.len() > max {
                        b.too_large = true;
                        b.body = Vec::new();
                    } else {
                        b.body.extend_from_slice(&bytes);
                    }
                }
            }
        }
        if let Err(r) = allowed {
            self.reply(r);
            return Flow::Continue;
        }
        let too_large = self
            .tx
            .as_ref()
            .and_then(|t| t.bdat.as_ref())
            .is_some_and(|b| b.too_large);
        if too_large {
            self.reset_transaction();
            self.reply(canned::too_large(self.ctx.cfg.limits.max_message_size));
            return Flow::Continue;
        }
        if !is_last {
            self.reply(Reply::new(250, "2.0.0", format!("{chunk_size} octets received")));
            return Flow::Continue;
        }
        let taken = self.tx.as_mut().and_then(|t| t.bdat.take());
        let r = match taken {
            Some(b) => self.enqueue(b.id, b.header_len, b.body).await,
            None => canned::bad_sequence("no message in progress"),
        };
        self.reset_transaction();
        self.reply(r);
        if std::mem::take(&mut self.shutdown_after_reply) {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Runs the data and route pipelines, then writes the transaction to
    /// the queue; the reply says whether it is safe.
    async fn enqueue(&mut self, id: String, header_len: usize, mut body: Vec<u8>) -> Reply {
        // The queue's writer waits a little for this message while its
        // policy steps run, to sync it with others (dropped at a refusal).
        let incoming = self.ctx.queue.incoming();
        let mut quarantine: Option<String> = None;
        // The header section as plugins see it; taken again only after a
        // stage changed it (so route's plugins are not told it again).
        let mut headers: Option<Arc<str>> = None;
        for stage in [StageName::Data, StageName::Route] {
            if !self.policy.is_active(stage) {
                continue;
            }
            let shared = Arc::new(body);
            let h = headers.get_or_insert_with(|| plugin::event::header_section(&shared)).clone();
            let out = self.run_stage(stage, None, Some((shared.clone(), h))).await;
            body = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
            if let Some((r, close)) = refusal(&out) {
                if close {
                    self.shutdown_after_reply = true;
                }
                return r;
            }
            match &out.verdict {
                Some(Final::Discard) => {
                    tracing::info!(id = %id, "discarded by policy");
                    return Reply::new(250, "2.0.0", "OK: discarded by policy");
                }
                Some(Final::Quarantine(why)) => quarantine = Some(why.clone()),
                _ => {}
            }
            if crate::policy::headers::changes_headers(&out.changes) {
                body = crate::policy::headers::apply(body, header_len, &out.changes);
                headers = None;
            }
            self.apply_envelope_changes(&out, None);
        }
        if self.tx.as_ref().is_some_and(|t| t.discard) {
            return Reply::new(250, "2.0.0", "OK: discarded by policy");
        }
        let Some(tx) = self.tx.as_ref() else {
            return canned::bad_sequence("no transaction");
        };
        if tx.rcpts.is_empty() {
            return Reply::new(554, "5.5.1", "No recipients left after policy");
        }
        // The transaction's own decisions, tags and symbols move into the
        // record (the transaction ends with it); the session's are copied.
        let (t, sy, tr) = tx.marks;
        let (decisions, tags, symbols) = (whole_list(&mut self.trail, tr), whole_list(&mut self.tags, t), whole_list(&mut self.symbols, sy));
        let now = chrono::Utc::now();
        let meta = MessageMeta {
            id: id.clone(),
            received_at: now.timestamp(),
            sender: tx.sender.clone(),
            recipients: tx.rcpts.clone(),
            body_type: tx.body_type,
            smtputf8: tx.smtputf8,
            declared_size: tx.declared_size,
            dsn_ret: tx.ret,
            dsn_envid: tx.envid.clone(),
            session: self.facts(),
            size: body.len() as u64,
            state: MessageState::Queued,
            next_attempt_ms: now_ms(),
            attempts: 0,
            // A `priority` tag from the policy (e.g. the router plugin)
            // overrides the listener's class.
            priority: self
                .tags
                .iter()
                .rev()
                .find(|(k, _)| k == "priority")
                .and_then(|(_, v)| crate::config::Priority::from_name(v))
                .unwrap_or(self.ctx.priority),
            history: Vec::new(),
            delay_notified: false,
            decisions,
            tags,
            symbols,
            quarantine: quarantine.clone(),
        };
        let mut meta = meta;
        if quarantine.is_some() {
            meta.state = MessageState::Held;
        }
        // Policy may have removed header fields: never below zero.
        let content = body.len().saturating_sub(header_len) as u64;
        match self.ctx.queue.insert_incoming(&meta, body, Some(incoming)).await {
            Ok(()) => {
                if let Some(q) = &meta.quarantine {
                    tracing::info!(id = %id, reason = %q, "quarantined by policy (held)");
                }
                self.ctx.queued.notify_one();
                self.ctx.counters.accepted(content);
                tracing::info!(
                    id = %id,
                    listener = %self.ctx.name,
                    client = %self.peer.ip(),
                    from = %meta.sender,
                    rcpts = meta.recipients.len(),
                    size = meta.size,
                    "queued"
                );
                Reply::new(250, "2.0.0", format!("OK: queued as {id}"))
            }
            Err(e) => {
                tracing::error!(id = %id, error = %e, "queue write failed; transaction refused with 451");
                canned::queue_failed()
            }
        }
    }

    fn facts(&self) -> SessionFacts {
        SessionFacts {
            listener: self.ctx.name.clone(),
            client_ip: self.client_ip.clone(),
            client_port: self.peer.port(),
            local_addr: self.local_text.clone(),
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            tls: self.tls.clone(),
            auth_user: self.auth_user.clone(),
        }
    }

    /// The Received: trace header (RFC 5321 §4.4), with the protocol name
    /// of RFC 3848 / RFC 6531 (ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS, ...).
    fn received_header(&self, id: &str) -> Vec<u8> {
        // Pieces pushed onto one buffer: this runs for every message.
        let mut h = String::with_capacity(320);
        h.push_str("Received: from ");
        push_sanitized(&mut h, self.helo.as_deref().unwrap_or("unknown"));
        h.push_str(" (");
        if let Some(name) = &self.rdns {
            push_sanitized(&mut h, name);
            h.push(' ');
        }
        h.push_str(if self.peer.is_ipv4() { "[" } else { "[IPv6:" });
        h.push_str(&self.client_ip);
        h.push_str("])\r\n\tby ");
        h.push_str(&self.ctx.hostname);
        h.push_str(" (Weir) with ");
        let smtputf8 = self.tx.as_ref().is_some_and(|t| t.smtputf8);
        h.push_str(if smtputf8 {
            "UTF8SMTP"
        } else if self.esmtp {
            "ESMTP"
        } else {
            "SMTP"
        });
        if self.tls.is_some() {
            h.push('S');
        }
        if self.auth_user.is_some() {
            h.push('A');
        }
        h.push_str(" id ");
        h.push_str(id);
        if let Some(t) = &self.tls {
            h.push_str("\r\n\t(using ");
            h.push_str(&t.version);
            h.push_str(" with cipher ");
            h.push_str(&t.cipher);
            h.push(')');
        }
        if let Some(tx) = &self.tx {
            if let [only] = tx.rcpts.as_slice() {
                h.push_str("\r\n\tfor <");
                push_sanitized(&mut h, &only.address);
                h.push('>');
            }
        }
        h.push_str(";\r\n\t");
        h.push_str(&chrono::Utc::now().to_rfc2822());
        h.push_str("\r\n");
        h.into_bytes()
    }

    async fn starttls(&mut self) -> Flow {
        if self.tls.is_some() {
            self.reply(canned::bad_sequence("TLS already active"));
            return Flow::Continue;
        }
        let acceptor = match (&self.ctx.tls, self.ctx.cfg.tls) {
            (Some(a), TlsMode::Starttls) => a.clone(),
            _ => {
                self.reply(Reply::new(502, "5.5.1", "STARTTLS not offered on this listener"));
                return Flow::Continue;
            }
        };
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        // start_tls drops whatever the client sent after STARTTLS in the clear.
        match self.conn.start_tls(&acceptor, self.ctx.cfg.limits.tls_handshake_timeout).await {
            Ok(info) => {
                // RFC 3207 §4.2: forget everything learned before the handshake.
                self.helo = None;
                self.esmtp = false;
                self.auth_user = None;
                self.tx = None;
                self.tls = Some(info);
                Flow::Continue
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, listener = %self.ctx.name, error = %e, "STARTTLS handshake failed");
                metrics::counter!("weir_tls_handshake_failures_total", "listener" => self.ctx.name.clone()).increment(1);
                Flow::Close
            }
        }
    }

    /// Reads one SASL response line; None ends the exchange (reply queued).
    async fn sasl_line(&mut self) -> Result<Option<String>, Flow> {
        match self.conn.read_line(MAX_AUTH_LINE + 2, self.ctx.cfg.limits.command_timeout).await {
            Ok(Line::Complete(l)) => {
                let s = String::from_utf8_lossy(&l).trim_end_matches(['\r', '\n']).to_string();
                if s == "*" {
                    self.reply(Reply::new(501, "5.7.0", "Authentication cancelled"));
                    return Ok(None);
                }
                Ok(Some(s))
            }
            Ok(Line::TooLong) => {
                self.reply(Reply::new(500, "5.5.6", "Authentication exchange line is too long"));
                Ok(None)
            }
            Err(ReadError::Timeout) => {
                self.reply(canned::timeout());
                Err(Flow::Close)
            }
            Err(_) => Err(Flow::Close),
        }
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Flow {
        if self.ctx.cfg.auth == AuthMode::None {
            self.reply(Reply::new(502, "5.5.1", "AUTH not offered on this listener"));
            return Flow::Continue;
        }
        if self.tls.is_none() && !self.ctx.cfg.auth_over_plaintext {
            self.reply(canned::encryption_required());
            return Flow::Continue;
        }
        if !self.esmtp {
            self.reply(canned::bad_sequence("send EHLO first"));
            return Flow::Continue;
        }
        if self.auth_user.is_some() {
            self.reply(canned::bad_sequence("already authenticated"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.reply(canned::bad_sequence("AUTH not allowed during a mail transaction"));
            return Flow::Continue;
        }
        let creds: Result<(String, String), SaslError> = if mechanism == smtp_proto::AUTH_PLAIN {
            let resp = if initial.is_empty() {
                self.reply(Reply::bare(334, ""));
                match self.sasl_line().await {
                    Ok(Some(s)) => s,
                    Ok(None) => return Flow::Continue,
                    Err(f) => return f,
                }
            } else {
                initial
            };
            auth::decode_plain(&resp)
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user_b64 = if initial.is_empty() {
                self.reply(Reply::bare(334, auth::encode_b64(b"Username:")));
                match self.sasl_line().await {
                    Ok(Some(s)) => s,
                    Ok(None) => return Flow::Continue,
                    Err(f) => return f,
                }
            } else {
                initial
            };
            match auth::decode_login_field(&user_b64) {
                Err(e) => Err(e),
                Ok(user) => {
                    self.reply(Reply::bare(334, auth::encode_b64(b"Password:")));
                    match self.sasl_line().await {
                        Ok(Some(s)) => auth::decode_login_field(&s).map(|p| (user, p)),
                        Ok(None) => return Flow::Continue,
                        Err(f) => return f,
                    }
                }
            }
        } else {
            self.reply(Reply::new(504, "5.5.4", "Unrecognized authentication type; use PLAIN or LOGIN"));
            return Flow::Continue;
        };
        let (user, pass) = match creds {
            Ok(c) => c,
            Err(SaslError::Encoding) => {
                self.reply(Reply::new(501, "5.5.2", "Invalid base64 in authentication exchange"));
                return Flow::Continue;
            }
            Err(SaslError::Malformed) => {
                self.reply(canned::auth_failed());
                return Flow::Continue;
            }
        };
        let users = self.ctx.users.clone();
        let u = user.clone();
        let ok = tokio::task::spawn_blocking(move || users.verify(&u, &pass))
            .await
            .unwrap_or(false);
        let listener = self.ctx.name.clone();
        if ok {
            metrics::counter!("weir_auth_total", "listener" => listener, "result" => "success").increment(1);
            tracing::info!(peer = %self.peer, user = %user, "authenticated");
            self.auth_user = Some(user);
            if self.policy.is_active(StageName::Auth) {
                let out = self.run_stage(StageName::Auth, None, None).await;
                if let Some((r, close)) = refusal(&out) {
                    self.auth_user = None;
                    self.reply(r);
                    return if close { Flow::Close } else { Flow::Continue };
                }
            }
            self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
        } else {
            metrics::counter!("weir_auth_total", "listener" => listener, "result" => "failure").increment(1);
            tracing::info!(peer = %self.peer, user = %user, "authentication failed");
            self.reply(canned::auth_failed());
        }
        Flow::Continue
    }
}

/// `RCPT TO:<Postmaster>` without a domain must be accepted (RFC 5321
/// §4.5.1); smtp-proto reads it as an empty address, like `<>`.
fn is_bare_postmaster(line: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(line) else {
        return false;
    };
    let (Some(verb), Some(rest)) = (s.get(..8), s.get(8..)) else {
        return false;
    };
    verb.eq_ignore_ascii_case("RCPT TO:")
        && rest
            .trim_start()
        .get(..12)
        .is_some_and(|a| a.eq_ignore_ascii_case("<postmaster>"))
}

enum HelloKind {
    Ehlo,
    Helo,
}

fn req_kind(line: &[u8]) -> HelloKind {
    if starts_with_ci(line, b"EHLO") {
        HelloKind::Ehlo
    } else {
        HelloKind::Helo
    }
}

/// All of `v`, leaving its first `keep` items: those are copied, the
/// rest moved out.
fn whole_list<T: Clone>(v: &mut Vec<T>, keep: usize) -> Vec<T> {
    let keep = keep.min(v.len());
    let mut all = Vec::with_capacity(v.len());
    all.extend_from_slice(&v[..keep]);
    all.extend(v.drain(keep..));
    all
}

/// The SMTP reply for a refusing verdict, and whether to close afterwards.
fn refusal(out: &StageOutcome) -> Option<(Reply, bool)> {
    let mk = |(code, enhanced, text): (u16, String, String)| Reply {
        code,
        enhanced: Some(enhanced),
        lines: vec![text],
    };
    match out.verdict.as_ref()? {
        Final::Reject(r) => Some((mk(checked_reply(r, 5, (550, "5.7.1"))), false)),
        Final::Tempfail(r) => Some((mk(checked_reply(r, 4, (451, "4.7.1"))), false)),
        Final::Disconnect(r) => {
            let class = if r.code / 100 == 5 { 5 } else { 4 };
            Some((mk(checked_reply(r, class, (421, "4.7.0"))), true))
        }
        Final::Accept | Final::Discard | Final::Quarantine(_) => None,
    }
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The first word of a line, for metrics labels on lines that did not parse.
fn command_word(line: &[u8]) -> &'static str {
    const KNOWN: [&str; 14] = [
        "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "STARTTLS", "AUTH", "EXPN",
    ];
    let word: Vec<u8> = line.iter().take_while(|b| b.is_ascii_alphabetic()).copied().collect();
    KNOWN
        .iter()
        .find(|k| k.as_bytes().eq_ignore_ascii_case(&word))
        .copied()
        .unwrap_or("unknown")
}

/// The reply to a line smtp-proto could not parse.
fn syntax_reply(e: smtp_proto::Error, line: &[u8]) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => {
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                Reply::new(500, "5.5.2", "Empty command line")
            } else {
                Reply::new(500, "5.5.1", "Command unrecognized")
            }
        }
        E::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        E::InvalidRecipientAddress => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
        E::SyntaxError { syntax } => Reply::new(501, "5.5.2", format!("Syntax error, expected: {syntax}")),
        E::InvalidParameter { param } => Reply::new(501, "5.5.4", format!("Invalid value for parameter {param}")),
        E::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("Parameter {} not supported", sanitize(&param)))
        }
        E::NeedsMoreData { .. } | E::ResponseTooLong | E::InvalidResponse { .. } => {
            Reply::new(501, "5.5.2", "Syntax error in command")
        }
    }
}

/// Keeps client-supplied text printable and free of header/comment syntax.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(255));
    push_sanitized(&mut out, s);
    out
}

/// Appends at most 255 characters of `s`, each one that is neither
/// alphanumeric nor one of a few safe signs made '?'.
fn push_sanitized(out: &mut String, s: &str) {
    const SIGNS: &[u8] = b"@.-_+=:[]!#$%&'*/?^`{|}~";
    for c in s.chars().take(255) {
        let keep = if c.is_ascii() { c.is_ascii_alphanumeric() || SIGNS.contains(&(c as u8)) } else { c.is_alphanumeric() };
        out.push(if keep { c } else { '?' });
    }
}

/// The ESMTP parameters of a MAIL or RCPT line as the client sent them
/// (names upper-cased, values as written): what follows the `<path>`.
fn esmtp_params(line: &[u8]) -> Vec<wit::Param> {
    let text = crate::policy::headers::lossy(line);
    let text = text.trim_end();
    let rest = match text.find('<') {
        Some(open) => {
            // The path's end: the first '>' outside a quoted local part.
            let (mut quoted, mut escaped, mut end) = (false, false, None);
            // Byte by byte: what matters is ASCII, and no byte of a
            // multi-byte character is.
            for (i, b) in text.as_bytes()[open + 1..].iter().enumerate() {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => quoted = !quoted,
                    b'>' if !quoted => {
                        end = Some(open + 1 + i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            match end {
                Some(e) => &text[e..],
                None => "",
            }
        }
        // No angle brackets: "MAIL FROM:addr PARAMS".
        None => text.split_once(':').map(|(_, r)| r.trim_start()).and_then(|r| r.split_once(' ')).map(|(_, p)| p).unwrap_or(""),
    };
    rest.split_ascii_whitespace()
        .map(|p| match p.split_once('=') {
            Some((n, v)) => wit::Param { name: n.to_ascii_uppercase(), value: Some(v.to_string()) },
            None => wit::Param { name: p.to_ascii_uppercase(), value: None },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_safe_text_and_marks_the_rest() {
        assert_eq!(sanitize("mx-1.example.org"), "mx-1.example.org");
        assert_eq!(sanitize("a b(c)\r\n<d>;\"e\\"), "a?b?c????d???e?");
        assert_eq!(sanitize("[IPv6:::1]user+tag@x"), "[IPv6:::1]user+tag@x");
        // Letters of other scripts are kept, other signs are not.
        assert_eq!(sanitize("été→ü"), "été?ü");
        assert_eq!(sanitize(&"x".repeat(300)).len(), 255);
    }

    #[test]
    fn whole_list_copies_the_kept_part_and_moves_the_rest() {
        let mut v = vec!["session".to_string(), "tx1".into(), "tx2".into()];
        assert_eq!(whole_list(&mut v, 1), ["session", "tx1", "tx2"]);
        assert_eq!(v, ["session"]);
        assert_eq!(whole_list(&mut v, 5), ["session"], "a mark past the end keeps all");
        assert_eq!(v, ["session"]);
    }

    #[test]
    fn esmtp_params_are_what_follows_the_path() {
        let names = |line: &str| -> Vec<(String, Option<String>)> { esmtp_params(line.as_bytes()).into_iter().map(|p| (p.name, p.value)).collect() };
        assert_eq!(
            names("MAIL FROM:<a@b.example> size=1000 BODY=8BITMIME SMTPUTF8\r\n"),
            vec![("SIZE".into(), Some("1000".into())), ("BODY".into(), Some("8BITMIME".into())), ("SMTPUTF8".into(), None)]
        );
        assert_eq!(names("RCPT TO:<\"odd>name\"@b.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y"), vec![
            ("NOTIFY".into(), Some("SUCCESS,FAILURE".into())),
            ("ORCPT".into(), Some("rfc822;x+40y".into()))
        ]);
        assert!(names("MAIL FROM:<>").is_empty());
        assert!(names("MAIL FROM:<unclosed SIZE=1").is_empty());
        assert_eq!(names("MAIL FROM:a@b SIZE=5"), vec![("SIZE".into(), Some("5".into()))]);
    }
}
