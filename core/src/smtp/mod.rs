//! The SMTP receiver: replies, the connection and its buffers, the DATA
//! decoder and the session state machine. `ListenerCtx` is what every
//! session of one listener shares.

pub mod conn;
pub mod counters;
pub mod data;
pub mod reply;
pub mod session;
pub mod threads;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio_rustls::TlsAcceptor;

use crate::auth::Users;
use crate::config::{ListenerConfig, RelayConfig};
use crate::queue::Queue;

/// The built-in relay rule (see `config::RelayConfig`).
#[derive(Debug, Clone, Default)]
pub struct RelayRules {
    local_domains: HashSet<String>,
    networks: Vec<IpNet>,
}

impl RelayRules {
    pub fn from_config(c: &RelayConfig) -> RelayRules {
        RelayRules {
            local_domains: c.local_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            networks: c.networks.clone(),
        }
    }

    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains.contains(&domain.to_ascii_lowercase())
    }

    pub fn network_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// What every session on one listener shares.
pub struct ListenerCtx {
    pub name: String,
    pub cfg: ListenerConfig,
    pub hostname: String,
    /// Present when the listener does STARTTLS or implicit TLS.
    pub tls: Option<TlsAcceptor>,
    pub users: Arc<Users>,
    pub relay: Arc<RelayRules>,
    pub queue: Arc<Queue>,
    /// Priority class given to messages accepted here.
    pub priority: crate::config::Priority,
    /// Wakes the delivery scheduler when a message was queued.
    pub queued: Arc<tokio::sync::Notify>,
    /// The live policy; a session keeps the one it started with.
    pub policy: Arc<crate::policy::PolicyHandle>,
    pub dns: Arc<crate::dns::Dns>,
    /// The listener's per-message counters.
    pub counters: counters::ListenerCounters,
}
