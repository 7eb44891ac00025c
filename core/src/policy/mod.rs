//! Policy pipelines at run time: the loaded plugins and named pipelines of
//! one configuration ([`Policy`], swapped whole on reload), and a session's
//! view of it ([`SessionPolicy`]: its instances, taken from the policy's
//! pool or created when first needed, and given back when the session
//! ends; a stateless plugin's instance is taken and given back around each
//! call; a session-keyed plugin's calls run on the session's home). Running
//! a stage walks its steps in order, skipping those whose
//! `when:` does not hold, until a verdict other than continue; a fault
//! becomes the step's `on_error`. Every step's decision is recorded.

pub mod fixture;
pub mod headers;
pub mod types;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::plugin::{note_fault, wit, Context, Fault, FaultKind, Home, HostServices, Instance, InstancePool, LoadedPlugin, LoadedPlugins, Runtime};
use types::{Grant, OnError, PolicyContext, StageName, Step, When};

/// One step's decision, kept with the message (`weir queue show`). Names
/// are shared and verdict words static: a record is cloned into the
/// session's trail and every message's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Borrowed from the interned name (`plugin::intern`) when made by a
    /// pipeline; owned when read back from the queue.
    pub plugin: Cow<'static, str>,
    pub stage: StageName,
    /// continue, accept, reject, tempfail, discard, quarantine, disconnect,
    /// or fault:<kind> (then `applied` says what on_error made of it).
    pub verdict: Cow<'static, str>,
    pub micros: u64,
    // The optional fields last: the queue stores a record as an array
    // (`queue::message::stored_trail`), read back by this derive in field
    // order, and leaves off the trailing ones a record lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

/// A stage's result.
#[derive(Debug, Clone)]
pub enum Final {
    Accept,
    Reject(wit::Reply),
    Tempfail(wit::Reply),
    Discard,
    Quarantine(String),
    Disconnect(wit::Reply),
}

#[derive(Debug, Default)]
pub struct StageOutcome {
    /// None: every step said continue.
    pub verdict: Option<Final>,
    /// Changes other than tags and symbols (those are applied to the
    /// context as they come, so later steps see them), with the plugin
    /// that asked.
    pub changes: Vec<(&'static str, wit::Change)>,
    pub trail: Vec<DecisionRecord>,
}

/// Where a step's calls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// On any idle instance, checked out for the call: the plugin is
    /// stateless.
    Shared,
    /// On the session's home, an instance that holds many sessions' state
    /// (`plugin::Home`): the plugin keeps its state by session, and no
    /// capability of its waits on the network.
    Homed,
    /// On an instance of the session's own, all session long.
    Own,
}

fn placement(p: &LoadedPlugin) -> Placement {
    if !p.reuse {
        // Instances are not to serve more than one session.
        Placement::Own
    } else if p.stateless {
        Placement::Shared
    } else if p.session_keyed && !p.grants.iter().any(|g| matches!(g, Grant::Dns | Grant::MailAuth)) {
        Placement::Homed
    } else {
        Placement::Own
    }
}

struct PreparedStep {
    plugin: Arc<LoadedPlugin>,
    placement: Placement,
    /// The plugin's index in the policy (its instances and pool).
    slot: usize,
    config_json: Arc<str>,
    /// Names `config_json` among the plugin's configs (the guest caches
    /// the parsed config by it).
    config_id: u32,
    when: When,
    on_error: OnError,
    /// Metric handles made once, not per call.
    latency: metrics::Histogram,
    verdicts: [metrics::Counter; 7],
    /// weir_plugin_instances_total: new, reused.
    instances: [metrics::Counter; 2],
}

/// Verdict names, in `verdict_index` order (metric labels and the trail).
const VERDICTS: [&str; 7] = ["continue", "accept", "reject", "tempfail", "discard", "quarantine", "disconnect"];

fn verdict_index(v: &wit::Verdict) -> usize {
    match v {
        wit::Verdict::Continue => 0,
        wit::Verdict::Accept => 1,
        wit::Verdict::Reject(_) => 2,
        wit::Verdict::Tempfail(_) => 3,
        wit::Verdict::Discard => 4,
        wit::Verdict::Quarantine(_) => 5,
        wit::Verdict::Disconnect(_) => 6,
    }
}

/// A pipeline's steps, by stage (`StageName as usize`).
struct Pipeline {
    stages: [Vec<PreparedStep>; StageName::ALL.len()],
}

