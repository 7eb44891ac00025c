//! The policy part of the configuration: plugins declared once (path,
//! sha256 pin, grants, limits, default config) and named pipelines that
//! list steps per stage. A listener names its pipeline.
//!
//! Checks that need the plugins themselves (does the file exist, does the
//! pin match, which stages does it handle) run during a second parse of
//! the same text with a thread-local [`PolicyContext`], so that their
//! errors carry the file:line:column of the offending value.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The stages, as the policy YAML names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageName {
    Connect,
    Helo,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    Route,
}

impl StageName {
    pub const ALL: [StageName; 7] = [
        StageName::Connect,
        StageName::Helo,
        StageName::Auth,
        StageName::MailFrom,
        StageName::RcptTo,
        StageName::Data,
        StageName::Route,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Connect => "connect",
            StageName::Helo => "helo",
            StageName::Auth => "auth",
            StageName::MailFrom => "mail_from",
            StageName::RcptTo => "rcpt_to",
            StageName::Data => "data",
            StageName::Route => "route",
        }
    }
}

/// What a plugin may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Host capabilities.
    Log,
    Config,
    Clock,
    Kv,
    Dns,
    Body,
    /// SPF, DKIM, ARC and DMARC checks and DKIM signing.
    #[serde(rename = "mail-auth", alias = "mail_auth")]
    MailAuth,
    /// The data files declared under the plugin's `files:`.
    Files,
    /// Changes: add/remove/replace headers.
    Headers,
    /// Changes: rewrite the sender, add/remove/rewrite recipients.
    Envelope,
    /// Changes: set a named route.
    Route,
    /// Changes: add score symbols.
    Symbols,
    /// Changes: set tags.
    Tags,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Log => "log",
            Grant::Config => "config",
            Grant::Clock => "clock",
            Grant::Kv => "kv",
            Grant::Dns => "dns",
            Grant::Body => "body",
            Grant::MailAuth => "mail-auth",
            Grant::Files => "files",
            Grant::Headers => "headers",
            Grant::Envelope => "envelope",
            Grant::Route => "route",
            Grant::Symbols => "symbols",
            Grant::Tags => "tags",
        }
    }
}

/// What a failed call (trap, panic, timeout, memory, refused capability) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// As if the plugin had said continue.
    Continue,
    /// 451 4.3.0.
    #[default]
    Tempfail,
    /// 554 5.7.0.
    Reject,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDecl {
    /// The component (.wasm), relative to the configuration file's directory.
    pub path: PluginPath,
    /// Hex SHA-256 of the file; checked at load.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub limits: PluginLimits,
    /// Default `config:` handed to the plugin (steps may override it).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// Data files the plugin reads through the `files` capability, by
    /// name: paths relative to the configuration file's directory
    /// (`{plugin_dir}` allowed), read when the policy loads.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
    /// Whether an instance may serve another session after its first
    /// (one at a time; the plugin is told each new session and the SDK
    /// starts it from a fresh plugin value). `false` gives every session a
    /// new instance: nothing, not even freed memory, survives a session,
    /// at the cost of instantiating the plugin for each.
    #[serde(default = "yes")]
    pub reuse_instances: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory cap, in MiB.
    pub memory_mb: u32,
    /// Time budget per call.
    #[serde(with = "humantime_serde")]
    pub time_budget: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_mb: 32,
            time_budget: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Faults within `window` that switch the plugin off until the next reload.
    pub faults: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            faults: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Conditions on a step; all that are given must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct When {
    pub listener: Option<Vec<String>>,
    pub authenticated: Option<bool>,
    pub tls: Option<bool>,
    pub sender_domain: Option<Vec<String>>,
    pub recipient_domain: Option<Vec<String>>,
}

/// Marker types so a step knows, while it is parsed, which stage it is at.
pub trait StageMarker {
    const STAGE: StageName;
}
macro_rules! marker {
    ($t:ident, $s:expr) => {
        #[derive(Debug, Clone, Default, Serialize)]
        pub struct $t;
        impl StageMarker for $t {
            const STAGE: StageName = $s;
        }
    };
}
marker!(AtConnect, StageName::Connect);
marker!(AtHelo, StageName::Helo);
marker!(AtAuth, StageName::Auth);
marker!(AtMailFrom, StageName::MailFrom);
marker!(AtRcptTo, StageName::RcptTo);
marker!(AtData, StageName::Data);
marker!(AtRoute, StageName::Route);

/// A plugin named by a step; checked against the declared plugins and the
/// stages they handle.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct PluginRef<S> {
    pub name: String,
    #[serde(skip)]
    _at: PhantomData<S>,
}

