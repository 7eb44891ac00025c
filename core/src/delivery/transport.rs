//! Routes turned into transports, and delivery of one group of recipients
//! (one message, one route, one destination) through them: `mx` (MX lookup,
//! preference order, A/AAAA fallback, next host on connection failure),
//! `relay` (smarthost), `lmtp`, `maildir` and `discard`. SMTP connections
//! are pooled per route and address and reused across messages; each
//! destination has a concurrency limit and an optional connection spacing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Semaphore;

use crate::config::{Config, DeliveryConfig, OutboundTls, RouteConfig};
use crate::delivery::client::{tls_config, ClientError, ClientOptions, RcptResult, SmtpClient, Target};
use crate::dns::{Dns, DnsError};
use crate::queue::message::{MessageMeta, Recipient};

/// How a delivered recipient left our hands (RFC 3461 §5.2 / §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Final delivery (LMTP, Maildir, discard): a SUCCESS DSN says "delivered".
    Final,
    /// Relayed to an SMTP server that speaks DSN: it got NOTIFY/ORCPT and reports itself.
    RelayedWithDsn,
    /// Relayed to an SMTP server without DSN: a SUCCESS DSN says "relayed".
    RelayedWithoutDsn,
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered(String, Handoff),
    /// Try again later.
    Deferred(String),
    /// Permanent failure.
    Failed(String),
}

/// The result of delivering one group.
pub struct GroupOutcome {
    pub remote: Option<String>,
    /// One per recipient index given, in the same order.
    pub outcomes: Vec<(usize, Outcome)>,
}

pub enum Transport {
    Mx {
        port: u16,
        tls: OutboundTls,
        tls_config: Arc<rustls::ClientConfig>,
    },
    Relay {
        host: String,
        port: u16,
        tls: OutboundTls,
        tls_config: Arc<rustls::ClientConfig>,
        auth: Option<(String, String)>,
    },
    Lmtp {
        address: String,
        tls_config: Arc<rustls::ClientConfig>,
    },
    Maildir {
        template: String,
    },
    Discard,
}

pub struct Route {
    pub name: String,
    pub transport: Transport,
    pub priority: Option<crate::config::Priority>,
}

impl Route {
    fn from_config(name: &str, c: &RouteConfig, data_dir: &std::path::Path) -> Result<Route> {
        let transport = match c {
            RouteConfig::Mx { port, tls, verify_certificates, ca_file, .. } => Transport::Mx {
                port: *port,
                tls: *tls,
                tls_config: tls_config(*verify_certificates, ca_file.as_deref())?,
            },
            RouteConfig::Relay { host, port, tls, verify_certificates, ca_file, auth, .. } => Transport::Relay {
                host: host.clone(),
                port: *port,
                tls: *tls,
                tls_config: tls_config(*verify_certificates, ca_file.as_deref())?,
                auth: auth.as_ref().map(|a| (a.user.clone(), a.password.clone())),
            },
            RouteConfig::Lmtp { address, .. } => Transport::Lmtp {
                address: address.clone(),
                tls_config: tls_config(false, None)?,
            },
            RouteConfig::Maildir { path, .. } => Transport::Maildir {
                template: path.replace("{data_dir}", &data_dir.display().to_string()),
            },
            RouteConfig::Discard { .. } => Transport::Discard,
        };
        Ok(Route {
            name: name.to_string(),
            transport,
            priority: c.priority(),
        })
    }

    /// The destination a recipient belongs to on this route (the unit of
    /// per-destination limits and of grouping).
    pub fn destination(&self, r: &Recipient) -> String {
        match &self.transport {
            Transport::Mx { .. } => r.domain().to_ascii_lowercase(),
            Transport::Relay { host, port, .. } => format!("{host}:{port}"),
            Transport::Lmtp { address, .. } => address.clone(),
            Transport::Maildir { .. } => "maildir".into(),
            Transport::Discard => "discard".into(),
        }
    }
}

/// All routes and the routing table.
pub struct Routes {
    routes: HashMap<String, Arc<Route>>,
    domains: HashMap<String, String>,
    default: String,
}

