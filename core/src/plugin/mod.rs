//! The WebAssembly plugin runtime (wasmtime, component model). One engine;
//! each plugin compiled once at load (compiled artefacts cached on disk by
//! the file's SHA-256) and pre-linked (`InstancePre`); the pooling
//! allocator; one instance per plugin per SMTP session, created when first
//! needed, and kept in an [`InstancePool`] after the session for a later
//! one (the guest is told a new session began and forgets its own state;
//! see `event`); a plugin that says it is stateless takes an idle instance
//! for each call instead, so a few warm ones serve all sessions, and one
//! that keeps its state by session keeps to a [`Home`] shared with other
//! sessions (`policy`, [`InstancePool`]). Every call runs under the plugin's memory
//! cap and time budget (epoch interruption) and a deadline that host waits
//! count against. A call runs on the session thread's own stack, unless
//! the plugin imports a capability that waits or once ran for a whole
//! epoch tick: then on a fiber, yielding to the thread's other sessions at every
//! tick (`Instance::call_on_stage`). A trap,
//! panic, time-out, memory exhaustion or refused capability ends that call
//! only and is reported as a [`Fault`]; too many faults in a window switch
//! the plugin off (circuit breaker) until the next reload.

pub mod event;
pub mod host;
pub mod kv;
pub mod mail_auth;
pub mod sealed_io;

pub use event::{Context, Envelope};

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use crossbeam_utils::CachePadded;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::policy::types::{BreakerConfig, Grant, PluginDecl, StageName};

wasmtime::component::bindgen!({
    world: "plugin",
    path: "sdk/wit",
    // Only the capabilities that wait (DNS, mail-auth) are async: a sync
    // host call is cheaper, and the rest never block.
    imports: {
        "weir:plugin/dns": async | trappable,
        "weir:plugin/mail-auth": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    // Told compares what an instance was told with what is true now.
    additional_derives: [PartialEq],
});

pub use weir::plugin::types as wit;
/// The mail-auth capability's types (outputs, checks, signing requests).
pub use weir::plugin::mail_auth as wit_auth;

/// What went wrong in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Trap,
    Timeout,
    Memory,
    Refused,
    /// Switched off by the circuit breaker.
    Disabled,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::Refused => "refused",
            FaultKind::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
    /// Instantiation failed because the allocator had no slot left.
    pub pool_exhausted: bool,
}

impl Fault {
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Fault {
        Fault { kind, message: message.into(), pool_exhausted: false }
    }
}

/// Services the host capabilities use.
pub struct HostServices {
    pub dns: Arc<crate::dns::Dns>,
    pub mail_auth: mail_auth::MailAuth,
    /// None when only checking a policy (no queue database open).
    pub kv: Option<kv::Kv>,
    /// Time budget of one DNS lookup made by a plugin, and of one mail-auth
    /// check (which may make several).
    pub dns_budget: Duration,
    /// This server's name (SPF's %{r} macro).
    pub hostname: String,
}

impl HostServices {
    /// The services of a server (or an offline check) with `config`.
    pub fn new(config: &crate::config::Config, dns: Arc<crate::dns::Dns>, kv: Option<kv::Kv>) -> Arc<HostServices> {
        Self::with(dns, kv, config.plugin_runtime.dns_budget, config.hostname())
    }

    pub fn with(dns: Arc<crate::dns::Dns>, kv: Option<kv::Kv>, dns_budget: Duration, hostname: String) -> Arc<HostServices> {
        Arc::new(HostServices { mail_auth: mail_auth::MailAuth::new(&dns), dns, kv, dns_budget, hostname })
    }
}

/// Per-instance state (the wasmtime store's data).
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) plugin: Arc<LoadedPlugin>,
    pub(crate) services: Arc<HostServices>,
    /// The `config:` of the step being run, as JSON.
    pub(crate) config_json: Arc<str>,
    /// The message, at data and route.
    pub(crate) body: Option<Arc<Vec<u8>>>,
    memory_cap: usize,
    /// The guest's memory as it last grew (what a pooled instance keeps).
    memory_size: usize,
    memory_exceeded: bool,
    pub(crate) refused: Option<&'static str>,
    /// When the call in progress must be over, host waits included (see
    /// `wait_budget`); guest running time has its own budget below.
    deadline: Instant,
    /// Epoch ticks (EPOCH_TICK each) of guest execution in the current call:
    /// the time budget counts running time, not time spent waiting for a
    /// busy executor or for a host call.
    ticks_used: u64,
    budget: Duration,
    timed_out: bool,
    /// The call in progress runs on a fiber of its own and may yield to
    /// the thread's other sessions at an epoch tick (see
    /// `Instance::call_on_stage`).
    yielding: bool,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for PluginState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_exceeded = true;
            return Ok(false);
        }
        self.memory_size = self.memory_size.max(desired);
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl PluginState {
    /// How long a host call may wait (for a DNS answer, a mail-auth check):
    /// the DNS budget, but not past the call's deadline. Past it, the call
    /// ends with a time-out fault — a plugin cannot add up many lookups
    /// that each stay within their budget into a call without end.
    pub(crate) fn wait_budget(&mut self) -> wasmtime::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.timed_out = true;
            return Err(wasmtime::Error::msg("the call went past its deadline waiting for host calls"));
        }
        Ok(left.min(self.services.dns_budget))
    }

    /// Checks a grant; a missing one is remembered so the fault is "refused".
    pub(crate) fn require(&mut self, g: Grant) -> wasmtime::Result<()> {
        if self.plugin.grants.contains(&g) {
            Ok(())
        } else {
            self.refused = Some(g.as_str());
            Err(wasmtime::Error::msg(format!(
                "plugin `{}` called the `{}` capability without a grant",
                self.plugin.name,
                g.as_str()
            )))
        }
    }
}

