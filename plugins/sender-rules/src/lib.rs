//! sender-rules (submission): an authenticated account may only send as
//! addresses or domains it owns, in the envelope (MAIL FROM, 553 5.7.1)
//! and in the From: header (550 5.7.1); and per-account and per-client-IP
//! limits on messages and recipients over sliding windows (451 4.7.1).
//!
//! Ownership comes from `accounts` in the config and, with `use_kv`, from
//! the plugin's kv store (key `owns:<account>`, a comma-separated list of
//! addresses and "@domain"s, kept by the operator's provisioning).
//! `null_sender` says what an authenticated client's `MAIL FROM:<>` gets:
//! "allow" (default) or "reject". `require_auth: true` refuses MAIL from
//! clients that did not authenticate (530 5.7.0).
use std::collections::HashMap;

use serde::Deserialize;
use weir_plugin_sdk::util::{domain_of, header_addresses, window_add};
use weir_plugin_sdk::*;

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Account {
    /// Whole addresses the account may use.
    addresses: Vec<String>,
    /// Domains whose every address the account may use.
    domains: Vec<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Limit {
    count: u32,
    window_seconds: u64,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Limits {
    messages_per_account: Option<Limit>,
    recipients_per_account: Option<Limit>,
    messages_per_ip: Option<Limit>,
    recipients_per_ip: Option<Limit>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum NullSender {
    #[default]
    Allow,
    Reject,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    accounts: HashMap<String, Account>,
    use_kv: bool,
    null_sender: NullSender,
    require_auth: bool,
    limits: Limits,
    /// Skip the From: header check (envelope only).
    envelope_only: bool,
}

#[derive(Default)]
pub struct SenderRules;

fn owns(config: &Config, account: &str, address: &str) -> bool {
    let address = address.to_ascii_lowercase();
    let domain = domain_of(&address);
    let mut allowed: Vec<String> = Vec::new();
    if let Some(a) = config.accounts.get(account) {
        allowed.extend(a.addresses.iter().map(|x| x.to_ascii_lowercase()));
        allowed.extend(a.domains.iter().map(|d| format!("@{}", d.to_ascii_lowercase())));
    }
    if config.use_kv {
        if let Some(v) = host::kv::get(&format!("owns:{account}")) {
            allowed.extend(String::from_utf8_lossy(&v).split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()));
        }
    }
    allowed.iter().any(|e| match e.strip_prefix('@') {
        Some(d) => d == domain,
        None => *e == address,
    })
}

fn over(limit: Option<Limit>, key: &str, add: i64) -> Option<String> {
    let l = limit?;
    let n = window_add(key, l.window_seconds, add);
    // A check (add 0) asks whether one more would still be within the limit.
    let projected = if add == 0 { n + 1.0 } else { n };
    (projected > f64::from(l.count)).then(|| format!("at most {} per {} s", l.count, l.window_seconds))
}

fn rate_reply(what: &str, detail: &str) -> Decision {
    Decision::tempfail(451, "4.7.1", &format!("Too many {what} ({detail}); please try again later")).because(format!("{what} limit: {detail}"))
}

impl Plugin for SenderRules {
    const STAGES: &'static [Stage] = &[Stage::MailFrom, Stage::RcptTo, Stage::Data];
    const STATELESS: bool = true;

    fn mail_from(&mut self, ctx: &Context) -> Decision {
        let config = match host::cached_config::<Config>() {
            Ok(c) => c,
            Err(e) => return Decision::tempfail(451, "4.3.5", "Sender rules are misconfigured").because(e),
        };
        let sender = ctx.envelope.sender.clone().unwrap_or_default();
        let ip = ctx.connection.remote_ip.clone();
        let Some(account) = ctx.connection.auth_user.clone() else {
            if config.require_auth {
                return Decision::reject(530, "5.7.0", "Authentication required: log in before sending");
            }
            if let Some(d) = over(config.limits.messages_per_ip, &format!("m:ip:{ip}"), 0) {
                return rate_reply("messages from your address", &d);
            }
            return Decision::next();
        };
        if sender.is_empty() {
            if config.null_sender == NullSender::Reject {
                return Decision::reject(553, "5.7.1", "An empty sender (MAIL FROM:<>) is not allowed on this service");
            }
        } else if !owns(&config, &account, &sender) {
            return Decision::reject(
                553,
                "5.7.1",
                &format!("You are logged in as {account}, which may not send as <{sender}>; use one of your own addresses"),
            )
            .because(format!("{account} does not own {sender}"));
        }
        if let Some(d) = over(config.limits.messages_per_account, &format!("m:acct:{account}"), 0) {
            return rate_reply("messages from your account", &d);
        }
        if let Some(d) = over(config.limits.messages_per_ip, &format!("m:ip:{ip}"), 0) {
            return rate_reply("messages from your address", &d);
        }
        Decision::next().because(format!("{account} may send as <{sender}>"))
    }

    fn rcpt_to(&mut self, ctx: &Context) -> Decision {
        let Ok(config) = host::cached_config::<Config>() else {
            return Decision::next();
        };
        let ip = &ctx.connection.remote_ip;
        if let Some(account) = &ctx.connection.auth_user {
            if let Some(d) = over(config.limits.recipients_per_account, &format!("r:acct:{account}"), 1) {
                return rate_reply("recipients from your account", &d);
            }
        }
        if let Some(d) = over(config.limits.recipients_per_ip, &format!("r:ip:{ip}"), 1) {
            return rate_reply("recipients from your address", &d);
        }
        Decision::next()
    }

    fn data(&mut self, ctx: &Context) -> Decision {
        let Ok(config) = host::cached_config::<Config>() else {
            return Decision::next();
        };
        let ip = ctx.connection.remote_ip.clone();
        if let Some(account) = ctx.connection.auth_user.clone() {
            if !config.envelope_only {
                let from = ctx.header("From").unwrap_or("");
                let addrs = header_addresses(from);
                if addrs.is_empty() {
                    return Decision::reject(550, "5.7.1", "The message has no From: address; add your own address as the From:");
                }
                if let Some(bad) = addrs.iter().find(|a| !owns(&config, &account, a)) {
                    return Decision::reject(
                        550,
                        "5.7.1",
                        &format!("The From: address <{bad}> is not one your account {account} may use"),
                    )
                    .because(format!("{account} does not own header From {bad}"));
                }
            }
            // The message counts once it got this far.
            over(config.limits.messages_per_account, &format!("m:acct:{account}"), 1);
        }
        over(config.limits.messages_per_ip, &format!("m:ip:{ip}"), 1);
        Decision::next()
    }
}

export_plugin!(SenderRules);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    const CONFIG: &str = r#"{
        "accounts": {"ann": {"addresses": ["ann@example.com"]}, "bob": {"domains": ["bob.example"]}},
        "limits": {"messages_per_account": {"count": 2, "window_seconds": 3600},
                   "recipients_per_account": {"count": 3, "window_seconds": 3600}}
    }"#;

    fn last(h: &mut Harness, t: &Transcript) -> Verdict {
        h.run::<SenderRules>(t).last().unwrap().decision.verdict.clone()
    }

    fn code(v: &Verdict) -> u16 {
        match v {
            Verdict::Reject(r) | Verdict::Tempfail(r) => r.code,
            _ => 250,
        }
    }

    #[test]
    fn an_account_sends_only_as_its_own_addresses() {
        let mut h = Harness::new().config(CONFIG).now_ms(1_000_000_000);
        let own = Transcript::new("192.0.2.1").helo("x").auth("ann").mail_from("ann@example.com").rcpt_to("z@else.example")
            .data("From: Ann <ann@example.com>\r\nSubject: hi\r\n\r\nhi\r\n");
        assert_eq!(last(&mut h, &own), Verdict::Continue);
        let other = Transcript::new("192.0.2.1").helo("x").auth("ann").mail_from("someone@bob.example");
        let v = last(&mut h, &other);
        assert_eq!(code(&v), 553);
        assert!(matches!(&v, Verdict::Reject(r) if r.enhanced == "5.7.1" && r.text.contains("ann")));
        let header = Transcript::new("192.0.2.1").helo("x").auth("ann").mail_from("ann@example.com").rcpt_to("z@else.example")
            .data("From: someone@bob.example\r\n\r\nhi\r\n");
        assert_eq!(code(&last(&mut h, &header)), 550);
        let domain = Transcript::new("192.0.2.1").helo("x").auth("bob").mail_from("anything@BOB.example");
        assert_eq!(last(&mut h, &domain), Verdict::Continue);
    }

    #[test]
    fn ownership_from_the_kv_store() {
        let mut h = Harness::new().config(r#"{"use_kv": true}"#).kv_entry("owns:carol", b"carol@example.com, @carol.example");
        let t = Transcript::new("192.0.2.1").helo("x").auth("carol").mail_from("x@carol.example");
        assert_eq!(last(&mut h, &t), Verdict::Continue);
        let t = Transcript::new("192.0.2.1").helo("x").auth("carol").mail_from("x@example.com");
        assert_eq!(code(&last(&mut h, &t)), 553);
    }

    #[test]
    fn message_and_recipient_limits_give_451() {
        let mut h = Harness::new().config(CONFIG).now_ms(1_000_000_000);
        let msg = || Transcript::new("192.0.2.1").helo("x").auth("ann").mail_from("ann@example.com").rcpt_to("z@else.example")
            .data("From: ann@example.com\r\n\r\nhi\r\n");
        assert_eq!(last(&mut h, &msg()), Verdict::Continue);
        assert_eq!(last(&mut h, &msg()), Verdict::Continue);
        let third = last(&mut h, &msg());
        assert!(matches!(&third, Verdict::Tempfail(r) if r.code == 451 && r.enhanced == "4.7.1"), "{third:?}");
        let mut h = Harness::new().config(CONFIG).now_ms(1_000_000_000);
        let many = Transcript::new("192.0.2.1").helo("x").auth("ann").mail_from("ann@example.com")
            .rcpt_to("a@x.example").rcpt_to("b@x.example").rcpt_to("c@x.example").rcpt_to("d@x.example");
        let r = h.run::<SenderRules>(&many);
        assert_eq!(r.iter().filter(|s| matches!(s.decision.verdict, Verdict::Tempfail(_))).count(), 1);
    }

    #[test]
    fn null_sender_and_required_auth() {
        let mut h = Harness::new().config(r#"{"null_sender": "reject", "require_auth": true}"#);
        assert_eq!(code(&last(&mut h, &Transcript::new("192.0.2.1").helo("x").auth("ann").mail_from(""))), 553);
        assert_eq!(code(&last(&mut h, &Transcript::new("192.0.2.1").helo("x").mail_from("a@b.example"))), 530);
    }
}
