//! A native test harness: runs a plugin (compiled for the host, no server,
//! no WebAssembly) through a scripted SMTP transcript, with the host
//! capabilities answered from what the test sets up, and returns the
//! decision at every stage.
//!
//! ```ignore
//! let mut h = Harness::new().config(r#"{"domains":["example.org"]}"#);
//! let results = h.run::<MyPlugin>(&Transcript::new("192.0.2.1")
//!     .helo("mail.example.net").mail_from("a@example.net").rcpt_to("b@example.org")
//!     .data("Subject: hi\r\n\r\nhello\r\n"));
//! assert_eq!(results.last().unwrap().decision.verdict, Verdict::Continue);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::host::Level;
use crate::{dispatch, Change, Connection, Context, Decision, Header, Plugin, Stage, Verdict};

/// What the capabilities answer during a native test.
#[derive(Debug, Default, Clone)]
pub struct HostState {
    pub config: String,
    pub now_ms: u64,
    pub kv: HashMap<String, Vec<u8>>,
    pub dns_a: HashMap<String, Result<Vec<String>, String>>,
    pub dns_aaaa: HashMap<String, Result<Vec<String>, String>>,
    pub dns_mx: HashMap<String, Result<Vec<(u16, String)>, String>>,
    pub dns_txt: HashMap<String, Result<Vec<String>, String>>,
    pub dns_ptr: HashMap<String, Result<Vec<String>, String>>,
    pub body: Vec<u8>,
    /// files: the plugin's declared data files, by name.
    pub files: HashMap<String, Vec<u8>>,
    pub logs: Vec<(Level, String)>,
    /// mail-auth: SPF answers by sender domain (none when missing).
    pub spf: HashMap<String, Result<crate::host::mail_auth::SpfOutput, String>>,
    /// mail-auth: what `verify_message` answers (all "none" when unset).
    pub message_auth: Option<Result<crate::host::mail_auth::MessageAuth, String>>,
    /// mail-auth: what `verify_message` was asked.
    pub verified: Vec<crate::host::mail_auth::MessageChecks>,
    /// mail-auth: what `dkim_sign` answers (a placeholder when unset).
    pub dkim_sign: Option<Result<String, String>>,
    /// mail-auth: the signing requests made.
    pub sign_requests: Vec<crate::host::mail_auth::SignRequest>,
}

thread_local! {
    static HOST: RefCell<HostState> = RefCell::new(HostState::default());
}

pub(crate) fn with_host<R>(f: impl FnOnce(&mut HostState) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// One step of a transcript.
#[derive(Debug, Clone)]
pub enum Step {
    Helo(String),
    Auth(String),
    MailFrom(String),
    RcptTo(String),
    /// The whole message (headers and body).
    Data(Vec<u8>),
}

/// A scripted SMTP session.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub connection: Connection,
    pub steps: Vec<Step>,
}

impl Transcript {
    pub fn new(remote_ip: &str) -> Transcript {
        Transcript {
            connection: Connection {
                remote_ip: remote_ip.into(),
                remote_port: 40000,
                local_addr: "127.0.0.1:25".into(),
                listener: "mx".into(),
                ..Default::default()
            },
            steps: Vec::new(),
        }
    }
    pub fn listener(mut self, name: &str) -> Self {
        self.connection.listener = name.into();
        self
    }
    pub fn tls(mut self) -> Self {
        self.connection.tls_version = Some("TLSv1.3".into());
        self.connection.tls_cipher = Some("TLS13_AES_256_GCM_SHA384".into());
        self
    }
    pub fn helo(mut self, name: &str) -> Self {
        self.steps.push(Step::Helo(name.into()));
        self
    }
    pub fn auth(mut self, user: &str) -> Self {
        self.steps.push(Step::Auth(user.into()));
        self
    }
    pub fn mail_from(mut self, addr: &str) -> Self {
        self.steps.push(Step::MailFrom(addr.into()));
        self
    }
    pub fn rcpt_to(mut self, addr: &str) -> Self {
        self.steps.push(Step::RcptTo(addr.into()));
        self
    }
    pub fn data(mut self, message: &str) -> Self {
        self.steps.push(Step::Data(message.as_bytes().to_vec()));
        self
    }
}

/// A stage's outcome in a harness run.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub stage: Stage,
    pub recipient: Option<String>,
    pub decision: Decision,
}

#[derive(Debug, Default)]
pub struct Harness {
    state: HostState,
    /// Symbols and tags "earlier steps" set, seen from the connect stage on.
    symbols: Vec<(String, f64)>,
    tags: Vec<(String, String)>,
}

/// Headers of a raw message (unfolded), as the server gives them to plugins.
pub fn parse_headers(message: &[u8]) -> Vec<Header> {
    crate::parse_headers(&header_section(message))
}

/// The header section of a raw message, as the server hands it to plugins.
fn header_section(message: &[u8]) -> String {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2).unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end]).into_owned()
}