/// A plugin compiled and linked, ready to instantiate.
pub struct LoadedPlugin {
    /// Interned ([`intern`]): every decision record and change names its
    /// plugin, and a shared `Arc` cost two atomic writes to a count that
    /// both session threads' cores kept taking from each other.
    pub name: &'static str,
    pub grants: Vec<Grant>,
    pub stages: Vec<StageName>,
    pub memory_cap: usize,
    pub budget: Duration,
    pub default_config: Option<serde_json::Value>,
    pub sha256: String,
    /// Whether an instance may serve later sessions (`reuse_instances`).
    pub reuse: bool,
    /// The plugin says it keeps no per-session state (`describe`).
    pub stateless: bool,
    /// The plugin says it keeps per-session state by session number, so
    /// one instance may hold several sessions' (`describe`).
    pub session_keyed: bool,
    pre: PluginPre<PluginState>,
    breaker: BreakerConfig,
    faults: Mutex<VecDeque<Instant>>,
    disabled: AtomicBool,
    /// The data files of `files:`, read at load. `Bytes`, so a plugin's
    /// `files.read` hands wasmtime this copy (a count bumped) to lower.
    pub files: HashMap<String, bytes::Bytes>,
    /// It imports a capability that waits (DNS, mail-auth): its calls run
    /// on a fiber, so that the wait lets other sessions run.
    pub waits: bool,
    /// One of its calls ran for a whole epoch tick: from then on its calls
    /// run on a fiber and yield to the thread's other sessions at every tick.
    yields: AtomicBool,
}

/// The one copy of a plugin name for the life of the process. Names
/// come from the configuration, so the set stays as small as the plugins
/// ever declared (reloads that keep a name add nothing).
pub fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.into());
    names.push(n);
    n
}

/// The largest data file a plugin may declare.
pub const MAX_PLUGIN_FILE: u64 = 64 << 20;

impl LoadedPlugin {
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    fn record_fault(&self, kind: FaultKind) {
        metrics::counter!("weir_plugin_faults_total", "plugin" => self.name.to_string(), "kind" => kind.as_str()).increment(1);
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        f.push_back(now);
        while f.front().is_some_and(|t| now.duration_since(*t) > self.breaker.window) {
            f.pop_front();
        }
        if f.len() as u32 >= self.breaker.faults && !self.disabled.swap(true, Ordering::Relaxed) {
            tracing::error!(
                plugin = %self.name,
                faults = f.len(),
                window = ?self.breaker.window,
                "CIRCUIT BREAKER OPEN: plugin switched off until the next reload; its steps' on_error applies"
            );
            metrics::gauge!("weir_plugin_circuit_open", "plugin" => self.name.to_string()).set(1.0);
        }
    }
}

/// Runtime settings (`plugin_runtime:` in the configuration).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Plugin instances alive at once (across all sessions).
    pub max_instances: u32,
    /// Where compiled plugins are cached (default: data_dir/plugin-cache).
    pub cache_dir: Option<PathBuf>,
    /// Time budget of one DNS lookup made by a plugin.
    #[serde(with = "humantime_serde")]
    pub dns_budget: Duration,
    /// Instances of one plugin kept between sessions for later ones (they
    /// count against `max_instances`; idle ones are dropped when the pool
    /// runs out).
    pub idle_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 1000,
            cache_dir: None,
            dns_budget: Duration::from_secs(2),
            idle_instances: 64,
        }
    }
}

/// The engine, the linker and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: Option<PathBuf>,
    max_memory: usize,
    idle_instances: usize,
    /// Every policy's pool of idle instances, to empty them all when the
    /// allocator runs out of slots (an old policy's may still hold some).
    pools: Mutex<Vec<Weak<InstancePool>>>,
}

/// Resolution of plugin time budgets.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The largest memory cap any plugin may ask for.
pub const MAX_PLUGIN_MEMORY_MB: u32 = 256;

/// How plugin linear memories sit in the address space.
#[derive(Clone, Copy)]
enum MemoryLayout {
    /// 4 GiB reserved per memory: no bounds checks in compiled code.
    Full,
    /// Only the memory cap reserved: every access is bounds-checked.
    Bounded,
}

/// Address space reserved per memory in the full layout, and its guard.
const FULL_RESERVATION: u64 = 4 << 30;
const FULL_GUARD: u64 = 32 << 20;
/// The most address space the instance pool may reserve (of the 128 TiB a
/// 64-bit Linux process has): 16 TiB, about 2000 instances' memories.
const MAX_POOL_ADDRESS_SPACE: u64 = 16 << 40;

/// The engine with bounded memories; if even that much address space is
/// refused, an error that says how much is needed and what to change.
fn bounded(n: u32, max_memory: usize) -> Result<Engine> {
    engine(n, max_memory, MemoryLayout::Bounded).map_err(|e| {
        let gib = (2 * n as u64 * (max_memory as u64 + (64 << 10))) >> 30;
        anyhow!("{e}: plugin memories need about {gib} GiB of address space for plugin_runtime.max_instances = {n}; raise the process's address-space limit (ulimit -v) or lower max_instances")
    })
}