impl<'de, S: StageMarker> Deserialize<'de> for PluginRef<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let problem = POLICY.with(|p| {
            let p = p.borrow();
            let ctx = p.as_ref()?;
            match ctx.plugins.get(&name) {
                None => Some(format!(
                    "unknown plugin `{name}` (declared: {})",
                    ctx.plugins.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(Err(_)) => None, // reported where it is declared
                Some(Ok(stages)) if !stages.contains(&S::STAGE) => Some(format!(
                    "plugin `{name}` does not handle the {} stage (it handles: {})",
                    S::STAGE.as_str(),
                    stages.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )),
                Some(Ok(_)) => None,
            }
        });
        match problem {
            Some(m) => Err(serde::de::Error::custom(m)),
            None => Ok(PluginRef { name, _at: PhantomData }),
        }
    }
}

/// The path of a plugin file; load errors (missing, wrong pin, not a valid
/// component) are reported at it.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct PluginPath(pub String);

impl<'de> Deserialize<'de> for PluginPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = String::deserialize(d)?;
        let problem = POLICY.with(|p| p.borrow().as_ref().and_then(|ctx| ctx.path_errors.get(&path).cloned()));
        match problem {
            Some(m) => Err(serde::de::Error::custom(m)),
            None => Ok(PluginPath(path)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound(deserialize = ""))]
pub struct StepConfig<S: StageMarker> {
    pub plugin: PluginRef<S>,
    /// Replaces the plugin's default `config:` for this step.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub when: When,
    #[serde(default)]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub connect: Vec<StepConfig<AtConnect>>,
    pub helo: Vec<StepConfig<AtHelo>>,
    pub auth: Vec<StepConfig<AtAuth>>,
    pub mail_from: Vec<StepConfig<AtMailFrom>>,
    pub rcpt_to: Vec<StepConfig<AtRcptTo>>,
    pub data: Vec<StepConfig<AtData>>,
    pub route: Vec<StepConfig<AtRoute>>,
}

/// One step with its stage erased, for the runtime.
#[derive(Debug, Clone)]
pub struct Step {
    pub plugin: String,
    pub config: Option<serde_json::Value>,
    pub when: When,
    pub on_error: OnError,
}

impl PipelineConfig {
    pub fn steps(&self, stage: StageName) -> Vec<Step> {
        fn erase<S: StageMarker>(v: &[StepConfig<S>]) -> Vec<Step> {
            v.iter()
                .map(|s| Step {
                    plugin: s.plugin.name.clone(),
                    config: s.config.clone(),
                    when: s.when.clone(),
                    on_error: s.on_error,
                })
                .collect()
        }
        match stage {
            StageName::Connect => erase(&self.connect),
            StageName::Helo => erase(&self.helo),
            StageName::Auth => erase(&self.auth),
            StageName::MailFrom => erase(&self.mail_from),
            StageName::RcptTo => erase(&self.rcpt_to),
            StageName::Data => erase(&self.data),
            StageName::Route => erase(&self.route),
        }
    }

    pub fn plugin_names(&self) -> Vec<String> {
        let mut v: Vec<String> = StageName::ALL
            .iter()
            .flat_map(|s| self.steps(*s).into_iter().map(|st| st.plugin))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// What the second parse checks against.
#[derive(Debug, Default)]
pub struct PolicyContext {
    /// Plugin name → the stages it handles, or why it could not be loaded.
    pub plugins: HashMap<String, Result<Vec<StageName>, String>>,
    /// Plugin `path:` value → why loading it failed.
    pub path_errors: HashMap<String, String>,
}

thread_local! {
    static POLICY: RefCell<Option<PolicyContext>> = const { RefCell::new(None) };
}

/// Runs `f` (a parse) with `ctx` as the policy context.
pub fn with_policy_context<R>(ctx: PolicyContext, f: impl FnOnce() -> R) -> R {
    POLICY.with(|p| *p.borrow_mut() = Some(ctx));
    let r = f();
    POLICY.with(|p| *p.borrow_mut() = None);
    r
}

/// Sorted for stable output.
pub type Plugins = BTreeMap<String, PluginDecl>;
pub type Pipelines = BTreeMap<String, PipelineConfig>;
