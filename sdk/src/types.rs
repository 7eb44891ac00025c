//! Plain Rust types mirroring the WIT `types` interface, used by plugin
//! code and by the native test harness alike.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Connect,
    Helo,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    Route,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connection {
    pub remote_ip: String,
    pub remote_port: u16,
    pub local_addr: String,
    pub listener: String,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    pub reverse_dns: Option<String>,
    pub helo: Option<String>,
    pub auth_user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Envelope {
    pub sender: Option<String>,
    pub sender_params: Vec<Param>,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub stage: Stage,
    pub connection: Connection,
    pub envelope: Envelope,
    pub recipient: Option<String>,
    pub recipient_params: Vec<Param>,
    pub tags: Vec<(String, String)>,
    pub symbols: Vec<(String, f64)>,
    pub size: u64,
    pub headers: Vec<Header>,
}

impl Context {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Sum of the score symbols so far.
    pub fn score(&self) -> f64 {
        self.symbols.iter().map(|(_, s)| s).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Continue,
    Accept,
    Reject(Reply),
    Tempfail(Reply),
    Discard,
    Quarantine(String),
    Disconnect(Reply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    AddHeader(Header),
    RemoveHeader(String),
    ReplaceHeader(Header),
    SetSender(String),
    AddRecipient(String),
    RemoveRecipient(String),
    RewriteRecipient(String, String),
    SetRoute(String),
    AddSymbol(String, f64),
    SetTag(String, String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub changes: Vec<Change>,
}

impl Decision {
    /// No objection: the next step decides.
    pub fn next() -> Decision {
        Decision { verdict: Verdict::Continue, reason: None, changes: Vec::new() }
    }
    pub fn accept() -> Decision {
        Decision { verdict: Verdict::Accept, ..Decision::next() }
    }
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Decision {
        Decision {
            verdict: Verdict::Reject(Reply { code, enhanced: enhanced.into(), text: text.into() }),
            reason: Some(text.into()),
            changes: Vec::new(),
        }
    }
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Decision {
        Decision {
            verdict: Verdict::Tempfail(Reply { code, enhanced: enhanced.into(), text: text.into() }),
            reason: Some(text.into()),
            changes: Vec::new(),
        }
    }
    pub fn discard() -> Decision {
        Decision { verdict: Verdict::Discard, ..Decision::next() }
    }
    pub fn quarantine(reason: &str) -> Decision {
        Decision { verdict: Verdict::Quarantine(reason.into()), reason: Some(reason.into()), changes: Vec::new() }
    }
    pub fn disconnect(code: u16, enhanced: &str, text: &str) -> Decision {
        Decision {
            verdict: Verdict::Disconnect(Reply { code, enhanced: enhanced.into(), text: text.into() }),
            reason: Some(text.into()),
            changes: Vec::new(),
        }
    }
    pub fn because(mut self, reason: impl Into<String>) -> Decision {
        self.reason = Some(reason.into());
        self
    }
    pub fn with(mut self, change: Change) -> Decision {
        self.changes.push(change);
        self
    }
}
