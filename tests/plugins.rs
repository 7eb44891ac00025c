//! Policy plugins in real SMTP sessions: misbehaving plugins (infinite
//! loop, unbounded allocation, panic, endless recursion, ungranted
//! capability) fault without hurting other clients; a five-plugin pipeline
//! across every stage driven by smtplib; `weir policy check` errors with file:line:column; reload
//! during traffic.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn plugins_block(extra: &str) -> String {
    format!(
        r#"
plugins:
  loop:
    path: {}
    limits: {{time_budget: 100ms}}
  alloc:
    path: {}
    limits: {{memory_mb: 16}}
  trap:
    path: {}
    circuit_breaker: {{faults: 1000, window: 60s}}
  stamp_nogrant:
    path: {}
    grants: [body, kv, tags]
  conn:
    path: {}
    grants: [config, tags]
    config: {{deny_helos: [bad.example]}}
  sender:
    path: {}
    grants: [config, log]
    config: {{blocked_senders: [spam@example.org], blocked_users: [blocked]}}
  rcpt:
    path: {}
    grants: [symbols, route]
  stamp:
    path: {}
    grants: [body, kv, headers, tags]
  router:
    path: {}
{extra}"#,
        plugin("test_loop"),
        plugin("test_alloc"),
        plugin("test_trap"),
        plugin("test_stamp"),
        plugin("test_conn_guard"),
        plugin("test_sender_guard"),
        plugin("test_rcpt_guard"),
        plugin("test_stamp"),
        plugin("test_router"),
    )
}

/// A listener per name, each on its own port running pipeline `p_NAME`.
fn listeners(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("  {n}:\n    bind: 127.0.0.1:{{port:{n}}}\n    tls: none\n    pipeline: p_{n}\n"))
        .collect()
}

/// A server with one listener, `mx`, running pipeline `p`; `rest` adds
/// the plugins, the pipeline and anything else.
fn mx_server(rest: &str) -> String {
    format!(
        "server:\n  hostname: mx.test\nlisteners:\n  mx:\n    bind: 127.0.0.1:{{port:mx}}\n    tls: none\n    pipeline: p\nmetrics:\n  bind: 127.0.0.1:{{metrics}}\ndelivery:\n  enabled: false\n{rest}"
    )
}

/// Sends messages on `port` until stopped; counts successes and failures.
fn background_sender(port: u16, stop: Arc<AtomicBool>, ok: Arc<AtomicUsize>, failed: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let r = std::panic::catch_unwind(|| {
                let mut c = Smtp::connect(port);
                c.cmd("EHLO steady.test").is(250, "");
                c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: steady\r\n\r\nx").code
            });
            match r {
                Ok(250) => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
}

#[test]
fn misbehaving_plugins_fault_alone() {
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  good:
    bind: 127.0.0.1:{{port:good}}
    tls: none
{}metrics:
  bind: 127.0.0.1:{{metrics}}
delivery:
  enabled: false
{}
pipelines:
  p_loop:
    data: [{{plugin: loop}}]
  p_alloc:
    data: [{{plugin: alloc, on_error: continue}}]
  p_trap:
    data: [{{plugin: trap, on_error: reject}}]
  p_refused:
    data: [{{plugin: stamp_nogrant}}]
"#,
        listeners(&["loop", "alloc", "trap", "refused"]),
        plugins_block("")
    );
    let s = Server::start(&cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let bg = background_sender(s.port("good"), stop.clone(), ok.clone(), failed.clone());
    let send = |listener: &str| {
        let mut c = Smtp::connect(s.port(listener));
        c.cmd("EHLO client.test").is(250, "");
        let r = c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: hi\r\n\r\nx");
        // The session goes on after the fault.
        c.cmd("NOOP").is(250, "2.0.0");
        r
    };
    for _ in 0..3 {
        // Infinite loop: cut off by the time budget, on_error tempfail (the default).
        send("loop").is(451, "4.3.0");
        // Unbounded allocation: stopped at the memory cap, on_error continue.
        let id = queued_id(&send("alloc"));
        let m = s.queue_show(&id);
        assert_eq!(m["decisions"][0]["verdict"], "fault:memory", "{m}");
        // Panic: a trap, on_error reject.
        send("trap").is(554, "5.7.0");
        // A change it was not granted: refused, on_error tempfail.
        send("refused").is(451, "4.3.0");
    }
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "other clients were hurt");
    assert!(ok.load(Ordering::Relaxed) > 0);
    let m = s.metrics();
    for (plugin, kind) in [("loop", "timeout"), ("alloc", "memory"), ("trap", "trap"), ("stamp_nogrant", "refused")] {
        let n = metric_value(&m, "weir_plugin_faults_total", &[&format!("plugin=\"{plugin}\""), &format!("kind=\"{kind}\"")]);
        assert_eq!(n, 3.0, "{plugin}/{kind} faults in /metrics:\n{m}");
    }
    assert!(metric_value(&m, "weir_plugin_call_seconds_count", &["plugin=\"loop\""]) >= 3.0, "{m}");
    // All of the above ran on the fast memory layout, the default one.
    assert!(s.log().contains("plugin memories: 4 GiB of address space each, no bounds checks"), "{}", s.log());
    // A log that is not a terminal gets plain `key=value` fields, without
    // colour codes between a key and its value.
    assert!(s.log().contains("plugin loaded plugin=loop "), "{}", s.log());
}

