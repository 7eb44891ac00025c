//! auth-check (inbound): SPF at mail-from; DKIM, ARC and DMARC at data,
//! through the host's mail-auth capability. Adds an Authentication-Results
//! header (RFC 8601) under `authserv_id`, score symbols for the spam
//! scorer (SPF_FAIL, DKIM_PASS, DMARC_REJECT, ...), and tags `spf`,
//! `dkim`, `dmarc` for later steps. With `enforce: true` the DMARC policy
//! is applied: p=reject gives 550 5.7.1, p=quarantine quarantines (a
//! domain testing its policy, t=y, gets the next milder one). With
//! `reject_spf_fail: true` an SPF fail is refused at MAIL FROM (550
//! 5.7.23, RFC 7372). Clients in `skip_networks` are not checked.
use std::rc::Rc;

use serde::Deserialize;
use weir_plugin_sdk::host::mail_auth::{self, AuthResult, DmarcPolicy, MessageChecks, SpfOutput};
use weir_plugin_sdk::util::{ip_in, networks};
use weir_plugin_sdk::*;

#[derive(Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The authserv-id of the Authentication-Results header (this host's name).
    authserv_id: String,
    enforce: bool,
    reject_spf_fail: bool,
    /// Clients never checked (your own networks, loopback).
    skip_networks: Vec<String>,
    /// Symbol weights added to the message's score.
    spf_fail: f64,
    spf_softfail: f64,
    dkim_fail: f64,
    dkim_pass: f64,
    dmarc_fail: f64,
    dmarc_pass: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            authserv_id: "weir".into(),
            enforce: false,
            reject_spf_fail: false,
            skip_networks: Vec::new(),
            spf_fail: 2.0,
            spf_softfail: 0.7,
            dkim_fail: 1.0,
            dkim_pass: -0.5,
            dmarc_fail: 3.0,
            dmarc_pass: -1.0,
        }
    }
}

#[derive(Default)]
pub struct AuthCheck {
    /// The SPF result of the current transaction.
    spf: Option<SpfOutput>,
}

fn spf_symbol(r: AuthResult) -> Option<&'static str> {
    match r {
        AuthResult::Pass => Some("SPF_PASS"),
        AuthResult::Fail => Some("SPF_FAIL"),
        AuthResult::SoftFail => Some("SPF_SOFTFAIL"),
        AuthResult::Neutral => Some("SPF_NEUTRAL"),
        AuthResult::None => Some("SPF_NONE"),
        AuthResult::TempError | AuthResult::PermError => Some("SPF_ERROR"),
    }
}

/// The configuration, unless it is broken (451) or the client is in
/// `skip_networks` (not checked): what both stages begin with.
fn checked(ctx: &Context) -> Result<Rc<Config>, Decision> {
    let config = host::cached_config::<Config>().map_err(|e| Decision::tempfail(451, "4.3.5", "Sender checks are misconfigured").because(e))?;
    if ip_in(&ctx.connection.remote_ip, &networks(&config.skip_networks).0) {
        return Err(Decision::next().because("client in skip_networks"));
    }
    Ok(config)
}

impl Plugin for AuthCheck {
    const STAGES: &'static [Stage] = &[Stage::MailFrom, Stage::Data];

    fn mail_from(&mut self, ctx: &Context) -> Decision {
        let config = match checked(ctx) {
            Ok(c) => c,
            Err(d) => return d,
        };
        let sender = ctx.envelope.sender.clone().unwrap_or_default();
        let helo = ctx.connection.helo.clone().unwrap_or_default();
        let spf = match mail_auth::spf(&ctx.connection.remote_ip, &helo, &sender) {
            Ok(s) => s,
            Err(e) => SpfOutput { result: AuthResult::TempError, domain: String::new(), explanation: Some(e) },
        };
        self.spf = Some(spf.clone());
        let mut d = Decision::next()
            .because(format!("spf={} ({})", spf.result.as_str(), spf.domain))
            .with(Change::SetTag("spf".into(), spf.result.as_str().into()));
        let weight = match spf.result {
            AuthResult::Fail => config.spf_fail,
            AuthResult::SoftFail => config.spf_softfail,
            _ => 0.0,
        };
        if let Some(sym) = spf_symbol(spf.result) {
            d = d.with(Change::AddSymbol(sym.into(), weight));
        }
        if config.reject_spf_fail && spf.result == AuthResult::Fail {
            let why = spf.explanation.clone().unwrap_or_else(|| format!("{} does not allow this host to send its mail", spf.domain));
            return Decision::reject(550, "5.7.23", &format!("SPF check failed: {why}"));
        }
        d
    }