/// The engine: epoch interruption, the pooling allocator sized for `n`
/// instances, and linear memories laid out as `layout` says.
fn engine(n: u32, max_memory: usize, layout: MemoryLayout) -> Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    // WEIR_PLUGIN_PERFMAP=1 writes /tmp/perf-PID.map, so that `perf`
    // names the plugins' compiled functions when profiling Weir.
    if std::env::var_os("WEIR_PLUGIN_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n * 4)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .max_memory_size(max_memory)
        // Reset a freed slot's first pages by memset rather than handing
        // them back to the kernel, so the next session's instance does
        // not page-fault its way through them again.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Pooled memories never move, so compiled code may keep the base
    // pointer in a register.
    config.memory_may_move(false);
    match layout {
        MemoryLayout::Full => {
            config.memory_reservation(FULL_RESERVATION);
            config.memory_guard_size(FULL_GUARD);
        }
        MemoryLayout::Bounded => {
            config.memory_reservation(max_memory as u64);
            config.memory_guard_size(64 * 1024);
        }
    }
    config.memory_reservation_for_growth(0);
    Engine::new(&config).map_err(|e| anyhow!("starting the WebAssembly engine: {e}"))
}

/// Links every host capability: bindgen's glue for all but the two bulk
/// reads, which `host::link_reads` links without a copy.
fn link_host(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use weir::plugin as p;
    p::log::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    p::config::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    p::clock::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    p::kv::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    p::dns::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    p::mail_auth::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    p::types::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    host::link_reads(linker)
}