/// With more instances than 4 GiB reservations fit, or when the kernel
/// refuses that much address space, plugin memories are bounds-checked
/// instead: the memory cap and the time budget still stop a plugin, and a
/// well-behaved one still changes the message.
#[test]
fn bounds_checked_memories_keep_the_same_limits() {
    let cfg = |runtime: &str| {
        format!(
            r#"
server:
  hostname: mx.test
listeners:
{}metrics:
  bind: 127.0.0.1:{{metrics}}
delivery:
  enabled: false
{runtime}
{}
pipelines:
  p_loop:
    data: [{{plugin: loop}}]
  p_alloc:
    data: [{{plugin: alloc, on_error: continue}}]
  p_stamp:
    data: [{{plugin: stamp}}]
"#,
            listeners(&["loop", "alloc", "stamp"]),
            plugins_block("")
        )
    };
    let too_many = Server::start(&cfg("plugin_runtime:\n  max_instances: 5000"));
    assert!(too_many.log().contains("too many instances for 4 GiB each; plugin memories are bounds-checked"), "{}", too_many.log());
    // 2 TiB of address space: room for bounded memories, not for 4 GiB ones.
    let refused = Server::start_limited(&cfg(""), &[], Some(2 << 40));
    assert!(refused.log().contains("cannot reserve 4 GiB of address space per plugin memory"), "{}", refused.log());
    for s in [too_many, refused] {
        let send = |listener: &str| {
            let mut c = Smtp::connect(s.port(listener));
            c.cmd("EHLO client.test").is(250, "");
            c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: hi\r\nX-Internal: secret\r\n\r\none\r\ntwo\r\n")
        };
        send("loop").is(451, "4.3.0");
        let m = s.queue_show(&queued_id(&send("alloc")));
        assert_eq!(m["decisions"][0]["verdict"], "fault:memory", "{m}");
        let stamped = String::from_utf8_lossy(&s.queue_raw(&queued_id(&send("stamp")))).to_string();
        assert!(stamped.contains("X-Weir-Stamp: n=1 lines="), "{stamped}");
        assert!(!stamped.contains("X-Internal"), "{stamped}");
        // The stamp counts the message's lines with the SDK's vector loop:
        // a message longer than its 4080-byte round, with a ragged end, and
        // empty lines enough to fill a lane's count past 255.
        let body: String = (0..900).map(|i| format!("{}\r\n", "x".repeat(i % 23))).collect::<String>() + &"\r\n".repeat(3000);
        let mut c = Smtp::connect(s.port("stamp"));
        c.cmd("EHLO client.test").is(250, "");
        let reply = c.send_mail("a@example.org", &["postmaster@localhost"], &format!("Subject: long\r\nX-Internal: x\r\n\r\n{body}"));
        let raw = String::from_utf8_lossy(&s.queue_raw(&queued_id(&reply))).to_string();
        let stamp = &raw[raw.find("X-Weir-Stamp: ").expect("stamped")..];
        let field_lines = 1 + stamp.split("\r\n").skip(1).take_while(|l| l.starts_with([' ', '\t'])).count();
        let counted: usize = stamp.split("lines=").nth(1).and_then(|v| v.split([' ', '\r']).next()).and_then(|n| n.parse().ok()).expect("lines=");
        // What the plugin read: this message less its own field, with X-Internal.
        assert_eq!(counted, raw.matches('\n').count() - field_lines + 1 + 1, "{stamp}");
    }
}

/// With less address space than even bounded memories need, Weir says how
/// much it needs and what to change, instead of only that a mapping failed.
#[test]
fn too_little_address_space_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let policy = format!("listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    pipeline: p\nplugins:\n  noop:\n    path: {}\npipelines:\n  p:\n    data: [{{plugin: noop}}]\n", plugin("test_noop"));
    std::fs::write(&path, policy).unwrap();
    let mut cmd = Command::new(WEIR);
    cmd.args(["policy", "check"]).arg(&path);
    limit_address_space(&mut cmd, 100 << 30);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("plugin memories need about 500 GiB of address space for plugin_runtime.max_instances = 1000"), "{err}");
    assert!(err.contains("ulimit -v"), "{err}");
}