    fn data(&mut self, ctx: &Context) -> Decision {
        let config = match checked(ctx) {
            Ok(c) => c,
            Err(d) => return d,
        };
        let checks = MessageChecks {
            remote_ip: ctx.connection.remote_ip.clone(),
            helo: ctx.connection.helo.clone().unwrap_or_default(),
            mail_from: ctx.envelope.sender.clone().unwrap_or_default(),
            spf: self.spf.take(),
            authserv_id: config.authserv_id.clone(),
        };
        let auth = match mail_auth::verify_message(&checks) {
            Ok(a) => a,
            Err(e) => {
                return Decision::next()
                    .because(format!("authentication checks not run: {e}"))
                    .with(Change::AddHeader(Header {
                        name: "Authentication-Results".into(),
                        value: format!("{}; none", config.authserv_id),
                    }))
            }
        };
        let mut d = Decision::next();
        // RFC 8601 section 5: headers claiming our authserv-id were not
        // written by us and must go.
        let ours = |v: &str| v.split(';').next().is_some_and(|id| id.trim().eq_ignore_ascii_case(&config.authserv_id));
        if ctx.headers().iter().any(|h| h.name.eq_ignore_ascii_case("Authentication-Results") && ours(&h.value)) {
            d = d.with(Change::RemoveHeader("Authentication-Results".into()));
        }
        d = d.with(Change::AddHeader(Header { name: "Authentication-Results".into(), value: auth.authentication_results.clone() }));
        let dkim = if auth.dkim.iter().any(|k| k.result == AuthResult::Pass) {
            d = d.with(Change::AddSymbol("DKIM_PASS".into(), config.dkim_pass));
            "pass"
        } else if auth.dkim.iter().any(|k| matches!(k.result, AuthResult::Fail | AuthResult::PermError | AuthResult::Neutral)) {
            d = d.with(Change::AddSymbol("DKIM_FAIL".into(), config.dkim_fail));
            "fail"
        } else {
            "none"
        };
        d = d.with(Change::SetTag("dkim".into(), dkim.into()));
        d = d.with(Change::SetTag("dmarc".into(), auth.dmarc.result.as_str().into()));
        match auth.dmarc.result {
            AuthResult::Pass => d = d.with(Change::AddSymbol("DMARC_PASS".into(), config.dmarc_pass)),
            AuthResult::Fail => {
                let sym = match auth.dmarc.policy {
                    DmarcPolicy::Reject => "DMARC_REJECT",
                    DmarcPolicy::Quarantine => "DMARC_QUARANTINE",
                    _ => "DMARC_NONE",
                };
                d = d.with(Change::AddSymbol(sym.into(), config.dmarc_fail));
            }
            _ => {}
        }
        let reason = format!("dkim={dkim} dmarc={} policy={:?} arc={}", auth.dmarc.result.as_str(), auth.dmarc.policy, auth.arc.as_str());
        d = d.because(reason.clone());
        if config.enforce && auth.dmarc.result == AuthResult::Fail {
            let policy = match (auth.dmarc.policy, auth.dmarc.testing) {
                (DmarcPolicy::Reject, true) => DmarcPolicy::Quarantine,
                (DmarcPolicy::Quarantine, true) => DmarcPolicy::None,
                (p, _) => p,
            };
            match policy {
                DmarcPolicy::Reject => {
                    return Decision::reject(
                        550,
                        "5.7.1",
                        &format!("Rejected by the DMARC policy of {}: the message is not authenticated as coming from it", auth.dmarc.domain),
                    )
                    .because(reason)
                }
                DmarcPolicy::Quarantine => {
                    let mut q = Decision::quarantine(&format!("DMARC policy of {}: quarantine", auth.dmarc.domain));
                    q.changes = d.changes;
                    return q;
                }
                _ => {}
            }
        }
        d
    }
}

