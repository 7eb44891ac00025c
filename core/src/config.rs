//! The configuration file: its types, loading with `file:line:column` errors,
//! `-o dotted.key=value` overrides, and the checks that need more than one
//! field. Unknown keys are errors everywhere (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// The embedded default configuration (`policies/default.yaml`), used by
/// `weir serve` when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../policies/default.yaml");
/// How the embedded default names itself in error messages.
pub const EMBEDDED_NAME: &str = "<embedded policies/default.yaml>";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// Certificate and key used by every listener that does not name its own.
    /// When absent, a self-signed pair is generated under the data directory.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Named routes (how mail leaves); see docs/configuration.md.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    /// Policy plugins, declared once (see docs/plugins.md).
    #[serde(default)]
    pub plugins: crate::policy::types::Plugins,
    /// Named pipelines: steps per stage. A listener names one with `pipeline:`.
    #[serde(default)]
    pub pipelines: crate::policy::types::Pipelines,
    #[serde(default)]
    pub plugin_runtime: crate::plugin::RuntimeConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The name this server gives itself (greeting, EHLO, Received:).
    /// Defaults to the machine's host name.
    pub hostname: Option<String>,
    /// Queue, generated certificates and the control socket live here.
    pub data_dir: PathBuf,
    /// After SIGTERM, how long sessions may take to finish their transaction.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Threads that run SMTP sessions, each session staying on one (see
    /// `smtp::threads`): None, one per core; 0, sessions run on the shared
    /// work-stealing runtime instead.
    pub session_threads: Option<usize>,
    /// How long the queue may hold a sync for messages whose policy steps
    /// are still running, to sync them in the same batch (group commit);
    /// 0 syncs every batch at once.
    #[serde(with = "humantime_serde")]
    pub commit_wait: Duration,
}

/// The longest `server.commit_wait` taken: far past any sync's own time.
const MAX_COMMIT_WAIT: Duration = Duration::from_millis(100);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: None,
            data_dir: PathBuf::from("./data"),
            shutdown_grace: Duration::from_secs(30),
            session_threads: None,
            commit_wait: crate::queue::DEFAULT_COMMIT_WAIT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text only.
    None,
    /// Plain text with the STARTTLS upgrade offered (RFC 3207).
    Starttls,
    /// TLS from the first byte (RFC 8314, the port-465 style).
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// AUTH is not offered.
    None,
    /// AUTH is offered; unauthenticated mail is still accepted.
    Offer,
    /// AUTH is offered and MAIL FROM requires it (submission).
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// A bare CR or LF in DATA fails the transaction with 550 5.6.0.
    Reject,
    /// A bare CR or LF is stored as CRLF (it never ends DATA either way).
    Normalize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LongLines {
    /// A message line over 1000 octets fails the transaction with 500 5.5.2.
    Reject,
    /// Long lines are stored as they came.
    Accept,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default = "default_tls_mode")]
    pub tls: TlsMode,
    /// With `tls: starttls`: refuse mail commands until STARTTLS was done.
    #[serde(default)]
    pub require_tls: bool,
    #[serde(default = "default_auth_mode")]
    pub auth: AuthMode,
    /// Offer AUTH on a connection that is not (yet) encrypted.
    #[serde(default)]
    pub auth_over_plaintext: bool,
    /// Overrides `server.hostname` for this listener.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Text after the host name in the 220 greeting.
    #[serde(default)]
    pub banner: Option<String>,
    /// Overrides the top-level `tls` certificate for this listener.
    #[serde(default)]
    pub certificate: Option<TlsFiles>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default = "default_bare")]
    pub bare_line_endings: BareLineEndings,
    #[serde(default = "default_long_lines")]
    pub long_lines: LongLines,
    /// Priority class of mail accepted here (default: delivery.default_priority).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// The policy pipeline run for sessions on this listener.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Look up the client's reverse DNS name at connect (for plugins and
    /// the Received: header); off by default.
    #[serde(default)]
    pub reverse_dns: bool,
}

fn default_tls_mode() -> TlsMode {
    TlsMode::Starttls
}
fn default_auth_mode() -> AuthMode {
    AuthMode::Offer
}
fn default_bare() -> BareLineEndings {
    BareLineEndings::Reject
}
fn default_long_lines() -> LongLines {
    LongLines::Reject
}