impl Runtime {
    pub fn new(cfg: &RuntimeConfig, cache_dir: Option<PathBuf>) -> Result<Arc<Runtime>> {
        let max_memory = (MAX_PLUGIN_MEMORY_MB as usize) * 1024 * 1024;
        let n = cfg.max_instances.max(16);
        // Full 4 GiB reservations let Cranelift drop the bounds check (and
        // its Spectre guard) from every load and store a plugin makes; the
        // bounded layout checks each access, which made plugin code about a
        // third slower. The pool reserves its address space when the engine
        // starts: if the full layout is too large for this many instances,
        // or the kernel refuses it (a `ulimit -v`), use the bounded one.
        let engine = if (2 * n as u64).saturating_mul(FULL_RESERVATION + FULL_GUARD) > MAX_POOL_ADDRESS_SPACE {
            tracing::info!(max_instances = n, "too many instances for 4 GiB each; plugin memories are bounds-checked");
            bounded(n, max_memory)?
        } else {
            match engine(n, max_memory, MemoryLayout::Full) {
                Ok(engine) => {
                    tracing::info!(max_instances = n, "plugin memories: 4 GiB of address space each, no bounds checks");
                    engine
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reserve 4 GiB of address space per plugin memory; plugin memories are bounds-checked");
                    bounded(n, max_memory)?
                }
            }
        };
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        // WASI linked synchronously (with streams and polls that never
        // wait): a plugin whose imports are all synchronous can be called
        // without a fiber.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow!("linking WASI: {e}"))?;
        sealed_io::link(&mut linker).map_err(|e| anyhow!("linking WASI: {e}"))?;
        link_host(&mut linker).map_err(|e| anyhow!("linking host capabilities: {e}"))?;
        // The epoch ticker: time budgets are counted in ticks of EPOCH_TICK.
        // (A 1 ms tick cost a thousand wake-ups a second on a busy machine.)
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            })
            .context("starting the epoch ticker")?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.or(cfg.cache_dir.clone()),
            max_memory,
            idle_instances: cfg.idle_instances as usize,
            pools: Mutex::new(Vec::new()),
        }))
    }

    /// Compiles (or loads from the cache) a component.
    fn compile(&self, bytes: &[u8], hash: &str) -> Result<Component> {
        if let Some(dir) = &self.cache_dir {
            let path = dir.join(format!("{hash}.cwasm"));
            if path.exists() {
                // SAFETY: the file was written by `precompile_component` of
                // this same engine configuration, into our own data directory;
                // wasmtime checks the engine's compatibility header.
                match unsafe { Component::deserialize_file(&self.engine, &path) } {
                    Ok(c) => return Ok(c),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "stale compiled plugin; recompiling"),
                }
            }
            let compiled = self.engine.precompile_component(bytes).map_err(|e| anyhow!("{e}"))?;
            let _ = std::fs::create_dir_all(dir);
            let tmp = dir.join(format!("{hash}.cwasm.tmp"));
            if std::fs::write(&tmp, &compiled).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            // SAFETY: as above; these bytes were just produced by this engine.
            return unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(|e| anyhow!("{e}"));
        }
        Component::from_binary(&self.engine, bytes).map_err(|e| anyhow!("{e}"))
    }

    /// Loads one plugin: reads, checks the pin, compiles, links, and asks
    /// it which stages it handles.
    pub async fn load(self: &Arc<Self>, name: &str, decl: &PluginDecl, base: &Path, services: &Arc<HostServices>) -> Result<Arc<LoadedPlugin>> {
        let path = base.join(decl.path.0.replace("{plugin_dir}", &plugin_dir()));
        let bytes = std::fs::read(&path).map_err(|e| anyhow!("cannot read plugin {}: {e}", path.display()))?;
        let hash = hex::encode(Sha256::digest(&bytes));
        if let Some(pin) = &decl.sha256 {
            if !pin.eq_ignore_ascii_case(&hash) {
                return Err(anyhow!("sha256 of {} is {hash}, but the policy pins {pin}", path.display()));
            }
        }
        let component = self
            .compile(&bytes, &hash)
            .map_err(|e| anyhow!("{} is not a valid plugin component: {e}", path.display()))?;
        // A plugin built against another version of the interface may
        // type-check and still mean something else by it (0.3.0 changed what
        // `new-session` asks of the guest): refused, with what to do.
        if let Some(v) = foreign_interface_version(&self.engine, &component) {
            return Err(anyhow!(
                "{} was built against weir:plugin@{v}, but this Weir speaks weir:plugin@{INTERFACE_VERSION}: rebuild it against the current SDK",
                path.display()
            ));
        }
        // Load-time enforcement of grants: a capability interface the
        // component imports must be granted.
        let imported = imported_capabilities(&self.engine, &component);
        tracing::debug!(plugin = %name, ?imported, "plugin imports");
        for cap in &imported {
            if !decl.grants.iter().any(|g| g.as_str() == cap) {
                return Err(anyhow!(
                    "{} imports the `{cap}` capability (weir:plugin/{cap}) but the policy does not grant it",
                    path.display()
                ));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{} imports something Weir does not provide: {e}", path.display()))?;
        let pre = PluginPre::new(pre).map_err(|e| anyhow!("{} is not a weir:plugin component: {e}", path.display()))?;
        let memory_cap = (decl.limits.memory_mb as usize * 1024 * 1024).min(self.max_memory);
        if !decl.files.is_empty() && !decl.grants.contains(&Grant::Files) {
            return Err(anyhow!("{name} declares files: but is not granted `files`"));
        }
        let mut files = HashMap::new();
        for (file_name, file_path) in &decl.files {
            let p = base.join(file_path.replace("{plugin_dir}", &plugin_dir()));
            let size = std::fs::metadata(&p).map_err(|e| anyhow!("cannot read {name}'s file {file_name} ({}): {e}", p.display()))?.len();
            if size > MAX_PLUGIN_FILE {
                return Err(anyhow!("{name}'s file {file_name} ({}) is {size} octets; at most {MAX_PLUGIN_FILE} are allowed", p.display()));
            }
            let bytes = std::fs::read(&p).map_err(|e| anyhow!("cannot read {name}'s file {file_name} ({}): {e}", p.display()))?;
            files.insert(file_name.clone(), bytes::Bytes::from(bytes));
        }
        let mut plugin = LoadedPlugin {
            name: intern(name),
            grants: decl.grants.clone(),
            stages: Vec::new(),
            memory_cap,
            budget: decl.limits.time_budget,
            default_config: decl.config.clone(),
            sha256: hash,
            reuse: decl.reuse_instances,
            stateless: false,
            session_keyed: false,
            pre,
            breaker: decl.circuit_breaker.clone(),
            faults: Mutex::new(VecDeque::new()),
            disabled: AtomicBool::new(false),
            files,
            waits: imported.iter().any(|c| c == Grant::Dns.as_str() || c == Grant::MailAuth.as_str()),
            yields: AtomicBool::new(false),
        };
        // Ask it what it is, in a throw-away instance.
        let probe = Arc::new(LoadedPlugin {
            name: plugin.name,
            grants: Vec::new(),
            stages: Vec::new(),
            memory_cap,
            budget: plugin.budget.max(Duration::from_secs(1)),
            default_config: None,
            sha256: plugin.sha256.clone(),
            reuse: false,
            stateless: false,
            session_keyed: false,
            pre: plugin.pre.clone(),
            breaker: plugin.breaker.clone(),
            faults: Mutex::new(VecDeque::new()),
            disabled: AtomicBool::new(false),
            files: HashMap::new(),
            waits: plugin.waits,
            yields: AtomicBool::new(false),
        });
        let mut inst = Instance::new(self, probe, services.clone()).await.map_err(|f| anyhow!("{}", f.message))?;
        let info = inst.describe().await.map_err(|f| anyhow!("asking {name} what it is: {}", f.message))?;
        plugin.stages = info.stages.into_iter().map(stage_from_wit).collect();
        plugin.stateless = info.stateless;
        plugin.session_keyed = info.session_keyed;
        tracing::info!(
            plugin = %name, path = %path.display(), stages = ?plugin.stages, stateless = plugin.stateless,
            session_keyed = plugin.session_keyed, "plugin loaded"
        );
        Ok(Arc::new(plugin))
    }
}

/// Where `{plugin_dir}` in a plugin path points: $WEIR_PLUGIN_DIR, or the
/// first-party plugins built by `make plugins` in the source tree this
/// binary was built from.
pub fn plugin_dir() -> String {
    std::env::var("WEIR_PLUGIN_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/build").to_string())
}

/// The version of the plugin interface (sdk/wit/plugin.wit) this host
/// speaks.
pub const INTERFACE_VERSION: &str = "0.6.0";

/// Whether two interface versions are compatible by semver: the same major
/// version, and below 1.0 the same minor one.
fn compatible_versions(a: &str, b: &str) -> bool {
    let key = |v: &str| {
        let mut parts = v.split(['.', '-', '+']);
        let major = parts.next().unwrap_or("").to_string();
        let minor = parts.next().unwrap_or("").to_string();
        if major == "0" { (major, minor) } else { (major, String::new()) }
    };
    key(a) == key(b)
}

/// The version of a weir:plugin interface the component imports, if it is
/// not one this host speaks (every Rust plugin imports `types`).
fn foreign_interface_version(engine: &Engine, c: &Component) -> Option<String> {
    c.component_type().imports(engine).find_map(|(name, _)| {
        let (_, version) = name.strip_prefix("weir:plugin/")?.split_once('@')?;
        (!compatible_versions(version, INTERFACE_VERSION)).then(|| version.to_string())
    })
}

