//! What the queue stores about a message: the envelope with its ESMTP and
//! DSN parameters (RFC 3461), the facts of the session that handed it over,
//! and per-recipient state that the delivery scheduler updates.

use serde::{Deserialize, Serialize};

use crate::config::Priority;
use crate::smtp::conn::TlsInfo;

/// RET= of MAIL FROM (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnRet {
    Full,
    Hdrs,
}

/// BODY= of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    #[default]
    #[serde(rename = "7bit")]
    SevenBit,
    #[serde(rename = "8bitmime")]
    EightBitMime,
}

/// NOTIFY= of RCPT TO (RFC 3461 §4.1). Empty means the parameter was absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub never: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub success: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failure: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay: bool,
}

impl Notify {
    pub fn from_flags(flags: u64) -> Notify {
        Notify {
            never: flags & smtp_proto::RCPT_NOTIFY_NEVER != 0,
            success: flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
            failure: flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
            delay: flags & smtp_proto::RCPT_NOTIFY_DELAY != 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not delivered yet; tried again at the message's next attempt.
    #[default]
    Pending,
    Delivered,
    /// Failed for good (5xx, or expired); a DSN was queued if asked for.
    Failed,
}

impl RecipientStatus {
    pub fn is_done(self) -> bool {
        self != RecipientStatus::Pending
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    #[serde(default)]
    pub notify: Notify,
    #[serde(default)]
    pub status: RecipientStatus,
    /// Route named by policy; None: the routing table decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The last reply or error for this recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// The host that gave `last_reply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// A DSN about this recipient's final outcome was queued (or not wanted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dsn_done: bool,
    /// Delivered by relaying to a server without DSN support.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
}

impl Recipient {
    pub fn new(address: String) -> Recipient {
        Recipient {
            address,
            orcpt: None,
            notify: Notify::default(),
            status: RecipientStatus::Pending,
            route: None,
            last_reply: None,
            remote: None,
            dsn_done: false,
            relayed: false,
        }
    }

    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// One delivery attempt to one destination, as `weir queue show` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix time (seconds).
    pub at: i64,
    pub route: String,
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// delivered | deferred | failed (per recipient outcome summary)
    pub result: String,
    pub reply: String,
    pub recipients: Vec<String>,
}

/// Attempts kept per message (older ones are dropped).
pub const MAX_HISTORY: usize = 50;

/// Facts about the SMTP session the message arrived in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    pub listener: String,
    pub client_ip: String,
    pub client_port: u16,
    pub local_addr: String,
    pub helo: String,
    pub esmtp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Waiting for its next delivery attempt.
    #[default]
    Queued,
    /// Held by an operator; not scheduled.
    Held,
}

/// The queue's record of one message (stored as JSON in the `meta` column
/// family; the bytes live in `body`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub id: String,
    /// Unix time (seconds) when the 250 was given.
    pub received_at: i64,
    /// The reverse-path; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    #[serde(default)]
    pub body_type: BodyType,
    #[serde(default)]
    pub smtputf8: bool,
    /// SIZE= declared by the client, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_ret: Option<DsnRet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_envid: Option<String>,
    pub session: SessionFacts,
    /// Octets of the stored message (Received: header included).
    pub size: u64,
    #[serde(default)]
    pub state: MessageState,
    /// Unix time in milliseconds of the next delivery attempt (the key of
    /// the due-time index).
    pub next_attempt_ms: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    /// A delay notice was already sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_notified: bool,
    /// Every policy step's decision for this message (and its session):
    /// stored as arrays, shown as objects ([`MessageMeta::to_json`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty", serialize_with = "stored_trail::serialize")]
    pub decisions: Vec<crate::policy::DecisionRecord>,
    /// Tags set by policy steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// Score symbols added by policy steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<(String, f64)>,
    /// Why policy quarantined it (the message is held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
}

impl MessageMeta {
    /// The record as operators read it (`weir queue show --json`, `queue
    /// list --json`): as stored, but each decision an object with its
    /// field names.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if let Some(d) = v.get_mut("decisions") {
            *d = serde_json::to_value(&self.decisions)?;
        }
        Ok(v)
    }

    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RecipientStatus::Pending)
    }

    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_done())
    }

    pub fn record(&mut self, a: Attempt) {
        self.history.push(a);
        if self.history.len() > MAX_HISTORY {
            let excess = self.history.len() - MAX_HISTORY;
            self.history.drain(..excess);
        }
    }
}

/// The decision trail as the queue stores it: each record an array,
/// `[plugin, stage, verdict, micros, reason, recipient]`, without the
/// trailing fields a record lacks (a reason of null when only the recipient
/// is there). Six records a message are the most of a pipeline's addition
/// to the stored record: as objects, their field names were most of their
/// bytes and of serde_json's escaping work, at every message. Read back by
/// `DecisionRecord`'s derived `Deserialize`, which takes the array in field
/// order as well as the object form of older records.
mod stored_trail {
    use serde::ser::{SerializeSeq, SerializeTuple};
    use serde::{Serialize, Serializer};

    use crate::policy::DecisionRecord;

    pub fn serialize<S: Serializer>(trail: &[DecisionRecord], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(trail.len()))?;
        for d in trail {
            seq.serialize_element(&Stored(d))?;
        }
        seq.end()
    }

    struct Stored<'a>(&'a DecisionRecord);

    impl Serialize for Stored<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let d = self.0;
            let len = if d.recipient.is_some() { 6 } else if d.reason.is_some() { 5 } else { 4 };
            let mut t = s.serialize_tuple(len)?;
            t.serialize_element(&*d.plugin)?;
            t.serialize_element(&d.stage)?;
            t.serialize_element(&d.verdict)?;
            t.serialize_element(&d.micros)?;
            if len > 4 {
                t.serialize_element(&d.reason)?;
            }
            if len > 5 {
                t.serialize_element(&d.recipient)?;
            }
            t.end()
        }
    }
}