/// Per-listener limits. Defaults follow RFC 5321 §4.5.3 where it sets one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, in octets (advertised with SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction; the next one gets 452 4.5.3.
    pub max_recipients: usize,
    /// Concurrent connections on this listener.
    pub max_connections: usize,
    /// Concurrent connections from one client IP on this listener.
    pub max_connections_per_ip: usize,
    /// Waiting for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Waiting for the next block of DATA or BDAT content (§4.5.3.2.5: 3 minutes).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Completing a TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Error replies in one session before 421 and disconnect.
    pub max_errors: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            tls_handshake_timeout: Duration::from_secs(30),
            max_errors: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The built-in relay rule that keeps Weir from being an open relay even
/// before any policy plugin runs: a recipient outside `local_domains` is
/// accepted only from an authenticated client or a client in `networks`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    pub local_domains: Vec<String>,
    pub networks: Vec<IpNet>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            local_domains: vec!["localhost".into()],
            networks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// User name to argon2 password hash (PHC string, as `weir passwd` prints).
    pub users: BTreeMap<String, PasswordHashString>,
}

/// An argon2 PHC string, checked for syntax when the configuration is read.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct PasswordHashString(pub String);

impl<'de> Deserialize<'de> for PasswordHashString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        argon2::PasswordHash::new(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected an argon2 password hash as printed by `weir passwd` ({e})"
            ))
        })?;
        Ok(PasswordHashString(s))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus exporter address; `null` turns the exporter off.
    pub bind: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            bind: Some(SocketAddr::from(([127, 0, 0, 1], 9025))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `weir=debug`; RUST_LOG wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Priority classes: the scheduler always dispatches a due message of a
/// higher class before one of a lower class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Transactional,
    #[default]
    Normal,
    Bulk,
}

impl Priority {
    /// "transactional", "normal" or "bulk" (any case).
    pub fn from_name(s: &str) -> Option<Priority> {
        // The same names the configuration's serde form accepts.
        serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase())).ok()
    }

    pub fn index(self) -> u8 {
        match self {
            Priority::Transactional => 0,
            Priority::Normal => 1,
            Priority::Bulk => 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Run the scheduler. Off, mail is accepted and kept in the queue.
    pub enabled: bool,
    /// Messages being delivered at once.
    pub max_concurrency: usize,
    /// Connections at once to one destination (a domain for `mx`, the host for `relay`/`lmtp`).
    pub max_per_destination: usize,
    /// Shortest time between two new connections to one destination (0: no limit).
    #[serde(with = "humantime_serde")]
    pub min_connection_interval: Duration,
    /// Waits after the 1st, 2nd, ... failed attempt; the last one repeats.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// Randomises each wait by up to this fraction, so retries do not bunch up.
    pub retry_jitter: f64,
    /// After this long in the queue, what is left is bounced.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Send one delay notice (action=delayed) once a message waited this long; null: never.
    #[serde(with = "humantime_serde")]
    pub delay_notice_after: Option<Duration>,
    /// Name used in EHLO/LHLO; default: server.hostname.
    pub helo_name: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Waiting for a reply to a command (RFC 5321 §4.5.3.2: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Waiting for the reply after the end of data (§4.5.3.2.6: 10 minutes).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// How long an idle outbound connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub idle_connection_timeout: Duration,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// Priority class of messages with no other indication.
    pub default_priority: Priority,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            max_concurrency: 100,
            max_per_destination: 10,
            min_connection_interval: Duration::ZERO,
            retry_schedule: [60, 300, 900, 3600, 14400].iter().map(|s| Duration::from_secs(*s)).collect(),
            retry_jitter: 0.1,
            max_age: Duration::from_secs(5 * 24 * 3600),
            delay_notice_after: Some(Duration::from_secs(4 * 3600)),
            helo_name: None,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            idle_connection_timeout: Duration::from_secs(10),
            max_messages_per_connection: 100,
            default_priority: Priority::Normal,
        }
    }
}

/// TLS on an outbound SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    /// Never.
    None,
    /// STARTTLS when offered; plain text when not, or when the handshake fails.
    Opportunistic,
    /// STARTTLS must succeed, or the attempt fails temporarily.
    Required,
    /// TLS from the first byte (a port-465 smarthost).
    Implicit,
}

