//! Test pipeline plugin (rcpt_to): tempfails recipients whose local part is
//! "later", routes routed.test to the "special" route, and scores each
//! recipient.
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct RcptGuard {
    seen: u32,
}

impl Plugin for RcptGuard {
    const STAGES: &'static [Stage] = &[Stage::RcptTo];
    fn rcpt_to(&mut self, ctx: &Context) -> Decision {
        let rcpt = ctx.recipient.clone().unwrap_or_default();
        self.seen += 1;
        if rcpt.starts_with("later@") {
            return Decision::tempfail(451, "4.7.1", "Greylisted, try again later");
        }
        let mut d = Decision::next().with(Change::AddSymbol(format!("RCPT_{}", self.seen), 0.5));
        if rcpt.ends_with("@routed.test") {
            d = d.with(Change::SetRoute("special".into()));
        }
        d
    }
}

export_plugin!(RcptGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    #[test]
    fn greylists_and_routes() {
        let mut h = Harness::new();
        let r = h.run::<RcptGuard>(
            &Transcript::new("192.0.2.1").helo("x").mail_from("a@b").rcpt_to("later@x.test").rcpt_to("u@routed.test"),
        );
        assert!(matches!(r[3].decision.verdict, Verdict::Tempfail(_)));
        assert!(r[4].decision.changes.contains(&Change::SetRoute("special".into())));
    }
}