/// The plugins and pipelines of one configuration.
pub struct Policy {
    pipelines: HashMap<String, Arc<Pipeline>>,
    pub plugins: LoadedPlugins,
    /// How many plugin slots (`PreparedStep::slot`) there are.
    slots: usize,
    /// Instances between sessions.
    pool: Option<Arc<InstancePool>>,
    runtime: Option<Arc<Runtime>>,
    services: Option<Arc<HostServices>>,
}

impl Policy {
    /// A policy with no plugins (listeners without a pipeline use it).
    pub fn empty() -> Policy {
        Policy {
            pipelines: HashMap::new(),
            plugins: HashMap::new(),
            slots: 0,
            pool: None,
            runtime: None,
            services: None,
        }
    }

    pub fn has_pipeline(&self, name: &str) -> bool {
        self.pipelines.contains_key(name)
    }
}

/// The current policy, replaced whole on reload.
pub struct PolicyHandle {
    current: RwLock<Arc<Policy>>,
}

impl PolicyHandle {
    pub fn new(p: Policy) -> PolicyHandle {
        PolicyHandle {
            current: RwLock::new(Arc::new(p)),
        }
    }
    pub fn get(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set(&self, p: Policy) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }
}

/// Loads every declared plugin. Returns the loaded ones and, for the
/// second parse, what each handles or why it failed.
pub async fn load_plugins(
    config: &Config,
    base: &Path,
    runtime: &Arc<Runtime>,
    services: &Arc<HostServices>,
) -> (LoadedPlugins, PolicyContext) {
    let mut loaded = HashMap::new();
    let mut ctx = PolicyContext::default();
    for (name, decl) in &config.plugins {
        match runtime.load(name, decl, base, services).await {
            Ok(p) => {
                ctx.plugins.insert(name.clone(), Ok(p.stages.clone()));
                loaded.insert(name.clone(), p);
            }
            Err(e) => {
                let m = format!("{e:#}");
                ctx.plugins.insert(name.clone(), Err(m.clone()));
                ctx.path_errors.insert(decl.path.0.clone(), m);
            }
        }
    }
    (loaded, ctx)
}

/// Builds the run-time policy from a checked configuration.
pub fn build(config: &Config, plugins: LoadedPlugins, runtime: Arc<Runtime>, services: Arc<HostServices>) -> Result<Policy> {
    let mut names: Vec<&String> = plugins.keys().collect();
    names.sort();
    let slot_of: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    // Config ids per plugin: one per distinct config text.
    let mut config_ids: HashMap<(usize, String), u32> = HashMap::new();
    let mut pipelines = HashMap::new();
    for (name, p) in &config.pipelines {
        let mut stages: [Vec<PreparedStep>; StageName::ALL.len()] = Default::default();
        for stage in StageName::ALL {
            for Step { plugin, config: cfg, when, on_error } in p.steps(stage) {
                let (Some(loaded), Some(&slot)) = (plugins.get(&plugin), slot_of.get(plugin.as_str())) else {
                    anyhow::bail!("pipelines.{name}: plugin {plugin} is not loaded");
                };
                let cfg = cfg.or_else(|| loaded.default_config.clone()).unwrap_or(serde_json::Value::Null);
                let config_json = serde_json::to_string(&cfg)?;
                let next_id = config_ids.keys().filter(|(s, _)| *s == slot).count() as u32;
                let config_id = *config_ids.entry((slot, config_json.clone())).or_insert(next_id);
                let labels = |v: &'static str| {
                    metrics::counter!("weir_plugin_verdicts_total", "plugin" => plugin.clone(), "stage" => stage.as_str(), "verdict" => v)
                };
                stages[stage as usize].push(PreparedStep {
                    latency: metrics::histogram!("weir_plugin_call_seconds", "plugin" => plugin.clone(), "stage" => stage.as_str()),
                    verdicts: VERDICTS.map(labels),
                    instances: ["new", "reused"].map(|o| metrics::counter!("weir_plugin_instances_total", "plugin" => plugin.clone(), "origin" => o)),
                    placement: placement(loaded),
                    plugin: loaded.clone(),
                    slot,
                    config_json: Arc::from(config_json),
                    config_id,
                    when,
                    on_error,
                });
            }
        }
        pipelines.insert(name.clone(), Arc::new(Pipeline { stages }));
    }
    Ok(Policy {
        pipelines,
        slots: names.len(),
        pool: Some(runtime.new_pool(names.len())),
        plugins,
        runtime: Some(runtime),
        services: Some(services),
    })
}

/// Where a configuration came from, for the policy's second parse and reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigOrigin {
    pub path: Option<PathBuf>,
    pub overrides: Vec<String>,
}

