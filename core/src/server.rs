//! `weir serve`: opens the queue, binds every listener, accepts connections
//! within the per-listener limits (in total and per client IP), runs a
//! session per connection, and shuts down cleanly on SIGTERM/SIGINT: stop
//! accepting, let sessions finish their transaction within
//! `server.shutdown_grace`, then close the queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Users;
use crate::config::{Config, TlsFiles, TlsMode};
use crate::queue::Queue;
use crate::smtp::conn::{Conn, Stream};
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;
use crate::smtp::threads::SessionThreads;
use crate::smtp::{ListenerCtx, RelayRules};

/// Counts a listener's open connections, in total and per client IP.
#[derive(Default)]
struct ConnCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Releases a connection's slot when the session ends, however it ends.
struct ConnSlot {
    counts: Arc<Mutex<ConnCounts>>,
    ip: IpAddr,
    listener: String,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&self.ip);
                }
            }
        }
        metrics::gauge!("weir_connections_active", "listener" => self.listener.clone()).decrement(1.0);
    }
}

fn tls_acceptors(config: &Config, data_dir: &Path) -> Result<HashMap<String, TlsAcceptor>> {
    let mut out = HashMap::new();
    let mut cache: HashMap<(PathBuf, PathBuf), TlsAcceptor> = HashMap::new();
    let mut self_signed: Option<TlsFiles> = None;
    for (name, l) in &config.listeners {
        if l.tls == TlsMode::None {
            continue;
        }
        let files = match (&l.certificate, &config.tls) {
            (Some(f), _) | (None, Some(f)) => f.clone(),
            (None, None) => match &self_signed {
                Some(f) => f.clone(),
                None => {
                    let mut names = vec![config.hostname()];
                    names.extend(config.listeners.values().filter_map(|l| l.hostname.clone()));
                    let f = crate::tls::ensure_self_signed(data_dir, &names)?;
                    self_signed = Some(f.clone());
                    f
                }
            },
        };
        let key = (files.cert.clone(), files.key.clone());
        let acceptor = match cache.get(&key) {
            Some(a) => a.clone(),
            None => {
                let cfg = crate::tls::server_config(&files).with_context(|| format!("listener {name}"))?;
                let a = TlsAcceptor::from(cfg);
                cache.insert(key, a.clone());
                a
            }
        };
        out.insert(name.clone(), acceptor);
    }
    Ok(out)
}

/// What reloading needs: where the configuration came from, the plugin
/// runtime (created when a policy first needs it) and the live policy.
pub struct Reloader {
    origin: crate::policy::ConfigOrigin,
    data_dir: PathBuf,
    runtime: tokio::sync::Mutex<Option<Arc<crate::plugin::Runtime>>>,
    services: Arc<crate::plugin::HostServices>,
    pub policy: Arc<crate::policy::PolicyHandle>,
    listeners: Vec<(String, std::net::SocketAddr)>,
}

impl Reloader {
    async fn runtime_for(&self, config: &Config) -> Result<Option<Arc<crate::plugin::Runtime>>> {
        if config.plugins.is_empty() && config.pipelines.is_empty() {
            return Ok(None);
        }
        let mut rt = self.runtime.lock().await;
        if rt.is_none() {
            *rt = Some(crate::plugin::Runtime::new(
                &config.plugin_runtime,
                Some(self.data_dir.join("plugin-cache")),
            )?);
        }
        Ok(rt.clone())
    }

