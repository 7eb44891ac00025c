//! The `weir` command line (clap): serve, queue list/show/delete, config
//! check, passwd, policy check/test, reload, spam train/eval/score. Exit codes: 0 success, 1 failure, 2 usage (clap),
//! 3 invalid configuration, 4 no such message.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, ConfigSource};
use crate::control::QueueAccess;
use crate::queue::message::MessageState;
use crate::queue::MessageMeta;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;

#[derive(Parser)]
#[command(name = "weir", version, about = "Weir, a programmable mail transfer agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

/// Options every command that touches a server or its data shares.
#[derive(Args, Clone)]
struct Common {
    /// Configuration file (default: the embedded policies/default.yaml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (queue, certificates, control socket); overrides server.data_dir.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Override a configuration key, like `postconf -o` (repeatable).
    #[arg(short = 'o', value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Common),
    /// Inspect and change the queue (works while the server runs).
    Queue {
        #[command(subcommand)]
        cmd: QueueCommand,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
    /// Read a password from stdin and print its argon2 hash for auth.users.
    Passwd,
    /// Policy pipelines and plugins.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCommand,
    },
    /// Make the running server load its policy and plugins anew (as SIGHUP does).
    Reload(Common),
    /// Train and measure the spam-score plugin's classifier.
    Spam {
        #[command(subcommand)]
        cmd: crate::spam::SpamCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a configuration's plugins and check its pipelines, offline.
    Check {
        file: PathBuf,
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Run fixtures through the real pipeline and plugins; pass/fail per fixture.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StateFilter {
    /// Not tried yet.
    Queued,
    /// Tried and waiting for the next attempt.
    Deferred,
    /// Held by an operator.
    Held,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List queued messages.
    List {
        #[command(flatten)]
        common: Common,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only messages in this state.
        #[arg(long)]
        state: Option<StateFilter>,
        /// Only messages with a pending recipient at this domain.
        #[arg(long)]
        destination: Option<String>,
        /// Only messages older than this (e.g. 10m, 2h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
    /// Schedule an attempt now: one message, all, or one destination's.
    Retry {
        #[command(flatten)]
        common: Common,
        #[arg(required_unless_present_any = ["all", "destination"], conflicts_with_all = ["all", "destination"])]
        id: Option<String>,
        #[arg(long, conflicts_with = "destination")]
        all: bool,
        #[arg(long)]
        destination: Option<String>,
    },
    /// Keep a message from being delivered until it is released.
    Hold {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Put a held message back into scheduling.
    Release {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Fail a message's pending recipients now and send the DSN.
    Bounce {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Show one message: envelope, session facts, state.
    Show {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        json: bool,
        /// Print the stored message (headers and body) as it will be delivered.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
    },
    /// Delete a message from the queue.
    Delete {
        #[command(flatten)]
        common: Common,
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file without starting anything.
    Check {
        file: PathBuf,
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

/// An error and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: EXIT_FAILURE,
            message: format!("{e:#}"),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure {
            code: EXIT_CONFIG,
            message: format!("invalid configuration: {e}"),
        }
    }
}

fn load(common: &Common) -> Result<(Config, PathBuf), Failure> {
    let source = match &common.config {
        Some(p) => ConfigSource::File(p),
        None => ConfigSource::Embedded,
    };
    let config = Config::load(source, &common.overrides)?;
    let data_dir = common
        .data_dir
        .clone()
        .unwrap_or_else(|| config.server.data_dir.clone());
    Ok((config, data_dir))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("weir: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Command::Serve(common) => {
            let (config, data_dir) = load(&common)?;
            crate::logging::init(&config.log);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("weir")
                .build()
                .map_err(anyhow::Error::from)?;
            let origin = crate::policy::ConfigOrigin {
                path: common.config.clone(),
                overrides: common.overrides.clone(),
            };
            rt.block_on(crate::server::serve(config, data_dir, origin))?;
            Ok(())
        }
        Command::Policy {
            cmd: PolicyCommand::Check { file, overrides },
        } => {
            let c = check_with_plugins(&file, &overrides)?;
            println!("{}: OK", file.display());
            for (name, p) in &c.plugins {
                println!("  plugin {name}: {} (grants: {})", p.path.0, p.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", "));
            }
            for (name, p) in &c.pipelines {
                let stages: Vec<String> = crate::policy::types::StageName::ALL
                    .iter()
                    .filter_map(|s| {
                        let steps = p.steps(*s);
                        (!steps.is_empty()).then(|| {
                            format!("{}: {}", s.as_str(), steps.iter().map(|st| st.plugin.clone()).collect::<Vec<_>>().join(" -> "))
                        })
                    })
                    .collect();
                println!("  pipeline {name}: {}", stages.join("; "));
            }
            Ok(())
        }
        Command::Policy {
            cmd: PolicyCommand::Test { files },
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)?;
            let mut failed = 0;
            for f in &files {
                match rt.block_on(crate::policy::fixture::run(f)) {
                    Ok(problems) if problems.is_empty() => println!("PASS {}", f.display()),
                    Ok(problems) => {
                        failed += 1;
                        println!("FAIL {}", f.display());
                        for p in problems {
                            println!("     {p}");
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        println!("FAIL {}: {e:#}", f.display());
                    }
                }
            }
            println!("{} passed, {failed} failed", files.len() - failed);
            if failed > 0 {
                return Err(Failure {
                    code: EXIT_FAILURE,
                    message: format!("{failed} fixture(s) failed"),
                });
            }
            Ok(())
        }
        Command::Reload(common) => {
            let (_config, data_dir) = load(&common)?;
            let access = QueueAccess::open_remote(&data_dir)?;
            println!("{}", access.reload()?);
            Ok(())
        }
        Command::Config {
            cmd: ConfigCommand::Check { file, overrides },
        } => {
            let c = check_with_plugins(&file, &overrides)?;
            println!(
                "{}: OK ({} listener{}: {})",
                file.display(),
                c.listeners.len(),
                if c.listeners.len() == 1 { "" } else { "s" },
                c.listeners
                    .iter()
                    .map(|(n, l)| format!("{n} on {}", l.bind))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Passwd => passwd(),
        Command::Queue { cmd } => queue(cmd),
        Command::Spam { cmd } => crate::spam::run(cmd).map_err(Failure::from),
    }
}

/// Parses a configuration, loads its plugins and checks its pipelines.
fn check_with_plugins(file: &std::path::Path, overrides: &[String]) -> Result<Config, Failure> {
    let c = Config::load(ConfigSource::File(file), overrides)?;
    if c.plugins.is_empty() && c.pipelines.is_empty() {
        return Ok(c);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    let origin = crate::policy::ConfigOrigin {
        path: Some(file.to_path_buf()),
        overrides: overrides.to_vec(),
    };
    rt.block_on(async {
        let runtime = crate::plugin::Runtime::new(&c.plugin_runtime, None)?;
        let services = crate::plugin::HostServices::new(&c, std::sync::Arc::new(crate::dns::Dns::new(&c.dns)?), None);
        match crate::policy::prepare(&c, &origin, Some(&runtime), &services).await {
            Ok(_) => Ok(()),
            Err(crate::policy::PolicyError::Config(e)) => Err(Failure::from(e)),
            Err(crate::policy::PolicyError::Other(e)) => Err(Failure {
                code: EXIT_CONFIG,
                message: format!("invalid policy: {e:#}"),
            }),
        }
    })
    .map_err(|e: Failure| e)?;
    Ok(c)
}

fn passwd() -> Result<(), Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (echoed; pipe it in to avoid that): ");
        let _ = std::io::stderr().flush();
    }
    let mut input = String::new();
    if stdin.is_terminal() {
        stdin.read_line(&mut input).map_err(anyhow::Error::from)?;
    } else {
        stdin.lock().read_to_string(&mut input).map_err(anyhow::Error::from)?;
    }
    // The password is the first line, without its line ending.
    let password = input.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(Failure {
            code: EXIT_FAILURE,
            message: "no password on stdin (usage: echo 'secret' | weir passwd)".into(),
        });
    }
    println!("{}", crate::auth::hash_password(password)?);
    Ok(())
}

fn not_found(id: &str) -> Failure {
    Failure {
        code: EXIT_NOT_FOUND,
        message: format!("no message {id} in the queue"),
    }
}

fn queue(cmd: QueueCommand) -> Result<(), Failure> {
    let common = match &cmd {
        QueueCommand::List { common, .. }
        | QueueCommand::Show { common, .. }
        | QueueCommand::Delete { common, .. }
        | QueueCommand::Retry { common, .. }
        | QueueCommand::Hold { common, .. }
        | QueueCommand::Release { common, .. }
        | QueueCommand::Bounce { common, .. } => common.clone(),
    };
    let (config, data_dir) = load(&common)?;
    let access = QueueAccess::open(&data_dir, &config.hostname())?;
    let refuse_missing = |e: anyhow::Error| -> Failure {
        let message = format!("{e:#}");
        if message.starts_with("no message ") {
            Failure { code: EXIT_NOT_FOUND, message }
        } else {
            Failure { code: EXIT_FAILURE, message }
        }
    };
    match cmd {
        QueueCommand::Retry { id, all, destination, .. } => {
            use crate::delivery::ops::Selector;
            let sel = match (id, all, destination) {
                (Some(id), _, _) => Selector::Id(id),
                (None, true, _) => Selector::All,
                (None, false, Some(d)) => Selector::Destination(d),
                (None, false, None) => Selector::All,
            };
            let n = access.retry(sel).map_err(refuse_missing)?;
            println!("{n} message{} scheduled for delivery now", if n == 1 { "" } else { "s" });
        }
        QueueCommand::Hold { id, .. } => {
            access.hold(&id).map_err(refuse_missing)?;
            println!("held {id}");
        }
        QueueCommand::Release { id, .. } => {
            access.release(&id).map_err(refuse_missing)?;
            println!("released {id}");
        }
        QueueCommand::Bounce { id, .. } => {
            access.bounce(&id).map_err(refuse_missing)?;
            println!("bounced {id}");
        }
        QueueCommand::List { json, state, destination, older_than, .. } => {
            let now = chrono::Utc::now().timestamp();
            let list: Vec<MessageMeta> = access
                .list()?
                .into_iter()
                .filter(|m| match state {
                    None => true,
                    Some(StateFilter::Held) => m.state == MessageState::Held,
                    Some(StateFilter::Queued) => m.state == MessageState::Queued && m.attempts == 0,
                    Some(StateFilter::Deferred) => m.state == MessageState::Queued && m.attempts > 0,
                })
                .filter(|m| {
                    destination
                        .as_deref()
                        .is_none_or(|d| m.pending().any(|(_, r)| r.domain().eq_ignore_ascii_case(d)))
                })
                .filter(|m| older_than.is_none_or(|age| now - m.received_at >= age.as_secs() as i64))
                .collect();
            if json {
                let list = list.iter().map(MessageMeta::to_json).collect::<serde_json::Result<Vec<_>>>().map_err(anyhow::Error::from)?;
                println!("{}", serde_json::to_string_pretty(&list).map_err(anyhow::Error::from)?);
            } else {
                print_table(&list);
            }
        }
        QueueCommand::Show { id, json, raw, .. } => {
            if raw {
                let body = access.body(&id)?.ok_or_else(|| not_found(&id))?;
                std::io::stdout().write_all(&body).map_err(anyhow::Error::from)?;
                return Ok(());
            }
            let m = access.show(&id)?.ok_or_else(|| not_found(&id))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m.to_json().map_err(anyhow::Error::from)?).map_err(anyhow::Error::from)?);
            } else {
                print_message(&m);
            }
        }
        QueueCommand::Delete { id, .. } => {
            if !access.delete(&id).map_err(refuse_missing)? {
                return Err(not_found(&id));
            }
            println!("deleted {id}");
        }
    }
    Ok(())
}

fn age(received_at: i64) -> String {
    let secs = (chrono::Utc::now().timestamp() - received_at).max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs))
        .to_string()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn sender(s: &str) -> String {
    if s.is_empty() {
        "<>".into()
    } else {
        s.to_string()
    }
}

fn print_table(list: &[MessageMeta]) {
    println!("{:<20}  {:>9}  {:<8}  {:<10}  {:<30}  RECIPIENTS", "ID", "SIZE", "AGE", "STATE", "SENDER");
    for m in list {
        let rcpts: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
        println!(
            "{:<20}  {:>9}  {:<8}  {:<10}  {:<30}  {}",
            m.id,
            m.size,
            age(m.received_at),
            state_name(m),
            sender(&m.sender),
            rcpts.join(", ")
        );
    }
    println!("{} message{}", list.len(), if list.len() == 1 { "" } else { "s" });
}

fn state_name(m: &MessageMeta) -> &'static str {
    match (m.state, m.attempts) {
        (MessageState::Held, _) => "held",
        (_, 0) => "queued",
        _ => "deferred",
    }
}

fn print_message(m: &MessageMeta) {
    let received = chrono::DateTime::from_timestamp(m.received_at, 0)
        .map(|d| d.to_rfc2822())
        .unwrap_or_default();
    println!("id:          {}", m.id);
    println!("received:    {received} ({} ago)", age(m.received_at));
    println!("state:       {}", state_name(m));
    println!("priority:    {:?}", m.priority);
    println!("size:        {} octets", m.size);
    println!("sender:      {}", sender(&m.sender));
    for r in &m.recipients {
        let mut extra = Vec::new();
        if let Some(o) = &r.orcpt {
            extra.push(format!("ORCPT={o}"));
        }
        let n = &r.notify;
        let notify: Vec<&str> = [(n.never, "NEVER"), (n.success, "SUCCESS"), (n.failure, "FAILURE"), (n.delay, "DELAY")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| *s)
            .collect();
        if !notify.is_empty() {
            extra.push(format!("NOTIFY={}", notify.join(",")));
        }
        if let Some(route) = &r.route {
            extra.push(format!("route={route}"));
        }
        println!("recipient:   {} [{:?}] {}", r.address, r.status, extra.join(" "));
        if let Some(reply) = &r.last_reply {
            println!("             last reply: {reply}{}", r.remote.as_ref().map(|h| format!(" (from {h})")).unwrap_or_default());
        }
    }
    println!("body:        {:?}{}", m.body_type, if m.smtputf8 { ", SMTPUTF8" } else { "" });
    if let Some(ret) = m.dsn_ret {
        println!("dsn ret:     {ret:?}");
    }
    if let Some(e) = &m.dsn_envid {
        println!("dsn envid:   {e}");
    }
    let s = &m.session;
    println!("listener:    {}", s.listener);
    println!("client:      {}:{} (HELO {})", s.client_ip, s.client_port, s.helo);
    match &s.tls {
        Some(t) => println!("tls:         {} {}", t.version, t.cipher),
        None => println!("tls:         none"),
    }
    println!("auth:        {}", s.auth_user.as_deref().unwrap_or("none"));
    println!("attempts:    {}", m.attempts);
    if m.state == MessageState::Queued && !m.is_done() {
        let next = chrono::DateTime::from_timestamp_millis(m.next_attempt_ms as i64)
            .map(|d| d.to_rfc2822())
            .unwrap_or_default();
        println!("next try:    {next}");
    }
    if let Some(q) = &m.quarantine {
        println!("quarantine:  {q}");
    }
    for (k, v) in &m.tags {
        println!("tag:         {k}={v}");
    }
    for (k, v) in &m.symbols {
        println!("symbol:      {k} {v:+}");
    }
    for d in &m.decisions {
        println!(
            "decision:    {:<9} {:<12} {:<14} {:>6}us{}{}",
            d.stage.as_str(),
            d.plugin,
            d.verdict,
            d.micros,
            d.recipient.as_ref().map(|r| format!(" rcpt={r}")).unwrap_or_default(),
            d.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
    for a in &m.history {
        let at = chrono::DateTime::from_timestamp(a.at, 0).map(|d| d.to_rfc3339()).unwrap_or_default();
        println!(
            "attempt:     {at} route={} destination={} remote={} result={} reply={:?} rcpts={}",
            a.route,
            a.destination,
            a.remote.as_deref().unwrap_or("-"),
            a.result,
            a.reply,
            a.recipients.join(",")
        );
    }
}