/// A plugin built against an older interface is refused at load, saying
/// which versions differ. (The old build is the no-op plugin with its
/// interface names set back to 0.5.0, whose `on-stage` took an `event`.)
#[test]
fn a_plugin_built_against_another_interface_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(plugin("test_noop")).unwrap();
    let (new, old) = (b"weir:plugin/types@0.6.0".as_slice(), b"weir:plugin/types@0.5.0".as_slice());
    let mut patched = wasm.clone();
    let mut found = 0;
    for i in 0..patched.len().saturating_sub(new.len()) {
        if &patched[i..i + new.len()] == new {
            patched[i..i + new.len()].copy_from_slice(old);
            found += 1;
        }
    }
    assert!(found > 0, "test_noop imports weir:plugin/types@0.6.0");
    let old_path = dir.path().join("old.wasm");
    std::fs::write(&old_path, patched).unwrap();
    let policy = |p: &std::path::Path| format!("listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    pipeline: p\nplugins:\n  noop:\n    path: {}\npipelines:\n  p:\n    data: [{{plugin: noop}}]\n", p.display());
    let (code, err) = check(&policy(&old_path));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("built against weir:plugin@0.5.0, but this Weir speaks weir:plugin@0.6.0"), "{err}");
    let (code, err) = check(&policy(std::path::Path::new(&plugin("test_noop"))));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_circuit_breaker_switches_a_faulty_plugin_off() {
    let cfg = mx_server(&format!(
        "plugins:\n  trap:\n    path: {}\n    circuit_breaker: {{faults: 3, window: 60s}}\npipelines:\n  p:\n    data: [{{plugin: trap, on_error: continue}}]\n",
        plugin("test_trap")
    ));
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let ids: Vec<String> = (0..5).map(|i| queued_id(&c.send_mail("a@example.org", &["postmaster@localhost"], &format!("Subject: {i}\r\n\r\nx")))).collect();
    let verdicts: Vec<String> = ids.iter().map(|id| s.queue_show(id)["decisions"][0]["verdict"].as_str().unwrap().to_string()).collect();
    assert_eq!(verdicts, vec!["fault:trap", "fault:trap", "fault:trap", "fault:disabled", "fault:disabled"]);
    assert!(s.log().contains("CIRCUIT BREAKER OPEN"), "{}", s.log());
    let m = s.metrics();
    assert_eq!(metric_value(&m, "weir_plugin_circuit_open", &["plugin=\"trap\""]), 1.0, "{m}");
}

/// A plugin's calls run on the session thread's own stack, which cannot
/// yield; the first call to run for a whole epoch tick switches the plugin to
/// calls on a fiber that yield to the thread's other sessions at every
/// tick. With one session thread: after a looping call has made the
/// switch, another session is answered while the next looping call runs.
#[test]
fn a_plugin_that_runs_past_a_tick_is_switched_to_calls_that_yield() {
    let cfg = mx_server(&format!(
        "plugins:\n  loop:\n    path: {}\n    limits: {{time_budget: 600ms}}\npipelines:\n  p:\n    data: [{{plugin: loop}}]\n",
        plugin("test_loop")
    ))
    .replace("server:\n  hostname: mx.test\n", "server:\n  hostname: mx.test\n  session_threads: 1\n");
    let s = Server::start(&cfg);
    let mut a = Smtp::connect(s.port("mx"));
    a.cmd("EHLO a.test").is(250, "");
    a.send_mail("a@example.org", &["postmaster@localhost"], "Subject: 1\r\n\r\nx").is(451, "4.3.0");
    assert_eq!(s.log().matches("this plugin's calls now run on a fiber").count(), 1, "{}", s.log());
    let mut b = Smtp::connect(s.port("mx"));
    b.cmd("EHLO b.test").is(250, "");
    a.cmd("MAIL FROM:<a@example.org>").is(250, "");
    a.cmd("RCPT TO:<postmaster@localhost>").is(250, "");
    a.cmd("DATA").is(354, "");
    a.send(b"Subject: 2\r\n\r\nx\r\n.\r\n");
    let looping = std::thread::spawn(move || {
        let r = a.read();
        (r, std::time::Instant::now())
    });
    std::thread::sleep(Duration::from_millis(100));
    b.cmd("NOOP").is(250, "2.0.0");
    let answered = std::time::Instant::now();
    let (r, looped) = looping.join().unwrap();
    r.is(451, "4.3.0");
    assert!(answered < looped, "the other session waited for the looping call to end");
}

/// A plugin that recurses without end is stopped by wasmtime's limit on
/// the native stack a call may use, on the session thread's own stack as
/// on a fiber: a trap, not an overflow of the thread's stack.
#[test]
fn a_plugin_that_recurses_without_end_traps() {
    let cfg = mx_server(&format!(
        "plugins:\n  recurse:\n    path: {}\npipelines:\n  p:\n    data: [{{plugin: recurse, on_error: continue}}]\n",
        plugin("test_recurse")
    ));
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    for i in 0..2 {
        let id = queued_id(&c.send_mail("a@example.org", &["postmaster@localhost"], &format!("Subject: {i}\r\n\r\nx")));
        let d = &s.queue_show(&id)["decisions"][0];
        assert_eq!(d["verdict"], "fault:trap", "{d}");
        assert!(d["reason"].as_str().unwrap_or("").contains("call stack exhausted"), "{d}");
    }
    c.cmd("NOOP").is(250, "2.0.0");
}

