//! `weir policy test`: runs fixtures — connection facts, an envelope, a
//! message, and the expected verdict at each stage and expected header and
//! envelope changes — through the real pipeline and the real plugins,
//! offline, and reports pass/fail per fixture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use serde::Deserialize;

use crate::config::{Config, ConfigSource};
use crate::plugin::wit;
use crate::policy::types::StageName;
use crate::policy::{Final, SessionPolicy, StageOutcome};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// The configuration whose pipeline is tested (relative to the fixture).
    pub config: PathBuf,
    pub pipeline: String,
    #[serde(default)]
    pub connection: FixtureConnection,
    #[serde(default)]
    pub helo: Option<String>,
    #[serde(default)]
    pub mail_from: Option<String>,
    #[serde(default)]
    pub rcpt_to: Vec<String>,
    /// The message; LF line ends become CRLF.
    #[serde(default)]
    pub message: Option<String>,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixtureConnection {
    pub remote_ip: String,
    pub listener: String,
    pub tls: bool,
    pub auth_user: Option<String>,
}

impl Default for FixtureConnection {
    fn default() -> Self {
        FixtureConnection {
            remote_ip: "192.0.2.1".into(),
            listener: "mx".into(),
            tls: false,
            auth_user: None,
        }
    }
}

/// Verdicts are written as their names (continue, accept, reject, tempfail,
/// discard, quarantine, disconnect), optionally with the code: `reject 553`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    pub connect: Option<String>,
    pub helo: Option<String>,
    pub auth: Option<String>,
    pub mail_from: Option<String>,
    /// Recipient → verdict.
    pub rcpt_to: BTreeMap<String, String>,
    pub data: Option<String>,
    pub route: Option<String>,
    pub headers_added: Vec<String>,
    pub headers_removed: Vec<String>,
    /// Header → its value after the pipeline.
    pub headers: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// Recipient → route.
    pub routes: BTreeMap<String, String>,
    pub sender: Option<String>,
}

fn verdict_text(out: &StageOutcome) -> String {
    match &out.verdict {
        None => "continue".into(),
        Some(Final::Accept) => "accept".into(),
        Some(Final::Reject(r)) => format!("reject {}", r.code),
        Some(Final::Tempfail(r)) => format!("tempfail {}", r.code),
        Some(Final::Discard) => "discard".into(),
        Some(Final::Quarantine(_)) => "quarantine".into(),
        Some(Final::Disconnect(r)) => format!("disconnect {}", r.code),
    }
}

fn matches(expected: &str, got: &str) -> bool {
    // "reject" matches "reject 550"; "reject 550" must match exactly.
    got == expected || got.split(' ').next() == Some(expected)
}

