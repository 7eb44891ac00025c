//! What the queue stores about a message: the envelope with its ESMTP and
//! DSN parameters (RFC 3461), the facts of the session that handed it over,
//! and per-recipient state that the delivery scheduler updates.

use serde::{Deserialize, Serialize};

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
    #[default]
    Pending,
    Delivered,
    Failed,
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
}

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}
