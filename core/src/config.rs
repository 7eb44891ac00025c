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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: None,
            data_dir: PathBuf::from("./data"),
            shutdown_grace: Duration::from_secs(30),
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

    /// Checks that span several fields.
    fn validate(&self) -> Result<(), String> {
        if self.listeners.is_empty() {
            return Err("listeners: at least one listener is needed".into());
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
            if let Some(other) = binds.insert(l.bind, name) {
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
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(format!(
                "log.level: {:?} is not a filter such as `info` or `weir=debug`",
                self.log.level
            ));
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
    }
}