impl Routes {
    pub fn from_config(c: &Config, data_dir: &std::path::Path) -> Result<Routes> {
        let mut routes = HashMap::new();
        // `mx` always exists: plain MX delivery with opportunistic TLS.
        routes.insert(
            "mx".to_string(),
            Arc::new(Route::from_config(
                "mx",
                &RouteConfig::Mx {
                    port: 25,
                    tls: OutboundTls::Opportunistic,
                    verify_certificates: false,
                    ca_file: None,
                    priority: None,
                },
                data_dir,
            )?),
        );
        for (name, rc) in &c.routes {
            routes.insert(name.clone(), Arc::new(Route::from_config(name, rc, data_dir)?));
        }
        Ok(Routes {
            routes,
            domains: c.routing.domains.iter().map(|(d, r)| (d.to_ascii_lowercase(), r.clone())).collect(),
            default: c.routing.default.clone(),
        })
    }

    /// The route for a recipient: the one policy named, else the routing
    /// table by domain, else the default. Err names a route that does not exist.
    pub fn for_recipient(&self, r: &Recipient) -> Result<Arc<Route>, String> {
        let name = r
            .route
            .clone()
            .or_else(|| self.domains.get(&r.domain().to_ascii_lowercase()).cloned())
            .unwrap_or_else(|| self.default.clone());
        self.routes.get(&name).cloned().ok_or(name)
    }
}

struct DestState {
    permits: Arc<Semaphore>,
    last_connect: Mutex<Option<Instant>>,
}

type PoolKey = (String, Target);

/// Everything a delivery needs that outlives one message.
pub struct Transports {
    pub routes: Routes,
    dns: Arc<Dns>,
    cfg: DeliveryConfig,
    helo_name: String,
    pool: Mutex<HashMap<PoolKey, Vec<(Instant, SmtpClient)>>>,
    dests: Mutex<HashMap<String, Arc<DestState>>>,
}

impl Transports {
    pub fn new(config: &Config, data_dir: &std::path::Path, dns: Arc<Dns>) -> Result<Transports> {
        Ok(Transports {
            routes: Routes::from_config(config, data_dir)?,
            dns,
            cfg: config.delivery.clone(),
            helo_name: config.delivery.helo_name.clone().unwrap_or_else(|| config.hostname()),
            pool: Mutex::new(HashMap::new()),
            dests: Mutex::new(HashMap::new()),
        })
    }

    fn dest_state(&self, key: &str) -> Arc<DestState> {
        let mut m = self.dests.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(DestState {
                    permits: Arc::new(Semaphore::new(self.cfg.max_per_destination)),
                    last_connect: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Closes pooled connections idle for longer than the limit.
    pub async fn sweep(&self) {
        let expired: Vec<SmtpClient> = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let limit = self.cfg.idle_connection_timeout;
            let mut out = Vec::new();
            for list in pool.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list.drain(..).partition(|(t, _)| t.elapsed() < limit);
                *list = keep;
                out.extend(old.into_iter().map(|(_, c)| c));
            }
            pool.retain(|_, v| !v.is_empty());
            out
        };
        for c in expired {
            c.quit().await;
        }
    }

    pub async fn close_all(&self) {
        let all: Vec<SmtpClient> = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.drain().flat_map(|(_, v)| v.into_iter().map(|(_, c)| c)).collect()
        };
        for c in all {
            c.quit().await;
        }
    }

