//! Delivery status notifications (RFC 3464): a multipart/report with a
//! human-readable part, a message/delivery-status part (per-message and
//! per-recipient fields), and the original message or its headers as RET
//! asks. Sent from the null sender, so they are never bounced themselves.

use crate::queue::message::{DsnRet, MessageMeta, Recipient};

/// What happened to a recipient, as the DSN's Action field says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient's line in the report.
pub struct ReportEntry<'a> {
    pub recipient: &'a Recipient,
    pub action: Action,
    /// RFC 3463 status code, e.g. "5.1.1".
    pub status: String,
}

/// Above this size, RET absent means headers only.
const FULL_RETURN_LIMIT: usize = 256 * 1024;

fn header_end(body: &[u8]) -> usize {
    body.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(body.len())
}

/// Builds the DSN message (headers and body, CRLF line endings).
pub fn build(hostname: &str, meta: &MessageMeta, original: &[u8], entries: &[ReportEntry<'_>], dsn_id: &str) -> Vec<u8> {
    let kind = entries.first().map(|e| e.action).unwrap_or(Action::Failed);
    let (subject, intro) = match kind {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.\r\nIt was not delivered to the addresses below; the reason follows each one.",
        ),
        Action::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered yet to the recipients below.\r\nDelivery is being retried; you do not need to send it again.",
        ),
        Action::Delivered | Action::Relayed => (
            "Successful Mail Delivery Report",
            "Your message was delivered to the recipients below, as you asked to be told.",
        ),
    };
    let boundary = format!("{dsn_id}/{hostname}");
    let now = chrono::Utc::now().to_rfc2822();
    let arrival = chrono::DateTime::from_timestamp(meta.received_at, 0)
        .map(|d| d.to_rfc2822())
        .unwrap_or_else(|| now.clone());
    let mut m = String::new();
    m.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    m.push_str(&format!("To: <{}>\r\n", meta.sender));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {now}\r\n"));
    m.push_str(&format!("Message-ID: <{dsn_id}@{hostname}>\r\n"));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");
    // Part 1: for people.
    m.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    m.push_str(&format!("This is the mail system at host {hostname}.\r\n\r\n{intro}\r\n\r\n"));
    for e in entries {
        let why = e.recipient.last_reply.as_deref().unwrap_or("no further detail");
        match &e.recipient.remote {
            Some(remote) => m.push_str(&format!("<{}>: host {remote} said: {why}\r\n", e.recipient.address)),
            None => m.push_str(&format!("<{}>: {why}\r\n", e.recipient.address)),
        }
    }
    // Part 2: for machines.
    m.push_str(&format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Weir-Queue-ID: {}\r\n", meta.id));
    if let Some(envid) = &meta.dsn_envid {
        m.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    m.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for e in entries {
        m.push_str("\r\n");
        if let Some(o) = &e.recipient.orcpt {
            let o = if o.contains(';') { o.clone() } else { format!("rfc822;{o}") };
            m.push_str(&format!("Original-Recipient: {o}\r\n"));
        }
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", e.recipient.address));
        m.push_str(&format!("Action: {}\r\n", e.action.as_str()));
        m.push_str(&format!("Status: {}\r\n", e.status));
        if let Some(remote) = &e.recipient.remote {
            let host = remote.split_whitespace().next().unwrap_or(remote);
            m.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        if let Some(reply) = &e.recipient.last_reply {
            if reply.len() >= 3 && reply.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                m.push_str(&format!("Diagnostic-Code: smtp; {reply}\r\n"));
            } else {
                m.push_str(&format!("Diagnostic-Code: X-Weir; {reply}\r\n"));
            }
        }
        m.push_str(&format!("Last-Attempt-Date: {now}\r\n"));
    }
    // Part 3: the original, whole or headers only.
    let full = match meta.dsn_ret {
        Some(DsnRet::Full) => true,
        Some(DsnRet::Hdrs) => false,
        None => original.len() <= FULL_RETURN_LIMIT && kind == Action::Failed,
    };
    let mut out = m.into_bytes();
    if full {
        out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes());
        out.extend_from_slice(original);
    } else {
        out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes());
        out.extend_from_slice(&original[..header_end(original)]);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// RFC 3461 §4.1: which outcomes the sender asked to hear about. Without
/// NOTIFY, failures and delays are reported.
pub fn wants(r: &Recipient, action: Action) -> bool {
    let n = &r.notify;
    if n.never {
        return false;
    }
    let unset = !(n.success || n.failure || n.delay);
    match action {
        Action::Failed => n.failure || unset,
        Action::Delayed => n.delay || unset,
        Action::Delivered | Action::Relayed => n.success,
    }
}

/// The status code for a recipient from its last reply.
pub fn status_of(reply: Option<&str>, permanent: bool) -> String {
    let from_reply = reply.and_then(|r| {
        let word = r.split_whitespace().nth(1)?;
        let parts: Vec<&str> = word.split('.').collect();
        (parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
            .then(|| word.to_string())
    });
    match from_reply {
        // 4.4.7 (delivery time expired) is how an expired message is reported.
        Some(s) if (permanent && (s.starts_with('5') || s == "4.4.7")) || (!permanent && s.starts_with('4')) => s,
        _ if permanent => "5.0.0".into(),
        _ => "4.0.0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::message::*;

    fn meta() -> MessageMeta {
        MessageMeta {
            id: "0123456789ABCDEF0123".into(),
            received_at: 1_700_000_000,
            sender: "alice@example.org".into(),
            recipients: vec![],
            body_type: BodyType::SevenBit,
            smtputf8: false,
            declared_size: None,
            dsn_ret: Some(DsnRet::Hdrs),
            dsn_envid: Some("env-1".into()),
            session: SessionFacts {
                listener: "mx".into(),
                client_ip: "127.0.0.1".into(),
                client_port: 1,
                local_addr: "x".into(),
                helo: "h".into(),
                esmtp: true,
                tls: None,
                auth_user: None,
            },
            size: 0,
            state: MessageState::Queued,
            next_attempt_ms: 0,
            attempts: 1,
            priority: Default::default(),
            history: vec![],
            delay_notified: false,
            decisions: Vec::new(),
            tags: Vec::new(),
            symbols: Vec::new(),
            quarantine: None,
        }
    }

    #[test]
    fn failure_report_structure() {
        let mut r = Recipient::new("bob@example.net".into());
        r.orcpt = Some("rfc822;bob@example.net".into());
        r.last_reply = Some("550 5.1.1 no such user".into());
        r.remote = Some("mx.example.net [192.0.2.1:25]".into());
        let original = b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nsecret body\r\n";
        let e = ReportEntry { recipient: &r, action: Action::Failed, status: status_of(r.last_reply.as_deref(), true) };
        let dsn = String::from_utf8(build("mx.test", &meta(), original, &[e], "DSNID")).unwrap();
        assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(dsn.contains("Final-Recipient: rfc822; bob@example.net\r\n"));
        assert!(dsn.contains("Original-Recipient: rfc822;bob@example.net\r\n"));
        assert!(dsn.contains("Action: failed\r\nStatus: 5.1.1\r\n"));
        assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(dsn.contains("Remote-MTA: dns; mx.example.net\r\n"));
        assert!(dsn.contains("Original-Envelope-Id: env-1\r\n"));
        assert!(dsn.contains("Content-Type: text/rfc822-headers"));
        assert!(dsn.contains("Subject: hello"));
        assert!(!dsn.contains("secret body"), "RET=HDRS returns headers only");
        assert!(dsn.ends_with("--DSNID/mx.test--\r\n"));
    }

    #[test]
    fn notify_rules() {
        let mut r = Recipient::new("a@b".into());
        assert!(wants(&r, Action::Failed) && wants(&r, Action::Delayed) && !wants(&r, Action::Delivered));
        r.notify.never = true;
        assert!(!wants(&r, Action::Failed));
        r.notify = Notify { success: true, ..Default::default() };
        assert!(!wants(&r, Action::Failed) && wants(&r, Action::Delivered));
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_of(Some("550 5.7.1 denied"), true), "5.7.1");
        assert_eq!(status_of(Some("550 denied"), true), "5.0.0");
        assert_eq!(status_of(Some("451 4.3.0 later"), false), "4.3.0");
        assert_eq!(status_of(None, false), "4.0.0");
    }
}
