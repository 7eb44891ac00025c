//! spam-score (data): scores a message with the rules and the trained
//! classifier of the `weir-spam` crate plus the symbols earlier plugins
//! added (auth-check, dnsbl), then acts on the operator's thresholds:
//! X-Spam-Score / X-Spam-Status / X-Spam-Flag headers (forged copies from
//! the client are removed first), `quarantine` and `reject`. Its own
//! symbols are added to the transaction too, so later steps (header-rewrite's
//! `min_score`) see the whole score, and the decision trail shows every
//! symbol. The model is a file declared under the plugin's `files:`
//! (trained with `weir spam train`), read once per instance.
use std::collections::HashMap;

use serde::Deserialize;
use weir_plugin_sdk::*;
use weir_spam::score::round;
use weir_spam::{analyze, Model, Scorer};

#[derive(Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
struct Thresholds {
    /// X-Spam-Status: Yes and X-Spam-Flag from this score.
    spam: f64,
    /// Hold the message for review from this score.
    quarantine: Option<f64>,
    /// Refuse the message (550 5.7.1) from this score.
    reject: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { spam: 5.0, quarantine: None, reject: None }
    }
}

#[derive(Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The name, under the plugin's `files:`, of the model; none: rules only.
    model: Option<String>,
    thresholds: Thresholds,
    /// Points per symbol, overriding the defaults (rules, BAYES_* bands,
    /// other plugins' symbols); 0 switches a symbol off.
    scores: HashMap<String, f64>,
    /// Mail from authenticated clients (submission) is not scored.
    skip_authenticated: bool,
    /// Larger messages are not scored (octets).
    max_size: u64,
    /// Add the X-Spam-* headers.
    headers: bool,
    /// The text of the 550 reply.
    reject_text: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: None,
            thresholds: Thresholds::default(),
            scores: HashMap::new(),
            skip_authenticated: true,
            max_size: 1024 * 1024,
            headers: true,
            reject_text: "Message rejected as spam".into(),
        }
    }
}

fn hdr(name: &str, value: String) -> Header {
    Header { name: name.into(), value }
}

/// The headers this plugin writes; copies that arrive with the message are removed.
const OWN_HEADERS: &[&str] = &["X-Spam-Score", "X-Spam-Status", "X-Spam-Flag"];

#[derive(Default)]
pub struct SpamScore;

impl Plugin for SpamScore {
    const STAGES: &'static [Stage] = &[Stage::Data];
    const STATELESS: bool = true;

    fn data(&mut self, ctx: &Context) -> Decision {
        let config = match host::cached_config::<Config>() {
            Ok(c) => c,
            Err(e) => return Decision::next().because(format!("spam-score config: {e}")),
        };
        if config.skip_authenticated && ctx.connection.auth_user.is_some() {
            return Decision::next().because("authenticated client: not scored");
        }
        if ctx.size > config.max_size {
            return Decision::next().because(format!("{} octets is over max_size {}: not scored", ctx.size, config.max_size));
        }
        let model_bytes = match &config.model {
            None => None,
            Some(name) => Some(host::files::cached(name)),
        };
        let mut notes = Vec::new();
        let model = match &model_bytes {
            None => None,
            Some(Ok(b)) => match Model::parse(&b[..]) {
                Ok(m) => Some(m),
                Err(e) => {
                    notes.push(format!("model unusable, rules only: {e}"));
                    None
                }
            },
            Some(Err(e)) => {
                notes.push(format!("model unavailable, rules only: {e}"));
                None
            }
        };
        let mut scorer = Scorer::new(model);
        scorer.overrides = Some(&config.scores);
        let analysis = analyze(&host::body::read_all());
        let scored = scorer.score(&analysis, &ctx.symbols);
        let score = round(scored.score);
        let t = &config.thresholds;
        let is_spam = score >= t.spam;

        let mut d = Decision::next();
        if config.headers {
            for h in OWN_HEADERS {
                if ctx.headers().iter().any(|x| x.name.eq_ignore_ascii_case(h)) {
                    d = d.with(Change::RemoveHeader((*h).to_string()));
                }
            }
            let bayes = scored.bayes.map(|p| format!(" bayes={p:.4}")).unwrap_or_default();
            d = d
                .with(Change::AddHeader(hdr("X-Spam-Score", format!("{score:.2}"))))
                .with(Change::AddHeader(hdr(
                    "X-Spam-Status",
                    format!("{}, score={score:.2} required={:.1} tests={}{bayes}", if is_spam { "Yes" } else { "No" }, t.spam, scored.tests()),
                )));
            if is_spam {
                d = d.with(Change::AddHeader(hdr("X-Spam-Flag", "YES".into())));
            }
        }
        // Its own symbols join the transaction's, so later steps see the
        // whole score (other plugins' symbols are there already).
        for s in scored.symbols.iter().filter(|s| weir_spam::score::is_own_symbol(&s.name)) {
            d = d.with(Change::AddSymbol(s.name.clone(), s.score));
        }
        d = d.with(Change::SetTag("spam".into(), if is_spam { "yes" } else { "no" }.into()));
        d = d.with(Change::SetTag("spam-score".into(), format!("{score:.2}")));
        notes.insert(0, format!("score {score:.2} ({})", scored.tests()));
        let reason = notes.join("; ");
        if t.reject.is_some_and(|r| score >= r) {
            let text = format!("{} (score {score:.1})", config.reject_text);
            return Decision::reject(550, "5.7.1", &text).because(reason);
        }
        if t.quarantine.is_some_and(|q| score >= q) {
            return Decision { verdict: Verdict::Quarantine(format!("spam score {score:.2}")), reason: Some(reason), changes: d.changes };
        }
        d.because(reason)
    }
}

