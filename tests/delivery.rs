//! Delivery against real downstream servers: Postfix's smtp-sink (relay,
//! 4xx then recovery, 5xx and DSNs), aiosmtpd's LMTP server, Maildir read
//! back by Python's mailbox module, MX routing through dnsmasq serving a
//! test zone on loopback, and SIGKILL in the middle of delivering.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

use common::*;

/// A Weir config relaying everything to `sink_port`, with local domains
/// delivered into Maildirs and lmtp.test over LMTP.
fn config(sink_port: u16, lmtp_port: u16, extra: &str) -> String {
    format!(
        r#"
server:
  hostname: weir.test
  shutdown_grace: 10s
listeners:
  mx:
    bind: 127.0.0.1:{{port:mx}}
    tls: none
    auth: none
relay:
  local_domains: [localhost, local.test, sender.test]
  networks: [127.0.0.0/8]
metrics:
  bind: 127.0.0.1:{{metrics}}
delivery:
  retry_schedule: [1s]
  retry_jitter: 0
  delay_notice_after: null
routes:
  sink:
    type: relay
    host: 127.0.0.1
    port: {sink_port}
    tls: none
  local:
    type: maildir
    path: "{{data_dir}}/mail/{{domain}}/{{local}}"
  lmtp:
    type: lmtp
    address: 127.0.0.1:{lmtp_port}
routing:
  domains:
    sender.test: local
    local.test: local
    lmtp.test: lmtp
  default: sink
{extra}"#
    )
}

fn queue_empty(s: &Server) -> Option<()> {
    s.queue_list().is_empty().then_some(())
}