/// Credentials for a smarthost.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayAuth {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RouteConfig {
    /// The recipient domain's MX hosts (A/AAAA when there is no MX).
    Mx {
        #[serde(default = "default_smtp_port")]
        port: u16,
        #[serde(default = "default_opportunistic")]
        tls: OutboundTls,
        #[serde(default)]
        verify_certificates: bool,
        #[serde(default)]
        ca_file: Option<PathBuf>,
        #[serde(default)]
        priority: Option<Priority>,
    },
    /// A smarthost.
    Relay {
        host: String,
        #[serde(default = "default_smtp_port")]
        port: u16,
        #[serde(default = "default_opportunistic")]
        tls: OutboundTls,
        #[serde(default = "default_true")]
        verify_certificates: bool,
        #[serde(default)]
        ca_file: Option<PathBuf>,
        #[serde(default)]
        auth: Option<RelayAuth>,
        #[serde(default)]
        priority: Option<Priority>,
    },
    /// An LMTP server (RFC 2033): `host:port` or `unix:/path/to/socket`.
    Lmtp {
        address: String,
        #[serde(default)]
        priority: Option<Priority>,
    },
    /// Local delivery into a Maildir per recipient. `path` may use
    /// `{local}`, `{domain}` and `{address}`.
    Maildir {
        path: String,
        #[serde(default)]
        priority: Option<Priority>,
    },
    /// Accept and drop.
    Discard {
        #[serde(default)]
        priority: Option<Priority>,
    },
}

impl RouteConfig {
    pub fn priority(&self) -> Option<Priority> {
        match self {
            RouteConfig::Mx { priority, .. }
            | RouteConfig::Relay { priority, .. }
            | RouteConfig::Lmtp { priority, .. }
            | RouteConfig::Maildir { priority, .. }
            | RouteConfig::Discard { priority } => *priority,
        }
    }
}

fn default_smtp_port() -> u16 {
    25
}
fn default_opportunistic() -> OutboundTls {
    OutboundTls::Opportunistic
}
fn default_true() -> bool {
    true
}

/// Which route a recipient takes, until a policy plugin names one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Recipient domain to route name.
    pub domains: BTreeMap<String, String>,
    /// Route for every other domain. `mx` always exists (a default MX route).
    pub default: String,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            domains: BTreeMap::new(),
            default: "mx".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers (`IP` or `IP:PORT`); empty: the system's (/etc/resolv.conf).
    pub servers: Vec<String>,
    /// Per-query time budget.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// `[1m, 5m, 1h]`-style lists of durations.
mod duration_list {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v: Vec<humantime_serde::Serde<Duration>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.into_inner()).collect())
    }
}

