//! The command line: config check with file:line:column errors and exit
//! codes, -o overrides, the embedded default, passwd, queue commands with
//! and without a running server, SIGTERM during a transaction, /metrics.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn check(text: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(WEIR).args(["config", "check"]).arg(&path).args(extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn config_check_reports_line_and_column() {
    let good = "listeners:\n  mx:\n    bind: 127.0.0.1:2525\n";
    let (code, out, _) = check(good, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("OK (1 listener: mx on 127.0.0.1:2525)"), "{out}");

    let cases = [
        // (text, expected location, expected words)
        ("listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    tls: maybe\n", "FILE:4:10", "unknown variant `maybe`"),
        ("listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    colour: blue\n", "FILE:4:5", "unknown field `colour`"),
        ("server:\n  hostname: mx.test\nlisteners:\n  mx:\n    bind: 999.0.0.1:25\n", "FILE:5:11", "invalid socket address"),
        ("listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    limits:\n      max_recipients: many\n", "FILE:5:23", "invalid type"),
        ("listeners:\n  mx:\n    bind: 127.0.0.1:2525\n    limits:\n      command_timeout: soon\n", "FILE:5:24", ""),
        ("listeners:\n  mx: [\n", "FILE:2:7", "invalid type: sequence"),
    ];
    for (text, loc, words) in cases {
        let (code, _, err) = check(text, &[]);
        assert_eq!(code, 3, "exit code for {text:?}: {err}");
        assert!(err.contains(loc), "expected {loc} in {err:?} for {text:?}");
        assert!(err.contains(words), "expected {words:?} in {err:?}");
    }
    // Cross-field errors name the key.
    let (code, _, err) = check("listeners:\n  a:\n    bind: 127.0.0.1:25\n  b:\n    bind: 127.0.0.1:25\n", &[]);
    assert_eq!(code, 3);
    assert!(err.contains("listeners.b.bind: 127.0.0.1:25 is already used by listener a"), "{err}");
    // A missing file.
    let out = Command::new(WEIR).args(["config", "check", "/nonexistent/weir.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    // -o on config check.
    let (code, out, _) = check(good, &["-o", "listeners.mx.bind=127.0.0.1:2600"]);
    assert_eq!(code, 0);
    assert!(out.contains("mx on 127.0.0.1:2600"), "{out}");
    let (code, _, err) = check(good, &["-o", "listeners.mx.limits.max_errors=lots"]);
    assert_eq!(code, 3);
    assert!(err.contains("max_errors"), "{err}");
}

#[test]
fn shipped_policies_are_valid() {
    for f in [
        "policies/default.yaml",
        "policies/example-pipeline.yaml",
        "policies/inbound-mx.yaml",
        "policies/submission.yaml",
        "policies/research.yaml",
    ] {
        let out = Command::new(WEIR).args(["policy", "check"]).arg(repo_root().join(f)).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn embedded_default_runs_with_overrides() {
    // `weir serve` with no --config: the embedded default, data under ./data.
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, p3, pm) = (free_port(), free_port(), free_port(), free_port());
    let mut child = Command::new(WEIR)
        .current_dir(dir.path())
        .args(["serve", "-o"])
        .arg(format!("listeners.mx.bind=127.0.0.1:{p1}"))
        .arg("-o")
        .arg(format!("listeners.smtps.bind=127.0.0.1:{p2}"))
        .arg("-o")
        .arg(format!("listeners.submission.bind=127.0.0.1:{p3}"))
        .arg("-o")
        .arg(format!("metrics.bind=127.0.0.1:{pm}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", p2)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = dir.path().join("data");
    let cert = data.join("tls/selfsigned.crt");
    assert!(cert.exists(), "self-signed certificate generated at first start");
    // postmaster@localhost is accepted from 127.0.0.1 without AUTH, over implicit TLS too.
    let mut c = Smtp::connect_tls(p2, &cert);
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("someone@example.org", &["postmaster@localhost"], "Subject: hi\r\n\r\nhello"));
    let mut c = Smtp::connect(p1);
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("MAIL FROM:<someone@example.org>").is(250, "2.1.0");
    c.cmd("RCPT TO:<someone@elsewhere.example>").is(554, "5.7.1");
    // The submission listener's sender-rules plugin wants AUTH first.
    let mut sub = Smtp::connect(p3);
    sub.cmd("EHLO client.test").is(250, "");
    sub.cmd("MAIL FROM:<someone@example.org>").is(530, "5.7.0");
    sub.cmd("QUIT").is(221, "2.0.0");
    // The message is delivered into ./data/mail/localhost/postmaster (Maildir).
    let new = data.join("mail/localhost/postmaster/new");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let files: Vec<_> = std::fs::read_dir(&new).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        if let Some(f) = files.first() {
            break std::fs::read_to_string(f).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "nothing delivered into {}", new.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(delivered.contains(&format!("id {id}")), "{delivered}");
    assert!(delivered.starts_with("Return-Path: <someone@example.org>\nDelivered-To: postmaster@localhost\n"), "{delivered}");
    // spam-score marks (and only marks) inbound mail: this one lacks a Date,
    // a Message-ID and a From, and the classifier knows nothing of it.
    assert!(delivered.contains("X-Spam-Status: No, score=") && delivered.contains("MISSING_DATE"), "{delivered}");
    // `weir queue list` finds the queue the same way (./data), while the server runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(WEIR).current_dir(dir.path()).args(["queue", "list"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        if text.contains("0 messages") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "delivered message still queued: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(http_get(pm, "/metrics").contains("weir_messages_accepted_total"));
    c.cmd("QUIT").is(221, "2.0.0");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
}

#[test]
fn passwd_prints_a_verifiable_hash() {
    let out = run_ok(Command::new("sh").arg("-c").arg(format!("printf 'hunter2\\n' | {WEIR} passwd")));
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // Empty input is refused with a message.
    let out = Command::new("sh").arg("-c").arg(format!("printf '' | {WEIR} passwd")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no password"));
}

#[test]
fn queue_commands_with_and_without_a_running_server() {
    let mut s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let a = queued_id(&c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: one\r\n\r\n1"));
    let b = queued_id(&c.send_mail("", &["postmaster@localhost"], "Subject: two\r\n\r\n2"));
    // While running (through the control socket).
    let list = s.queue_list();
    assert_eq!(list.len(), 2);
    let out = s.weir(&["queue", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&a) && table.contains(&b) && table.contains("2 messages"), "{table}");
    let out = s.weir(&["queue", "show", &a]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sender:      a@example.org") && text.contains("postmaster@localhost"), "{text}");
    let out = s.weir(&["queue", "delete", &a]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.weir(&["queue", "show", &a]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message"));
    let out = s.weir(&["queue", "delete", &a]);
    assert_eq!(out.status.code(), Some(4));
    // The null sender is kept as empty.
    assert_eq!(s.queue_show(&b)["sender"], "");
    let m = s.metrics();
    assert_eq!(metric_value(&m, "weir_queue_depth", &[]), 1.0, "{m}");
    s.stop();
    // Stopped: the CLI opens the queue itself.
    let list = s.queue_list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], b.as_str());
    let out = s.weir(&["queue", "delete", &b]);
    assert!(out.status.success());
    assert!(s.queue_list().is_empty());
    // A data dir with no queue: a clear error.
    let out = Command::new(WEIR).args(["queue", "list", "--data-dir", "/nonexistent/dir"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue under"));
}

#[test]
fn sigterm_lets_the_open_transaction_finish() {
    let mut s = Server::start(BASIC);
    let mut busy = Smtp::connect(s.port("mx"));
    busy.cmd("EHLO client.test").is(250, "");
    busy.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    busy.cmd("RCPT TO:<postmaster@localhost>").is(250, "2.1.5");
    busy.cmd("DATA").is(354, "");
    busy.send(b"Subject: in flight\r\n\r\npart one\r\n");
    let mut idle = Smtp::connect(s.port("mx"));
    idle.cmd("EHLO idle.test").is(250, "");
    let pid = s.pid();
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    // The idle session is told the server is going away.
    idle.read().is(421, "4.3.2");
    // New connections are no longer accepted.
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::net::TcpStream::connect(("127.0.0.1", s.port("mx"))).is_err());
    // The transaction in progress completes and is acknowledged.
    busy.send(b"part two\r\n.\r\n");
    let id = queued_id(&busy.read());
    busy.read().is(421, "4.3.2");
    let st = s.signal_and_wait(0, Duration::from_secs(20));
    assert!(st.success(), "{st}");
    let q = s.queue_list();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["id"], id.as_str());
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let s = Server::start(BASIC);
    let port = free_port();
    let out = Command::new(WEIR)
        .args(["serve", "--config"])
        .arg(&s.config)
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(["-o", &format!("listeners.mx.bind=127.0.0.1:{port}"), "-o", "metrics.bind=null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"), "{}", String::from_utf8_lossy(&out.stderr));
}
