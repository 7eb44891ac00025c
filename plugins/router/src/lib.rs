//! router: names a delivery route per recipient (by recipient or sender
//! domain, authenticated user or tag, with a default), sets a priority
//! class tag (`priority`: transactional, normal or bulk) that the delivery
//! scheduler honours, and rewrites addresses: canonical maps for
//! recipients and senders, plus-address stripping, and SRS (the Sender
//! Rewriting Scheme) so that forwarded mail keeps passing SPF, with
//! bounces to SRS addresses turned back into the original sender.
//!
//! Stages: mail-from (sender maps), rcpt-to (recipient maps, SRS reverse,
//! route and priority), route (SRS forward).
use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_plugin_sdk::util::{domain_in, domain_of, local_of};
use weir_plugin_sdk::*;

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Match {
    recipient_domains: Vec<String>,
    sender_domains: Vec<String>,
    auth_users: Vec<String>,
    /// "name=value": a tag set by an earlier step.
    tag: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RouteRule {
    route: String,
    #[serde(flatten)]
    when: Match,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PriorityRule {
    class: String,
    #[serde(flatten)]
    when: Match,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Srs {
    secret: String,
    /// The domain SRS addresses are made in (one of ours, with an MX).
    domain: String,
    #[serde(default = "default_age")]
    max_age_days: u64,
}

fn default_age() -> u64 {
    21
}

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    local_domains: Vec<String>,
    routes: Vec<RouteRule>,
    default_route: Option<String>,
    priority: Vec<PriorityRule>,
    /// "old@x.example" -> "new@y.example", "@old.example" -> "@new.example".
    canonical: HashMap<String, String>,
    sender_canonical: HashMap<String, String>,
    strip_plus: bool,
    srs: Option<Srs>,
}

#[derive(Default)]
pub struct Router {
    /// A recipient of this transaction is forwarded off our domains.
    forwarded: bool,
}

fn matches(m: &Match, ctx: &Context, rcpt: &str) -> bool {
    let sender = ctx.envelope.sender.clone().unwrap_or_default();
    (m.recipient_domains.is_empty() || domain_in(&domain_of(rcpt), &m.recipient_domains))
        && (m.sender_domains.is_empty() || domain_in(&domain_of(&sender), &m.sender_domains))
        && (m.auth_users.is_empty() || ctx.connection.auth_user.as_ref().is_some_and(|u| m.auth_users.contains(u)))
        && m.tag.as_ref().is_none_or(|t| {
            let (k, v) = t.split_once('=').unwrap_or((t, ""));
            ctx.tag(k).is_some_and(|have| v.is_empty() || have == v)
        })
}

/// The canonical form of an address under a map: whole address first, then domain.
fn canonical(map: &HashMap<String, String>, addr: &str) -> Option<String> {
    let lower = addr.to_ascii_lowercase();
    if let Some(to) = map.get(&lower) {
        return Some(to.clone());
    }
    let domain = domain_of(addr);
    let to = map.get(&format!("@{domain}"))?;
    Some(match to.strip_prefix('@') {
        Some(new_domain) => format!("{}@{new_domain}", local_of(addr)),
        None => to.clone(),
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn hmac(secret: &str, msg: &str) -> [u8; 32] {
    let mut key = [0u8; 64];
    if secret.len() > 64 {
        key[..32].copy_from_slice(&Sha256::digest(secret.as_bytes()));
    } else {
        key[..secret.len()].copy_from_slice(secret.as_bytes());
    }
    let mut inner = Sha256::new();
    inner.update(key.map(|b| b ^ 0x36));
    inner.update(msg.to_ascii_lowercase().as_bytes());
    let mut outer = Sha256::new();
    outer.update(key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The first four base64 characters of the HMAC of `timestamp=domain=local`.
fn srs_hash(secret: &str, ts: &str, domain: &str, local: &str) -> String {
    let h = hmac(secret, &format!("{ts}={domain}={local}"));
    let n = (u32::from(h[0]) << 16) | (u32::from(h[1]) << 8) | u32::from(h[2]);
    (0..4).map(|i| B64[((n >> (18 - 6 * i)) & 63) as usize] as char).collect()
}

fn srs_day(now_ms: u64) -> u64 {
    (now_ms / 86_400_000) % 1024
}

fn srs_timestamp(day: u64) -> String {
    [B32[(day >> 5) as usize & 31] as char, B32[day as usize & 31] as char].iter().collect()
}

/// SRS0=HHHH=TT=domain=local@srs-domain
fn srs_forward(srs: &Srs, sender: &str, now_ms: u64) -> String {
    let ts = srs_timestamp(srs_day(now_ms));
    let (local, domain) = (local_of(sender), domain_of(sender));
    format!("SRS0={}={ts}={domain}={local}@{}", srs_hash(&srs.secret, &ts, &domain, local), srs.domain)
}

/// The original address of an SRS0 address, if its hash and age are good.
fn srs_reverse(srs: &Srs, addr: &str, now_ms: u64) -> Result<Option<String>, String> {
    let local = local_of(addr);
    if !domain_of(addr).eq_ignore_ascii_case(&srs.domain) || local.len() < 5 || !local[..5].eq_ignore_ascii_case("SRS0=") {
        return Ok(None);
    }
    let mut parts = local[5..].splitn(4, '=');
    let (Some(hash), Some(ts), Some(domain), Some(orig)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("malformed SRS address".into());
    };
    if !srs_hash(&srs.secret, ts, domain, orig).eq_ignore_ascii_case(hash) {
        return Err("SRS address with a bad signature".into());
    }
    let t: Vec<u64> = ts.bytes().filter_map(|c| B32.iter().position(|b| *b == c.to_ascii_uppercase()).map(|p| p as u64)).collect();
    if t.len() != 2 {
        return Err("SRS address with a bad timestamp".into());
    }
    let then = (t[0] << 5) | t[1];
    let age = (srs_day(now_ms) + 1024 - then) % 1024;
    if age > srs.max_age_days {
        return Err("SRS address has expired".into());
    }
    Ok(Some(format!("{orig}@{domain}")))
}

impl Plugin for Router {
    const STAGES: &'static [Stage] = &[Stage::MailFrom, Stage::RcptTo, Stage::Route];

    fn mail_from(&mut self, ctx: &Context) -> Decision {
        self.forwarded = false;
        let Ok(c) = host::cached_config::<Config>() else {
            return Decision::tempfail(451, "4.3.5", "Routing is misconfigured");
        };
        let sender = ctx.envelope.sender.clone().unwrap_or_default();
        match (!sender.is_empty()).then(|| canonical(&c.sender_canonical, &sender)).flatten() {
            Some(new) => Decision::next().because(format!("sender {sender} -> {new}")).with(Change::SetSender(new)),
            None => Decision::next(),
        }
    }

    fn rcpt_to(&mut self, ctx: &Context) -> Decision {
        let c = match host::cached_config::<Config>() {
            Ok(c) => c,
            Err(e) => return Decision::tempfail(451, "4.3.5", "Routing is misconfigured").because(e),
        };
        let original = ctx.recipient.clone().unwrap_or_default();
        let mut rcpt = original.clone();
        let mut d = Decision::next();
        let mut why = Vec::new();
        if let Some(srs) = &c.srs {
            match srs_reverse(srs, &rcpt, host::now_ms()) {
                Ok(Some(orig)) => {
                    why.push(format!("SRS {rcpt} -> {orig}"));
                    rcpt = orig;
                }
                Ok(None) => {}
                Err(e) => return Decision::reject(550, "5.1.1", &format!("<{rcpt}>: {e}")).because(e),
            }
        }
        if c.strip_plus {
            let local = local_of(&rcpt);
            if let Some((base, _)) = local.split_once('+').filter(|(b, _)| !b.is_empty()) {
                rcpt = format!("{base}@{}", domain_of(&rcpt));
            }
        }
        if let Some(new) = canonical(&c.canonical, &rcpt) {
            why.push(format!("canonical {rcpt} -> {new}"));
            if !c.local_domains.is_empty() && !domain_in(&domain_of(&new), &c.local_domains) {
                self.forwarded = true;
            }
            rcpt = new;
        }
        if rcpt != original {
            d = d.with(Change::RewriteRecipient(original.clone(), rcpt.clone()));
        }
        let route = c.routes.iter().find(|r| matches(&r.when, ctx, &rcpt)).map(|r| r.route.clone()).or(c.default_route.clone());
        if let Some(route) = route {
            why.push(format!("route {route}"));
            d = d.with(Change::SetRoute(route));
        }
        if let Some(p) = c.priority.iter().find(|p| matches(&p.when, ctx, &rcpt)) {
            why.push(format!("priority {}", p.class));
            d = d.with(Change::SetTag("priority".into(), p.class.clone()));
        }
        if why.is_empty() {
            d
        } else {
            d.because(why.join("; "))
        }
    }

    fn route(&mut self, ctx: &Context) -> Decision {
        let Ok(c) = host::cached_config::<Config>() else {
            return Decision::next();
        };
        let sender = ctx.envelope.sender.clone().unwrap_or_default();
        match &c.srs {
            Some(srs) if self.forwarded && !sender.is_empty() && !domain_in(&domain_of(&sender), &c.local_domains) => {
                let new = srs_forward(srs, &sender, host::now_ms());
                Decision::next().because(format!("SRS {sender} -> {new}")).with(Change::SetSender(new))
            }
            _ => Decision::next(),
        }
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    const CONFIG: &str = r#"{
        "local_domains": ["example.org"],
        "routes": [{"route": "lmtp", "recipient_domains": ["example.org"]},
                   {"route": "partner", "sender_domains": ["shop.example"]}],
        "default_route": "mx",
        "priority": [{"class": "transactional", "sender_domains": ["shop.example"]},
                     {"class": "bulk", "tag": "list=yes"}],
        "canonical": {"info@example.org": "ann@example.org", "@old.example.org": "@example.org",
                      "fwd@example.org": "ann@elsewhere.example"},
        "sender_canonical": {"@internal.example": "@example.org"},
        "strip_plus": true,
        "srs": {"secret": "s3cret", "domain": "srs.example.org"}
    }"#;

    fn rcpt(h: &mut Harness, from: &str, to: &str) -> Decision {
        let r = h.run::<Router>(&Transcript::new("192.0.2.1").helo("x").mail_from(from).rcpt_to(to));
        r.into_iter().find(|s| s.stage == Stage::RcptTo).unwrap().decision
    }

    #[test]
    fn routes_and_priorities() {
        let mut h = Harness::new().config(CONFIG);
        assert!(rcpt(&mut h, "a@x.example", "bob@example.org").changes.contains(&Change::SetRoute("lmtp".into())));
        let shop = rcpt(&mut h, "orders@shop.example", "c@far.example");
        assert!(shop.changes.contains(&Change::SetRoute("partner".into())));
        assert!(shop.changes.contains(&Change::SetTag("priority".into(), "transactional".into())));
        assert!(rcpt(&mut h, "a@x.example", "c@far.example").changes.contains(&Change::SetRoute("mx".into())));
    }

    #[test]
    fn rewrites_recipients_and_senders() {
        let mut h = Harness::new().config(CONFIG);
        let d = rcpt(&mut h, "a@x.example", "info+news@example.org");
        assert!(d.changes.contains(&Change::RewriteRecipient("info+news@example.org".into(), "ann@example.org".into())), "{d:?}");
        let d = rcpt(&mut h, "a@x.example", "bob@old.example.org");
        assert!(d.changes.contains(&Change::RewriteRecipient("bob@old.example.org".into(), "bob@example.org".into())));
        let r = h.run::<Router>(&Transcript::new("192.0.2.1").helo("x").mail_from("ann@internal.example"));
        assert!(r.last().unwrap().decision.changes.contains(&Change::SetSender("ann@example.org".into())));
    }

    #[test]
    fn srs_for_forwarded_mail_and_back() {
        let now = 1_790_000_000_000;
        let mut h = Harness::new().config(CONFIG).now_ms(now);
        let r = h.run::<Router>(&Transcript::new("192.0.2.1").helo("x").mail_from("joe@sender.example").rcpt_to("fwd@example.org").data("Subject: x\r\n\r\nx\r\n"));
        let route = r.iter().find(|s| s.stage == Stage::Route).unwrap();
        let Some(Change::SetSender(srs)) = route.decision.changes.first().cloned() else { panic!("no SRS: {route:?}") };
        assert!(srs.starts_with("SRS0=") && srs.ends_with("@srs.example.org"), "{srs}");
        // A bounce to the SRS address goes back to joe.
        let back = rcpt(&mut h, "", &srs);
        assert!(back.changes.contains(&Change::RewriteRecipient(srs.clone(), "joe@sender.example".into())), "{back:?}");
        // A forged one is refused.
        let forged = srs.replacen("SRS0=", "SRS0=x", 1);
        assert!(matches!(rcpt(&mut h, "", &forged).verdict, Verdict::Reject(r) if r.code == 550));
        // And an old one has expired.
        let mut later = Harness::new().config(CONFIG).now_ms(now + 40 * 86_400_000);
        assert!(matches!(rcpt(&mut later, "", &srs).verdict, Verdict::Reject(_)));
    }
}
