//! A listener's per-message counters (commands, replies, accepted
//! messages and bytes), kept as handles so that a session does not build
//! their keys again at every command.
//!
//! `metrics::counter!` with labels allocates the labels, hashes the key and
//! looks it up in the recorder's registry each time: about 1000
//! instructions, several times a message. A handle is made the first time
//! it is needed (after the recorder is installed at start-up, which comes
//! before the first session) and reused by every session of the listener.

use std::sync::OnceLock;

use metrics::Counter;

/// The command names `weir_commands_total` is labelled with: smtp-proto's
/// names for what it parses, and "unknown".
const COMMANDS: [&str; 19] = [
    "EHLO", "HELO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "AUTH", "NOOP", "VRFY", "EXPN", "HELP", "ETRN", "ATRN", "BURL", "STARTTLS",
    "RSET", "QUIT", "unknown",
];

/// Reply codes with a handle of their own: every code a reply can have.
const FIRST_CODE: u16 = 200;
const CODES: usize = 400;

pub struct ListenerCounters {
    listener: String,
    commands: [OnceLock<Counter>; COMMANDS.len()],
    replies: Box<[OnceLock<Counter>]>,
    accepted: OnceLock<Counter>,
    bytes: OnceLock<Counter>,
}

impl ListenerCounters {
    pub fn new(listener: &str) -> ListenerCounters {
        ListenerCounters {
            listener: listener.to_string(),
            commands: std::array::from_fn(|_| OnceLock::new()),
            replies: (0..CODES).map(|_| OnceLock::new()).collect(),
            accepted: OnceLock::new(),
            bytes: OnceLock::new(),
        }
    }

    /// Counts a command by its name (`Request::name`, or "unknown").
    pub fn command(&self, name: &'static str) {
        let make = || metrics::counter!("weir_commands_total", "listener" => self.listener.clone(), "command" => name);
        match COMMANDS.iter().position(|c| *c == name).and_then(|i| self.commands.get(i)) {
            Some(cell) => cell.get_or_init(make).increment(1),
            None => make().increment(1),
        }
    }

    /// Counts a reply by its code.
    pub fn reply(&self, code: u16) {
        let make = || metrics::counter!("weir_replies_total", "listener" => self.listener.clone(), "code" => code.to_string());
        match code.checked_sub(FIRST_CODE).and_then(|i| self.replies.get(usize::from(i))) {
            Some(cell) => cell.get_or_init(make).increment(1),
            None => make().increment(1),
        }
    }

    /// Counts a message accepted into the queue, and its bytes.
    pub fn accepted(&self, bytes: u64) {
        self.accepted
            .get_or_init(|| metrics::counter!("weir_messages_accepted_total", "listener" => self.listener.clone()))
            .increment(1);
        self.bytes
            .get_or_init(|| metrics::counter!("weir_bytes_accepted_total", "listener" => self.listener.clone()))
            .increment(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn handles_count_under_the_same_labels_as_the_macros() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let c = ListenerCounters::new("mx");
            for _ in 0..3 {
                c.command("MAIL");
            }
            c.command("unknown");
            c.reply(250);
            c.reply(250);
            c.reply(554);
            // Out of the cached range: counted all the same.
            c.reply(199);
            c.reply(600);
            c.accepted(100);
            c.accepted(20);
        });
        let text = handle.render();
        for line in [
            r#"weir_commands_total{listener="mx",command="MAIL"} 3"#,
            r#"weir_commands_total{listener="mx",command="unknown"} 1"#,
            r#"weir_replies_total{listener="mx",code="250"} 2"#,
            r#"weir_replies_total{listener="mx",code="554"} 1"#,
            r#"weir_replies_total{listener="mx",code="199"} 1"#,
            r#"weir_replies_total{listener="mx",code="600"} 1"#,
            r#"weir_messages_accepted_total{listener="mx"} 2"#,
            r#"weir_bytes_accepted_total{listener="mx"} 120"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
