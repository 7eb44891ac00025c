//! Test pipeline plugin (route): quarantines or discards by subject, and
//! records the route decision.
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Router;

impl Plugin for Router {
    const STAGES: &'static [Stage] = &[Stage::Route];
    const STATELESS: bool = true;
    fn route(&mut self, ctx: &Context) -> Decision {
        let subject = ctx.header("Subject").unwrap_or("");
        if subject.contains("QUARANTINE") {
            return Decision::quarantine("subject asked for it");
        }
        if subject.contains("DISCARD") {
            return Decision::discard().because("subject asked for it");
        }
        if ctx.tag("stamped") != Some("yes") {
            return Decision::tempfail(451, "4.3.0", "The stamp step did not run");
        }
        Decision::next().because("default route")
    }
}

export_plugin!(Router);