export_plugin!(SpamScore);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, StepResult, Transcript};
    use weir_spam::Trainer;

    fn model() -> Vec<u8> {
        let mut t = Trainer::new();
        for i in 0..30 {
            let spam = format!("From: Deals <deals{i}@promo.example>\r\nSubject: cheap pills\r\n\r\nBuy cheap pills now, viagra discount, click here to order\r\n");
            let ham = format!("From: Ann <ann@example.org>\r\nSubject: minutes\r\n\r\nThe meeting minutes and the agenda for the project review are attached\r\n");
            t.add(&analyze(spam.as_bytes()).tokens, true);
            t.add(&analyze(ham.as_bytes()).tokens, false);
        }
        t.to_bytes(1)
    }

    const HAM: &str = "From: Ann <ann@example.org>\r\nTo: bob@example.net\r\nSubject: minutes\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
                       Message-ID: <1@example.org>\r\n\r\nHere are the meeting minutes; the agenda for the review follows.\r\n";
    const SPAM: &str = "From: Deals <x@promo.example>\r\nTo: bob@example.net\r\nSubject: CHEAP PILLS DISCOUNT\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
                        Message-ID: <2@promo.example>\r\nX-Spam-Status: No, forged by the sender\r\n\r\nBuy cheap viagra pills now! click here to order your discount\r\n";

    fn data(h: &mut Harness, message: &str, auth: bool) -> StepResult {
        let mut t = Transcript::new("192.0.2.1").helo("client.example").mail_from("x@promo.example").rcpt_to("bob@example.net");
        if auth {
            t = Transcript::new("192.0.2.1").helo("client.example").auth("bob").mail_from("x@promo.example").rcpt_to("bob@example.net");
        }
        h.run::<SpamScore>(&t.data(message)).into_iter().find(|r| r.stage == Stage::Data).expect("a data step")
    }

    fn header<'a>(r: &'a StepResult, name: &str) -> Option<&'a str> {
        r.decision.changes.iter().find_map(|c| match c {
            Change::AddHeader(h) if h.name == name => Some(h.value.as_str()),
            _ => None,
        })
    }

    fn harness(config: &str) -> Harness {
        Harness::new().config(config).file("model", &model())
    }

    #[test]
    fn ham_and_spam_get_headers_symbols_and_tags() {
        let mut h = harness(r#"{"model": "model"}"#);
        let ham = data(&mut h, HAM, false);
        assert_eq!(ham.decision.verdict, Verdict::Continue);
        assert!(header(&ham, "X-Spam-Status").is_some_and(|s| s.starts_with("No, ")), "{ham:?}");
        assert!(header(&ham, "X-Spam-Flag").is_none());
        assert!(ham.decision.changes.contains(&Change::SetTag("spam".into(), "no".into())));

        let spam = data(&mut h, SPAM, false);
        assert_eq!(spam.decision.verdict, Verdict::Continue, "no reject or quarantine threshold set");
        let status = header(&spam, "X-Spam-Status").expect("status");
        assert!(status.starts_with("Yes, ") && status.contains("BAYES_99") && status.contains("SUBJ_ALL_CAPS"), "{status}");
        assert_eq!(header(&spam, "X-Spam-Flag"), Some("YES"));
        // The sender's own X-Spam-Status is removed before ours is added.
        assert!(spam.decision.changes.contains(&Change::RemoveHeader("X-Spam-Status".into())));
        assert!(spam.decision.changes.iter().any(|c| matches!(c, Change::AddSymbol(n, s) if n == "BAYES_99" && *s > 5.0)));
        assert!(spam.decision.changes.contains(&Change::SetTag("spam".into(), "yes".into())));
    }

    #[test]
    fn thresholds_choose_quarantine_or_reject() {
        let mut h = harness(r#"{"model": "model", "thresholds": {"spam": 5, "quarantine": 5, "reject": 100}}"#);
        assert!(matches!(data(&mut h, SPAM, false).decision.verdict, Verdict::Quarantine(_)));
        assert_eq!(data(&mut h, HAM, false).decision.verdict, Verdict::Continue);
        let mut h = harness(r#"{"model": "model", "thresholds": {"reject": 5}}"#);
        match data(&mut h, SPAM, false).decision.verdict {
            Verdict::Reject(r) => assert_eq!((r.code, r.enhanced.as_str()), (550, "5.7.1")),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn gtube_without_a_model_and_symbols_from_other_plugins() {
        let gtube = format!("Subject: test\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <3@x>\r\nFrom: a@b.example\r\n\r\n{}\r\n", weir_spam::analyze::GTUBE);
        let mut h = Harness::new().config(r#"{"thresholds": {"reject": 20}}"#);
        match data(&mut h, &gtube, false).decision.verdict {
            Verdict::Reject(r) => assert!(r.text.contains("spam"), "{r:?}"),
            v => panic!("{v:?}"),
        }
        // A ham-looking message with bad marks from auth-check and dnsbl.
        let mut h = harness(r#"{"model": "model", "scores": {"DNSBL_ZEN": 4}}"#).prior_symbol("DMARC_FAIL", 3.0).prior_symbol("DNSBL_ZEN", 1.0);
        let r = data(&mut h, HAM, false);
        let status = header(&r, "X-Spam-Status").unwrap();
        assert!(status.contains("DMARC_FAIL=3") && status.contains("DNSBL_ZEN=4"), "{status}");
        // Other plugins' symbols are not added a second time.
        assert!(!r.decision.changes.iter().any(|c| matches!(c, Change::AddSymbol(n, _) if n.starts_with("DMARC") || n.starts_with("DNSBL"))));
    }

    #[test]
    fn authenticated_large_and_misconfigured() {
        let mut h = harness(r#"{"model": "model"}"#);
        let r = data(&mut h, SPAM, true);
        assert!(r.decision.changes.is_empty() && r.decision.reason.as_deref().is_some_and(|s| s.contains("authenticated")));
        let mut h = harness(r#"{"model": "model", "max_size": 10}"#);
        assert!(data(&mut h, SPAM, false).decision.changes.is_empty());
        // A model name that is not declared: rules only, said in the trail.
        let mut h = harness(r#"{"model": "nope"}"#);
        let r = data(&mut h, SPAM, false);
        assert!(r.decision.reason.as_deref().is_some_and(|s| s.contains("rules only")), "{r:?}");
        assert!(header(&r, "X-Spam-Status").is_some_and(|s| !s.contains("BAYES")));
        let mut h = Harness::new().config(r#"{"model": "model"}"#).file("model", b"garbage");
        assert!(data(&mut h, SPAM, false).decision.reason.as_deref().is_some_and(|s| s.contains("bad magic")));
    }
}