    /// Loads and checks the policy anew; on any error the running one stays.
    pub async fn reload(&self) -> Result<String, String> {
        let source = match &self.origin.path {
            Some(p) => crate::config::ConfigSource::File(p),
            None => crate::config::ConfigSource::Embedded,
        };
        let config = Config::load(source, &self.origin.overrides).map_err(|e| e.to_string())?;
        let rt = self.runtime_for(&config).await.map_err(|e| format!("{e:#}"))?;
        let policy = crate::policy::prepare(&config, &self.origin, rt.as_ref(), &self.services)
            .await
            .map_err(|e| e.to_string())?;
        let now: Vec<(String, std::net::SocketAddr)> = config.listeners.iter().map(|(n, l)| (n.clone(), l.bind)).collect();
        let mut note = String::new();
        if now != self.listeners {
            note = " (listener changes take effect at the next restart)".into();
        }
        let plugins = policy.plugins.len();
        self.policy.set(policy);
        Ok(format!("policy reloaded: {plugins} plugin(s){note}"))
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(config: Config, data_dir: PathBuf, origin: crate::policy::ConfigOrigin) -> Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data directory {}", data_dir.display()))?;
    crate::metrics::install(&config.metrics)?;
    let queue = Arc::new(Queue::open_with(&data_dir, config.server.commit_wait)?);
    tracing::info!(path = %queue.path().display(), messages = queue.depth(), "queue open");

    let acceptors = tls_acceptors(&config, &data_dir)?;
    let queued = Arc::new(tokio::sync::Notify::new());
    let dns = Arc::new(crate::dns::Dns::new(&config.dns)?);
    let delivery = if config.delivery.enabled {
        Some(crate::delivery::Delivery::new(&config, &data_dir, queue.clone(), dns.clone(), queued.clone())?)
    } else {
        tracing::info!("delivery is off (delivery.enabled: false): mail stays in the queue");
        None
    };
    let users = Arc::new(Users::from_config(&config.auth));
    let relay = Arc::new(RelayRules::from_config(&config.relay));
    let default_host = config.hostname();
    let services = crate::plugin::HostServices::new(&config, dns.clone(), Some(crate::plugin::kv::Kv::open(&data_dir.join("kv"))?));
    let reloader = Arc::new(Reloader {
        origin,
        data_dir: data_dir.clone(),
        runtime: tokio::sync::Mutex::new(None),
        services: services.clone(),
        policy: Arc::new(crate::policy::PolicyHandle::new(crate::policy::Policy::empty())),
        listeners: config.listeners.iter().map(|(n, l)| (n.clone(), l.bind)).collect(),
    });
    {
        let rt = reloader.runtime_for(&config).await?;
        let policy = crate::policy::prepare(&config, &reloader.origin, rt.as_ref(), &services)
            .await
            .map_err(|e| anyhow::anyhow!("invalid policy: {e}"))?;
        if !policy.plugins.is_empty() {
            tracing::info!(plugins = policy.plugins.len(), "policy loaded");
        }
        reloader.policy.set(policy);
    }

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Bind everything before accepting anything, so a bad address fails the start.
    let mut bound = Vec::new();
    let mut addresses = std::collections::BTreeMap::new();
    for (name, l) in &config.listeners {
        let listener = TcpListener::bind(l.bind)
            .await
            .with_context(|| format!("listener {name}: cannot bind {}", l.bind))?;
        let actual = listener.local_addr().unwrap_or(l.bind);
        addresses.insert(name.clone(), actual.to_string());
        let ctx = Arc::new(ListenerCtx {
            name: name.clone(),
            cfg: l.clone(),
            hostname: l.hostname.clone().unwrap_or_else(|| default_host.clone()),
            tls: acceptors.get(name).cloned(),
            users: users.clone(),
            relay: relay.clone(),
            queue: queue.clone(),
            priority: l.priority.unwrap_or(config.delivery.default_priority),
            queued: queued.clone(),
            policy: reloader.policy.clone(),
            dns: dns.clone(),
            counters: crate::smtp::counters::ListenerCounters::new(name),
        });
        tracing::info!(listener = %name, bind = %actual, tls = ?l.tls, auth = ?l.auth, "listening");
        bound.push((listener, ctx));
    }
    // Where each listener really is (useful with port 0): data_dir/listeners.json.
    let listeners_file = data_dir.join("listeners.json");
    let tmp = data_dir.join("listeners.json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&addresses)?).is_ok() {
        let _ = std::fs::rename(&tmp, &listeners_file);
    }
    let ops = Arc::new(crate::delivery::ops::QueueOps {
        queue: queue.clone(),
        delivery: delivery.clone(),
        hostname: default_host.clone(),
    });
    let control = crate::control::start(&data_dir, ops, reloader.clone(), shutdown.clone())?;
    let delivery_stop = CancellationToken::new();
    let delivery_tracker = TaskTracker::new();
    let scheduler = delivery
        .clone()
        .map(|d| tokio::spawn(d.run(delivery_stop.clone(), delivery_tracker.clone())));

    let threads = match config.server.session_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())) {
        0 => None,
        n => Some(Arc::new(SessionThreads::start(n)?)),
    };
    let mut accept_tasks = Vec::new();
    for (listener, ctx) in bound {
        accept_tasks.push(tokio::spawn(accept_loop(listener, ctx, shutdown.clone(), tracker.clone(), threads.clone())));
    }

    {
        // SIGHUP reloads the policy; a broken one leaves the old one running.
        let r = reloader.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = hup.recv() => match r.reload().await {
                        Ok(m) => tracing::info!("{m}"),
                        Err(e) => tracing::error!(error = %e, "reload failed; the previous policy keeps running"),
                    },
                }
            }
        });
    }
    wait_for_signal().await;
    tracing::info!("shutting down: no new connections; sessions finish their transaction");
    shutdown.cancel();
    for t in accept_tasks {
        let _ = t.await;
    }
    tracker.close();
    if tokio::time::timeout(config.server.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            grace = ?config.server.shutdown_grace,
            "sessions still open after the grace period are cut off"
        );
    }
    if let Some(t) = &threads {
        t.stop();
    }
    // Deliveries in flight finish (a confirmed one is recorded) within the grace period.
    delivery_stop.cancel();
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    delivery_tracker.close();
    if tokio::time::timeout(config.server.shutdown_grace, delivery_tracker.wait()).await.is_err() {
        tracing::warn!("deliveries still running after the grace period are cut off; they will be retried");
    }
    let _ = std::fs::remove_file(&control);
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn refuse(mut tcp: TcpStream, implicit_tls: bool, why: &str) {
    if !implicit_tls {
        let r = Reply::new(421, "4.7.0", why.to_string()).to_wire();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.write_all(r.as_bytes())).await;
    }
    let _ = tcp.shutdown().await;
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ListenerCtx>, shutdown: CancellationToken, tracker: TaskTracker, threads: Option<Arc<SessionThreads>>) {
    let counts = Arc::new(Mutex::new(ConnCounts::default()));
    let implicit = ctx.cfg.tls == TlsMode::Implicit;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, never spin or stop.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let ip = peer.ip();
        let refused = {
            let mut c = match counts.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            let lim = &ctx.cfg.limits;
            if c.total >= lim.max_connections {
                Some("too many connections, try again later")
            } else if c.per_ip.get(&ip).copied().unwrap_or(0) >= lim.max_connections_per_ip {
                Some("too many connections from your address, try again later")
            } else {
                c.total += 1;
                *c.per_ip.entry(ip).or_insert(0) += 1;
                None
            }
        };
        if let Some(why) = refused {
            let reason = if why.contains("address") { "per_ip" } else { "total" };
            metrics::counter!("weir_connections_refused_total", "listener" => ctx.name.clone(), "reason" => reason)
                .increment(1);
            tracing::info!(listener = %ctx.name, %peer, reason, "connection refused by limit");
            tracker.spawn(refuse(tcp, implicit, why));
            continue;
        }
        metrics::counter!("weir_connections_total", "listener" => ctx.name.clone()).increment(1);
        metrics::gauge!("weir_connections_active", "listener" => ctx.name.clone()).increment(1.0);
        let slot = ConnSlot {
            counts: counts.clone(),
            ip,
            listener: ctx.name.clone(),
        };
        let local = tcp.local_addr().unwrap_or_else(|_| ctx.cfg.bind);
        if let Some(threads) = &threads {
            // The socket moves to the session's thread and its runtime.
            let tcp = match tcp.into_std() {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(listener = %ctx.name, %peer, error = %e, "cannot hand the connection to a session thread");
                    continue;
                }
            };
            let (ctx, shutdown, token) = (ctx.clone(), shutdown.clone(), tracker.token());
            threads.spawn(move || async move {
                let _tracked = token;
                let _slot = slot;
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => Session::new(ctx, Conn::new(Stream::Plain(tcp)), peer, local, shutdown).run().await,
                    Err(e) => tracing::warn!(%peer, error = %e, "cannot register the connection on its session thread"),
                }
            });
            continue;
        }
        let session = Session::new(ctx.clone(), Conn::new(Stream::Plain(tcp)), peer, local, shutdown.clone());
        tracker.spawn(async move {
            let _slot = slot;
            session.run().await;
        });
    }
}