/// Loads the plugins a configuration declares, checks its pipelines
/// against them (errors with file:line:column), and builds the policy.
pub async fn prepare(
    config: &Config,
    origin: &ConfigOrigin,
    runtime: Option<&Arc<Runtime>>,
    services: &Arc<HostServices>,
) -> Result<Policy, PolicyError> {
    if config.plugins.is_empty() && config.pipelines.is_empty() {
        return Ok(Policy::empty());
    }
    let runtime = runtime.ok_or_else(|| PolicyError::Other(anyhow::anyhow!("no plugin runtime")))?;
    let base = base_dir(origin.path.as_deref());
    let (loaded, ctx) = load_plugins(config, &base, runtime, services).await;
    let source = match &origin.path {
        Some(p) => crate::config::ConfigSource::File(p),
        None => crate::config::ConfigSource::Embedded,
    };
    let (name, text) = Config::source_text(&source).map_err(PolicyError::Config)?;
    Config::check_policy(&name, &text, &origin.overrides, ctx).map_err(PolicyError::Config)?;
    build(config, loaded, runtime.clone(), services.clone()).map_err(PolicyError::Other)
}

#[derive(Debug)]
pub enum PolicyError {
    Config(crate::config::ConfigError),
    Other(anyhow::Error),
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::Config(e) => write!(f, "{e}"),
            PolicyError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// The base directory plugin paths are relative to.
pub fn base_dir(config_path: Option<&Path>) -> PathBuf {
    config_path
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

fn domain(addr: &str) -> &str {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

fn when_holds(w: &When, stage: StageName, ctx: &Context) -> bool {
    let in_list = |list: &Vec<String>, v: &str| list.iter().any(|x| x.eq_ignore_ascii_case(v));
    if let Some(l) = &w.listener {
        if !in_list(l, &ctx.connection.listener) {
            return false;
        }
    }
    if let Some(a) = w.authenticated {
        if ctx.connection.auth_user.is_some() != a {
            return false;
        }
    }
    if let Some(t) = w.tls {
        if ctx.connection.tls_version.is_some() != t {
            return false;
        }
    }
    if let Some(d) = &w.sender_domain {
        match &ctx.envelope.sender {
            Some(s) if in_list(d, domain(s)) => {}
            _ => return false,
        }
    }
    if let Some(d) = &w.recipient_domain {
        let hit = if stage == StageName::RcptTo {
            ctx.recipient.as_deref().is_some_and(|r| in_list(d, domain(r)))
        } else {
            ctx.envelope.recipients.iter().any(|r| in_list(d, domain(r)))
        };
        if !hit {
            return false;
        }
    }
    true
}

/// The grant a change needs.
fn change_grant(c: &wit::Change) -> Grant {
    match c {
        wit::Change::AddHeader(_) | wit::Change::RemoveHeader(_) | wit::Change::ReplaceHeader(_) => Grant::Headers,
        wit::Change::SetSender(_)
        | wit::Change::AddRecipient(_)
        | wit::Change::RemoveRecipient(_)
        | wit::Change::RewriteRecipient(_) => Grant::Envelope,
        wit::Change::SetRoute(_) => Grant::Route,
        wit::Change::AddSymbol(_) => Grant::Symbols,
        wit::Change::SetTag(_) => Grant::Tags,
    }
}

fn reply(code: u16, enhanced: &str, text: &str) -> wit::Reply {
    wit::Reply {
        code,
        enhanced: enhanced.into(),
        text: text.into(),
    }
}

/// Numbers sessions, so that an instance knows when it serves another.
static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A session's use of the policy it started with.
pub struct SessionPolicy {
    policy: Arc<Policy>,
    pipeline: Option<Arc<Pipeline>>,
    held: Held,
}

/// The instances and homes a session holds, apart from the pipeline so
/// that a stage can borrow the pipeline while it calls (cloning the Arc
/// per stage wrote its count from every session thread's core).
struct Held {
    /// This session's number (see `Instance::serve`).
    id: u64,
    /// The session's own instances (`Placement::Own`), by plugin slot.
    instances: Vec<Option<Box<Instance>>>,
    /// The session's homes (`Placement::Homed`), by plugin slot.
    homes: Vec<Option<Arc<Home>>>,
}

impl Drop for SessionPolicy {
    /// The session is over: its sound instances may serve later ones.
    fn drop(&mut self) {
        let held = &mut self.held;
        if let Some(pool) = &self.policy.pool {
            for (slot, inst) in held.instances.iter_mut().enumerate() {
                if let Some(mut i) = inst.take() {
                    i.session_ended(held.id);
                    pool.give_back(slot, i);
                }
            }
        }
        for home in held.homes.iter_mut().filter_map(Option::take) {
            home.leave(held.id);
        }
    }
}

impl SessionPolicy {
    pub fn new(policy: Arc<Policy>, pipeline: Option<String>) -> SessionPolicy {
        let pipeline = pipeline.and_then(|p| policy.pipelines.get(&p).cloned());
        let instances = (0..policy.slots).map(|_| None).collect();
        let homes = (0..policy.slots).map(|_| None).collect();
        let id = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SessionPolicy { policy, pipeline, held: Held { id, instances, homes } }
    }

    /// Whether the session runs a pipeline at all.
    pub fn is_enabled(&self) -> bool {
        self.pipeline.is_some()
    }

    pub fn is_active(&self, stage: StageName) -> bool {
        self.pipeline.as_ref().is_some_and(|p| !p.stages[stage as usize].is_empty())
    }

    /// Runs one stage's pipeline. Tags and symbols are applied to `ctx` as
    /// steps return them.
    pub async fn run(&mut self, stage: StageName, ctx: &mut Context, body: Option<Arc<Vec<u8>>>) -> StageOutcome {
        let mut out = StageOutcome::default();
        ctx.stage = crate::plugin::stage_to_wit(stage);
        let Some(pipeline) = self.pipeline.as_deref() else {
            return out;
        };
        for step in &pipeline.stages[stage as usize] {
            if !when_holds(&step.when, stage, ctx) {
                continue;
            }
            let name = step.plugin.name;
            let started = Instant::now();
            let r = self.held.call(&self.policy, step, ctx, started, body.clone()).await;
            let elapsed = started.elapsed();
            step.latency.record(elapsed.as_secs_f64());
            let mut record = DecisionRecord {
                plugin: Cow::Borrowed(name),
                stage,
                verdict: Cow::Borrowed(""),
                reason: None,
                recipient: ctx.recipient.clone(),
                micros: elapsed.as_micros() as u64,
            };
            match r {
                Ok(d) => {
                    let i = verdict_index(&d.verdict);
                    let v = VERDICTS[i];
                    step.verdicts[i].increment(1);
                    record.verdict = Cow::Borrowed(v);
                    record.reason = d.reason;
                    out.trail.push(record);
                    for c in d.changes {
                        match c {
                            wit::Change::SetTag((k, v)) => {
                                ctx.tags.retain(|(kk, _)| kk != &k);
                                ctx.tags.push((k, v));
                            }
                            wit::Change::AddSymbol(s) => ctx.symbols.push(s),
                            other => out.changes.push((name, other)),
                        }
                    }
                    let fin = match d.verdict {
                        wit::Verdict::Continue => None,
                        wit::Verdict::Accept => Some(Final::Accept),
                        wit::Verdict::Reject(r) => Some(Final::Reject(r)),
                        wit::Verdict::Tempfail(r) => Some(Final::Tempfail(r)),
                        wit::Verdict::Discard => Some(Final::Discard),
                        wit::Verdict::Quarantine(s) => Some(Final::Quarantine(s)),
                        wit::Verdict::Disconnect(r) => Some(Final::Disconnect(r)),
                    };
                    if fin.is_some() {
                        out.verdict = fin;
                        return out;
                    }
                }
                Err(f) => {
                    note_fault(&step.plugin, &f);
                    tracing::warn!(
                        plugin = %name, stage = stage.as_str(), fault = f.kind.as_str(), error = %f.message,
                        on_error = ?step.on_error, "plugin fault"
                    );
                    record.verdict = Cow::Owned(format!("fault:{}", f.kind.as_str()));
                    record.reason = Some(format!("{} (on_error: {:?})", f.message, step.on_error).to_lowercase());
                    out.trail.push(record);
                    match step.on_error {
                        OnError::Continue => {}
                        OnError::Tempfail => {
                            out.verdict = Some(Final::Tempfail(reply(451, "4.3.0", "Temporary policy failure, try again later")));
                            return out;
                        }
                        OnError::Reject => {
                            out.verdict = Some(Final::Reject(reply(554, "5.7.0", "Rejected by policy")));
                            return out;
                        }
                    }
                }
            }
        }
        out
    }
}

impl Held {
    /// An instance for `step` to serve session `id`: an idle one from the
    /// pool, or a new one. (Not a method: the future must not hold a
    /// reference to the session's own instances, which are not `Sync`.)
    async fn acquire(policy: &Policy, id: u64, step: &PreparedStep) -> Result<Box<Instance>, Fault> {
        let idle = policy.pool.as_ref().and_then(|p| p.take(step.slot, id));
        let mut inst = match idle {
            Some(i) => {
                step.instances[1].increment(1);
                i
            }
            None => {
                let i = Box::new(Self::instantiate(policy, step).await?);
                step.instances[0].increment(1);
                i
            }
        };
        inst.serve(id);
        Ok(inst)
    }

    /// A new instance of `step`'s plugin. wasmtime's instantiation future
    /// is large and boxed here: inline, it would size every step's call
    /// future, which is built and moved at each call, though a new
    /// instance is rare.
    async fn instantiate(policy: &Policy, step: &PreparedStep) -> Result<Instance, Fault> {
        let (Some(rt), Some(services)) = (&policy.runtime, &policy.services) else {
            return Err(Fault::new(FaultKind::Trap, "no plugin runtime"));
        };
        Box::pin(rt.instantiate(step.plugin.clone(), services.clone())).await
    }

    /// Runs one step's plugin on an instance as its placement says: an
    /// idle one for this call, the session's home, or the session's own.
    async fn call(&mut self, policy: &Policy, step: &PreparedStep, ctx: &Context, started: Instant, body: Option<Arc<Vec<u8>>>) -> Result<wit::Decision, Fault> {
        let plugin = &step.plugin;
        if plugin.is_disabled() {
            return Err(Fault::new(FaultKind::Disabled, "switched off by its circuit breaker"));
        }
        let r = match step.placement {
            Placement::Shared => {
                // A stateless plugin: an instance for this call only.
                let mut inst = Self::acquire(policy, self.id, step).await?;
                let r = inst.on_stage(ctx, started, step.config_id, &step.config_json, body).await;
                if let Some(pool) = &policy.pool {
                    pool.give_back(step.slot, inst);
                }
                r
            }
            Placement::Homed => {
                let home = match self.homes.get(step.slot) {
                    Some(Some(h)) => h.clone(),
                    Some(None) => {
                        let Some(h) = policy.pool.as_ref().and_then(|p| p.home(step.slot)) else {
                            return Err(Fault::new(FaultKind::Trap, "no instance home for the plugin"));
                        };
                        self.homes[step.slot] = Some(h.clone());
                        h
                    }
                    None => return Err(Fault::new(FaultKind::Trap, "no instance slot for the plugin")),
                };
                let make = async || Self::instantiate(policy, step).await;
                let call = async |inst: &mut Instance| inst.on_stage(ctx, started, step.config_id, &step.config_json, body).await;
                let (r, made) = home.with_instance(self.id, make, call).await?;
                // instances: [new, reused]
                step.instances[usize::from(!made)].increment(1);
                r
            }
            Placement::Own => {
                if self.instances.get(step.slot).is_some_and(|i| i.is_none()) {
                    let inst = Self::acquire(policy, self.id, step).await?;
                    self.instances[step.slot] = Some(inst);
                }
                let Some(entry) = self.instances.get_mut(step.slot) else {
                    return Err(Fault::new(FaultKind::Trap, "no instance slot for the plugin"));
                };
                let Some(inst) = entry.as_mut() else {
                    return Err(Fault::new(FaultKind::Trap, "instance vanished"));
                };
                let r = inst.on_stage(ctx, started, step.config_id, &step.config_json, body).await;
                if inst.broken {
                    // A faulted instance is not reused; the next call gets a fresh one.
                    *entry = None;
                }
                r
            }
        };
        let d = r?;
        if let Some(c) = d.changes.iter().find(|c| !plugin.grants.contains(&change_grant(c))) {
            return Err(Fault::new(FaultKind::Refused, format!("asked for a change ({c:?}) needing the `{}` grant", change_grant(c).as_str())));
        }
        Ok(d)
    }
}

/// Keeps a plugin's reply within the SMTP class its verdict implies.
pub fn checked_reply(r: &wit::Reply, class: u16, default: (u16, &'static str)) -> (u16, String, String) {
    let code_ok = r.code / 100 == class && (200..600).contains(&r.code);
    let code = if code_ok { r.code } else { default.0 };
    let enh_ok = {
        let p: Vec<&str> = r.enhanced.split('.').collect();
        p.len() == 3
            && p[0] == (code / 100).to_string()
            && p.iter().all(|x| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()))
    };
    let enhanced = if enh_ok { r.enhanced.clone() } else { default.1.to_string() };
    let text = if r.text.trim().is_empty() { "Rejected by policy".to_string() } else { r.text.chars().take(400).collect() };
    (code, enhanced, text)
}