/// A configuration error a person can act on: where, and what was expected.
#[derive(Debug)]
pub struct ConfigError {
    pub source_name: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.source_name, l, c, self.message),
            _ => write!(f, "{}: {}", self.source_name, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn plain(source_name: &str, message: impl Into<String>) -> Self {
        ConfigError {
            source_name: source_name.to_string(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn from_yaml(source_name: &str, e: serde_norway::Error) -> Self {
        let loc = e.location();
        let mut message = e.to_string();
        // serde_norway appends " at line L column C"; we print it up front.
        if let Some(pos) = message.rfind(" at line ") {
            message.truncate(pos);
        }
        ConfigError {
            source_name: source_name.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
        }
    }
}

/// Where the configuration text comes from.
pub enum ConfigSource<'a> {
    File(&'a Path),
    Embedded,
}

impl Config {
    /// Reads, parses, overrides and validates a configuration.
    pub fn load(source: ConfigSource<'_>, overrides: &[String]) -> Result<Config, ConfigError> {
        let (name, text) = match source {
            ConfigSource::File(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::plain(&name, format!("cannot read: {e}")))?;
                (name, text)
            }
            ConfigSource::Embedded => (EMBEDDED_NAME.to_string(), EMBEDDED_DEFAULT.to_string()),
        };
        Config::parse(&name, &text, overrides)
    }

    /// Parses configuration text; `name` is used in error messages.
    pub fn parse(name: &str, text: &str, overrides: &[String]) -> Result<Config, ConfigError> {
        // Parse the file as written first so that its errors carry line:column.
        let mut config: Config =
            serde_norway::from_str(text).map_err(|e| ConfigError::from_yaml(name, e))?;
        if !overrides.is_empty() {
            let mut value: serde_norway::Value =
                serde_norway::from_str(text).map_err(|e| ConfigError::from_yaml(name, e))?;
            for o in overrides {
                apply_override(&mut value, o).map_err(|m| ConfigError::plain("-o", m))?;
            }
            config = serde_norway::from_value(value).map_err(|e| {
                ConfigError::plain(
                    &format!("{name} with -o {}", overrides.join(" -o ")),
                    e.to_string(),
                )
            })?;
        }
        config.validate().map_err(|m| ConfigError::plain(name, m))?;
        Ok(config)
    }

    /// Parses the same text again with what the plugins turned out to be,
    /// so that plugin errors get a line and column.
    pub fn check_policy(
        name: &str,
        text: &str,
        overrides: &[String],
        ctx: crate::policy::types::PolicyContext,
    ) -> Result<(), ConfigError> {
        crate::policy::types::with_policy_context(ctx, || Config::parse(name, text, overrides).map(|_| ()))
    }

    /// Reads the text of a configuration source (for the second parse).
    pub fn source_text(source: &ConfigSource<'_>) -> Result<(String, String), ConfigError> {
        match source {
            ConfigSource::File(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::plain(&name, format!("cannot read: {e}")))?;
                Ok((name, text))
            }
            ConfigSource::Embedded => Ok((EMBEDDED_NAME.to_string(), EMBEDDED_DEFAULT.to_string())),
        }
    }

    /// Checks that span several fields.
    fn validate(&self) -> Result<(), String> {
        if self.listeners.is_empty() {
            return Err("listeners: at least one listener is needed".into());
        }
        if self.server.commit_wait > MAX_COMMIT_WAIT {
            return Err(format!(
                "server.commit_wait: at most {}ms (a reply to DATA can wait this long for other sessions' messages)",
                MAX_COMMIT_WAIT.as_millis()
            ));
        }
        let mut binds: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (name, l) in &self.listeners {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "listeners.{name}: a listener name uses only letters, digits, '-' and '_'"
                ));
            }
            // Port 0 means "any free port": never a clash.
            if l.bind.port() == 0 {
                // nothing to compare
            } else if let Some(other) = binds.insert(l.bind, name) {
                return Err(format!(
                    "listeners.{name}.bind: {} is already used by listener {other}",
                    l.bind
                ));
            }
            if l.require_tls && l.tls != TlsMode::Starttls {
                return Err(format!(
                    "listeners.{name}.require_tls: only meaningful with `tls: starttls`"
                ));
            }
            if l.auth != AuthMode::None && self.auth.users.is_empty() {
                // Offering AUTH with no users is legal but useless; requiring it is a lock-out.
                if l.auth == AuthMode::Require {
                    return Err(format!(
                        "listeners.{name}.auth: `require` but auth.users is empty, so no one could send"
                    ));
                }
            }
            let lim = &l.limits;
            if lim.max_recipients == 0 {
                return Err(format!("listeners.{name}.limits.max_recipients: must be at least 1"));
            }
            if lim.max_connections == 0 || lim.max_connections_per_ip == 0 {
                return Err(format!(
                    "listeners.{name}.limits: max_connections and max_connections_per_ip must be at least 1"
                ));
            }
            if lim.max_errors == 0 {
                return Err(format!("listeners.{name}.limits.max_errors: must be at least 1"));
            }
            for (what, d) in [
                ("command_timeout", lim.command_timeout),
                ("data_timeout", lim.data_timeout),
                ("tls_handshake_timeout", lim.tls_handshake_timeout),
            ] {
                if d.is_zero() {
                    return Err(format!("listeners.{name}.limits.{what}: must be more than zero"));
                }
            }
            if let Some(h) = &l.hostname {
                check_hostname(h).map_err(|m| format!("listeners.{name}.hostname: {m}"))?;
            }
        }
        if let Some(h) = &self.server.hostname {
            check_hostname(h).map_err(|m| format!("server.hostname: {m}"))?;
        }
        for d in &self.relay.local_domains {
            check_hostname(d).map_err(|m| format!("relay.local_domains: {m}"))?;
        }
        for u in self.auth.users.keys() {
            if u.is_empty() || u.chars().any(|c| c.is_control()) {
                return Err(format!("auth.users: {u:?} is not a usable user name"));
            }
        }
        self.validate_delivery()?;
        for (name, l) in &self.listeners {
            if let Some(p) = &l.pipeline {
                if !self.pipelines.contains_key(p) {
                    return Err(format!("listeners.{name}.pipeline: no pipeline named {p:?}"));
                }
            }
        }
        for (name, p) in &self.plugins {
            if p.limits.memory_mb == 0 || p.limits.memory_mb > crate::plugin::MAX_PLUGIN_MEMORY_MB {
                return Err(format!(
                    "plugins.{name}.limits.memory_mb: between 1 and {}",
                    crate::plugin::MAX_PLUGIN_MEMORY_MB
                ));
            }
            if p.limits.time_budget.is_zero() {
                return Err(format!("plugins.{name}.limits.time_budget: must be more than zero"));
            }
            if let Some(pin) = &p.sha256 {
                if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("plugins.{name}.sha256: 64 hex digits expected"));
                }
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(format!(
                "log.level: {:?} is not a filter such as `info` or `weir=debug`",
                self.log.level
            ));
        }
        Ok(())
    }

    fn validate_delivery(&self) -> Result<(), String> {
        let d = &self.delivery;
        if d.max_concurrency == 0 || d.max_per_destination == 0 || d.max_messages_per_connection == 0 {
            return Err("delivery: max_concurrency, max_per_destination and max_messages_per_connection must be at least 1".into());
        }
        if d.retry_schedule.is_empty() {
            return Err("delivery.retry_schedule: give at least one wait".into());
        }
        if !(0.0..=1.0).contains(&d.retry_jitter) {
            return Err("delivery.retry_jitter: a fraction between 0 and 1".into());
        }
        for (name, r) in &self.routes {
            match r {
                RouteConfig::Relay { host, auth, tls, .. } => {
                    if host.is_empty() {
                        return Err(format!("routes.{name}.host: empty"));
                    }
                    if auth.is_some() && *tls == OutboundTls::None {
                        return Err(format!("routes.{name}.auth: refusing to send a password without TLS (set tls)"));
                    }
                }
                RouteConfig::Lmtp { address, .. } => {
                    let ok = address.strip_prefix("unix:").is_some_and(|p| !p.is_empty())
                        || address.parse::<SocketAddr>().is_ok()
                        || address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                    if !ok {
                        return Err(format!("routes.{name}.address: expected host:port or unix:/path, got {address:?}"));
                    }
                }
                RouteConfig::Maildir { path, .. } => {
                    if path.is_empty() {
                        return Err(format!("routes.{name}.path: empty"));
                    }
                }
                RouteConfig::Mx { .. } | RouteConfig::Discard { .. } => {}
            }
        }
        let known = |r: &str| r == "mx" || self.routes.contains_key(r);
        if !known(&self.routing.default) {
            return Err(format!("routing.default: no route named {:?}", self.routing.default));
        }
        for (domain, route) in &self.routing.domains {
            if !known(route) {
                return Err(format!("routing.domains.{domain}: no route named {route:?}"));
            }
        }
        for s in &self.dns.servers {
            if s.parse::<SocketAddr>().is_err() && s.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("dns.servers: {s:?} is not IP or IP:PORT"));
            }
        }
        Ok(())
    }

    /// The host name this server uses when a listener does not set its own.
    pub fn hostname(&self) -> String {
        self.server.hostname.clone().unwrap_or_else(|| {
            gethostname::gethostname()
                .into_string()
                .unwrap_or_else(|_| "localhost".to_string())
        })
    }
}