    fn take_pooled(&self, key: &PoolKey) -> Option<SmtpClient> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(key)?;
        while let Some((t, c)) = list.pop() {
            if t.elapsed() < self.cfg.idle_connection_timeout {
                return Some(c);
            }
        }
        None
    }

    fn put_pooled(&self, key: PoolKey, c: SmtpClient) {
        if c.messages_sent >= self.cfg.max_messages_per_connection {
            tokio::spawn(c.quit());
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.entry(key).or_default().push((Instant::now(), c));
    }

    /// Delivers `idxs` of `meta`'s recipients over `route`.
    pub async fn deliver(&self, route: &Route, meta: &MessageMeta, idxs: &[usize], body: &[u8]) -> GroupOutcome {
        match &route.transport {
            Transport::Discard => GroupOutcome {
                remote: None,
                outcomes: idxs.iter().map(|i| (*i, Outcome::Delivered("discarded by route".into(), Handoff::Final))).collect(),
            },
            Transport::Maildir { template } => {
                let mut outcomes = Vec::new();
                for &i in idxs {
                    let r = &meta.recipients[i];
                    let o = deliver_maildir(template, &meta.sender, r, body, &self.helo_name).await;
                    outcomes.push((i, o));
                }
                GroupOutcome { remote: None, outcomes }
            }
            _ => self.deliver_smtp(route, meta, idxs, body).await,
        }
    }

    /// Where to connect, in order, with the TLS name for each.
    async fn targets(&self, route: &Route, domain: &str) -> Result<Vec<(Target, String)>, Outcome> {
        match &route.transport {
            Transport::Mx { port, .. } => {
                let hosts: Vec<String> = match self.dns.mx(domain).await {
                    Ok(mx) => {
                        // RFC 7505 null MX: the domain takes no mail.
                        if mx.len() == 1 && mx[0].1.is_empty() {
                            return Err(Outcome::Failed(format!(
                                "556 5.1.10 {domain} does not accept mail (null MX)"
                            )));
                        }
                        let mut mx = mx;
                        shuffle_equal_preferences(&mut mx);
                        mx.into_iter().map(|(_, h)| h).collect()
                    }
                    // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
                    Err(DnsError::NoRecords) => vec![domain.to_string()],
                    Err(DnsError::NoSuchDomain) => {
                        return Err(Outcome::Failed(format!("550 5.1.2 domain {domain} does not exist")));
                    }
                    Err(e) => return Err(Outcome::Deferred(format!("451 4.4.3 MX lookup for {domain}: {e}"))),
                };
                let mut out = Vec::new();
                let mut last = None;
                for h in &hosts {
                    match self.dns.ips(h).await {
                        Ok(ips) => out.extend(ips.into_iter().map(|ip| (Target::Tcp(SocketAddr::new(ip, *port)), h.clone()))),
                        Err(e) => last = Some(format!("{h}: {e}")),
                    }
                }
                if out.is_empty() {
                    let why = last.unwrap_or_else(|| "no address".into());
                    return Err(Outcome::Deferred(format!("451 4.4.4 no address for any MX of {domain}: {why}")));
                }
                Ok(out)
            }
            Transport::Relay { host, port, .. } => match self.dns.ips(host).await {
                Ok(ips) => Ok(ips.into_iter().map(|ip| (Target::Tcp(SocketAddr::new(ip, *port)), host.clone())).collect()),
                Err(e) => Err(Outcome::Deferred(format!("451 4.4.3 smarthost {host}: {e}"))),
            },
            Transport::Lmtp { address, .. } => {
                if let Some(path) = address.strip_prefix("unix:") {
                    return Ok(vec![(Target::Unix(path.into()), "localhost".into())]);
                }
                let (host, port) = address.rsplit_once(':').unwrap_or((address.as_str(), "24"));
                let port: u16 = port.parse().unwrap_or(24);
                match self.dns.ips(host).await {
                    Ok(ips) => Ok(ips.into_iter().map(|ip| (Target::Tcp(SocketAddr::new(ip, port)), host.to_string())).collect()),
                    Err(e) => Err(Outcome::Deferred(format!("451 4.4.3 LMTP server {host}: {e}"))),
                }
            }
            Transport::Maildir { .. } | Transport::Discard => Ok(Vec::new()),
        }
    }

    fn options(&self, route: &Route, tls_name: &str) -> ClientOptions {
        let (lmtp, tls, tls_config, auth) = match &route.transport {
            Transport::Mx { tls, tls_config, .. } => (false, *tls, tls_config.clone(), None),
            Transport::Relay { tls, tls_config, auth, .. } => (false, *tls, tls_config.clone(), auth.clone()),
            Transport::Lmtp { tls_config, .. } => (true, OutboundTls::None, tls_config.clone(), None),
            _ => (false, OutboundTls::None, tls_config_fallback(), None),
        };
        ClientOptions {
            lmtp,
            helo_name: self.helo_name.clone(),
            tls,
            tls_name: tls_name.to_string(),
            tls_config,
            auth,
            connect_timeout: self.cfg.connect_timeout,
            command_timeout: self.cfg.command_timeout,
            data_timeout: self.cfg.data_timeout,
        }
    }

    async fn connect(&self, route: &Route, dest: &DestState, target: &Target, tls_name: &str) -> Result<SmtpClient, ClientError> {
        let spacing = self.cfg.min_connection_interval;
        if !spacing.is_zero() {
            let wait = {
                let mut last = dest.last_connect.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let at = match *last {
                    Some(t) if t + spacing > now => t + spacing,
                    _ => now,
                };
                *last = Some(at);
                at.saturating_duration_since(now)
            };
            tokio::time::sleep(wait).await;
        }
        let opts = self.options(route, tls_name);
        match SmtpClient::connect(target, &opts).await {
            Err(ClientError::Io(e)) if opts.tls == OutboundTls::Opportunistic && e.contains("TLS handshake") => {
                // RFC 7435: opportunistic TLS falls back to clear text.
                tracing::info!(%target, error = %e, "TLS failed; retrying in clear text (opportunistic)");
                let mut plain = opts.clone();
                plain.tls = OutboundTls::None;
                SmtpClient::connect(target, &plain).await
            }
            other => other,
        }
    }

    async fn deliver_smtp(&self, route: &Route, meta: &MessageMeta, idxs: &[usize], body: &[u8]) -> GroupOutcome {
        let all = |o: Outcome| GroupOutcome {
            remote: None,
            outcomes: idxs.iter().map(|i| (*i, o.clone())).collect(),
        };
        let Some(first) = idxs.first().map(|i| &meta.recipients[*i]) else {
            return all(Outcome::Deferred("nothing to deliver".into()));
        };
        let dest_key = format!("{}:{}", route.name, route.destination(first));
        let dest = self.dest_state(&dest_key);
        let _permit = match dest.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return all(Outcome::Deferred("451 4.3.0 shutting down".into())),
        };
        let targets = match self.targets(route, first.domain()).await {
            Ok(t) => t,
            Err(o) => return all(o),
        };
        let rcpts: Vec<&Recipient> = idxs.iter().map(|i| &meta.recipients[*i]).collect();
        let mut last_error = String::from("451 4.4.1 no destination answered");
        for (target, tls_name) in targets {
            let key: PoolKey = (route.name.clone(), target.clone());
            let pooled = self.take_pooled(&key);
            let reused = pooled.is_some();
            let mut client = match pooled {
                Some(c) => c,
                None => match self.connect(route, &dest, &target, &tls_name).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::info!(route = %route.name, %target, error = %e, "connection failed; trying the next host");
                        last_error = match &e {
                            ClientError::Reply(r) => format!("{r}"),
                            ClientError::Io(m) | ClientError::Stale(m) => format!("451 4.4.1 {m}"),
                        };
                        // A 5xx greeting or EHLO is the server refusing us for good.
                        if e.is_permanent() {
                            return all(Outcome::Failed(last_error));
                        }
                        continue;
                    }
                },
            };
            let mut result = client.send(meta, &rcpts, body).await;
            if reused && matches!(result, Err(ClientError::Stale(_))) {
                // The pooled connection had been closed by the other side; nothing was sent.
                match self.connect(route, &dest, &target, &tls_name).await {
                    Ok(fresh) => {
                        client = fresh;
                        result = client.send(meta, &rcpts, body).await;
                    }
                    Err(e) => {
                        last_error = format!("451 4.4.1 {e}");
                        continue;
                    }
                }
            }
            let remote = Some(client.remote.clone());
            let handoff = if client.is_lmtp() {
                Handoff::Final
            } else if client.caps.dsn {
                Handoff::RelayedWithDsn
            } else {
                Handoff::RelayedWithoutDsn
            };
            match result {
                Ok(results) => {
                    self.put_pooled(key, client);
                    let outcomes = idxs
                        .iter()
                        .zip(results)
                        .map(|(i, r)| {
                            let o = match r {
                                RcptResult::Accepted(reply) => Outcome::Delivered(reply.to_string(), handoff),
                                RcptResult::Refused(reply) if reply.is_permanent() => Outcome::Failed(reply.to_string()),
                                RcptResult::Refused(reply) => Outcome::Deferred(reply.to_string()),
                            };
                            (*i, o)
                        })
                        .collect();
                    return GroupOutcome { remote, outcomes };
                }
                Err(ClientError::Reply(r)) => {
                    let o = if r.is_permanent() { Outcome::Failed(r.to_string()) } else { Outcome::Deferred(r.to_string()) };
                    tokio::spawn(client.quit());
                    return GroupOutcome {
                        remote,
                        outcomes: idxs.iter().map(|i| (*i, o.clone())).collect(),
                    };
                }
                Err(ClientError::Io(m)) | Err(ClientError::Stale(m)) => {
                    // The connection broke mid-transaction: the outcome is unknown, so retry later.
                    return GroupOutcome {
                        remote,
                        outcomes: idxs.iter().map(|i| (*i, Outcome::Deferred(format!("451 4.4.2 {m}")))).collect(),
                    };
                }
            }
        }
        all(Outcome::Deferred(last_error))
    }
}

