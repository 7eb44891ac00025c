//! Per-call overhead of a plugin that returns continue (criterion):
//! `call_reused` is one `on-stage` call on an instance kept for the session;
//! `instantiate` is creating a session's instance from the pre-linked
//! component. Goals: under 5 µs and under 50 µs.
//!
//! `pipeline_message/*` is one message (mail_from, rcpt_to, data, route)
//! through the five-plugin pipeline of benches/plugin-accept-rate.sh, its
//! sessions taking turns as the server's do: `test_plugins` (kv, body,
//! header edits) or `noop`; `*_cold` first touches 4 MB of other memory
//! (not counted), as the server's networking and queue do between a
//! session's messages, so that the plugins' caches are cold as in a server.
//!
//! `pipeline_session/*` is the same with a whole session per message
//! (connect and helo too), as most inbound MX traffic comes: instances are
//! taken from the pool and told a new session began.
//!
//!   make plugins && cargo bench --bench plugin_call    (or: make bench)

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use weir::config::{Config, ConfigSource};
use weir::plugin::{wit, Context, Envelope, HostServices, Instance, Runtime, RuntimeConfig};
use weir::policy::types::StageName;
use weir::policy::SessionPolicy;
use weir::policy::types::{Grant, PluginDecl, PluginLimits, PluginPath};

/// A plugin as `make plugins` builds it.
fn wasm_path(name: &str) -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
    });
    let p = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    assert!(p.exists(), "{} missing: run `make plugins`", p.display());
    p
}

fn ctx() -> Context {
    Context {
        stage: wit::Stage::RcptTo,
        connection: Arc::new(wit::Connection {
            remote_ip: "192.0.2.1".into(),
            remote_port: 40000,
            local_addr: "127.0.0.1:25".into(),
            listener: "mx".into(),
            tls_version: None,
            tls_cipher: None,
            reverse_dns: None,
            helo: Some("client.example".into()),
            auth_user: None,
        }),
        envelope: Envelope {
            sender: Some("alice@example.net".into()),
            sender_params: vec![],
            recipients: vec!["bob@example.org".into()],
        },
        recipient: Some("carol@example.org".into()),
        recipient_params: vec![],
        tags: vec![],
        symbols: vec![],
        size: 0,
        headers: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let path = wasm_path("test_noop");
    let (runtime, services, plugin) = rt.block_on(async {
        let runtime = Runtime::new(&RuntimeConfig::default(), None).unwrap();
        let services = HostServices::with(
            Arc::new(weir::dns::Dns::new(&Default::default()).unwrap()),
            None,
            Duration::from_secs(1),
            "bench.invalid".into(),
        );
        let decl = PluginDecl {
            path: PluginPath(path.display().to_string()),
            sha256: None,
            grants: vec![Grant::Log],
            limits: PluginLimits::default(),
            config: None,
            circuit_breaker: Default::default(),
            files: Default::default(),
            reuse_instances: true,
        };
        let plugin = runtime.load("noop", &decl, std::path::Path::new("/"), &services).await.unwrap();
        (runtime, services, plugin)
    });
    let context = ctx();
    let config: std::sync::Arc<str> = std::sync::Arc::from("");
    let mut inst = rt.block_on(Instance::new(&runtime, plugin.clone(), services.clone())).unwrap();
    c.bench_function("call_reused", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let d = inst.on_stage(&context, Instant::now(), 0, &config, None).await.unwrap();
                    std::hint::black_box(d);
                }
                start.elapsed()
            })
        })
    });
    c.bench_function("instantiate", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let i = Instance::new(&runtime, plugin.clone(), services.clone()).await.unwrap();
                    std::hint::black_box(&i);
                }
                start.elapsed()
            })
        })
    });
}

/// The five plugins of benches/plugin-accept-rate.sh, as a configuration.
fn pipeline_yaml(dir: &std::path::Path, noop: bool) -> String {
    let p = |name: &str| wasm_path(name).display().to_string();
    let decls = if noop {
        ["conn", "sender", "rcpt", "stamp", "router"].map(|n| format!("  {n}: {{path: {}}}\n", p("test_noop"))).concat()
    } else {
        format!(
            "  conn: {{path: {}, grants: [config, tags], config: {{deny_helos: [bad.example]}}}}\n  sender: {{path: {}, grants: [config, log], config: {{blocked_senders: [spam@example.net]}}}}\n  rcpt: {{path: {}, grants: [symbols, route]}}\n  stamp: {{path: {}, grants: [body, kv, headers, tags]}}\n  router: {{path: {}}}\n",
            p("test_conn_guard"), p("test_sender_guard"), p("test_rcpt_guard"), p("test_stamp"), p("test_router")
        )
    };
    format!(
        "server:\n  hostname: bench.test\n  data_dir: {}\nlisteners:\n  mx:\n    bind: 127.0.0.1:0\n    pipeline: five\nplugins:\n{decls}pipelines:\n  five:\n    connect: [{{plugin: conn}}]\n    helo: [{{plugin: conn}}]\n    mail_from: [{{plugin: sender}}]\n    rcpt_to: [{{plugin: rcpt}}]\n    data: [{{plugin: stamp}}]\n    route: [{{plugin: router}}]\n",
        dir.display()
    )
}