#[test]
fn five_plugin_pipeline_across_every_stage_with_smtplib() {
    let hash = password_hash("pw");
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  mx:
    bind: 127.0.0.1:{{port:mx}}
    tls: none
    auth: offer
    auth_over_plaintext: true
    pipeline: inbound
  deny:
    bind: 127.0.0.1:{{port:deny}}
    tls: none
    pipeline: denyall
auth:
  users:
    blocked: "{}"
relay:
  local_domains: [localhost, routed.test]
routes:
  special:
    type: discard
metrics:
  bind: 127.0.0.1:{{metrics}}
delivery:
  enabled: false
{}
pipelines:
  inbound:
    connect: [{{plugin: conn}}]
    helo: [{{plugin: conn}}]
    auth: [{{plugin: sender}}]
    mail_from: [{{plugin: sender}}]
    rcpt_to: [{{plugin: rcpt}}]
    data: [{{plugin: stamp}}]
    route: [{{plugin: router}}]
  denyall:
    connect: [{{plugin: conn, config: {{deny_ips: ["127.0.0.1"]}}}}]
"#,
        hash.trim(),
        plugins_block("")
    );
    let s = Server::start(&cfg);
    let out = run_ok(Command::new("python3").arg(repo_root().join("tests/clients/pipeline_client.py")).arg(s.port("mx").to_string()).arg(s.port("deny").to_string()));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let code = |k: &str| r[k][0].as_u64().unwrap();
    let text = |k: &str| r[k][1].as_str().unwrap().to_string();
    assert_eq!(code("good"), 250, "{r}");
    assert_eq!(code("blocked_sender"), 553, "{r}");
    assert!(text("blocked_sender").starts_with("5.7.1 You may not send as that address"), "{r}");
    assert_eq!(code("greylisted_rcpt"), 451, "{r}");
    assert_eq!(code("quarantine"), 250, "{r}");
    assert_eq!(code("discard"), 250, "{r}");
    assert!(text("discard").contains("discarded"), "{r}");
    assert_eq!(code("blocked_auth"), 535, "{r}");
    assert_eq!(code("bad_helo"), 550, "{r}");
    assert_eq!(code("denied_connect"), 554, "{r}");
    // The accepted message: header changes, envelope route, the whole trail.
    let id = text("good").rsplit(' ').next().unwrap().to_string();
    let m = s.queue_show(&id);
    let raw = String::from_utf8(s.queue_raw(&id)).unwrap();
    assert!(raw.contains("\r\nX-Weir-Stamp: n=1 "), "{raw}");
    assert!(raw.contains("client=127.0.0.1"), "tag from connect seen at data: {raw}");
    assert!(raw.contains("score=1"), "symbols from rcpt seen at data: {raw}");
    let size = raw.split("size=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("");
    assert!(size.parse::<u64>().is_ok_and(|n| n > 0), "MAIL's SIZE parameter seen at data: {raw}");
    assert!(raw.contains("\r\nSubject: [tagged] hello\r\n"), "{raw}");
    assert!(!raw.contains("X-Internal"), "{raw}");
    let plugins: Vec<&str> = m["decisions"].as_array().unwrap().iter().map(|d| d["plugin"].as_str().unwrap()).collect();
    for p in ["conn", "rcpt", "sender", "stamp", "router"] {
        assert!(plugins.contains(&p), "{p} missing from the trail: {m}");
    }
    let routed = m["recipients"].as_array().unwrap().iter().find(|r| r["address"] == "u@routed.test").unwrap();
    assert_eq!(routed["route"], "special");
    assert_eq!(m["tags"], serde_json::json!([["client", "127.0.0.1"], ["stamped", "yes"]]));
    // Quarantined: held with its reason; discarded: not queued.
    let q = s.queue_list();
    assert_eq!(q.len(), 2, "{q:?}");
    let held = q.iter().find(|m| m["id"] != id.as_str()).unwrap();
    assert_eq!(held["state"], "held");
    assert_eq!(held["quarantine"], "subject asked for it");
    // A later transaction of the same session: the session's decisions
    // and tags again, its own, and none of the earlier transactions'.
    let held = s.queue_show(held["id"].as_str().unwrap());
    let plugins: Vec<&str> = held["decisions"].as_array().unwrap().iter().map(|d| d["plugin"].as_str().unwrap()).collect();
    assert_eq!(plugins, ["conn", "conn", "sender", "rcpt", "stamp", "router"], "{held}");
    assert_eq!(held["tags"], serde_json::json!([["client", "127.0.0.1"], ["stamped", "yes"]]));
    let metrics = s.metrics();
    assert!(metric_value(&metrics, "weir_plugin_verdicts_total", &["plugin=\"router\"", "verdict=\"quarantine\""]) >= 1.0, "{metrics}");
}

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(WEIR).args(["policy", "check"]).arg(&path).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE"))
}