/// The host capabilities (weir:plugin/<name>) a component imports.
fn imported_capabilities(engine: &Engine, c: &Component) -> Vec<String> {
    let ty = c.component_type();
    let mut out: Vec<String> = ty
        .imports(engine)
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix("weir:plugin/")?;
            let iface = rest.split('@').next()?;
            (iface != "types").then(|| iface.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn stage_from_wit(s: wit::Stage) -> StageName {
    match s {
        wit::Stage::Connect => StageName::Connect,
        wit::Stage::Helo => StageName::Helo,
        wit::Stage::Auth => StageName::Auth,
        wit::Stage::MailFrom => StageName::MailFrom,
        wit::Stage::RcptTo => StageName::RcptTo,
        wit::Stage::Data => StageName::Data,
        wit::Stage::Route => StageName::Route,
    }
}

pub fn stage_to_wit(s: StageName) -> wit::Stage {
    match s {
        StageName::Connect => wit::Stage::Connect,
        StageName::Helo => wit::Stage::Helo,
        StageName::Auth => wit::Stage::Auth,
        StageName::MailFrom => wit::Stage::MailFrom,
        StageName::RcptTo => wit::Stage::RcptTo,
        StageName::Data => wit::Stage::Data,
        StageName::Route => wit::Stage::Route,
    }
}

impl Runtime {
    /// A pool of idle instances for a policy's plugins (`slots` of them),
    /// known to the runtime so that it can be emptied when slots run out.
    pub fn new_pool(&self, slots: usize) -> Arc<InstancePool> {
        let shards = pool_shards();
        let pool = Arc::new(InstancePool {
            slots: (0..slots).map(|_| (0..shards).map(|_| CachePadded::new(Mutex::new(Vec::new()))).collect()).collect(),
            shard_cap: self.idle_instances.div_ceil(shards),
            homes: (0..slots).map(|_| (0..shards).map(|_| Mutex::new(Vec::new())).collect()).collect(),
        });
        let mut all = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&pool));
        pool
    }

    /// A new instance of `plugin`. When the allocator has no slot left,
    /// the idle instances of every policy are dropped and it tries again.
    pub async fn instantiate(&self, plugin: Arc<LoadedPlugin>, services: Arc<HostServices>) -> Result<Instance, Fault> {
        match Instance::new(self, plugin.clone(), services.clone()).await {
            Err(f) if f.pool_exhausted => {
                let pools: Vec<Arc<InstancePool>> = {
                    let all = self.pools.lock().unwrap_or_else(|p| p.into_inner());
                    all.iter().filter_map(Weak::upgrade).collect()
                };
                let dropped: usize = pools.iter().map(|p| p.clear()).sum();
                tracing::warn!(dropped, "plugin instance pool exhausted; dropped idle instances (raise plugin_runtime.max_instances?)");
                Instance::new(self, plugin, services).await
            }
            r => r,
        }
    }
}

/// Idle instances of a policy's plugins, by plugin slot, most recently
/// used last: between sessions, and for stateless plugins between calls.
///
/// A stateless plugin's instance goes back to the pool after every call,
/// and a call takes an idle one rather than making another, so the plugin
/// has about as many instances as calls run at once, and they stay in the
/// CPU's caches: a few warm instances serve every session. An instance that
/// moves to another session is told only what differs from what it was
/// told last (see `event`), which costs little more than its own session's
/// next call would. Measured with the five test plugins (against one
/// instance per session, interleaved runs): 20% more messages a second at
/// 100 sessions, 12% at 20 (benches/README.md).
///
/// Each slot keeps its idle instances in one shard per core, and a thread
/// gives back to and takes from its own shard first (another's only when
/// its own is empty). An instance then stays with one runtime worker, and
/// so in one core's cache, instead of going to whichever worker calls
/// next. Measured against one shared list (six interleaved A/B runs, 1 KB
/// at 100 sessions): 2-12% more messages a second (median 5%); at 20
/// sessions, at 10 KB and with a connection per message no difference
/// beyond the noise.
pub struct InstancePool {
    /// By slot, then shard: each idle instance with the session it last
    /// served (kept beside it, so finding a session's instance reads one
    /// array, not every instance). Each shard on its own cache line: side
    /// by side, two threads' takes and give-backs wrote to the same line.
    slots: Vec<Vec<CachePadded<Mutex<Idle>>>>,
    /// Idle instances kept per shard: `idle_instances` over the shards.
    shard_cap: usize,
    /// By slot, then shard: the homes of a session-keyed plugin (see
    /// `Home`), at most `HOMES_PER_SHARD` in each.
    homes: Vec<Vec<Mutex<Vec<Arc<Home>>>>>,
}

/// Homes made per slot and shard at most: two, so that a call seldom finds
/// its home busy with another session's.
const HOMES_PER_SHARD: usize = 2;

/// An instance of a session-keyed plugin (one that keeps its per-session
/// state by session number) that holds the state of many sessions: each
/// session keeps to the home it was given at its first call, for as long
/// as it lasts, and its calls take turns with those of the other sessions
/// homed there. A plugin with per-session state thus needs a few warm
/// instances rather than one per session, cold at every call (criterion
/// `pipeline_message` at 100 sessions, cold: 3-4 µs less a message), and
/// `max_instances` no longer bounds how many sessions it serves at once.
/// What it costs: a call may wait for another session's call on the same
/// instance (a plugin granted DNS or mail-auth, whose calls wait on the
/// network, is never homed), and a fault loses the state of every session
/// the instance held — they carry on from a fresh value in a new instance,
/// as the faulting session always did.
pub struct Home {
    /// The instance; None until the first call, and after a fault.
    inst: tokio::sync::Mutex<Option<Box<Instance>>>,
    /// Sessions homed here now.
    sessions: std::sync::atomic::AtomicUsize,
    /// Sessions that ended while homed here, for the next call to tell.
    ended: Mutex<Vec<u64>>,
}

