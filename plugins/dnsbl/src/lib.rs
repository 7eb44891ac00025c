//! dnsbl (connect): looks the client address up in DNS blocklists. Each
//! zone has an action: `reject` (554 5.7.1 naming the list, at connect) or
//! `score` (adds the symbol DNSBL_<NAME> with `score`, for the spam
//! scorer); `codes` limits which return addresses count (empty: any
//! 127.0.0.0/8 answer). `skip_networks` are never looked up (your own).
use serde::Deserialize;
use weir_plugin_sdk::util::{ip_in, networks};
use weir_plugin_sdk::*;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum Action {
    Reject,
    #[default]
    Score,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Zone {
    zone: String,
    #[serde(default)]
    action: Action,
    #[serde(default = "one")]
    score: f64,
    #[serde(default)]
    codes: Vec<String>,
    /// The symbol name; default DNSBL_ and the zone's first label.
    #[serde(default)]
    symbol: Option<String>,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct Config {
    zones: Vec<Zone>,
    skip_networks: Vec<String>,
}

#[derive(Default)]
pub struct Dnsbl;

/// The reversed-address label of a query: 1.2.0.192 or the nibbles of IPv6.
fn reversed(ip: &str) -> Option<String> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            Some(format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0]))
        }
        std::net::IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return reversed(&v4.to_string());
            }
            let hex: String = a.octets().iter().map(|b| format!("{b:02x}")).collect();
            Some(hex.chars().rev().map(String::from).collect::<Vec<_>>().join("."))
        }
    }
}

impl Plugin for Dnsbl {
    const STAGES: &'static [Stage] = &[Stage::Connect];
    const STATELESS: bool = true;

    fn connect(&mut self, ctx: &Context) -> Decision {
        let config = match host::cached_config::<Config>() {
            Ok(c) => c,
            Err(e) => return Decision::next().because(format!("dnsbl config: {e}")),
        };
        let ip = &ctx.connection.remote_ip;
        let (skip, _) = networks(&config.skip_networks);
        if ip_in(ip, &skip) {
            return Decision::next().because("client in skip_networks");
        }
        let Some(rev) = reversed(ip) else {
            return Decision::next();
        };
        let mut d = Decision::next();
        let mut listed = Vec::new();
        for z in &config.zones {
            let answers = match host::dns::a(&format!("{rev}.{}", z.zone)) {
                Ok(a) => a,
                // Not listed, or the list did not answer: never block on a DNS failure.
                Err(_) => continue,
            };
            let hit = answers.iter().any(|a| if z.codes.is_empty() { a.starts_with("127.") } else { z.codes.contains(a) });
            if !hit {
                continue;
            }
            listed.push(format!("{} ({})", z.zone, answers.join(",")));
            match z.action {
                Action::Reject => {
                    return Decision::reject(554, "5.7.1", &format!("Service unavailable; client [{ip}] is listed by {}", z.zone))
                        .because(format!("listed by {} as {}", z.zone, answers.join(",")));
                }
                Action::Score => {
                    let sym = z.symbol.clone().unwrap_or_else(|| {
                        format!("DNSBL_{}", z.zone.split('.').next().unwrap_or("LIST").to_ascii_uppercase().replace('-', "_"))
                    });
                    d = d.with(Change::AddSymbol(sym, z.score));
                }
            }
        }
        if listed.is_empty() {
            d
        } else {
            d.because(format!("listed by {}", listed.join(", ")))
        }
    }
}

export_plugin!(Dnsbl);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    const CONFIG: &str = r#"{"zones": [
        {"zone": "block.example", "action": "reject", "codes": ["127.0.0.2"]},
        {"zone": "score.example", "score": 2.5}],
        "skip_networks": ["10.0.0.0/8"]}"#;

    fn connect(h: &mut Harness, ip: &str) -> Decision {
        h.run::<Dnsbl>(&Transcript::new(ip)).remove(0).decision
    }

    #[test]
    fn rejects_or_scores_by_zone() {
        let mut h = Harness::new()
            .config(CONFIG)
            .dns_a("9.113.0.203.block.example", Ok(vec!["127.0.0.2"]))
            .dns_a("8.113.0.203.block.example", Ok(vec!["127.0.0.10"]))
            .dns_a("8.113.0.203.score.example", Ok(vec!["127.0.0.4"]));
        assert!(matches!(connect(&mut h, "203.0.113.9").verdict, Verdict::Reject(r) if r.code == 554 && r.text.contains("block.example")));
        // 127.0.0.10 is not one of the listed codes for block.example.
        let d = connect(&mut h, "203.0.113.8");
        assert_eq!(d.verdict, Verdict::Continue);
        assert!(d.changes.contains(&Change::AddSymbol("DNSBL_SCORE".into(), 2.5)));
        assert!(connect(&mut h, "203.0.113.7").changes.is_empty());
    }

    #[test]
    fn ipv6_and_skipped_networks() {
        assert_eq!(reversed("2001:db8::1").unwrap(), "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2");
        let mut h = Harness::new().config(CONFIG).dns_a("3.2.1.10.block.example", Ok(vec!["127.0.0.2"]));
        assert_eq!(connect(&mut h, "10.1.2.3").verdict, Verdict::Continue);
    }
}
