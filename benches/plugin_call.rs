//! Per-call overhead of a plugin that returns continue (criterion):
//! `call_reused` is one `on-stage` call on an instance kept for the session;
//! `instantiate` is creating a session's instance from the pre-linked
//! component. Goals: under 5 µs and under 50 µs.
//!
//!   make plugins && cargo bench --bench plugin_call    (or: make bench)

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use weir::plugin::{wit, Context, Envelope, HostServices, Instance, Runtime, RuntimeConfig};
use weir::policy::types::{Grant, PluginDecl, PluginLimits, PluginPath};

fn noop_path() -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
    });
    target.join("wasm32-wasip2/release/test_noop.wasm")
}

fn ctx() -> Context {
    Context {
        stage: wit::Stage::RcptTo,
        connection: wit::Connection {
            remote_ip: "192.0.2.1".into(),
            remote_port: 40000,
            local_addr: "127.0.0.1:25".into(),
            listener: "mx".into(),
            tls_version: None,
            tls_cipher: None,
            reverse_dns: None,
            helo: Some("client.example".into()),
            auth_user: None,
        },
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
    let path = noop_path();
    assert!(path.exists(), "{} missing: run `make plugins`", path.display());
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
    let mut inst = rt.block_on(Instance::new(&runtime, plugin.clone(), services.clone())).unwrap();
    c.bench_function("call_reused", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let d = inst.on_stage(&context, Instant::now(), 0, std::sync::Arc::from(""), None).await.unwrap();
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

criterion_group!(benches, bench);
criterion_main!(benches);