impl Home {
    /// Runs `call` on the home's instance (made first if there is none),
    /// when no other session's call is running on it; `made` says whether
    /// the instance was made for this call. An instance left broken is
    /// dropped: the next call makes another.
    pub async fn with_instance<R>(
        &self,
        session: u64,
        make: impl AsyncFnOnce() -> Result<Instance, Fault>,
        call: impl AsyncFnOnce(&mut Instance) -> R,
    ) -> Result<(R, bool), Fault> {
        let mut guard = self.inst.lock().await;
        let made = guard.is_none();
        let inst = match guard.as_mut() {
            Some(i) => i,
            None => guard.insert(Box::new(make().await?)),
        };
        inst.serve(session);
        inst.ended.append(&mut self.ended.lock().unwrap_or_else(|p| p.into_inner()));
        let r = call(inst).await;
        if inst.broken {
            *guard = None;
        }
        Ok((r, made))
    }

    /// A session homed here ended.
    pub fn leave(&self, session: u64) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).push(session);
    }
}

type Idle = Vec<(u64, Box<Instance>)>;

/// How many shards each slot's idle instances are kept in: one per core
/// (the runtime has a worker per core).
fn pool_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 64)
}

/// The calling thread's shard out of `shards`: a thread is numbered when
/// it first takes or gives back an instance, so the runtime's workers,
/// which make nearly all calls, get different shards.
fn my_shard(shards: usize) -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static ID: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    ID.with(|id| *id) % shards.max(1)
}

impl InstancePool {
    /// An idle instance for `session`: the one that served it last, if it
    /// is idle (it needs to be told least; only a stateless plugin's can
    /// be, since a plugin with per-session state keeps its instance all
    /// session), else the most recently used; from the calling thread's
    /// shard, or the next shard that has one. None when there is none: the
    /// caller makes one.
    pub fn take(&self, slot: usize, session: u64) -> Option<Box<Instance>> {
        let shards = self.slots.get(slot)?;
        let mine = my_shard(shards.len());
        (0..shards.len()).find_map(|k| {
            let mut idle = shards.get((mine + k) % shards.len())?.lock().unwrap_or_else(|p| p.into_inner());
            let i = idle.iter().rposition(|(s, _)| *s == session).or(idle.len().checked_sub(1))?;
            Some(idle.remove(i).1)
        })
    }

    /// Keeps an instance after a call or a session, unless its plugin is
    /// not to be reused, it broke, it has grown past half its memory cap
    /// (a leak would otherwise end in a fault), or enough are kept already
    /// in the calling thread's shard.
    pub fn give_back(&self, slot: usize, inst: Box<Instance>) {
        let plugin = inst.plugin();
        if !plugin.reuse || inst.broken || plugin.is_disabled() || inst.memory_size() > plugin.memory_cap / 2 {
            return;
        }
        if let Some(shard) = self.slots.get(slot).and_then(|shards| shards.get(my_shard(shards.len()))) {
            let mut idle = shard.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.shard_cap {
                idle.push((inst.session, inst));
            }
        }
    }

    /// The home for a session's first call of `slot`'s plugin (the session
    /// is counted in), from the calling thread's shard: a new one while
    /// the shard has fewer than `HOMES_PER_SHARD`, else the one holding the
    /// fewest sessions. A session stays on its session thread, so its
    /// home's instance stays in one core's cache instead of serving calls
    /// from every core in turn.
    pub fn home(&self, slot: usize) -> Option<Arc<Home>> {
        let shards = self.homes.get(slot)?;
        let mut homes = shards.get(my_shard(shards.len()))?.lock().unwrap_or_else(|p| p.into_inner());
        let home = if homes.len() < HOMES_PER_SHARD {
            let h = Arc::new(Home {
                inst: tokio::sync::Mutex::new(None),
                sessions: std::sync::atomic::AtomicUsize::new(0),
                ended: Mutex::new(Vec::new()),
            });
            homes.push(h.clone());
            h
        } else {
            homes.iter().min_by_key(|h| h.sessions.load(Ordering::Relaxed))?.clone()
        };
        home.sessions.fetch_add(1, Ordering::Relaxed);
        Some(home)
    }

    /// Drops every idle instance; returns how many there were.
    fn clear(&self) -> usize {
        self.slots.iter().flatten().map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner())).len()).sum()
    }
}

/// One plugin's instance, serving one session at a time.
pub struct Instance {
    store: Store<PluginState>,
    bindings: Plugin,
    /// What the guest was told (see `event`).
    told: event::Told,
    /// The session it serves or last served (0: none yet).
    session: u64,
    /// The next call is the first of a session.
    new_session: bool,
    /// Sessions that ended whose state the guest may hold: told at the
    /// next call (`update.ended`).
    ended: Vec<u64>,
    /// The updates of a call, kept between calls so that their list is
    /// not allocated anew each time.
    updates: Vec<wit::Update>,
    /// The guest's `on-stage`, type-checked (see `call_on_stage`).
    on_stage: wasmtime::component::Func,
    /// Set when a call was cut off mid-way: the instance must not be reused.
    pub broken: bool,
}

