//! Policy pipelines at run time: the loaded plugins and named pipelines of
//! one configuration ([`Policy`], swapped whole on reload), and a session's
//! view of it ([`SessionPolicy`]: its instances, created when first
//! needed). Running a stage walks its steps in order, skipping those whose
//! `when:` does not hold, until a verdict other than continue; a fault
//! becomes the step's `on_error`. Every step's decision is recorded.

pub mod fixture;
pub mod headers;
pub mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::plugin::{note_fault, wit, Fault, FaultKind, HostServices, Instance, LoadedPlugin, LoadedPlugins, Runtime};
use types::{Grant, OnError, PolicyContext, StageName, Step, When};

/// One step's decision, kept with the message (`weir queue show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub plugin: String,
    pub stage: StageName,
    /// continue, accept, reject, tempfail, discard, quarantine, disconnect,
    /// or fault:<kind> (then `applied` says what on_error made of it).
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    pub micros: u64,
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
    /// context as they come, so later steps see them).
    pub changes: Vec<(String, wit::Change)>,
    pub trail: Vec<DecisionRecord>,
}

struct PreparedStep {
    plugin: Arc<LoadedPlugin>,
    config_json: String,
    when: When,
    on_error: OnError,
    /// Metric handles made once, not per call.
    latency: metrics::Histogram,
    verdicts: [metrics::Counter; 7],
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

/// The plugins and pipelines of one configuration.
pub struct Policy {
    pipelines: HashMap<String, HashMap<StageName, Vec<Arc<PreparedStep>>>>,
    pub plugins: LoadedPlugins,
    runtime: Option<Arc<Runtime>>,
    services: Option<Arc<HostServices>>,
}

impl Policy {
    /// A policy with no plugins (listeners without a pipeline use it).
    pub fn empty() -> Policy {
        Policy {
            pipelines: HashMap::new(),
            plugins: HashMap::new(),
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
    let mut pipelines = HashMap::new();
    for (name, p) in &config.pipelines {
        let mut stages = HashMap::new();
        for stage in StageName::ALL {
            let mut steps = Vec::new();
            for Step { plugin, config: cfg, when, on_error } in p.steps(stage) {
                let loaded = plugins
                    .get(&plugin)
                    .ok_or_else(|| anyhow::anyhow!("pipelines.{name}: plugin {plugin} is not loaded"))?
                    .clone();
                let cfg = cfg.or_else(|| loaded.default_config.clone()).unwrap_or(serde_json::Value::Null);
                let labels = |v: &'static str| {
                    metrics::counter!("weir_plugin_verdicts_total", "plugin" => plugin.clone(), "stage" => stage.as_str(), "verdict" => v)
                };
                steps.push(Arc::new(PreparedStep {
                    latency: metrics::histogram!("weir_plugin_call_seconds", "plugin" => plugin.clone(), "stage" => stage.as_str()),
                    verdicts: VERDICTS.map(labels),
                    plugin: loaded,
                    config_json: serde_json::to_string(&cfg)?,
                    when,
                    on_error,
                }));
            }
            stages.insert(stage, steps);
        }
        pipelines.insert(name.clone(), stages);
    }
    Ok(Policy {
        pipelines,
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

fn when_holds(w: &When, stage: StageName, ctx: &wit::Context) -> bool {
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

/// A session's use of the policy it started with.
pub struct SessionPolicy {
    policy: Arc<Policy>,
    pipeline: Option<String>,
    instances: HashMap<String, Instance>,
}

impl SessionPolicy {
    pub fn new(policy: Arc<Policy>, pipeline: Option<String>) -> SessionPolicy {
        SessionPolicy {
            policy,
            pipeline,
            instances: HashMap::new(),
        }
    }

    fn steps(&self, stage: StageName) -> Vec<Arc<PreparedStep>> {
        self.pipeline
            .as_ref()
            .and_then(|p| self.policy.pipelines.get(p))
            .and_then(|m| m.get(&stage))
            .cloned()
            .unwrap_or_default()
    }

    pub fn is_active(&self, stage: StageName) -> bool {
        !self.steps(stage).is_empty()
    }

    async fn call(&mut self, step: &PreparedStep, ctx: &wit::Context, body: Option<Arc<Vec<u8>>>) -> Result<wit::Decision, Fault> {
        let plugin = &step.plugin;
        if plugin.is_disabled() {
            return Err(Fault {
                kind: FaultKind::Disabled,
                message: "switched off by its circuit breaker".into(),
            });
        }
        if !self.instances.contains_key(&plugin.name) {
            let (Some(rt), Some(services)) = (&self.policy.runtime, &self.policy.services) else {
                return Err(Fault {
                    kind: FaultKind::Trap,
                    message: "no plugin runtime".into(),
                });
            };
            let inst = Instance::new(rt, plugin.clone(), services.clone()).await?;
            self.instances.insert(plugin.name.clone(), inst);
        }
        let Some(inst) = self.instances.get_mut(&plugin.name) else {
            return Err(Fault {
                kind: FaultKind::Trap,
                message: "instance vanished".into(),
            });
        };
        let r = inst.on_stage(ctx, step.config_json.clone(), body).await;
        if inst.broken {
            // A faulted instance is not reused; the next call gets a fresh one.
            self.instances.remove(&plugin.name);
        }
        let d = r?;
        if let Some(c) = d.changes.iter().find(|c| !plugin.grants.contains(&change_grant(c))) {
            return Err(Fault {
                kind: FaultKind::Refused,
                message: format!("asked for a change ({c:?}) needing the `{}` grant", change_grant(c).as_str()),
            });
        }
        Ok(d)
    }

    /// Runs one stage's pipeline. Tags and symbols are applied to `ctx` as
    /// steps return them.
    pub async fn run(&mut self, stage: StageName, ctx: &mut wit::Context, body: Option<Arc<Vec<u8>>>) -> StageOutcome {
        let mut out = StageOutcome::default();
        ctx.stage = crate::plugin::stage_to_wit(stage);
        for step in self.steps(stage) {
            if !when_holds(&step.when, stage, ctx) {
                continue;
            }
            let name = step.plugin.name.clone();
            let started = Instant::now();
            let r = self.call(&step, ctx, body.clone()).await;
            let elapsed = started.elapsed();
            step.latency.record(elapsed.as_secs_f64());
            let mut record = DecisionRecord {
                plugin: name.clone(),
                stage,
                verdict: String::new(),
                reason: None,
                recipient: ctx.recipient.clone(),
                micros: elapsed.as_micros() as u64,
            };
            match r {
                Ok(d) => {
                    let i = verdict_index(&d.verdict);
                    let v = VERDICTS[i];
                    step.verdicts[i].increment(1);
                    record.verdict = v.to_string();
                    record.reason = d.reason.clone();
                    out.trail.push(record);
                    for c in d.changes {
                        match c {
                            wit::Change::SetTag((k, v)) => {
                                ctx.tags.retain(|(kk, _)| kk != &k);
                                ctx.tags.push((k, v));
                            }
                            wit::Change::AddSymbol(s) => ctx.symbols.push(s),
                            other => out.changes.push((name.clone(), other)),
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
                    record.verdict = format!("fault:{}", f.kind.as_str());
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
