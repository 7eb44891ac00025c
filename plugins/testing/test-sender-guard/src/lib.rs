//! Test pipeline plugin (auth, mail_from): refuses listed users after AUTH
//! and listed senders at MAIL FROM; logs what it does.
use serde::Deserialize;
use weir_plugin_sdk::*;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    blocked_users: Vec<String>,
    blocked_senders: Vec<String>,
}

/// The config is read once per session (instance), not per call.
#[derive(Default)]
pub struct SenderGuard;

impl SenderGuard {
    fn config(&self) -> std::rc::Rc<Config> {
        host::cached_config::<Config>().unwrap_or_default()
    }
}

impl Plugin for SenderGuard {
    const STAGES: &'static [Stage] = &[Stage::Auth, Stage::MailFrom];
    const STATELESS: bool = true;
    fn auth(&mut self, ctx: &Context) -> Decision {
        let user = ctx.connection.auth_user.clone().unwrap_or_default();
        if self.config().blocked_users.contains(&user) {
            host::log(host::Level::Warn, &format!("blocked user {user} authenticated"));
            return Decision::reject(535, "5.7.8", "This account is suspended");
        }
        Decision::next()
    }
    fn mail_from(&mut self, ctx: &Context) -> Decision {
        let sender = ctx.envelope.sender.clone().unwrap_or_default();
        if self.config().blocked_senders.iter().any(|s| s.eq_ignore_ascii_case(&sender)) {
            return Decision::reject(553, "5.7.1", "You may not send as that address");
        }
        Decision::next()
    }
}

export_plugin!(SenderGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    #[test]
    fn refuses_blocked_sender() {
        let mut h = Harness::new().config(r#"{"blocked_senders":["spam@example.org"]}"#);
        let r = h.run::<SenderGuard>(&Transcript::new("192.0.2.1").helo("x").mail_from("spam@example.org"));
        let last = r.last().unwrap();
        assert_eq!(last.stage, Stage::MailFrom);
        assert!(matches!(last.decision.verdict, Verdict::Reject(ref x) if x.code == 553));
    }
}
