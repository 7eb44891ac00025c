//! greylist (rcpt-to): the first attempt from an unknown (client network,
//! sender, recipient) triple gets 451 4.7.1; a retry after `delay_seconds`
//! and within `pass_window_seconds` passes, and the triple is then known
//! for `known_seconds`. Client networks are /24 (IPv4) and /64 (IPv6) so
//! that a sender's pool of outbound servers counts as one. Authenticated
//! clients and `skip_networks` are never greylisted. State is in the kv
//! store (grants: kv, clock).
use serde::Deserialize;
use weir_plugin_sdk::util::{ip_in, networks};
use weir_plugin_sdk::*;

#[derive(Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    delay_seconds: u64,
    pass_window_seconds: u64,
    known_seconds: u64,
    skip_networks: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config { delay_seconds: 300, pass_window_seconds: 4 * 3600, known_seconds: 36 * 86400, skip_networks: Vec::new() }
    }
}

#[derive(Default)]
pub struct Greylist;

fn network(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => ip.to_string(),
    }
}

fn ttl(secs: u64) -> Option<u32> {
    Some(u32::try_from(secs).unwrap_or(u32::MAX))
}

impl Plugin for Greylist {
    const STAGES: &'static [Stage] = &[Stage::RcptTo];
    const STATELESS: bool = true;

    fn rcpt_to(&mut self, ctx: &Context) -> Decision {
        let c = match host::cached_config::<Config>() {
            Ok(c) => c,
            Err(e) => return Decision::next().because(format!("greylist config: {e}")),
        };
        if ctx.connection.auth_user.is_some() {
            return Decision::next();
        }
        let (skip, _) = networks(&c.skip_networks);
        if ip_in(&ctx.connection.remote_ip, &skip) {
            return Decision::next();
        }
        let triple = format!(
            "{}|{}|{}",
            network(&ctx.connection.remote_ip),
            ctx.envelope.sender.clone().unwrap_or_default().to_ascii_lowercase(),
            ctx.recipient.clone().unwrap_or_default().to_ascii_lowercase()
        );
        let known = format!("known:{triple}");
        if host::kv::get(&known).is_some() {
            return Decision::next().because("greylist: known triple");
        }
        let now = host::now_ms() / 1000;
        let first_key = format!("first:{triple}");
        let first = host::kv::get(&first_key).and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok());
        match first {
            Some(t) if now >= t + c.delay_seconds && now <= t + c.delay_seconds + c.pass_window_seconds => {
                host::kv::set(&known, b"1", ttl(c.known_seconds));
                host::kv::delete(&first_key);
                Decision::next().because(format!("greylist: retried after {} s", now - t))
            }
            Some(t) if now < t + c.delay_seconds => {
                let wait = t + c.delay_seconds - now;
                Decision::tempfail(451, "4.7.1", &format!("Greylisted: please try again in {wait} seconds")).because("greylist: retried too early")
            }
            _ => {
                host::kv::set(&first_key, now.to_string().as_bytes(), ttl(c.delay_seconds + c.pass_window_seconds));
                Decision::tempfail(451, "4.7.1", &format!("Greylisted: please try again in {} seconds", c.delay_seconds))
                    .because("greylist: first attempt")
            }
        }
    }
}

export_plugin!(Greylist);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    fn attempt(kv: &std::collections::HashMap<String, Vec<u8>>, now_s: u64, ip: &str) -> (Verdict, std::collections::HashMap<String, Vec<u8>>) {
        let mut h = Harness::new().config(r#"{"delay_seconds": 60, "pass_window_seconds": 600}"#).now_ms(now_s * 1000);
        for (k, v) in kv {
            h = h.kv_entry(k, v);
        }
        let r = h.run::<Greylist>(&Transcript::new(ip).helo("x").mail_from("a@sender.example").rcpt_to("b@example.org"));
        (r.last().unwrap().decision.verdict.clone(), h.kv())
    }

    #[test]
    fn first_try_waits_then_a_retry_passes() {
        let (v, kv) = attempt(&Default::default(), 1000, "203.0.113.9");
        assert!(matches!(v, Verdict::Tempfail(ref r) if r.code == 451 && r.enhanced == "4.7.1"));
        let (v, kv) = attempt(&kv, 1030, "203.0.113.9");
        assert!(matches!(v, Verdict::Tempfail(_)), "too early");
        // Another server of the same /24 retries after the delay: pass.
        let (v, kv) = attempt(&kv, 1070, "203.0.113.20");
        assert_eq!(v, Verdict::Continue);
        let (v, _) = attempt(&kv, 50_000, "203.0.113.9");
        assert_eq!(v, Verdict::Continue, "known triples pass");
    }

    #[test]
    fn a_retry_after_the_window_starts_over() {
        let (_, kv) = attempt(&Default::default(), 1000, "203.0.113.9");
        let (v, _) = attempt(&kv, 1000 + 60 + 601, "203.0.113.9");
        assert!(matches!(v, Verdict::Tempfail(_)));
    }
}
