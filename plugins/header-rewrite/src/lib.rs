//! header-rewrite (data): adds, removes and replaces headers by rules.
//! Each rule has optional conditions (listeners, authenticated or not,
//! a tag, a minimum score from earlier steps' symbols) and actions:
//! `remove` (names), `add` / `replace` (name: value), and `subject_prefix`
//! (prepended once to the Subject). Typical uses: strip internal Received:
//! lines on submission (Weir's own Received: is never touched), tag the
//! Subject of spam, add a header.
use std::collections::BTreeMap;

use serde::Deserialize;
use weir_plugin_sdk::*;

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct When {
    listeners: Vec<String>,
    authenticated: Option<bool>,
    /// "name=value" (or "name": any value).
    tag: Option<String>,
    min_score: Option<f64>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Rule {
    when: When,
    remove: Vec<String>,
    add: BTreeMap<String, String>,
    replace: BTreeMap<String, String>,
    subject_prefix: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

#[derive(Default)]
pub struct HeaderRewrite;

fn applies(w: &When, ctx: &Context) -> bool {
    (w.listeners.is_empty() || w.listeners.contains(&ctx.connection.listener))
        && w.authenticated.is_none_or(|a| a == ctx.connection.auth_user.is_some())
        && w.tag.as_ref().is_none_or(|t| {
            let (k, v) = t.split_once('=').unwrap_or((t, ""));
            ctx.tag(k).is_some_and(|have| v.is_empty() || have == v)
        })
        && w.min_score.is_none_or(|m| ctx.score() >= m)
}

impl Plugin for HeaderRewrite {
    const STAGES: &'static [Stage] = &[Stage::Data];
    const STATELESS: bool = true;

    fn data(&mut self, ctx: &Context) -> Decision {
        let config = match host::cached_config::<Config>() {
            Ok(c) => c,
            Err(e) => return Decision::next().because(format!("header-rewrite config: {e}")),
        };
        let mut d = Decision::next();
        let mut n = 0;
        for (i, rule) in config.rules.iter().enumerate() {
            if !applies(&rule.when, ctx) {
                continue;
            }
            n += 1;
            for name in &rule.remove {
                d = d.with(Change::RemoveHeader(name.clone()));
            }
            for (name, value) in &rule.replace {
                d = d.with(Change::ReplaceHeader(Header { name: name.clone(), value: value.clone() }));
            }
            for (name, value) in &rule.add {
                d = d.with(Change::AddHeader(Header { name: name.clone(), value: value.clone() }));
            }
            if let Some(prefix) = &rule.subject_prefix {
                let subject = ctx.header("Subject").unwrap_or("");
                if !subject.starts_with(prefix.trim_end()) {
                    d = d.with(Change::ReplaceHeader(Header { name: "Subject".into(), value: format!("{prefix}{subject}") }));
                }
            }
            d.reason = Some(format!("{n} rule(s) applied, last #{i}"));
        }
        d
    }
}

export_plugin!(HeaderRewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    const CONFIG: &str = r#"{"rules": [
        {"when": {"listeners": ["submission"], "authenticated": true}, "remove": ["Received", "X-Originating-IP"]},
        {"when": {"min_score": 5.0}, "subject_prefix": "[SPAM] ", "add": {"X-Spam-Flag": "YES"}},
        {"add": {"X-Relayed-By": "weir"}}
    ]}"#;

    fn data_changes(h: Harness, t: Transcript) -> Vec<Change> {
        let mut h = h.config(CONFIG);
        let r = h.run::<HeaderRewrite>(&t);
        r.into_iter().find(|s| s.stage == Stage::Data).unwrap().decision.changes
    }

    fn mx(msg: &str) -> Transcript {
        Transcript::new("192.0.2.1").helo("x").mail_from("a@b.example").rcpt_to("c@d.example").data(msg)
    }

    #[test]
    fn strips_internal_headers_on_submission_only() {
        let msg = "Received: from laptop.internal\r\nSubject: hi\r\n\r\nx\r\n";
        let sub = Transcript::new("192.0.2.1").listener("submission").helo("x").auth("ann").mail_from("a@b.example").rcpt_to("c@d.example").data(msg);
        let c = data_changes(Harness::new(), sub);
        assert!(c.contains(&Change::RemoveHeader("Received".into())));
        assert!(c.contains(&Change::AddHeader(Header { name: "X-Relayed-By".into(), value: "weir".into() })));
        assert!(!data_changes(Harness::new(), mx(msg)).contains(&Change::RemoveHeader("Received".into())));
    }

    #[test]
    fn tags_the_subject_of_high_scoring_mail() {
        let msg = "Subject: Cheap pills\r\n\r\nx\r\n";
        let c = data_changes(Harness::new().prior_symbol("GTUBE", 100.0), mx(msg));
        assert!(c.contains(&Change::ReplaceHeader(Header { name: "Subject".into(), value: "[SPAM] Cheap pills".into() })));
        assert!(c.contains(&Change::AddHeader(Header { name: "X-Spam-Flag".into(), value: "YES".into() })));
        let c = data_changes(Harness::new().prior_symbol("DKIM_PASS", -0.5), mx(msg));
        assert!(!c.iter().any(|c| matches!(c, Change::ReplaceHeader(_))));
    }
}