fn read_maildir(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = run_ok(Command::new("python3").arg(repo_root().join("tests/clients/read_maildir.py")).arg(dir));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn count_ids(sink: &Sink) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    // A file being written right now may not have its header yet; the next poll sees it.
    for id in sink.messages().iter().filter_map(|m| weir_id(m)) {
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

#[test]
fn thousand_messages_relayed_to_smtp_sink_each_arrive_once() {
    let sink_port = free_port();
    let sink = Sink::start("127.0.0.1", sink_port, &[]);
    let s = Server::start(&config(sink_port, free_port(), ""));
    run_ok(Command::new("smtp-source").args([
        "-s", "20", "-m", "1000", "-l", "1024", "-f", "load@sender.test", "-t", "user@remote.example", "-M", "client.test",
    ]).arg(format!("127.0.0.1:{}", s.port("mx"))));
    wait_for(120, "the queue to drain", || queue_empty(&s));
    let ids = count_ids(&sink);
    assert_eq!(ids.len(), 1000, "distinct messages at the sink");
    assert!(ids.values().all(|n| *n == 1), "duplicates: {:?}", ids.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());
    let m = s.metrics();
    assert_eq!(metric_value(&m, "weir_delivery_attempts_total", &["result=\"delivered\""]), 1000.0, "{m}");
    assert!(metric_value(&m, "weir_delivery_latency_seconds_count", &[]) >= 1000.0, "{m}");
}

#[test]
fn temporary_failures_are_retried_until_the_downstream_recovers() {
    let sink_port = free_port();
    let mut sink = Sink::start("127.0.0.1", sink_port, &["-r", "RCPT"]);
    let s = Server::start(&config(sink_port, free_port(), ""));
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let ids: Vec<String> = (0..5)
        .map(|i| queued_id(&c.send_mail("a@sender.test", &["b@remote.example"], &format!("Subject: retry {i}\r\n\r\nx"))))
        .collect();
    // Deferred with the downstream's 4xx, and still queued.
    for id in &ids {
        wait_for(30, "a deferral", || {
            let m = s.queue_show(id);
            (m["attempts"].as_u64() >= Some(1)).then_some(())
        });
        let m = s.queue_show(id);
        let reply = m["recipients"][0]["last_reply"].as_str().unwrap();
        assert!(reply.starts_with('4'), "{reply}");
        assert_eq!(m["recipients"][0]["status"], "pending");
        assert!(m["history"][0]["result"].as_str().unwrap().contains("deferred"), "{m}");
    }
    let out = s.weir(&["queue", "list", "--state", "deferred"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 messages"), "{}", String::from_utf8_lossy(&out.stdout));
    // The downstream recovers: everything is delivered on a later attempt.
    sink.stop();
    let sink = Sink::start("127.0.0.1", sink_port, &[]);
    wait_for(60, "the queue to drain", || queue_empty(&s));
    let got = count_ids(&sink);
    for id in &ids {
        assert_eq!(got.get(id), Some(&1), "{id} not delivered exactly once");
    }
}

#[test]
fn permanent_failures_bounce_with_a_dsn_but_never_to_the_null_sender() {
    let sink_port = free_port();
    let _sink = Sink::start("127.0.0.1", sink_port, &["-f", "RCPT"]);
    let s = Server::start(&config(sink_port, free_port(), ""));
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("MAIL FROM:<alice@sender.test> RET=HDRS ENVID=env42").is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@remote.example> ORCPT=rfc822;bob@remote.example").is(250, "2.1.5");
    c.cmd("DATA").is(354, "");
    c.send(b"Subject: will bounce\r\nFrom: alice@sender.test\r\n\r\nsecret body\r\n.\r\n");
    let id = queued_id(&c.read());
    // The null sender's mail to the same place fails too, silently.
    let null_id = queued_id(&c.send_mail("", &["carol@remote.example"], "Subject: from null\r\n\r\nx"));
    wait_for(60, "the queue to drain", || queue_empty(&s));
    let dir = s.data_dir().join("mail/sender.test/alice");
    let msgs = read_maildir(&dir);
    assert_eq!(msgs.len(), 1, "exactly one DSN: {msgs:?}");
    let d = &msgs[0];
    assert_eq!(d["content_type"], "multipart/report");
    assert_eq!(d["report_type"], "delivery-status");
    assert_eq!(d["return_path"], "<>");
    let parts: Vec<&str> = d["parts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(parts, vec!["text/plain", "message/delivery-status", "text/rfc822-headers"]);
    let status = d["status"].as_array().unwrap();
    assert_eq!(status[0]["Reporting-MTA"], "dns; weir.test");
    assert_eq!(status[0]["Original-Envelope-Id"], "env42");
    assert_eq!(status[1]["Final-Recipient"], "rfc822; bob@remote.example");
    assert_eq!(status[1]["Original-Recipient"], "rfc822;bob@remote.example");
    assert_eq!(status[1]["Action"], "failed");
    assert!(status[1]["Status"].as_str().unwrap().starts_with("5."), "{status:?}");
    assert!(status[1]["Diagnostic-Code"].as_str().unwrap().starts_with("smtp; 5"), "{status:?}");
    let headers = d["returned_headers"].as_str().unwrap();
    assert!(headers.contains("Subject: will bounce") && headers.contains(&id), "{headers}");
    assert!(!headers.contains("secret body"));
    // No DSN for the null sender's message, and it was said in the log.
    assert!(s.log().contains("null sender failed; no DSN"), "{}", s.log());
    assert!(!s.log().contains(&format!("about={null_id}")));
    let m = s.metrics();
    assert_eq!(metric_value(&m, "weir_dsn_total", &["action=\"failed\""]), 1.0, "{m}");
}

#[test]
fn lmtp_delivery_has_a_result_per_recipient() {
    let lmtp_port = free_port();
    let out = tempfile::tempdir().unwrap();
    let mut lmtp: Child = Command::new("/usr/bin/python3")
        .arg(repo_root().join("tests/clients/lmtp_server.py"))
        .arg(lmtp_port.to_string())
        .arg(out.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("aiosmtpd LMTP server (apt-get install python3-aiosmtpd)");
    wait_for(30, "the LMTP server", || std::net::TcpStream::connect(("127.0.0.1", lmtp_port)).ok());
    let s = Server::start(&config(free_port(), lmtp_port, ""));
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail(
        "x@sender.test",
        &["a@lmtp.test", "reject@lmtp.test", "quota@lmtp.test", "b@lmtp.test"],
        "Subject: lmtp\r\n\r\n..dot line\r\nbody",
    ));
    let m = wait_for(30, "an LMTP attempt", || {
        let m = s.queue_show(&id);
        (m["attempts"].as_u64() >= Some(1)).then_some(m)
    });
    let status: HashMap<&str, &str> = m["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["address"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status["a@lmtp.test"], "delivered");
    assert_eq!(status["b@lmtp.test"], "delivered");
    assert_eq!(status["reject@lmtp.test"], "failed");
    assert_eq!(status["quota@lmtp.test"], "pending");
    let quota = m["recipients"].as_array().unwrap().iter().find(|r| r["address"] == "quota@lmtp.test").unwrap();
    assert!(quota["last_reply"].as_str().unwrap().starts_with("452 4.2.2"), "{quota}");
    let files: Vec<String> = std::fs::read_dir(out.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().any(|f| f.starts_with("a@lmtp.test")) && files.iter().any(|f| f.starts_with("b@lmtp.test")));
    let body = std::fs::read_to_string(out.path().join(files.iter().find(|f| f.starts_with('a')).unwrap())).unwrap();
    assert!(body.contains("\r\n.dot line\r\n"), "dot-stuffing round trip: {body:?}");
    // The refused recipient produced a DSN to the sender.
    let dsn = wait_for(30, "the DSN", || {
        let v = read_maildir_opt(&s.data_dir().join("mail/sender.test/x"));
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(dsn[0]["status"][1]["Final-Recipient"], "rfc822; reject@lmtp.test");
    unsafe {
        libc::kill(lmtp.id() as i32, libc::SIGTERM);
    }
    let _ = lmtp.wait();
}

fn read_maildir_opt(dir: &std::path::Path) -> Vec<serde_json::Value> {
    if dir.join("new").exists() {
        read_maildir(dir)
    } else {
        Vec::new()
    }
}

#[test]
fn maildir_delivery_is_readable_by_python_mailbox() {
    let s = Server::start(&config(free_port(), free_port(), ""));
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    for i in 0..3 {
        queued_id(&c.send_mail("a@sender.test", &["u1@local.test"], &format!("Subject: m{i}\r\n\r\nhello {i}\r\n..dotted")));
    }
    queued_id(&c.send_mail("a@sender.test", &["U2@Local.Test", "x/y@local.test"], "Subject: two\r\n\r\nhi"));
    wait_for(30, "the queue to drain", || queue_empty(&s));
    let u1 = read_maildir(&s.data_dir().join("mail/local.test/u1"));
    let subjects: Vec<&str> = u1.iter().map(|m| m["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects.len(), 3);
    for i in 0..3 {
        assert!(subjects.contains(&format!("m{i}").as_str()), "{subjects:?}");
    }
    assert!(u1[0]["body"].as_str().unwrap().contains("\n.dotted"), "{:?}", u1[0]);
    assert_eq!(u1[0]["return_path"], "<a@sender.test>");
    let u2 = read_maildir(&s.data_dir().join("mail/local.test/u2"));
    assert_eq!(u2.len(), 1);
    // The unusable mailbox name failed for good (and bounced); no directory was made for it.
    assert!(!s.data_dir().join("mail/local.test/x").exists());
    let dsn = read_maildir(&s.data_dir().join("mail/sender.test/a"));
    assert_eq!(dsn.len(), 1);
    assert_eq!(dsn[0]["status"][1]["Action"], "failed");
}

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mx_routing_follows_preference_and_falls_back() {
    let dns_port = free_port();
    let smtp_port = free_port();
    let dns = Dnsmasq(
        Command::new("dnsmasq")
            .args(["-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces", "--user=root"])
            .args(["--listen-address=127.0.0.1", &format!("--port={dns_port}"), "--local=/example/"])
            .args(["--mx-host=mxtest.example,mx1.mxtest.example,10", "--mx-host=mxtest.example,mx2.mxtest.example,20"])
            .args(["--host-record=mx1.mxtest.example,127.0.0.2", "--host-record=mx2.mxtest.example,127.0.0.1"])
            .args(["--host-record=amx.example,127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)"),
    );
    let mut mx1 = Sink::start("127.0.0.2", smtp_port, &[]);
    let mx2 = Sink::start("127.0.0.1", smtp_port, &[]);
    let extra = format!(
        "dns:\n  servers: [\"127.0.0.1:{dns_port}\"]\n  timeout: 2s\n"
    );
    let cfg = config(free_port(), free_port(), &extra)
        .replace("  default: sink\n", "  default: testmx\n")
        .replace("routes:\n", &format!("routes:\n  testmx:\n    type: mx\n    port: {smtp_port}\n    tls: none\n"));
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    // Preference 10 first.
    let first = queued_id(&c.send_mail("a@sender.test", &["u@mxtest.example"], "Subject: one\r\n\r\nx"));
    wait_for(30, "delivery to mx1", || (count_ids(&mx1).contains_key(&first)).then_some(()));
    assert!(!count_ids(&mx2).contains_key(&first));
    // mx1 goes away: the next message falls back to preference 20.
    mx1.stop();
    let second = queued_id(&c.send_mail("a@sender.test", &["u@mxtest.example"], "Subject: two\r\n\r\nx"));
    wait_for(30, "fallback to mx2", || (count_ids(&mx2).contains_key(&second)).then_some(()));
    // A domain with no MX is delivered to its own address record.
    let third = queued_id(&c.send_mail("a@sender.test", &["u@amx.example"], "Subject: three\r\n\r\nx"));
    wait_for(30, "delivery by A record", || (count_ids(&mx2).contains_key(&third)).then_some(()));
    // A domain that does not exist fails for good, with a DSN.
    queued_id(&c.send_mail("a@sender.test", &["u@nx.example"], "Subject: four\r\n\r\nx"));
    wait_for(30, "the queue to drain", || queue_empty(&s));
    let dsn = read_maildir(&s.data_dir().join("mail/sender.test/a"));
    assert_eq!(dsn.len(), 1, "{dsn:?}");
    assert_eq!(dsn[0]["status"][1]["Status"], "5.1.2");
    assert!(dsn[0]["status"][1]["Diagnostic-Code"].as_str().unwrap().contains("does not exist"), "{dsn:?}");
    drop(dns);
}

#[test]
fn sigkill_during_delivery_loses_nothing() {
    let sink_port = free_port();
    let sink = Sink::start("127.0.0.1", sink_port, &[]);
    let mut s = Server::start_with(&config(sink_port, free_port(), ""), &["-o", "delivery.enabled=false"]);
    run_ok(Command::new("smtp-source").args([
        "-s", "10", "-m", "500", "-l", "2048", "-f", "load@sender.test", "-t", "user@remote.example",
    ]).arg(format!("127.0.0.1:{}", s.port("mx"))));
    assert_eq!(s.queue_list().len(), 500);
    s.stop();
    // Deliver, and kill the server part-way.
    s.spawn(&[]);
    wait_for(60, "some deliveries", || (sink.messages().len() >= 100).then_some(()));
    s.kill();
    let at_kill = sink.messages().len();
    s.spawn(&[]);
    wait_for(120, "the queue to drain", || queue_empty(&s));
    let ids = count_ids(&sink);
    let total: usize = ids.values().sum();
    let duplicates = total - ids.len();
    println!("delivered before the kill: {at_kill}; distinct at the sink: {}; duplicates: {duplicates}", ids.len());
    assert_eq!(ids.len(), 500, "every message arrived");
    // Only deliveries in flight at the kill may arrive twice.
    assert!(duplicates <= 100, "{duplicates} duplicates is more than could have been in flight");
}

#[test]
fn queue_operations_hold_release_retry_bounce() {
    let sink_port = free_port();
    let mut sink = Sink::start("127.0.0.1", sink_port, &["-r", "RCPT"]);
    let s = Server::start(&config(sink_port, free_port(), "").replace("retry_schedule: [1s]", "retry_schedule: [1h]"));
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let a = queued_id(&c.send_mail("a@sender.test", &["x@remote.example"], "Subject: a\r\n\r\nx"));
    let b = queued_id(&c.send_mail("a@sender.test", &["y@other.example"], "Subject: b\r\n\r\nx"));
    for id in [&a, &b] {
        wait_for(30, "a first attempt", || (s.queue_show(id)["attempts"].as_u64() >= Some(1)).then_some(()));
    }
    // Hold: no longer scheduled, listed as held.
    assert!(s.weir(&["queue", "hold", &a]).status.success());
    assert_eq!(s.queue_show(&a)["state"], "held");
    let out = s.weir(&["queue", "list", "--state", "held"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&a));
    let out = s.weir(&["queue", "retry", &a]);
    assert!(!out.status.success(), "retry of a held message is refused");
    // The downstream recovers; retry by destination delivers b at once (the schedule says 1h).
    sink.stop();
    let sink = Sink::start("127.0.0.1", sink_port, &[]);
    let out = s.weir(&["queue", "retry", "--destination", "other.example"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 message scheduled"), "{}", String::from_utf8_lossy(&out.stdout));
    wait_for(30, "b delivered", || count_ids(&sink).contains_key(&b).then_some(()));
    assert!(!count_ids(&sink).contains_key(&a), "a is held");
    // Release: delivered.
    assert!(s.weir(&["queue", "release", &a]).status.success());
    wait_for(30, "a delivered", || count_ids(&sink).contains_key(&a).then_some(()));
    // Bounce: pending recipients fail now, a DSN goes to the sender.
    // (lmtp.test points at a port where nothing listens, so it stays deferred.)
    let d = queued_id(&c.send_mail("a@sender.test", &["z@lmtp.test"], "Subject: d\r\n\r\nx"));
    wait_for(30, "a first attempt", || (s.queue_show(&d)["attempts"].as_u64() >= Some(1)).then_some(()));
    wait_for(30, "the bounce to be taken", || s.weir(&["queue", "bounce", &d]).status.success().then_some(()));
    let dsn = wait_for(30, "the bounce DSN", || {
        let v = read_maildir_opt(&s.data_dir().join("mail/sender.test/a"));
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(dsn[0]["status"][1]["Final-Recipient"], "rfc822; z@lmtp.test");
    assert!(!s.queue_list().iter().any(|m| m["id"] == d.as_str()));
    let out = s.weir(&["queue", "bounce", "FFFFFFFFFFFFFFFFFFFF"]);
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn notify_parameters_are_honoured() {
    let dsn_sink_port = free_port();
    let dsn_sink = Sink::start("127.0.0.1", dsn_sink_port, &[]);
    let plain_sink_port = free_port();
    let plain_sink = Sink::start("127.0.0.1", plain_sink_port, &["-N"]);
    let reject_port = free_port();
    let _reject = Sink::start("127.0.0.1", reject_port, &["-f", "RCPT"]);
    let routes = format!(
        "  nodsn:\n    type: relay\n    host: 127.0.0.1\n    port: {plain_sink_port}\n    tls: none\n  reject:\n    type: relay\n    host: 127.0.0.1\n    port: {reject_port}\n    tls: none\n"
    );
    let cfg = config(dsn_sink_port, free_port(), "")
        .replace("routes:\n", &format!("routes:\n{routes}"))
        .replace("    lmtp.test: lmtp\n", "    lmtp.test: lmtp\n    nodsn.example: nodsn\n    reject.example: reject\n");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let send = |c: &mut Smtp, from: &str, rcpt: &str, params: &str, subject: &str| {
        c.cmd(&format!("MAIL FROM:<{from}>")).is(250, "2.1.0");
        c.cmd(&format!("RCPT TO:<{rcpt}> {params}")).is(250, "2.1.5");
        c.cmd("DATA").is(354, "");
        c.send(format!("Subject: {subject}\r\n\r\nx\r\n.\r\n").as_bytes());
        queued_id(&c.read())
    };
    // Final delivery (Maildir) with NOTIFY=SUCCESS: a "delivered" DSN.
    send(&mut c, "n1@sender.test", "u@local.test", "NOTIFY=SUCCESS", "final");
    // Relayed to a DSN-capable server: NOTIFY and ORCPT go along, no DSN from us.
    send(&mut c, "n2@sender.test", "u@dsn.example", "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@dsn.example", "relay-dsn");
    // Relayed to a server without DSN: a "relayed" DSN.
    send(&mut c, "n3@sender.test", "u@nodsn.example", "NOTIFY=SUCCESS", "relay-nodsn");
    // NOTIFY=NEVER: a permanent failure is not reported.
    send(&mut c, "n4@sender.test", "u@reject.example", "NOTIFY=NEVER", "never");
    // NOTIFY=SUCCESS only: a failure is not reported either.
    send(&mut c, "n5@sender.test", "u@reject.example", "NOTIFY=SUCCESS", "success-only");
    wait_for(60, "the queue to drain", || queue_empty(&s));
    let dsn_for = |who: &str| read_maildir_opt(&s.data_dir().join(format!("mail/sender.test/{who}")));
    let n1 = dsn_for("n1");
    assert_eq!(n1.len(), 1, "{n1:?}");
    assert_eq!(n1[0]["status"][1]["Action"], "delivered");
    assert_eq!(n1[0]["status"][1]["Status"], "2.0.0");
    assert!(dsn_for("n2").is_empty());
    let relayed = dsn_sink.messages();
    let m = relayed.iter().find(|m| m.contains("Subject: relay-dsn")).expect("relayed");
    assert!(m.contains("NOTIFY=SUCCESS,FAILURE") && m.contains("ORCPT=rfc822;orig@dsn.example"), "{m}");
    let n3 = dsn_for("n3");
    assert_eq!(n3.len(), 1, "{n3:?}");
    assert_eq!(n3[0]["status"][1]["Action"], "relayed");
    assert_eq!(plain_sink.messages().len(), 1);
    assert!(dsn_for("n4").is_empty());
    assert!(dsn_for("n5").is_empty());
}

#[test]
fn a_delay_notice_is_sent_once() {
    // lmtp.test points at a port where nothing listens: every attempt is deferred.
    let cfg = config(free_port(), free_port(), "").replace("delay_notice_after: null", "delay_notice_after: 1s");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("late@sender.test", &["u@lmtp.test"], "Subject: slow\r\n\r\nx"));
    let dsn = wait_for(30, "a delay notice", || {
        let v = read_maildir_opt(&s.data_dir().join("mail/sender.test/late"));
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(dsn[0]["subject"], "Delayed Mail (still being retried)");
    assert_eq!(dsn[0]["status"][1]["Action"], "delayed");
    assert!(dsn[0]["status"][1]["Status"].as_str().unwrap().starts_with("4."));
    // Attempts go on (retry every second) without another notice.
    wait_for(30, "more attempts", || (s.queue_show(&id)["attempts"].as_u64() >= Some(4)).then_some(()));
    assert_eq!(read_maildir_opt(&s.data_dir().join("mail/sender.test/late")).len(), 1);
    assert_eq!(s.queue_show(&id)["delay_notified"], true);
}

#[test]
fn transactional_mail_overtakes_a_bulk_backlog() {
    let cfg = config(free_port(), free_port(), "")
        .replace("    auth: none\n", "    auth: none\n    priority: bulk\n  urgent:\n    bind: 127.0.0.1:{port:urgent}\n    tls: none\n    auth: none\n    priority: transactional\n")
        .replace("delivery:\n", "delivery:\n  max_concurrency: 1\n");
    let mut s = Server::start_with(&cfg, &["-o", "delivery.enabled=false"]);
    run_ok(Command::new("smtp-source").args(["-s", "5", "-m", "200", "-f", "bulk@sender.test", "-t", "bulk@local.test"])
        .arg(format!("127.0.0.1:{}", s.port("mx"))));
    let mut c = Smtp::connect(s.port("urgent"));
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("noreply@sender.test", &["reset@local.test"], "Subject: password reset\r\n\r\nx"));
    assert_eq!(s.queue_show(&id)["priority"], "transactional");
    drop(c);
    s.stop();
    // Delivery on, one at a time: the transactional message goes first although it came last.
    s.spawn(&[]);
    wait_for(60, "the queue to drain", || queue_empty(&s));
    let mtime = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let files = |who: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(s.data_dir().join(format!("mail/local.test/{who}/new"))).unwrap().flatten().map(|e| e.path()).collect()
    };
    let reset = files("reset");
    assert_eq!(reset.len(), 1);
    let reset_at = mtime(reset[0].clone());
    let bulk = files("bulk");
    assert_eq!(bulk.len(), 200);
    let first_bulk = bulk.into_iter().map(mtime).min().unwrap();
    assert!(reset_at <= first_bulk, "the password reset waited behind bulk mail");
}

#[test]
fn relay_to_a_smarthost_with_required_tls_auth_and_chunking() {
    // The smarthost is another Weir: STARTTLS, AUTH, CHUNKING, DSN.
    let hash = password_hash("s3cret");
    let downstream = Server::start(&format!(
        "server:\n  hostname: smarthost.test\nlisteners:\n  sub:\n    bind: 127.0.0.1:{{port:sub}}\n    tls: starttls\n    require_tls: true\n    auth: require\nauth:\n  users:\n    relayuser: \"{}\"\nmetrics:\n  bind: 127.0.0.1:{{metrics}}\ndelivery:\n  enabled: false\n",
        hash.trim()
    ));
    let route = format!(
        "  smarthost:\n    type: relay\n    host: 127.0.0.1\n    port: {}\n    tls: required\n    verify_certificates: true\n    ca_file: {}\n    auth:\n      user: relayuser\n      password: s3cret\n",
        downstream.port("sub"),
        downstream.cert_path().display()
    );
    let cfg = config(free_port(), free_port(), "")
        .replace("routes:\n", &format!("routes:\n{route}"))
        .replace("  default: sink\n", "  default: smarthost\n");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("a@sender.test", &["far@away.example"], "Subject: via smarthost\r\n\r\n..dot\r\nend"));
    wait_for(30, "the queue to drain", || queue_empty(&s));
    let q = downstream.queue_list();
    assert_eq!(q.len(), 1);
    let m = &q[0];
    assert_eq!(m["session"]["auth_user"], "relayuser");
    assert_eq!(m["session"]["helo"], "weir.test");
    assert_eq!(m["session"]["tls"]["version"], "TLSv1.3");
    assert_eq!(m["sender"], "a@sender.test");
    let raw = String::from_utf8(downstream.queue_raw(m["id"].as_str().unwrap())).unwrap();
    assert!(raw.contains(&format!("id {id}")), "upstream Received: kept: {raw}");
    assert!(raw.ends_with("Subject: via smarthost\r\n\r\n.dot\r\nend\r\n"), "{raw:?}");
    let metrics = downstream.metrics();
    assert!(metric_value(&metrics, "weir_commands_total", &["command=\"BDAT\""]) >= 1.0, "CHUNKING used: {metrics}");
    // A wrong password is a permanent failure reported to the sender.
    let bad = cfg.replace("password: s3cret", "password: wrong");
    drop(s);
    let s = Server::start(&bad);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    queued_id(&c.send_mail("b@sender.test", &["far@away.example"], "Subject: bad auth\r\n\r\nx"));
    let dsn = wait_for(30, "the DSN", || {
        let v = read_maildir_opt(&s.data_dir().join("mail/sender.test/b"));
        (!v.is_empty()).then_some(v)
    });
    assert!(dsn[0]["status"][1]["Diagnostic-Code"].as_str().unwrap().contains("535"), "{dsn:?}");
}

#[test]
fn expired_messages_bounce_and_implicit_tls_smarthosts_work() {
    // A smarthost on implicit TLS (port-465 style), another Weir.
    let downstream = Server::start(
        "server:\n  hostname: smtps.test\nlisteners:\n  smtps:\n    bind: 127.0.0.1:{port:smtps}\n    tls: implicit\n    auth: none\nrelay:\n  networks: [127.0.0.0/8]\nmetrics:\n  bind: null\ndelivery:\n  enabled: false\n",
    );
    let route = format!(
        "  smtps:\n    type: relay\n    host: 127.0.0.1\n    port: {}\n    tls: implicit\n    verify_certificates: true\n    ca_file: {}\n",
        downstream.port("smtps"),
        downstream.cert_path().display()
    );
    // lmtp.test has no server: deferred until max_age (3s), then bounced with 4.4.7.
    let cfg = config(free_port(), free_port(), "")
        .replace("routes:\n", &format!("routes:\n{route}"))
        .replace("  default: sink\n", "  default: smtps\n")
        .replace("  retry_jitter: 0\n", "  retry_jitter: 0\n  max_age: 3s\n");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("old@sender.test", &["u@lmtp.test", "v@far.example"], "Subject: aging\r\n\r\nx"));
    // The reachable recipient goes through the implicit-TLS smarthost at once.
    wait_for(30, "relay over implicit TLS", || (downstream.queue_list().len() == 1).then_some(()));
    let m = &downstream.queue_list()[0];
    assert!(m["session"]["tls"]["version"].as_str().unwrap().starts_with("TLSv1."), "{m}");
    // The other one expires.
    wait_for(30, "expiry", || queue_empty(&s));
    let dsn = read_maildir(&s.data_dir().join("mail/sender.test/old"));
    assert_eq!(dsn.len(), 1, "{dsn:?}");
    let st = &dsn[0]["status"][1];
    assert_eq!(st["Final-Recipient"], "rfc822; u@lmtp.test");
    assert_eq!(st["Action"], "failed");
    assert_eq!(st["Status"], "4.4.7");
    assert!(st["Diagnostic-Code"].as_str().unwrap().contains("expired"), "{st}");
    let _ = id;
}

#[test]
fn reverse_dns_is_looked_up_at_connect_when_asked() {
    // On loopback the name comes from the hosts file or the resolver's own
    // answer for 127.0.0.0/8 (RFC 6761) — whichever it is, it is shown; a
    // listener without reverse_dns shows only the address (every other
    // test's Received: header).
    let cfg = config(free_port(), free_port(), "")
        .replace("    auth: none\n", "    auth: none\n    reverse_dns: true\n")
        .replace("delivery:\n", "delivery:\n  enabled: false\n");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let id = queued_id(&c.send_mail("a@sender.test", &["u@local.test"], "Subject: rdns\r\n\r\nx"));
    let raw = String::from_utf8(s.queue_raw(&id)).unwrap();
    let inside = raw
        .strip_prefix("Received: from client.test (")
        .and_then(|r| r.split_once(" [127.0.0.1])"))
        .map(|(name, _)| name.to_string())
        .unwrap_or_default();
    assert!(!inside.is_empty() && !inside.contains(' ') && !inside.contains('['), "{raw}");
}