impl Harness {
    pub fn new() -> Harness {
        Harness::default()
    }
    pub fn config(mut self, json: &str) -> Self {
        self.state.config = json.into();
        self
    }
    pub fn now_ms(mut self, t: u64) -> Self {
        self.state.now_ms = t;
        self
    }
    pub fn dns_a(mut self, name: &str, answer: Result<Vec<&str>, &str>) -> Self {
        self.state.dns_a.insert(name.to_ascii_lowercase(), answer.map(|v| v.into_iter().map(String::from).collect()).map_err(String::from));
        self
    }
    pub fn dns_txt(mut self, name: &str, answer: Result<Vec<&str>, &str>) -> Self {
        self.state.dns_txt.insert(name.to_ascii_lowercase(), answer.map(|v| v.into_iter().map(String::from).collect()).map_err(String::from));
        self
    }
    /// A score symbol an earlier step in the pipeline added.
    pub fn prior_symbol(mut self, name: &str, score: f64) -> Self {
        self.symbols.push((name.into(), score));
        self
    }
    /// A tag an earlier step in the pipeline set.
    pub fn prior_tag(mut self, name: &str, value: &str) -> Self {
        self.tags.push((name.into(), value.into()));
        self
    }
    /// mail-auth: the SPF answer for a sender domain.
    pub fn spf(mut self, domain: &str, answer: Result<crate::host::mail_auth::SpfOutput, &str>) -> Self {
        self.state.spf.insert(domain.to_ascii_lowercase(), answer.map_err(String::from));
        self
    }
    /// mail-auth: the answer of `verify_message`.
    pub fn message_auth(mut self, answer: Result<crate::host::mail_auth::MessageAuth, &str>) -> Self {
        self.state.message_auth = Some(answer.map_err(String::from));
        self
    }
    /// mail-auth: the answer of `dkim_sign`.
    pub fn dkim_sign(mut self, answer: Result<&str, &str>) -> Self {
        self.state.dkim_sign = Some(answer.map(String::from).map_err(String::from));
        self
    }
    /// mail-auth: the signing requests the plugin made.
    pub fn sign_requests(&self) -> Vec<crate::host::mail_auth::SignRequest> {
        self.state.sign_requests.clone()
    }
    /// mail-auth: what the plugin asked `verify_message`.
    pub fn verified(&self) -> Vec<crate::host::mail_auth::MessageChecks> {
        self.state.verified.clone()
    }
    /// Sets a kv entry before a run (state from an earlier session).
    /// A data file the plugin may read through `host::files::read`.
    pub fn file(mut self, name: &str, bytes: &[u8]) -> Self {
        self.state.files.insert(name.to_string(), bytes.to_vec());
        self
    }
    pub fn kv_entry(mut self, key: &str, value: &[u8]) -> Self {
        self.state.kv.insert(key.into(), value.to_vec());
        self
    }
    pub fn kv(&self) -> HashMap<String, Vec<u8>> {
        self.state.kv.clone()
    }
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.logs.clone()
    }

    /// Runs a fresh plugin instance (one session) through the transcript.
    /// Like the server, it stops at a verdict that ends the session or
    /// refuses the transaction, and applies tag and symbol changes so that
    /// later stages see them.
    pub fn run<P: Plugin>(&mut self, t: &Transcript) -> Vec<StepResult> {
        HOST.with(|h| *h.borrow_mut() = self.state.clone());
        // As a new instance: no config or file cached from an earlier run.
        crate::host::forget_cached();
        crate::host::set_config_id(0);
        let mut plugin = P::default();
        let mut out = Vec::new();
        let mut ctx = Context::new(Stage::Connect);
        ctx.connection = t.connection.clone();
        ctx.tags = self.tags.clone();
        ctx.symbols = self.symbols.clone();
        let call = |ctx: &mut Context, stage: Stage, plugin: &mut P| -> Decision {
            ctx.stage = stage;
            let d = if P::STAGES.contains(&stage) { dispatch(plugin, ctx) } else { Decision::next() };
            for c in &d.changes {
                match c {
                    Change::SetTag(k, v) => ctx.tags.push((k.clone(), v.clone())),
                    Change::AddSymbol(k, s) => ctx.symbols.push((k.clone(), *s)),
                    _ => {}
                }
            }
            d
        };
        let stops = |d: &Decision| !matches!(d.verdict, Verdict::Continue | Verdict::Accept);
        let d = call(&mut ctx, Stage::Connect, &mut plugin);
        let stop = stops(&d);
        out.push(StepResult { stage: Stage::Connect, recipient: None, decision: d });
        if !stop {
            for step in &t.steps {
                let (stage, rcpt) = match step {
                    Step::Helo(h) => {
                        ctx.connection.helo = Some(h.clone());
                        (Stage::Helo, None)
                    }
                    Step::Auth(u) => {
                        ctx.connection.auth_user = Some(u.clone());
                        (Stage::Auth, None)
                    }
                    Step::MailFrom(a) => {
                        ctx.envelope.sender = Some(a.clone());
                        (Stage::MailFrom, None)
                    }
                    Step::RcptTo(r) => {
                        ctx.recipient = Some(r.clone());
                        (Stage::RcptTo, Some(r.clone()))
                    }
                    Step::Data(m) => {
                        ctx.recipient = None;
                        ctx.size = m.len() as u64;
                        ctx.set_header_section(header_section(m));
                        HOST.with(|h| h.borrow_mut().body = m.clone());
                        (Stage::Data, None)
                    }
                };
                let d = call(&mut ctx, stage, &mut plugin);
                let stop = stops(&d);
                if stage == Stage::RcptTo && !stop {
                    if let Some(r) = &rcpt {
                        ctx.envelope.recipients.push(r.clone());
                    }
                }
                out.push(StepResult { stage, recipient: rcpt, decision: d });
                if stop && stage != Stage::RcptTo {
                    break;
                }
                if stage == Stage::Data {
                    let d = call(&mut ctx, Stage::Route, &mut plugin);
                    out.push(StepResult { stage: Stage::Route, recipient: None, decision: d });
                }
            }
        }
        self.state = HOST.with(|h| h.borrow().clone());
        out
    }
}
