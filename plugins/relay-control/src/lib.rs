//! relay-control (rcpt-to): Weir is never an open relay. A recipient in
//! one of the local domains is always taken; any other recipient only from
//! an authenticated client or a client in a relay network. Everything else
//! gets 554 5.7.1 at RCPT.
//!
//! Config: `local_domains` (".example.com" also matches subdomains),
//! `relay_networks` (CIDRs), `allow_authenticated` (default true).
use serde::Deserialize;
use weir_plugin_sdk::util::{domain_in, domain_of, ip_in, networks, Network};
use weir_plugin_sdk::*;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    local_domains: Vec<String>,
    relay_networks: Vec<String>,
    allow_authenticated: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { local_domains: Vec::new(), relay_networks: Vec::new(), allow_authenticated: true }
    }
}

struct Rules {
    config: Config,
    networks: Vec<Network>,
}

#[derive(Default)]
pub struct RelayControl;

/// The step's config with its networks parsed, once per instance.
fn rules() -> Result<std::rc::Rc<Rules>, String> {
    host::prepared_config(|| {
        let config: Config = host::config()?;
        let (networks, bad) = networks(&config.relay_networks);
        if let Some(e) = bad.first() {
            return Err(format!("relay_networks: {e}"));
        }
        Ok(Rules { config, networks })
    })
}

impl Plugin for RelayControl {
    const STAGES: &'static [Stage] = &[Stage::RcptTo];
    const STATELESS: bool = true;

    fn rcpt_to(&mut self, ctx: &Context) -> Decision {
        let rules = match rules() {
            Ok(r) => r,
            // A broken config must not open the relay: refuse for now.
            Err(e) => return Decision::tempfail(451, "4.3.5", "Relay rules are misconfigured").because(e),
        };
        let rcpt = ctx.recipient.clone().unwrap_or_default();
        let domain = domain_of(&rcpt);
        if domain_in(&domain, &rules.config.local_domains) {
            return Decision::next().because(format!("{domain} is a local domain"));
        }
        if rules.config.allow_authenticated && ctx.connection.auth_user.is_some() {
            return Decision::next().because("authenticated client may relay");
        }
        if ip_in(&ctx.connection.remote_ip, &rules.networks) {
            return Decision::next().because("client is in a relay network");
        }
        Decision::reject(554, "5.7.1", &format!("Relay access denied: <{rcpt}> is not a local address; authenticate to send elsewhere"))
            .because(format!("relay to {domain} refused for {}", ctx.connection.remote_ip))
    }
}

export_plugin!(RelayControl);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    const CONFIG: &str = r#"{"local_domains":["example.org",".example.net"],"relay_networks":["10.0.0.0/8"]}"#;

    fn verdict(t: Transcript) -> Verdict {
        let mut h = Harness::new().config(CONFIG);
        h.run::<RelayControl>(&t).last().map(|r| r.decision.verdict.clone()).unwrap_or(Verdict::Continue)
    }

    #[test]
    fn local_domains_are_accepted_from_anyone() {
        let t = Transcript::new("203.0.113.9").helo("x").mail_from("a@remote.example").rcpt_to("bob@Example.ORG");
        assert_eq!(verdict(t), Verdict::Continue);
        let t = Transcript::new("203.0.113.9").helo("x").mail_from("a@remote.example").rcpt_to("bob@mail.example.net");
        assert_eq!(verdict(t), Verdict::Continue);
    }

    #[test]
    fn relay_needs_auth_or_a_listed_network() {
        let open = Transcript::new("203.0.113.9").helo("x").mail_from("a@remote.example").rcpt_to("c@elsewhere.example");
        assert!(matches!(verdict(open), Verdict::Reject(r) if r.code == 554 && r.enhanced == "5.7.1"));
        let authed = Transcript::new("203.0.113.9").helo("x").auth("ann").mail_from("a@example.org").rcpt_to("c@elsewhere.example");
        assert_eq!(verdict(authed), Verdict::Continue);
        let inside = Transcript::new("10.1.2.3").helo("x").mail_from("a@example.org").rcpt_to("c@elsewhere.example");
        assert_eq!(verdict(inside), Verdict::Continue);
    }

    #[test]
    fn a_bad_network_fails_closed() {
        let mut h = Harness::new().config(r#"{"relay_networks":["10.0.0.0/99"]}"#);
        let r = h.run::<RelayControl>(&Transcript::new("10.1.2.3").helo("x").mail_from("a@b.example").rcpt_to("c@d.example"));
        assert!(matches!(r.last().unwrap().decision.verdict, Verdict::Tempfail(_)));
    }
}