impl Instance {
    pub async fn new(rt: &Runtime, plugin: Arc<LoadedPlugin>, services: Arc<HostServices>) -> Result<Instance, Fault> {
        let state = PluginState {
            // No files, no environment, no network, no clocks beyond WASI's: a sealed box.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory_cap: plugin.memory_cap,
            memory_size: 0,
            budget: plugin.budget,
            plugin: plugin.clone(),
            services,
            config_json: Arc::from(""),
            body: None,
            memory_exceeded: false,
            refused: None,
            deadline: Instant::now(),
            ticks_used: 0,
            timed_out: false,
            yielding: false,
        };
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        arm_deadline(&mut store);
        let pre = plugin.pre.instance_pre();
        let instance = if plugin.waits { pre.instantiate_async(&mut store).await } else { pre.instantiate(&mut store) };
        let instance = match instance {
            Ok(i) => i,
            Err(e) => {
                let exhausted = e.chain().any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>());
                let mut f = classify(&mut store, e);
                f.pool_exhausted = exhausted;
                return Err(f);
            }
        };
        let bindings = Plugin::new(&mut store, &instance).map_err(|e| classify(&mut store, e))?;
        // The type of `on-stage`, checked once per instance, so that each
        // call can skip the check.
        let on_stage = instance
            .get_func(&mut store, "on-stage")
            .ok_or_else(|| Fault::new(FaultKind::Trap, "the component exports no on-stage"))?;
        on_stage.typed::<OnStageParams<'_>, (wit::Decision,)>(&store).map_err(|e| classify(&mut store, e))?;
        Ok(Instance {
            store,
            bindings,
            on_stage,
            told: event::Told::default(),
            session: 0,
            new_session: true,
            ended: Vec::new(),
            updates: Vec::new(),
            broken: false,
        })
    }

    /// Makes the instance serve `session` (a number unique in the process):
    /// if it served another before, the guest will be told a new session
    /// began (it forgets its own per-session state; its context is brought
    /// up to date like at any call).
    pub fn serve(&mut self, session: u64) {
        if self.session != session {
            self.session = session;
            self.new_session = true;
        }
    }

    /// Notes that `session`, whose state the guest may hold, ended: the
    /// next call tells it to forget it.
    pub fn session_ended(&mut self, session: u64) {
        self.ended.push(session);
    }

    /// How large the guest's memory has grown.
    pub fn memory_size(&self) -> usize {
        self.store.data().memory_size
    }

    async fn describe(&mut self) -> Result<wit::PluginInfo, Fault> {
        self.begin_call(Instant::now(), None, None, true);
        let r = self.bindings.call_describe(&mut self.store).await;
        r.map_err(|e| classify(&mut self.store, e))
    }

    fn begin_call(&mut self, started: Instant, config: Option<&Arc<str>>, body: Option<Arc<Vec<u8>>>, yielding: bool) {
        let s = self.store.data_mut();
        s.yielding = yielding;
        // The epoch callback bounds guest running time; the deadline bounds
        // the whole call, the waits of host calls included.
        s.deadline = started + s.budget * 10 + s.services.dns_budget + Duration::from_secs(5);
        s.ticks_used = 0;
        s.timed_out = false;
        s.memory_exceeded = false;
        s.refused = None;
        // Cloned only when it differs: the step's Arc is shared by every
        // session thread, and a clone and drop per call wrote its count
        // from both cores.
        if let Some(c) = config.filter(|c| !Arc::ptr_eq(c, &s.config_json)) {
            s.config_json = c.clone();
        }
        s.body = body;
        // The callback stays registered; only the deadline is re-armed.
        self.store.set_epoch_deadline(1);
    }

    /// Calls `on-stage` with what changed since the instance's last call.
    /// A fault leaves the instance broken (a Rust guest cannot recover from
    /// a trap mid-call): callers drop it.
    /// `started` is when the step began (the call's deadline counts from it).
    ///
    /// The call's future is polled out of line ([`OutOfLine`]): awaited
    /// directly, its poll function (with wasmtime's call machinery under
    /// it) was in the binary twice, and a pipeline whose plugins are
    /// placed differently (see `policy`) ran through both copies, each
    /// evicting the other from the instruction cache. `CACHE=1
    /// benches/instructions.sh`: L1 instruction-cache misses a message
    /// with the test pipeline 8090 -> 7975 (wasmtime's 1633 -> 1554).
    pub fn on_stage<'a>(
        &'a mut self,
        ctx: &'a Context,
        started: Instant,
        config_id: u32,
        config: &'a Arc<str>,
        body: Option<Arc<Vec<u8>>>,
    ) -> OutOfLine<impl Future<Output = Result<wit::Decision, Fault>> + 'a> {
        OutOfLine { inner: self.call_on_stage(ctx, started, config_id, config, body) }
    }

    async fn call_on_stage(&mut self, ctx: &Context, started: Instant, config_id: u32, config: &Arc<str>, body: Option<Arc<Vec<u8>>>) -> Result<wit::Decision, Fault> {
        // A plugin that may wait, or that once ran for a whole tick, is called
        // on a fiber (`call_async`): a wait or a tick yields to the
        // thread's other sessions. Any other is called on the thread's own
        // stack, which costs less: no fiber to switch to, and no fiber
        // stack of this instance's own to bring into the caches (each
        // instance keeps one). Such a call cannot yield; the first of a
        // plugin's calls to run for a whole tick holds the thread up to its
        // time budget and switches the plugin to fibers.
        let yielding = {
            let p = &self.store.data().plugin;
            p.waits || p.yields.load(Ordering::Relaxed)
        };
        self.begin_call(started, Some(config), body, yielding);
        let mut updates = std::mem::take(&mut self.updates);
        let mut call = self.told.call(ctx, std::mem::take(&mut self.new_session), config_id, &mut updates);
        call.session = self.session;
        if !self.ended.is_empty() {
            updates.push(wit::Update::Ended(std::mem::take(&mut self.ended)));
        }
        // No list at all when nothing changed: even an empty one costs a
        // trip into the guest's allocator to place it.
        let told = (!updates.is_empty()).then_some(updates.as_slice());
        // SAFETY: `on_stage` was type-checked as this `TypedFunc`'s type
        // when the instance was made.
        let f = unsafe { wasmtime::component::TypedFunc::<OnStageParams<'_>, (wit::Decision,)>::new_unchecked(self.on_stage) };
        let r = match yielding {
            true => f.call_async(&mut self.store, (&call, told)).await,
            false => f.call(&mut self.store, (&call, told)),
        }
        .map(|(d,)| d);
        updates.clear();
        self.updates = updates;
        match r {
            Ok(d) => {
                self.store.data_mut().body = None;
                Ok(d)
            }
            Err(e) => {
                self.broken = true;
                Err(classify(&mut self.store, e))
            }
        }
    }

    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.store.data().plugin
    }
}