#[test]
fn policy_check_reports_each_kind_of_bad_policy_with_a_location() {
    let base = "listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    pipeline: p\n";
    let good = format!("{base}plugins:\n  stamp:\n    path: {}\n    grants: [body, kv, headers, tags]\npipelines:\n  p:\n    data: [{{plugin: stamp}}]\n", plugin("test_stamp"));
    let (code, err) = check(&good);
    assert_eq!(code, 0, "{err}");
    let cases: Vec<(String, &str, &str)> = vec![
        // Unknown plugin in a step.
        (good.replace("data: [{plugin: stamp}]", "data: [{plugin: stomp}]"), "FILE:11:", "unknown plugin `stomp`"),
        // A plugin placed at a stage it does not handle.
        (good.replace("    data: [{plugin: stamp}]", "    helo: [{plugin: stamp}]"), "FILE:11:", "does not handle the helo stage"),
        // An import it was not granted.
        (good.replace("grants: [body, kv, headers, tags]", "grants: [body, headers, tags]"), "FILE:7:", "imports the `kv` capability"),
        // A wrong pin.
        (good.replace("    grants:", &format!("    sha256: {}\n    grants:", "0".repeat(64))), "FILE:7:", "but the policy pins"),
        // A file that is not there.
        (good.replace(&plugin("test_stamp"), "/nonexistent/p.wasm"), "FILE:7:", "cannot read plugin"),
        // Bad YAML and unknown keys in a step.
        (good.replace("data: [{plugin: stamp}]", "data: [{plugin: stamp, when: {tls: maybe}}]"), "FILE:11:", "invalid type"),
        (good.replace("data: [{plugin: stamp}]", "data: [{plugin: stamp, on_eror: continue}]"), "FILE:11:", "unknown field `on_eror`"),
        (good.replace("    data:", "    dta:"), "FILE:11:5", "unknown field `dta`"),
    ];
    for (text, loc, words) in cases {
        let (code, err) = check(&text);
        assert_eq!(code, 3, "{text}\n{err}");
        assert!(err.contains(loc) && err.contains(words), "expected {loc} and {words:?} in {err}");
    }
    // A listener naming a pipeline that does not exist.
    let (code, err) = check(&good.replace("pipeline: p", "pipeline: q"));
    assert_eq!(code, 3);
    assert!(err.contains("listeners.mx.pipeline: no pipeline named \"q\""), "{err}");

    // Data files (grant: files): read at load, reported at the plugin.
    let model = repo_root().join("plugins/spam-score/model/spamassassin.model");
    let spam = format!(
        "{base}plugins:\n  spam:\n    path: {}\n    grants: [config, body, files, headers, symbols, tags]\n    files: {{model: {}}}\npipelines:\n  p:\n    data: [{{plugin: spam}}]\n",
        plugin("spam_score"),
        model.display()
    );
    let (code, err) = check(&spam);
    assert_eq!(code, 0, "{err}");
    let cases: Vec<(String, &str, &str)> = vec![
        (spam.replace(&model.display().to_string(), "/nonexistent/spam.model"), "FILE:7:", "cannot read spam's file model (/nonexistent/spam.model)"),
        (spam.replace("grants: [config, body, files,", "grants: [config, body,"), "FILE:7:", "imports the `files` capability"),
        // Files for a plugin that may not read them.
        (good.replace("    grants: [body, kv, headers, tags]", "    grants: [body, kv, headers, tags]\n    files: {list: /etc/hostname}"), "FILE:7:", "declares files: but is not granted `files`"),
        (spam.replace("    files: {model: ", "    filez: {model: "), "FILE:", "unknown field `filez`"),
    ];
    for (text, loc, words) in cases {
        let (code, err) = check(&text);
        assert_eq!(code, 3, "{text}\n{err}");
        assert!(err.contains(loc) && err.contains(words), "expected {loc} and {words:?} in {err}");
    }
}