export_plugin!(AuthCheck);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::host::mail_auth::{DkimOutput, DmarcOutput, MessageAuth};
    use weir_plugin_sdk::testing::{Harness, Transcript};

    fn message_auth(dmarc: AuthResult, policy: DmarcPolicy, testing: bool) -> MessageAuth {
        MessageAuth {
            dkim: vec![DkimOutput { result: AuthResult::Fail, domain: "example.com".into(), selector: "s".into(), detail: None }],
            arc: AuthResult::None,
            dmarc: DmarcOutput { result: dmarc, domain: "example.com".into(), policy, testing, ..Default::default() },
            authentication_results: "mx.test; dkim=fail header.d=example.com; dmarc=fail".into(),
        }
    }

    fn transcript() -> Transcript {
        Transcript::new("198.51.100.9").helo("evil.example.net").mail_from("ann@example.com").rcpt_to("bob@example.org")
            .data("From: ann@example.com\r\nAuthentication-Results: mx.test; dkim=pass\r\nSubject: x\r\n\r\nbody\r\n")
    }

    fn spf_fail() -> Result<SpfOutput, &'static str> {
        Ok(SpfOutput { result: AuthResult::Fail, domain: "example.com".into(), explanation: None })
    }

    #[test]
    fn reports_and_scores_without_enforcing() {
        let mut h = Harness::new()
            .config(r#"{"authserv_id": "mx.test"}"#)
            .spf("example.com", spf_fail())
            .message_auth(Ok(message_auth(AuthResult::Fail, DmarcPolicy::Reject, false)));
        let r = h.run::<AuthCheck>(&transcript());
        let mail = r.iter().find(|s| s.stage == Stage::MailFrom).unwrap();
        assert!(mail.decision.changes.contains(&Change::AddSymbol("SPF_FAIL".into(), 2.0)));
        let data = r.iter().find(|s| s.stage == Stage::Data).unwrap();
        assert_eq!(data.decision.verdict, Verdict::Continue);
        // A forged header under our authserv-id is removed, ours added.
        assert!(data.decision.changes.contains(&Change::RemoveHeader("Authentication-Results".into())));
        assert!(data.decision.changes.iter().any(|c| matches!(c, Change::AddHeader(h) if h.value.starts_with("mx.test;"))));
        assert!(data.decision.changes.contains(&Change::AddSymbol("DMARC_REJECT".into(), 3.0)));
        // The SPF result of mail-from is handed to DMARC.
        assert_eq!(h.verified()[0].spf.as_ref().unwrap().result, AuthResult::Fail);
    }

    #[test]
    fn enforcing_applies_the_dmarc_policy() {
        let run = |policy, testing| {
            let mut h = Harness::new()
                .config(r#"{"authserv_id": "mx.test", "enforce": true}"#)
                .message_auth(Ok(message_auth(AuthResult::Fail, policy, testing)));
            h.run::<AuthCheck>(&transcript()).last().unwrap().decision.verdict.clone()
        };
        assert!(matches!(run(DmarcPolicy::Reject, false), Verdict::Reject(r) if r.code == 550 && r.enhanced == "5.7.1"));
        assert!(matches!(run(DmarcPolicy::Quarantine, false), Verdict::Quarantine(_)));
        assert!(matches!(run(DmarcPolicy::Reject, true), Verdict::Quarantine(_)));
        assert_eq!(run(DmarcPolicy::None, false), Verdict::Continue);
    }

    #[test]
    fn skipped_networks_are_not_checked() {
        let mut h = Harness::new().config(r#"{"skip_networks": ["198.51.100.0/24"], "reject_spf_fail": true}"#).spf("example.com", spf_fail());
        let r = h.run::<AuthCheck>(&transcript());
        assert!(r.iter().all(|s| s.decision.verdict == Verdict::Continue && s.decision.changes.is_empty()));
        assert!(h.verified().is_empty());
    }

    #[test]
    fn spf_fail_can_be_refused_at_mail_from() {
        let mut h = Harness::new().config(r#"{"reject_spf_fail": true}"#).spf("example.com", spf_fail());
        let r = h.run::<AuthCheck>(&transcript());
        assert!(matches!(&r.last().unwrap().decision.verdict, Verdict::Reject(x) if x.code == 550 && x.enhanced == "5.7.23"));
    }
}