pin_project_lite::pin_project! {
    /// A future polled by a function of its own that is never inlined into
    /// its caller's state machine, so that the code of the future it wraps
    /// exists once however many places await it.
    pub struct OutOfLine<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for OutOfLine<F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

/// `on-stage`'s parameters, as the host lowers them.
type OnStageParams<'a> = (&'a wit::Call, Option<&'a [wit::Update]>);

fn arm_deadline(store: &mut Store<PluginState>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        s.ticks_used += 1;
        if EPOCH_TICK * (s.ticks_used as u32) > s.budget {
            s.timed_out = true;
            return Err(wasmtime::Error::msg(format!("time budget of {:?} exceeded", s.budget)));
        }
        if s.yielding {
            // Let other sessions run between ticks. Tokio's own yield: it
            // wakes the call only after the runtime has polled for I/O.
            // (`Yield` wakes it at once; a current-thread runtime polls for
            // I/O every 61 turns of its queue, so a looping plugin kept the
            // other sessions from reading their sockets for its whole call.)
            return Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())));
        }
        // A call on the thread's own stack cannot yield: if it ran for a
        // whole tick, its plugin's later calls will, on a fiber. (Not at
        // the first callback: the deadline is the next tick of the shared
        // ticker, so the first comes at whatever moment a call crosses a
        // tick, for a call of microseconds one time in thousands.)
        if s.ticks_used >= 2 && !s.plugin.yields.swap(true, Ordering::Relaxed) {
            tracing::warn!(plugin = s.plugin.name, "a call ran for a whole epoch tick while holding its session thread; this plugin's calls now run on a fiber and yield to other sessions");
        }
        Ok(UpdateDeadline::Continue(1))
    });
}

fn classify(store: &mut Store<PluginState>, e: wasmtime::Error) -> Fault {
    let s = store.data();
    let kind = if s.timed_out {
        FaultKind::Timeout
    } else if s.memory_exceeded {
        FaultKind::Memory
    } else if s.refused.is_some() {
        FaultKind::Refused
    } else {
        FaultKind::Trap
    };
    let message = format!("{e:#}");
    Fault::new(kind, message)
}

/// The plugins of one policy, by name.
pub type LoadedPlugins = HashMap<String, Arc<LoadedPlugin>>;

/// Records a fault against a plugin (metrics, circuit breaker).
pub fn note_fault(p: &LoadedPlugin, f: &Fault) {
    // A switched-off plugin is not faulting again, and a server out of
    // instance slots (more sessions at once than `max_instances` allows)
    // is not the plugin's fault: neither counts towards its breaker.
    if f.kind != FaultKind::Disabled && !f.pool_exhausted {
        p.record_fault(f.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_version_is_the_wit_packages() {
        let wit = include_str!("../../../sdk/wit/plugin.wit");
        assert!(wit.contains(&format!("\npackage weir:plugin@{INTERFACE_VERSION};\n")), "sdk/wit/plugin.wit and INTERFACE_VERSION differ");
    }

    #[test]
    fn threads_keep_to_different_shards() {
        // With as many shards as numbers, a shard is the thread's number
        // (other tests' threads may take numbers in between).
        let shard = || std::thread::spawn(|| (my_shard(usize::MAX), my_shard(usize::MAX))).join().unwrap();
        let (a, a_again) = shard();
        let (b, _) = shard();
        assert_eq!(a, a_again, "a thread keeps its shard");
        assert_ne!(a, b, "each thread has its own number");
        assert_eq!(my_shard(1), 0);
    }

    #[test]
    fn a_plugin_name_is_interned_once() {
        let a = intern("interned-test-plugin");
        let again = intern(&String::from("interned-test-plugin"));
        let other = intern("interned-test-other");
        assert_eq!(a, "interned-test-plugin");
        assert!(std::ptr::eq(a, again), "the same name gives the same copy");
        assert_eq!(other, "interned-test-other");
        assert!(!std::ptr::eq(a, other));
    }

    #[test]
    fn interface_versions_are_compared_by_semver() {
        assert!(compatible_versions("0.4.0", "0.4.0"));
        assert!(compatible_versions("0.4.2", "0.4.0"));
        assert!(!compatible_versions("0.3.0", "0.4.0"));
        assert!(!compatible_versions("0.40.0", "0.4.0"));
        assert!(compatible_versions("1.2.0", "1.0.0"));
        assert!(!compatible_versions("2.0.0", "1.0.0"));
        assert!(!compatible_versions("", "0.4.0"));
    }
}