#[test]
fn reload_during_traffic_never_fails_a_session() {
    let template = |pipeline: &str| {
        mx_server(&format!("{}\npipelines:\n  p:\n{pipeline}", plugins_block("")))
    };
    let s = Server::start(&template("    data: [{plugin: stamp}]\n"));
    let port = s.port("mx");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let bg = background_sender(port, stop.clone(), ok.clone(), failed.clone());
    std::thread::sleep(Duration::from_millis(300));
    // A broken policy: refused, the old one keeps running.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("data: [{plugin: stamp}]", "data: [{plugin: nosuch}]")).unwrap();
    let out = s.weir(&["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown plugin `nosuch`"), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Smtp::connect(port);
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: old\r\n\r\nx"));
    assert!(String::from_utf8(s.queue_raw(&id)).unwrap().contains("X-Weir-Stamp"), "old policy still runs");
    let trail = |id: &str| -> Vec<String> {
        s.queue_show(id)["decisions"].as_array().unwrap().iter().map(|d| d["plugin"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(trail(&id), vec!["stamp"]);
    // A good new policy by `weir reload`, then another by SIGHUP.
    std::fs::write(&s.config, text.replace("data: [{plugin: stamp}]", "data: [{plugin: stamp}]\n    route: [{plugin: router}]")).unwrap();
    let out = s.weir(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy reloaded"));
    let mut c = Smtp::connect(port);
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: new\r\n\r\nx"));
    assert_eq!(trail(&id), vec!["stamp", "router"], "the new policy runs");
    std::fs::write(&s.config, text).unwrap();
    unsafe {
        libc::kill(s.pid(), libc::SIGHUP);
    }
    wait_for(10, "the SIGHUP reload", || s.log().matches("policy reloaded").nth(1).map(|_| ()));
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a session failed during reloads");
    assert!(ok.load(Ordering::Relaxed) > 0);
}

#[test]
fn policy_test_runs_fixtures_through_the_real_plugins() {
    let fixtures: Vec<std::path::PathBuf> = std::fs::read_dir(repo_root().join("policies/tests"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(fixtures.len() >= 3);
    let out = Command::new(WEIR).args(["policy", "test"]).args(&fixtures).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("PASS ").count(), fixtures.len(), "{text}");
    // A fixture that expects the wrong thing fails, and says why.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.yaml");
    let original = std::fs::read_to_string(repo_root().join("policies/tests/refusals.yaml")).unwrap();
    std::fs::write(
        &wrong,
        original
            .replace("config: ../example-pipeline.yaml", &format!("config: {}", repo_root().join("policies/example-pipeline.yaml").display()))
            .replace("mail_from: reject 553", "mail_from: continue"),
    )
    .unwrap();
    let out = Command::new(WEIR).args(["policy", "test"]).arg(&wrong).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL") && text.contains("mail_from: expected continue, got reject 553"), "{text}");
}

/// Instances are kept between sessions, but a plugin's per-session state
/// starts afresh in each (rcpt's symbols count recipients per session);
/// with `reuse_instances: false` every session gets a new instance. Each
/// step sees its own config even when the instance parsed another step's
/// first (conn denies HELO names only in its helo step's config).
#[test]
fn instances_serve_later_sessions_with_fresh_state_and_each_step_its_config() {
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  reuse:
    bind: 127.0.0.1:{{port:reuse}}
    tls: none
    pipeline: p_reuse
  fresh:
    bind: 127.0.0.1:{{port:fresh}}
    tls: none
    pipeline: p_fresh
metrics:
  bind: 127.0.0.1:{{metrics}}
delivery:
  enabled: false
plugins:
  conn:
    path: {conn}
    grants: [config, tags]
  rcpt:
    path: {rcpt}
    grants: [symbols, route]
  rcpt_fresh:
    path: {rcpt}
    grants: [symbols, route]
    reuse_instances: false
pipelines:
  p_reuse:
    connect: [{{plugin: conn, config: {{deny_helos: []}}}}]
    helo: [{{plugin: conn, config: {{deny_helos: [bad.example]}}}}]
    rcpt_to: [{{plugin: rcpt}}]
  p_fresh:
    rcpt_to: [{{plugin: rcpt_fresh}}]
"#,
        conn = plugin("test_conn_guard"),
        rcpt = plugin("test_rcpt_guard"),
    );
    let s = Server::start(&cfg);
    let session = |listener: &str, helo: &str| {
        let mut c = Smtp::connect(s.port(listener));
        let r = c.cmd(&format!("EHLO {helo}"));
        if r.code != 250 {
            return Err(r.code);
        }
        let r = c.send_mail("a@example.org", &["postmaster@localhost", "abuse@localhost"], "Subject: hi\r\n\r\nx");
        c.cmd("QUIT");
        // The session gives its instances back as it ends, just after QUIT.
        std::thread::sleep(Duration::from_millis(100));
        Ok(queued_id(&r))
    };
    for listener in ["reuse", "fresh"] {
        for _ in 0..3 {
            let id = session(listener, "client.test").expect("accepted");
            let m = s.queue_show(&id);
            let symbols: Vec<&str> = m["symbols"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
            assert_eq!(symbols, vec!["RCPT_1", "RCPT_2"], "{listener}: the count restarts in every session: {m}");
        }
    }
    // The helo step's own config applies, though connect parsed its config first.
    assert_eq!(session("reuse", "bad.example"), Err(550));
    let m = s.metrics();
    let count = |plugin: &str, origin: &str| metric_value(&m, "weir_plugin_instances_total", &[&format!("plugin=\"{plugin}\""), &format!("origin=\"{origin}\"")]);
    assert!(count("rcpt", "reused") >= 1.0, "sessions one after another reuse the instance:\n{m}");
    assert_eq!(count("rcpt_fresh", "new"), 3.0, "{m}");
    assert_eq!(count("rcpt_fresh", "reused"), 0.0, "{m}");
}

/// Idle instances count against `max_instances`: when the allocator runs
/// out, they are dropped and the new session still gets its instance.
#[test]
fn idle_instances_give_way_when_the_allocator_runs_out() {
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  first:
    bind: 127.0.0.1:{{port:first}}
    tls: none
    pipeline: p_first
  second:
    bind: 127.0.0.1:{{port:second}}
    tls: none
    pipeline: p_second
metrics:
  bind: 127.0.0.1:{{metrics}}
delivery:
  enabled: false
plugin_runtime:
  max_instances: 16
plugins:
  # Granted DNS (unused), whose calls may wait on the network, rcpt gets an
  # instance of its own in every session rather than a shared home.
  first:
    path: {rcpt}
    grants: [symbols, route, dns]
  second:
    path: {rcpt}
    grants: [symbols, route, dns]
pipelines:
  p_first:
    rcpt_to: [{{plugin: first}}]
  p_second:
    rcpt_to: [{{plugin: second}}]
"#,
        rcpt = plugin("test_rcpt_guard"),
    );
    let s = Server::start(&cfg);
    // Sixteen sessions at once hold every slot there is...
    let mut held: Vec<Smtp> = (0..16)
        .map(|_| {
            let mut c = Smtp::connect(s.port("first"));
            c.cmd("EHLO client.test").is(250, "");
            c.cmd("MAIL FROM:<a@example.org>").is(250, "");
            c
        })
        .collect();
    for c in held.iter_mut() {
        c.cmd("RCPT TO:<postmaster@localhost>").is(250, "");
    }
    // ...and keep them, idle, when they end.
    for mut c in held {
        c.cmd("QUIT");
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Smtp::connect(s.port("second"));
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("MAIL FROM:<a@example.org>").is(250, "");
    c.cmd("RCPT TO:<postmaster@localhost>").is(250, "2.1.5");
    assert!(s.log().contains("plugin instance pool exhausted; dropped idle instances"), "{}", s.log());
    let m = s.metrics();
    assert_eq!(metric_value(&m, "weir_plugin_faults_total", &[]), 0.0, "{m}");
}

/// More sessions at once than `max_instances` allows: the step's on_error
/// answers the ones without an instance, but that is the server's limit,
/// not the plugin's fault, so its circuit breaker stays closed and the
/// plugin serves again once sessions end.
#[test]
fn running_out_of_instances_does_not_trip_the_circuit_breaker() {
    let cfg = mx_server(&format!(
        r#"plugin_runtime:
  max_instances: 16
plugins:
  # Granted DNS (unused): an instance of its own in every session.
  rcpt:
    path: {rcpt}
    grants: [symbols, route, dns]
    circuit_breaker: {{faults: 2, window: 60s}}
pipelines:
  p:
    rcpt_to: [{{plugin: rcpt}}]
"#,
        rcpt = plugin("test_rcpt_guard"),
    ));
    let s = Server::start(&cfg);
    let open = || {
        let mut c = Smtp::connect(s.port("mx"));
        c.cmd("EHLO client.test").is(250, "");
        c.cmd("MAIL FROM:<a@example.org>").is(250, "");
        c
    };
    // Sixteen sessions hold every instance slot there is.
    let mut held: Vec<Smtp> = (0..16).map(|_| open()).collect();
    for c in held.iter_mut() {
        c.cmd("RCPT TO:<postmaster@localhost>").is(250, "");
    }
    // More than the breaker's two faults' worth find none: on_error (451).
    for _ in 0..4 {
        let mut c = open();
        c.cmd("RCPT TO:<postmaster@localhost>").is(451, "4.3.0");
        c.cmd("QUIT");
    }
    for mut c in held {
        c.cmd("QUIT");
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut c = open();
    c.cmd("RCPT TO:<postmaster@localhost>").is(250, "2.1.5");
    assert!(!s.log().contains("CIRCUIT BREAKER OPEN"), "{}", s.log());
}

/// A stateless plugin's instance goes back to the pool after each call, and
/// the next call takes it, whichever session makes it: calls that never run
/// at once share one instance. Each call still sees its own session's facts
/// and none of another's, though the instance moves between sessions at
/// every call and is told only what differs: stamp writes the session's
/// HELO name and the transaction's score into the message, and only the
/// sessions whose sender is in x.test have rcpt's symbol to score.
#[test]
fn stateless_plugins_share_warm_instances_and_each_call_sees_its_own_session() {
    const N: usize = 6;
    let cfg = mx_server(&format!(
        r#"plugins:
  stamp:
    path: {stamp}
    grants: [body, kv, headers, tags]
  rcpt:
    path: {rcpt}
    grants: [symbols, route]
pipelines:
  p:
    rcpt_to: [{{plugin: rcpt, when: {{sender_domain: [x.test]}}}}]
    data: [{{plugin: stamp}}]
"#,
        stamp = plugin("test_stamp"),
        rcpt = plugin("test_rcpt_guard"),
    ));
    let s = Server::start(&cfg);
    let mut sessions: Vec<Smtp> = (0..N)
        .map(|i| {
            let mut c = Smtp::connect(s.port("mx"));
            c.cmd(&format!("EHLO s{i}.test")).is(250, "");
            c
        })
        .collect();
    // Every session's transactions interleave with the others'.
    for round in 0..3 {
        for (i, c) in sessions.iter_mut().enumerate().rev() {
            let (from, score) = if i % 2 == 0 { ("a@x.test", "0.5") } else { ("a@y.test", "0") };
            let id = queued_id(&c.send_mail(from, &["postmaster@localhost"], &format!("Subject: {round}\r\n\r\nx")));
            let raw = String::from_utf8(s.queue_raw(&id)).unwrap();
            assert!(raw.contains(&format!(" score={score} ")), "session {i} round {round}: {raw}");
            assert!(raw.contains(&format!(" helo=s{i}.test\r\n")), "session {i} round {round}: {raw}");
        }
    }
    let m = s.metrics();
    let count = |plugin: &str, origin: &str| metric_value(&m, "weir_plugin_instances_total", &[&format!("plugin=\"{plugin}\""), &format!("origin=\"{origin}\"")]);
    // The calls come one at a time: one instance serves all of them.
    assert_eq!(count("stamp", "new"), 1.0, "{m}");
    assert_eq!(count("stamp", "reused"), (3 * N - 1) as f64, "{m}");
}

/// A plugin with per-session state (rcpt numbers its symbols by the
/// recipients its session has had so far) needs no instance per session:
/// more sessions than there are homes share a few instances, their calls
/// interleaved one by one, and each session's count is its own. A session
/// that ends is forgotten, and the homes serve later sessions.
#[test]
fn stateful_plugins_keep_each_sessions_state_on_shared_instances() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // More sessions than the homes a plugin gets (two per core).
    let n = 2 * cores + 3;
    let cfg = mx_server(&format!(
        "plugins:\n  rcpt:\n    path: {}\n    grants: [symbols, route]\npipelines:\n  p:\n    rcpt_to: [{{plugin: rcpt}}]\n",
        plugin("test_rcpt_guard")
    ));
    let s = Server::start(&cfg);
    let symbols = |id: &str| -> Vec<String> {
        let m = s.queue_show(id);
        m["symbols"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap().to_string()).collect()
    };
    let mut sessions: Vec<Smtp> = (0..n)
        .map(|_| {
            let mut c = Smtp::connect(s.port("mx"));
            c.cmd("EHLO client.test").is(250, "");
            c
        })
        .collect();
    // Two transactions in every session, each command taking its turn
    // across all sessions; the count goes on from one transaction to the
    // next within a session.
    for round in 0..2 {
        for c in sessions.iter_mut() {
            c.cmd("MAIL FROM:<a@example.org>").is(250, "");
        }
        for rcpt in ["postmaster", "abuse"] {
            for c in sessions.iter_mut() {
                c.cmd(&format!("RCPT TO:<{rcpt}@localhost>")).is(250, "");
            }
        }
        for (i, c) in sessions.iter_mut().enumerate() {
            c.cmd("DATA").is(354, "");
            let id = queued_id(&c.cmd("Subject: hi\r\n\r\nx\r\n."));
            let want = [format!("RCPT_{}", 2 * round + 1), format!("RCPT_{}", 2 * round + 2)];
            assert_eq!(symbols(&id), want, "session {i}, transaction {round}");
        }
    }
    for mut c in sessions {
        c.cmd("QUIT");
    }
    // Later sessions start afresh, on the same instances.
    for _ in 0..3 {
        let mut c = Smtp::connect(s.port("mx"));
        c.cmd("EHLO client.test").is(250, "");
        let id = queued_id(&c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: hi\r\n\r\nx"));
        assert_eq!(symbols(&id), ["RCPT_1"]);
        c.cmd("QUIT");
    }
    let m = s.metrics();
    let count = |origin: &str| metric_value(&m, "weir_plugin_instances_total", &[r#"plugin="rcpt""#, &format!("origin=\"{origin}\"")]);
    assert!(count("new") <= (2 * cores) as f64, "no more instances than homes:\n{m}");
    assert_eq!(count("new") + count("reused"), (4 * n + 3) as f64, "every call counted:\n{m}");
    assert_eq!(metric_value(&m, "weir_plugin_faults_total", &[]), 0.0, "{m}");
}