fn check_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not a valid domain name"))
    }
}

/// Applies one `dotted.key=value` override to a parsed YAML document, the
/// way `postconf -o` does: the value is read as YAML (so `100`, `true`,
/// `[a, b]` keep their types) and missing intermediate maps are created.
pub fn apply_override(doc: &mut serde_norway::Value, spec: &str) -> Result<(), String> {
    use serde_norway::Value;
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?}: expected dotted.key=value"))?;
    let path: Vec<&str> = key.split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(format!("{spec:?}: empty component in key {key:?}"));
    }
    let value: Value = if raw.is_empty() {
        Value::String(String::new())
    } else {
        serde_norway::from_str(raw).map_err(|e| format!("{spec:?}: value is not YAML: {e}"))?
    };
    let mut node = doc;
    for (i, part) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().ok_or_else(|| {
            format!(
                "{spec:?}: {} is not a mapping, cannot set {part:?} in it",
                path[..i].join(".")
            )
        })?;
        let k = Value::String(part.to_string());
        if i + 1 == path.len() {
            map.insert(k, value);
            return Ok(());
        }
        if !map.contains_key(&k) {
            map.insert(k.clone(), Value::Null);
        }
        node = map
            .get_mut(&k)
            .ok_or_else(|| format!("{spec:?}: cannot descend into {part:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "listeners:\n  mx:\n    bind: 127.0.0.1:2525\n";

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(ConfigSource::Embedded, &[]).expect("embedded default must load");
        assert!(c.listeners.contains_key("mx"));
    }

    #[test]
    fn unknown_key_reports_line_and_column() {
        let text = "listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    bnner: hi\n";
        let e = Config::parse("t.yaml", text, &[]).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.column, Some(5), "{e}");
        assert!(e.message.contains("unknown field `bnner`"), "{e}");
        assert!(e.to_string().starts_with("t.yaml:4:5: "), "{e}");
    }

    #[test]
    fn bad_value_reports_line_and_expectation() {
        let text = "listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    tls: sometimes\n";
        let e = Config::parse("t.yaml", text, &[]).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("expected one of"), "{e}");
        let text = "listeners:\n  mx:\n    bind: nowhere\n";
        let e = Config::parse("t.yaml", text, &[]).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let text = "auth:\n  users:\n    bob: plaintext\nlisteners:\n  mx:\n    bind: 127.0.0.1:1\n";
        let e = Config::parse("t.yaml", text, &[]).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("weir passwd"), "{e}");
    }

    #[test]
    fn override_changes_typed_values() {
        let c = Config::parse(
            "t",
            MIN,
            &[
                "listeners.mx.bind=127.0.0.1:2600".into(),
                "listeners.mx.limits.max_recipients=7".into(),
                "relay.local_domains=[a.example, b.example]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.listeners["mx"].bind.port(), 2600);
        assert_eq!(c.listeners["mx"].limits.max_recipients, 7);
        assert_eq!(c.relay.local_domains, vec!["a.example", "b.example"]);
    }

    #[test]
    fn override_errors_are_reported() {
        let e = Config::parse("t", MIN, &["listeners.mx.bnd=1".into()]).unwrap_err();
        assert!(e.to_string().contains("unknown field `bnd`"), "{e}");
        let e = Config::parse("t", MIN, &["novalue".into()]).unwrap_err();
        assert!(e.to_string().contains("dotted.key=value"), "{e}");
        let e = Config::parse("t", MIN, &["listeners.mx.bind.x=1".into()]).unwrap_err();
        assert!(e.to_string().contains("not a mapping"), "{e}");
    }

    #[test]
    fn cross_field_checks() {
        let text = "listeners:\n  a:\n    bind: 127.0.0.1:25\n  b:\n    bind: 127.0.0.1:25\n";
        let e = Config::parse("t", text, &[]).unwrap_err();
        assert!(e.message.contains("already used"), "{e}");
        let text = "listeners:\n  a:\n    bind: 127.0.0.1:25\n    auth: require\n";
        let e = Config::parse("t", text, &[]).unwrap_err();
        assert!(e.message.contains("auth.users is empty"), "{e}");
        let text = "listeners: {}\n";
        assert!(Config::parse("t", text, &[]).is_err());
        let listener = "listeners:\n  a:\n    bind: 127.0.0.1:25\n";
        let e = Config::parse("t", &format!("server:\n  commit_wait: 2s\n{listener}"), &[]).unwrap_err();
        assert!(e.message.contains("server.commit_wait: at most 100ms"), "{e}");
        let c = Config::parse("t", &format!("server:\n  commit_wait: 0s\n{listener}"), &[]).unwrap();
        assert_eq!(c.server.commit_wait, Duration::ZERO);
        let c = Config::parse("t", listener, &[]).unwrap();
        assert_eq!(c.server.commit_wait, Duration::from_micros(300));
    }
}