/// Runs one fixture; Ok(list of failures), empty when it passes.
pub async fn run(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: Fixture = serde_norway::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let config_path = base.join(&f.config);
    let config = Config::load(ConfigSource::File(&config_path), &[]).map_err(|e| anyhow!("{e}"))?;
    if !config.pipelines.contains_key(&f.pipeline) {
        return Err(anyhow!("{}: no pipeline {:?} in {}", path.display(), f.pipeline, config_path.display()));
    }
    let scratch = tempfile_dir()?;
    let kv = crate::plugin::kv::Kv::open(&scratch)?;
    let runtime = crate::plugin::Runtime::new(&config.plugin_runtime, None)?;
    let services = crate::plugin::HostServices::new(&config, Arc::new(crate::dns::Dns::new(&config.dns)?), Some(kv));
    let origin = crate::policy::ConfigOrigin {
        path: Some(config_path.clone()),
        overrides: Vec::new(),
    };
    let policy = crate::policy::prepare(&config, &origin, Some(&runtime), &services)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut sp = SessionPolicy::new(Arc::new(policy), Some(f.pipeline.clone()));
    let mut failures = Vec::new();
    let mut check = |stage: &str, expected: &Option<String>, out: &StageOutcome| {
        if let Some(e) = expected {
            let got = verdict_text(out);
            if !matches(e, &got) {
                failures.push(format!("{stage}: expected {e}, got {got} ({:?})", out.trail));
            }
        }
    };
    let c = &f.connection;
    let mut ctx = crate::plugin::Context::new(wit::Connection {
        remote_ip: c.remote_ip.clone(),
        remote_port: 40000,
        local_addr: "127.0.0.1:25".into(),
        listener: c.listener.clone(),
        tls_version: c.tls.then(|| "TLSv1.3".to_string()),
        tls_cipher: c.tls.then(|| "TLS13_AES_256_GCM_SHA384".to_string()),
        reverse_dns: None,
        helo: None,
        auth_user: None,
    });
    let refused = |o: &StageOutcome| matches!(o.verdict, Some(Final::Reject(_) | Final::Tempfail(_) | Final::Disconnect(_)));
    let mut routes: BTreeMap<String, String> = BTreeMap::new();
    let mut sender_now = None;
    'session: {
        let out = sp.run(StageName::Connect, &mut ctx, None).await;
        check("connect", &f.expect.connect, &out);
        if refused(&out) {
            break 'session;
        }
        if let Some(h) = &f.helo {
            std::sync::Arc::make_mut(&mut ctx.connection).helo = Some(h.clone());
            let out = sp.run(StageName::Helo, &mut ctx, None).await;
            check("helo", &f.expect.helo, &out);
            if refused(&out) {
                break 'session;
            }
        }
        if let Some(u) = &c.auth_user {
            std::sync::Arc::make_mut(&mut ctx.connection).auth_user = Some(u.clone());
            let out = sp.run(StageName::Auth, &mut ctx, None).await;
            check("auth", &f.expect.auth, &out);
            if refused(&out) {
                break 'session;
            }
        }
        let Some(from) = &f.mail_from else {
            break 'session;
        };
        ctx.envelope.sender = Some(from.clone());
        let out = sp.run(StageName::MailFrom, &mut ctx, None).await;
        check("mail_from", &f.expect.mail_from, &out);
        if refused(&out) {
            break 'session;
        }
        apply_envelope(&mut ctx, &out, None, &mut routes);
        for r in &f.rcpt_to {
            ctx.recipient = Some(r.clone());
            let out = sp.run(StageName::RcptTo, &mut ctx, None).await;
            let exp = f.expect.rcpt_to.get(r).cloned();
            check(&format!("rcpt_to {r}"), &exp, &out);
            if !refused(&out) {
                ctx.envelope.recipients.push(r.clone());
                apply_envelope(&mut ctx, &out, Some(r), &mut routes);
            }
        }
        ctx.recipient = None;
        let Some(message) = &f.message else {
            break 'session;
        };
        if ctx.envelope.recipients.is_empty() {
            break 'session;
        }
        let mut body: Vec<u8> = message.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes();
        let before: Vec<String> = super::headers::parse(&body).into_iter().map(|h| h.name.to_ascii_lowercase()).collect();
        for (stage, name, expected) in [(StageName::Data, "data", &f.expect.data), (StageName::Route, "route", &f.expect.route)] {
            let shared = Arc::new(body);
            ctx.size = shared.len() as u64;
            ctx.headers = Some(crate::plugin::event::header_section(&shared));
            let out = sp.run(stage, &mut ctx, Some(shared.clone())).await;
            body = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
            check(name, expected, &out);
            if refused(&out) || matches!(out.verdict, Some(Final::Discard)) {
                break 'session;
            }
            body = super::headers::apply(body, 0, &out.changes);
            apply_envelope(&mut ctx, &out, None, &mut routes);
        }
        let after = super::headers::parse(&body);
        let names: Vec<String> = after.iter().map(|h| h.name.to_ascii_lowercase()).collect();
        for h in &f.expect.headers_added {
            let h = h.to_ascii_lowercase();
            if before.contains(&h) || !names.contains(&h) {
                failures.push(format!("header {h}: expected to be added"));
            }
        }
        for h in &f.expect.headers_removed {
            if names.contains(&h.to_ascii_lowercase()) {
                failures.push(format!("header {h}: expected to be removed"));
            }
        }
        for (name, value) in &f.expect.headers {
            match after.iter().find(|h| h.name.eq_ignore_ascii_case(name)) {
                Some(h) if &h.value == value => {}
                Some(h) => failures.push(format!("header {name}: expected {value:?}, got {:?}", h.value)),
                None => failures.push(format!("header {name}: expected {value:?}, absent")),
            }
        }
        sender_now = ctx.envelope.sender.clone();
    }
    for (k, v) in &f.expect.tags {
        match ctx.tags.iter().find(|(kk, _)| kk == k) {
            Some((_, vv)) if vv == v => {}
            other => failures.push(format!("tag {k}: expected {v:?}, got {other:?}")),
        }
    }
    for (r, route) in &f.expect.routes {
        if routes.get(r) != Some(route) {
            failures.push(format!("route of {r}: expected {route:?}, got {:?}", routes.get(r)));
        }
    }
    if let Some(s) = &f.expect.sender {
        if sender_now.as_ref() != Some(s) {
            failures.push(format!("sender: expected {s:?}, got {sender_now:?}"));
        }
    }
    drop(sp);
    drop(services);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(failures)
}

fn apply_envelope(ctx: &mut crate::plugin::Context, out: &StageOutcome, rcpt: Option<&str>, routes: &mut BTreeMap<String, String>) {
    for (_, c) in &out.changes {
        match c {
            wit::Change::SetSender(s) => ctx.envelope.sender = Some(s.clone()),
            wit::Change::AddRecipient(a) => ctx.envelope.recipients.push(a.clone()),
            wit::Change::RemoveRecipient(a) => ctx.envelope.recipients.retain(|r| r != a),
            wit::Change::RewriteRecipient((a, b)) => {
                for r in ctx.envelope.recipients.iter_mut().filter(|r| *r == a) {
                    *r = b.clone();
                }
            }
            wit::Change::SetRoute(route) => match rcpt {
                Some(r) => {
                    routes.insert(r.to_string(), route.clone());
                }
                None => {
                    for r in &ctx.envelope.recipients {
                        routes.insert(r.clone(), route.clone());
                    }
                }
            },
            _ => {}
        }
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("weir-policy-test-{}-{}", std::process::id(), crate::queue::id::new_id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
