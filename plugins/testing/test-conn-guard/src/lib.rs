//! Test pipeline plugin (connect, helo): refuses listed client IPs and HELO
//! names, and tags the session with the client address.
use serde::Deserialize;
use weir_plugin_sdk::*;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    deny_ips: Vec<String>,
    deny_helos: Vec<String>,
}

/// The config is read once per session (instance), not per call.
#[derive(Default)]
pub struct ConnGuard;

impl ConnGuard {
    fn config(&self) -> std::rc::Rc<Config> {
        host::cached_config::<Config>().unwrap_or_default()
    }
}

impl Plugin for ConnGuard {
    const STAGES: &'static [Stage] = &[Stage::Connect, Stage::Helo];
    const STATELESS: bool = true;
    fn connect(&mut self, ctx: &Context) -> Decision {
        if self.config().deny_ips.contains(&ctx.connection.remote_ip) {
            return Decision::reject(554, "5.7.1", "Your address is not welcome here");
        }
        Decision::next().with(Change::SetTag("client".into(), ctx.connection.remote_ip.clone()))
    }
    fn helo(&mut self, ctx: &Context) -> Decision {
        let helo = ctx.connection.helo.clone().unwrap_or_default();
        if self.config().deny_helos.iter().any(|h| h.eq_ignore_ascii_case(&helo)) {
            return Decision::reject(550, "5.7.1", "That HELO name is refused");
        }
        Decision::next()
    }
}

export_plugin!(ConnGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    #[test]
    fn refuses_listed_ip_and_helo() {
        let mut h = Harness::new().config(r#"{"deny_ips":["192.0.2.66"],"deny_helos":["bad.example"]}"#);
        let r = h.run::<ConnGuard>(&Transcript::new("192.0.2.66").helo("ok.example"));
        assert_eq!(r.len(), 1);
        assert!(matches!(r[0].decision.verdict, Verdict::Reject(ref x) if x.code == 554));
        let r = h.run::<ConnGuard>(&Transcript::new("192.0.2.1").helo("bad.example"));
        assert!(matches!(r[1].decision.verdict, Verdict::Reject(ref x) if x.code == 550));
        assert_eq!(r[0].decision.changes, vec![Change::SetTag("client".into(), "192.0.2.1".into())]);
    }
}
