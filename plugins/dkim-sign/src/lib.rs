//! dkim-sign (outbound, route stage): signs the message with the key of
//! its From: domain (or the nearest parent domain with a key; the envelope
//! sender's domain when From: has none). Keys are RSA or Ed25519 PEM in
//! the config; the host parses each once and keeps it. Signed headers,
//! canonicalisation and expiry are configurable. By default only mail
//! from authenticated clients is signed (`sign: authenticated`); `sign:
//! all` signs everything that passes this step.
//!
//! Placed at the route stage, after every other change to the headers,
//! so that nothing edits the message after it is signed.
use serde::Deserialize;
use weir_plugin_sdk::host::mail_auth::{self, Canonicalization, SignRequest};
use weir_plugin_sdk::util::{domain_of, header_addresses};
use weir_plugin_sdk::*;

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Key {
    domain: String,
    selector: String,
    /// PEM text (RSA PKCS#1/PKCS#8 or Ed25519 PKCS#8).
    private_key: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum Sign {
    #[default]
    Authenticated,
    All,
}

#[derive(Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    keys: Vec<Key>,
    headers: Vec<String>,
    /// "relaxed/relaxed", "simple/simple", "relaxed/simple", ...
    canonicalization: String,
    expire_seconds: Option<u64>,
    sign: Sign,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keys: Vec::new(),
            headers: ["From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID", "In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
                .map(String::from)
                .to_vec(),
            canonicalization: "relaxed/relaxed".into(),
            expire_seconds: None,
            sign: Sign::Authenticated,
        }
    }
}

fn canon(s: &str) -> Result<Canonicalization, String> {
    match s.trim() {
        "relaxed" => Ok(Canonicalization::Relaxed),
        "simple" => Ok(Canonicalization::Simple),
        other => Err(format!("canonicalization {other:?}: use simple or relaxed")),
    }
}

struct Prepared {
    config: Config,
    header_canon: Canonicalization,
    body_canon: Canonicalization,
}

#[derive(Default)]
pub struct DkimSign;

fn prepare() -> Result<Prepared, String> {
    let config: Config = host::config()?;
    let (h, b) = config.canonicalization.split_once('/').unwrap_or((&config.canonicalization, "simple"));
    let (header_canon, body_canon) = (canon(h)?, canon(b)?);
    if !config.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        return Err("headers must include From".into());
    }
    Ok(Prepared { config, header_canon, body_canon })
}

/// The key for `domain`: its own, or the one of the nearest parent domain.
fn key_for<'a>(keys: &'a [Key], domain: &str) -> Option<&'a Key> {
    let mut d = domain.to_ascii_lowercase();
    loop {
        if let Some(k) = keys.iter().find(|k| k.domain.eq_ignore_ascii_case(&d)) {
            return Some(k);
        }
        let (_, parent) = d.split_once('.')?;
        if !parent.contains('.') {
            return None;
        }
        d = parent.to_string();
    }
}

impl Plugin for DkimSign {
    const STAGES: &'static [Stage] = &[Stage::Route];
    const STATELESS: bool = true;

    fn route(&mut self, ctx: &Context) -> Decision {
        let p = match host::prepared_config(prepare) {
            Ok(p) => p,
            // Unsigned mail from a signing service would fail DMARC later:
            // hold it back instead of sending it unsigned.
            Err(e) => return Decision::tempfail(451, "4.3.5", "Message signing is misconfigured").because(e),
        };
        if p.config.sign == Sign::Authenticated && ctx.connection.auth_user.is_none() {
            return Decision::next().because("not signed: client did not authenticate");
        }
        let from = header_addresses(ctx.header("From").unwrap_or("")).into_iter().next();
        let domain = from.as_deref().map(domain_of).unwrap_or_else(|| domain_of(ctx.envelope.sender.as_deref().unwrap_or("")));
        let Some(key) = key_for(&p.config.keys, &domain) else {
            return Decision::next().because(format!("not signed: no key for {domain}"));
        };
        let req = SignRequest {
            domain: key.domain.clone(),
            selector: key.selector.clone(),
            private_key: key.private_key.clone(),
            headers: p.config.headers.clone(),
            header_canonicalization: p.header_canon,
            body_canonicalization: p.body_canon,
            expire_seconds: p.config.expire_seconds,
        };
        match mail_auth::dkim_sign(&req) {
            Ok(value) => Decision::next()
                .because(format!("signed d={} s={}", key.domain, key.selector))
                .with(Change::AddHeader(Header { name: "DKIM-Signature".into(), value })),
            Err(e) => Decision::tempfail(451, "4.3.5", "The message could not be signed; try again later").because(e),
        }
    }
}

export_plugin!(DkimSign);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    const CONFIG: &str = r#"{"keys": [
        {"domain": "example.com", "selector": "s1", "private_key": "PEM-A"},
        {"domain": "other.example", "selector": "s2", "private_key": "PEM-B"}],
        "canonicalization": "relaxed/simple"}"#;

    fn session(user: Option<&str>, from: &str) -> Transcript {
        let t = Transcript::new("192.0.2.1").helo("x");
        let t = match user {
            Some(u) => t.auth(u),
            None => t,
        };
        t.mail_from("env@example.com").rcpt_to("z@else.example").data(&format!("From: {from}\r\nSubject: s\r\n\r\nhi\r\n"))
    }

    #[test]
    fn signs_with_the_from_domains_key() {
        let mut h = Harness::new().config(CONFIG);
        let r = h.run::<DkimSign>(&session(Some("ann"), "Ann <ann@mail.example.com>"));
        let route = r.iter().find(|s| s.stage == Stage::Route).unwrap();
        assert!(route.decision.changes.iter().any(|c| matches!(c, Change::AddHeader(h) if h.name == "DKIM-Signature")));
        let reqs = h.sign_requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].domain.as_str(), reqs[0].selector.as_str(), reqs[0].private_key.as_str()), ("example.com", "s1", "PEM-A"));
        assert_eq!(reqs[0].header_canonicalization, Canonicalization::Relaxed);
        assert_eq!(reqs[0].body_canonicalization, Canonicalization::Simple);
    }

    #[test]
    fn leaves_unauthenticated_and_unknown_domains_unsigned() {
        let mut h = Harness::new().config(CONFIG);
        h.run::<DkimSign>(&session(None, "ann@example.com"));
        h.run::<DkimSign>(&session(Some("ann"), "ann@nokey.example"));
        assert!(h.sign_requests().is_empty());
    }

    #[test]
    fn a_signing_error_holds_the_message() {
        let mut h = Harness::new().config(CONFIG).dkim_sign(Err("bad key"));
        let r = h.run::<DkimSign>(&session(Some("ann"), "ann@other.example"));
        assert!(matches!(&r.last().unwrap().decision.verdict, Verdict::Tempfail(x) if x.code == 451));
    }
}