/// One transaction through the pipeline: MAIL, one RCPT, DATA, route; each
/// stage must continue.
async fn transaction(sp: &mut SessionPolicy, ctx: &mut Context, body: &Arc<Vec<u8>>, headers: &Arc<str>) {
    ctx.envelope.sender = Some("bench@example.org".into());
    let o = sp.run(StageName::MailFrom, ctx, None).await;
    assert!(o.verdict.is_none(), "{:?}", o.trail);
    ctx.recipient = Some("postmaster@localhost".into());
    let o = sp.run(StageName::RcptTo, ctx, None).await;
    assert!(o.verdict.is_none(), "{:?}", o.trail);
    ctx.envelope.recipients.push("postmaster@localhost".into());
    ctx.recipient = None;
    ctx.size = body.len() as u64;
    ctx.headers = Some(headers.clone());
    for stage in [StageName::Data, StageName::Route] {
        let o = sp.run(stage, ctx, Some(body.clone())).await;
        assert!(o.verdict.is_none(), "{:?}", o.trail);
    }
}

/// One message after another through the pipeline, 20 sessions (or
/// `BENCH_SESSIONS`) taking turns; `pollute` bytes of other memory touched
/// between messages.
fn pipeline(c: &mut Criterion, rt: &tokio::runtime::Runtime, noop: bool) {
    let sessions_n: usize = std::env::var("BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, pipeline_yaml(dir.path(), noop)).unwrap();
    let config = Config::load(ConfigSource::File(&path), &[]).unwrap();
    let policy = rt.block_on(async {
        let kv = weir::plugin::kv::Kv::open(&dir.path().join("kv")).unwrap();
        let runtime = Runtime::new(&config.plugin_runtime, None).unwrap();
        let services = HostServices::new(&config, Arc::new(weir::dns::Dns::new(&config.dns).unwrap()), Some(kv));
        let origin = weir::policy::ConfigOrigin { path: Some(path.clone()), overrides: vec![] };
        Arc::new(weir::policy::prepare(&config, &origin, Some(&runtime), &services).await.map_err(|e| e.to_string()).unwrap())
    });
    let mut body = b"Received: from bench.client (localhost [127.0.0.1])\r\n\tby bench.test (Weir) with ESMTP id 0123456789abcdef\r\n\tfor <postmaster@localhost>; Wed, 2 Dec 2026 07:00:00 +0000\r\nFrom: <bench@example.org>\r\nTo: <postmaster@localhost>\r\nDate: Wed, 2 Dec 2026 07:00:00 +0000\r\nMessage-Id: <20261202070000.1234@bench.client>\r\nSubject: bench message\r\n\r\n".to_vec();
    while body.len() < 1024 {
        body.extend_from_slice(b"La de da de da 1.\r\n");
    }
    let headers = weir::plugin::event::header_section(&body);
    let body = Arc::new(body);
    let mut sessions: Vec<(SessionPolicy, Context)> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..sessions_n {
            let mut sp = SessionPolicy::new(policy.clone(), Some("five".into()));
            let mut ctx = ctx();
            Arc::make_mut(&mut ctx.connection).remote_port = 40000 + i as u16;
            ctx.envelope = Envelope::default();
            ctx.recipient = None;
            sp.run(StageName::Connect, &mut ctx, None).await;
            sp.run(StageName::Helo, &mut ctx, None).await;
            v.push((sp, ctx));
        }
        v
    });
    let name = if noop { "noop" } else { "test_plugins" };
    let mut group = c.benchmark_group("pipeline_message");
    for (suffix, pollute) in [("", 0usize), ("_cold", 4 << 20)] {
        let mut junk = vec![1u8; pollute.max(1)];
        let mut turn = 0;
        group.bench_function(format!("{name}{suffix}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        if pollute > 0 {
                            for k in (0..junk.len()).step_by(64) {
                                junk[k] = junk[k].wrapping_add(1);
                            }
                        }
                        turn = (turn + 1) % sessions_n;
                        let (sp, ctx) = &mut sessions[turn];
                        let start = Instant::now();
                        transaction(sp, ctx, &body, &headers).await;
                        // The transaction ends.
                        ctx.envelope = Envelope::default();
                        ctx.headers = None;
                        ctx.size = 0;
                        ctx.tags.truncate(1);
                        ctx.symbols.clear();
                        spent += start.elapsed();
                    }
                    spent
                })
            })
        });
    }
    group.finish();
    // A whole session per message (most inbound MX traffic): instances
    // come from the pool, every plugin is told a new session began.
    let mut group = c.benchmark_group("pipeline_session");
    for (suffix, pollute) in [("", 0usize), ("_cold", 4 << 20)] {
        let mut junk = vec![1u8; pollute.max(1)];
        group.bench_function(format!("{name}{suffix}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for i in 0..iters {
                        if pollute > 0 {
                            for k in (0..junk.len()).step_by(64) {
                                junk[k] = junk[k].wrapping_add(1);
                            }
                        }
                        let start = Instant::now();
                        let mut sp = SessionPolicy::new(policy.clone(), Some("five".into()));
                        let mut ctx = ctx();
                        Arc::make_mut(&mut ctx.connection).remote_port = 40000 + (i % 20000) as u16;
                        ctx.envelope = Envelope::default();
                        ctx.recipient = None;
                        sp.run(StageName::Connect, &mut ctx, None).await;
                        Arc::make_mut(&mut ctx.connection).helo = Some("bench.client".into());
                        sp.run(StageName::Helo, &mut ctx, None).await;
                        transaction(&mut sp, &mut ctx, &body, &headers).await;
                        drop(sp);
                        spent += start.elapsed();
                    }
                    spent
                })
            })
        });
    }
    group.finish();
}

fn pipelines(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    pipeline(c, &rt, false);
    pipeline(c, &rt, true);
}

criterion_group!(benches, bench, pipelines);
criterion_main!(benches);