fn tls_config_fallback() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }),
    )
}

/// MX hosts of equal preference are tried in random order (RFC 5321 §5.1).
fn shuffle_equal_preferences(mx: &mut [(u16, String)]) {
    use rand::seq::SliceRandom;
    let mut start = 0;
    while start < mx.len() {
        let pref = mx[start].0;
        let end = mx[start..].iter().position(|(p, _)| *p != pref).map_or(mx.len(), |k| start + k);
        mx[start..end].shuffle(&mut rand::rng());
        start = end;
    }
}

/// A path component from an address part that cannot escape its directory.
fn safe_component(s: &str) -> Option<String> {
    let s = s.to_ascii_lowercase();
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.chars().all(|c| c != '/' && c != '\\' && c != '\0' && !c.is_control());
    ok.then_some(s)
}

/// Maildir delivery: write into tmp/, fsync, rename into new/, fsync the directory.
async fn deliver_maildir(template: &str, sender: &str, r: &Recipient, body: &[u8], hostname: &str) -> Outcome {
    let (local, domain) = match r.address.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => (r.address.as_str(), "localhost"),
    };
    let (Some(local), Some(domain)) = (safe_component(local), safe_component(domain)) else {
        return Outcome::Failed(format!("550 5.1.3 <{}>: not usable as a mailbox name", r.address));
    };
    let dir = template
        .replace("{local}", &local)
        .replace("{domain}", &domain)
        .replace("{address}", &format!("{local}@{domain}"));
    let mut content = format!("Return-Path: <{sender}>\nDelivered-To: {}\n", r.address).into_bytes();
    // Maildir files use the local line ending.
    let mut prev_cr = false;
    for &b in body {
        if prev_cr && b != b'\n' {
            content.push(b'\r');
        }
        prev_cr = b == b'\r';
        if !prev_cr {
            content.push(b);
        }
    }
    let host = hostname.replace(['/', ':'], "_");
    let address = r.address.clone();
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Write;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let base = std::path::PathBuf::from(&dir);
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}.M{}P{}Q{}.{}", now.as_secs(), now.subsec_micros(), std::process::id(), n, host);
        let tmp = base.join("tmp").join(&name);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(&content)?;
        f.sync_all()?;
        drop(f);
        let new = base.join("new").join(&name);
        std::fs::rename(&tmp, &new)?;
        std::fs::File::open(base.join("new"))?.sync_all()?;
        Ok(new.display().to_string())
    })
    .await;
    match res {
        Ok(Ok(path)) => Outcome::Delivered(format!("250 2.0.0 delivered to maildir {path}"), Handoff::Final),
        Ok(Err(e)) => {
            tracing::warn!(rcpt = %address, error = %e, "maildir delivery failed");
            Outcome::Deferred(format!("451 4.3.0 maildir: {e}"))
        }
        Err(e) => Outcome::Deferred(format!("451 4.3.0 maildir task: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_components_cannot_escape() {
        assert_eq!(safe_component("Bob").as_deref(), Some("bob"));
        assert!(safe_component("..").is_none());
        assert!(safe_component("a/b").is_none());
        assert!(safe_component(".hidden").is_none());
        assert!(safe_component("").is_none());
    }

    #[test]
    fn equal_preferences_stay_grouped() {
        let mut mx = vec![(10, "a".to_string()), (10, "b".into()), (20, "c".into()), (30, "d".into()), (30, "e".into())];
        for _ in 0..20 {
            shuffle_equal_preferences(&mut mx);
            let prefs: Vec<u16> = mx.iter().map(|(p, _)| *p).collect();
            assert_eq!(prefs, vec![10, 10, 20, 30, 30]);
            assert_eq!(mx[2].1, "c");
        }
    }
}
