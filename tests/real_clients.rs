//! Weir against real SMTP clients installed by `make test`'s set-up:
//! Python's smtplib, swaks and Postfix's smtp-source.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::*;

fn auth_server() -> Server {
    let hash = password_hash("s3cret");
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  mx:
    bind: 127.0.0.1:{{port:mx}}
    tls: starttls
    auth: offer
  smtps:
    bind: 127.0.0.1:{{port:smtps}}
    tls: implicit
    auth: require
relay:
  local_domains: [localhost]
auth:
  users:
    alice: "{}"
metrics:
  bind: 127.0.0.1:{{metrics}}
delivery:
  enabled: false
"#,
        hash.trim()
    );
    Server::start(&cfg)
}

fn smtplib(s: &Server, extra: &[&str]) -> Vec<String> {
    let script = repo_root().join("tests/clients/smtplib_client.py");
    let out = run_ok(
        Command::new("python3")
            .arg(script)
            .arg("--port")
            .arg(s.port("mx").to_string())
            .arg("--cafile")
            .arg(s.cert_path())
            .args(extra),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("queued ").map(str::to_string))
        .collect()
}

#[test]
fn python_smtplib_starttls_auth_plain_and_send() {
    let s = auth_server();
    let ids = smtplib(
        &s,
        &["--user", "alice", "--password", "s3cret", "--to", "bob@elsewhere.example", "--to", "postmaster@localhost", "--count", "3"],
    );
    assert_eq!(ids.len(), 3);
    for id in &ids {
        let m = s.queue_show(id);
        assert_eq!(m["session"]["auth_user"], "alice");
        assert_eq!(m["session"]["tls"]["version"], "TLSv1.3");
        assert_eq!(m["body_type"], "8bitmime");
        assert_eq!(m["recipients"].as_array().unwrap().len(), 2);
        let raw = String::from_utf8(s.queue_raw(id)).unwrap();
        assert!(raw.contains("\r\n.leading dot line\r\n"), "dot-stuffing undone: {raw}");
        assert!(raw.contains("with ESMTPSA id"), "{raw}");
    }
    // Without AUTH, relaying to a foreign domain is refused (smtplib raises, exit != 0).
    let script = repo_root().join("tests/clients/smtplib_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--port", &s.port("mx").to_string(), "--cafile"])
        .arg(s.cert_path())
        .args(["--to", "bob@elsewhere.example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("554"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn python_smtplib_bdat_chunks() {
    let s = auth_server();
    let ids = smtplib(&s, &["--to", "postmaster@localhost", "--bdat", "--count", "2"]);
    assert_eq!(ids.len(), 2);
    let raw = String::from_utf8(s.queue_raw(&ids[1])).unwrap();
    assert!(raw.contains("Subject: smtplib test 1\r\n"), "{raw}");
    assert!(raw.contains("\r\n.leading dot line\r\n"), "{raw}");
}

fn swaks(args: &[&str]) -> String {
    let out = run_ok(Command::new("swaks").args(args).args(["--ehlo", "client.test", "--timeout", "30"]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ids_in(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter_map(|l| l.split("queued as ").nth(1))
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn swaks_pipelining() {
    let s = auth_server();
    let port = s.port("mx").to_string();
    let t = swaks(&[
        "--server", "127.0.0.1", "--port", &port, "--pipeline", "--from", "carol@example.org", "--to",
        "postmaster@localhost,abuse@localhost", "--header", "Subject: swaks pipelined",
    ]);
    // swaks pipelines MAIL/RCPT/DATA only when the server offers PIPELINING.
    assert!(t.contains("PIPELINING"), "{t}");
    let ids = ids_in(&t);
    assert_eq!(ids.len(), 1, "{t}");
    let m = s.queue_show(&ids[0]);
    assert_eq!(m["sender"], "carol@example.org");
    assert_eq!(m["recipients"].as_array().unwrap().len(), 2);
}

#[test]
fn swaks_auth_login_over_implicit_tls() {
    let s = auth_server();
    let port = s.port("smtps").to_string();
    let t = swaks(&[
        "--server", "127.0.0.1", "--port", &port, "--tls-on-connect", "--auth", "LOGIN", "--auth-user", "alice",
        "--auth-password", "s3cret", "--from", "alice@example.org", "--to", "dave@elsewhere.example",
    ]);
    let ids = ids_in(&t);
    assert_eq!(ids.len(), 1, "{t}");
    let m = s.queue_show(&ids[0]);
    assert_eq!(m["session"]["auth_user"], "alice");
    assert_eq!(m["session"]["listener"], "smtps");
    assert!(m["session"]["tls"]["version"].as_str().unwrap().starts_with("TLSv1."));
    // A wrong password fails with 535 5.7.8.
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port, "--tls-on-connect", "--auth", "LOGIN"])
        .args(["--auth-user", "alice", "--auth-password", "wrong", "--to", "dave@elsewhere.example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("535 5.7.8"));
}

/// Postfix's smtp-source: 1,000 messages over 20 sessions; every one is
/// acknowledged and is in the queue exactly once.
#[test]
fn smtp_source_thousand_messages_over_twenty_sessions() {
    let s = Server::start(BASIC);
    let port = s.port("mx");
    let out = run_ok(Command::new("smtp-source").args([
        "-s", "20", "-m", "1000", "-l", "1024", "-f", "loadtest@example.org", "-t", "postmaster@localhost", "-M",
        "client.test",
    ]).arg(format!("127.0.0.1:{port}")));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("fatal"), "{}", String::from_utf8_lossy(&out.stderr));
    let q = s.queue_list();
    assert_eq!(q.len(), 1000, "queue holds {} messages", q.len());
    let ids: HashSet<&str> = q.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1000);
    let m = s.metrics();
    assert_eq!(metric_value(&m, "weir_messages_accepted_total", &[]), 1000.0, "{m}");
    assert_eq!(metric_value(&m, "weir_queue_depth", &[]), 1000.0, "{m}");
    assert!(metric_value(&m, "weir_replies_total", &["code=\"250\""]) >= 3000.0, "{m}");
    assert!(m.contains("weir_queue_sync_seconds_bucket"), "{m}");
    assert!(metric_value(&m, "weir_queue_sync_batch_size_count", &[]) >= 1.0, "{m}");
    assert!(metric_value(&m, "weir_connections_total", &[]) >= 20.0, "{m}");
    assert!(metric_value(&m, "weir_commands_total", &["command=\"DATA\""]) >= 1000.0, "{m}");
    assert!(metric_value(&m, "weir_bytes_accepted_total", &[]) >= 1_000_000.0, "{m}");
}
