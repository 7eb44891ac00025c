//! Test pipeline plugin (data): reads the body in chunks, counts messages
//! in its kv store, and stamps headers that show what earlier steps did.
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Stamp;

impl Plugin for Stamp {
    const STAGES: &'static [Stage] = &[Stage::Data];
    const STATELESS: bool = true;
    fn data(&mut self, ctx: &Context) -> Decision {
        let body = host::body::read_all();
        // The SDK counts sixteen bytes a step; a byte loop costs about 0.5 ns a byte in wasm.
        let lines = util::count_byte(&body, b'\n') + 1;
        let n = host::kv::incr("messages", 1, Some(3600));
        let client = ctx.tag("client").unwrap_or("none").to_string();
        let size = ctx.envelope.sender_params.iter().find(|p| p.name == "SIZE").and_then(|p| p.value.as_deref()).unwrap_or("none");
        let mut d = Decision::next()
            .because(format!("stamped message {n}"))
            .with(Change::AddHeader(Header {
                name: "X-Weir-Stamp".into(),
                value: format!(
                    "n={n} lines={lines} client={client} score={} size={size} helo={}",
                    ctx.score(),
                    ctx.connection.helo.as_deref().unwrap_or("none")
                ),
            }))
            .with(Change::RemoveHeader("X-Internal".into()))
            .with(Change::SetTag("stamped".into(), "yes".into()));
        if let Some(s) = ctx.header("Subject") {
            if s.contains("[tag me]") {
                d = d.with(Change::ReplaceHeader(Header { name: "Subject".into(), value: s.replace("[tag me]", "[tagged]") }));
            }
        }
        d
    }
}

export_plugin!(Stamp);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, Transcript};

    #[test]
    fn stamps_and_counts() {
        let mut h = Harness::new();
        let t = Transcript::new("192.0.2.1").helo("x").mail_from("a@b").rcpt_to("c@d").data("Subject: [tag me] hi\r\n\r\nline\r\n");
        let r = h.run::<Stamp>(&t);
        let data = r.iter().find(|s| s.stage == Stage::Data).unwrap();
        assert!(data.decision.changes.iter().any(|c| matches!(c, Change::AddHeader(h) if h.value.starts_with("n=1 lines=4 "))));
        assert!(data.decision.changes.contains(&Change::ReplaceHeader(Header { name: "Subject".into(), value: "[tagged] hi".into() })));
        h.run::<Stamp>(&t);
        assert_eq!(h.kv().get("messages").map(|v| v.clone()), Some(b"2".to_vec()));
    }
}
