//! The first-party plugins in real SMTP sessions: submission (sender rules,
//! rate limits, relay control, DKIM signing checked by python3-dkim) driven
//! by smtplib, and inbound (auth-check with SPF/DKIM/DMARC over a test DNS
//! zone, dnsbl, greylist, router, header-rewrite).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::zone::{Rec, Zone, ZoneServer};
use common::*;

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

/// The messages delivered into data_dir/mail/DOMAIN/LOCAL/new.
fn maildir(s: &Server, domain: &str, local: &str) -> Vec<PathBuf> {
    let dir = s.data_dir().join("mail").join(domain).join(local).join("new");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

fn submit(s: &Server, attempts: serde_json::Value) -> Vec<serde_json::Value> {
    let out = run_ok(
        Command::new("python3")
            .arg(repo_root().join("tests/clients/submission_client.py"))
            .arg("--port")
            .arg(s.port("submission").to_string())
            .arg("--cafile")
            .arg(s.cert_path())
            .arg(attempts.to_string()),
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("client output")
}

fn attempt(user: &str, mail_from: &str, header_from: &str, to: &str) -> serde_json::Value {
    serde_json::json!({"user": user, "password": format!("{user}-pw"), "mail_from": mail_from, "header_from": header_from, "to": [to]})
}

#[test]
fn submission_enforces_sender_rules_limits_relay_and_signs() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let keys = dkim_keys(keydir.path());
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  submission:
    bind: 127.0.0.1:{{port:submission}}
    tls: starttls
    auth: require
    pipeline: submission
  mx:
    bind: 127.0.0.1:{{port:mx}}
    tls: none
    pipeline: inbound
relay:
  local_domains: [example.org]
  networks: [127.0.0.0/8]
auth:
  users:
    ann: "{ann}"
    bob: "{bob}"
routes:
  local:
    type: maildir
    path: "{{data_dir}}/mail/{{domain}}/{{local}}"
routing:
  default: local
metrics:
  bind: 127.0.0.1:{{metrics}}
plugins:
  relay:
    path: {relay}
    grants: [config]
    config: {{local_domains: [example.org]}}
  sender:
    path: {sender}
    grants: [config, kv, clock]
    config:
      accounts:
        ann: {{addresses: [ann@example.com]}}
        bob: {{domains: [bob.example]}}
      limits:
        messages_per_account: {{count: 3, window_seconds: 3600}}
  dkim:
    path: {dkim}
    grants: [config, mail-auth, headers]
    config:
      keys:
        - {{domain: example.com, selector: sub, private_key: {pem}}}
pipelines:
  submission:
    mail_from: [{{plugin: sender}}]
    rcpt_to: [{{plugin: relay}}, {{plugin: sender}}]
    data: [{{plugin: sender}}]
    route: [{{plugin: dkim}}]
  inbound:
    rcpt_to: [{{plugin: relay}}]
"#,
        ann = password_hash("ann-pw"),
        bob = password_hash("bob-pw"),
        relay = plugin("relay_control"),
        sender = plugin("sender_rules"),
        dkim = plugin("dkim_sign"),
        pem = yaml_string(&keys.rsa_pem),
    );
    let s = Server::start(&cfg);
    let results = submit(
        &s,
        serde_json::json!([
            attempt("ann", "ann@example.com", "Ann <ann@example.com>", "carol@elsewhere.example"),
            attempt("ann", "bob@bob.example", "bob@bob.example", "carol@elsewhere.example"),
            attempt("ann", "ann@example.com", "Bob <bob@bob.example>", "carol@elsewhere.example"),
            attempt("ann", "ann@example.com", "ann@example.com", "dave@elsewhere.example"),
            attempt("ann", "ann@example.com", "ann@example.com", "dave@elsewhere.example"),
            attempt("ann", "ann@example.com", "ann@example.com", "dave@elsewhere.example"),
            attempt("bob", "bob@bob.example", "bob@bob.example", "dave@elsewhere.example"),
        ]),
    );
    let at = |i: usize| (results[i]["stage"].as_str().unwrap_or("").to_string(), results[i]["code"].as_u64().unwrap_or(0));
    assert_eq!(at(0), ("queued".into(), 250), "{results:?}");
    // User A cannot send as user B's address: envelope, then header.
    assert_eq!(at(1), ("mail".into(), 553), "{results:?}");
    assert!(results[1]["text"].as_str().unwrap_or("").starts_with("5.7.1"), "{results:?}");
    assert_eq!(at(2), ("data".into(), 550), "{results:?}");
    // Three messages an hour: the fourth attempt gets 451 4.7.1.
    assert_eq!(at(3), ("queued".into(), 250), "{results:?}");
    assert_eq!(at(4), ("queued".into(), 250), "{results:?}");
    assert_eq!(at(5), ("mail".into(), 451), "{results:?}");
    assert!(results[5]["text"].as_str().unwrap_or("").starts_with("4.7.1"), "{results:?}");
    assert_eq!(at(6), ("queued".into(), 250), "bob has his own limit: {results:?}");

    // Relay without AUTH is refused by relay-control (the built-in rule
    // would let loopback through); local recipients are fine.
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO outside.test").is(250, "");
    c.cmd("MAIL FROM:<x@outside.test>").is(250, "2.1.0");
    c.cmd("RCPT TO:<carol@elsewhere.example>").is(554, "5.7.1");
    c.cmd("RCPT TO:<postmaster@example.org>").is(250, "2.1.5");
    c.cmd("QUIT");

    // The accepted message carries a DKIM signature that python3-dkim verifies.
    let files = wait_for(30, "delivery to carol", || Some(maildir(&s, "elsewhere.example", "carol")).filter(|v| !v.is_empty()));
    let message = std::fs::read(&files[0]).expect("delivered message");
    let text = String::from_utf8_lossy(&message);
    assert!(text.contains("DKIM-Signature:") && text.contains("d=example.com") && text.contains("s=sub"), "{text}");
    let (ok, out) = dkimpy_verify(&message, &[("sub._domainkey.example.com", &keys.rsa_record)]);
    assert!(ok, "python3-dkim: {out}\n{text}");
    // bob.example has no key: bob's message goes out unsigned.
    let bobs = wait_for(30, "delivery to dave", || Some(maildir(&s, "elsewhere.example", "dave")).filter(|v| v.len() == 3));
    let signed = bobs.iter().filter(|p| std::fs::read_to_string(p).unwrap_or_default().contains("DKIM-Signature:")).count();
    assert_eq!(signed, 2, "ann's two messages signed, bob's not");
}

fn inbound_zone() -> Zone {
    let mut z = Zone::new();
    z.txt("forged.example", "v=spf1 ip4:192.0.2.0/24 -all");
    z.txt("_dmarc.forged.example", "v=DMARC1; p=reject");
    z.txt("good.example", "v=spf1 ip4:127.0.0.0/8 -all");
    z.txt("_dmarc.good.example", "v=DMARC1; p=reject");
    z.txt("doubtful.example", "v=spf1 -all");
    z.txt("_dmarc.doubtful.example", "v=DMARC1; p=quarantine");
    z.add("1.0.0.127.bl.test", Rec::A("127.0.0.2".parse().expect("ip")));
    z
}

#[test]
fn inbound_auth_check_dnsbl_greylist_router_and_header_rewrite() {
    let zone = ZoneServer::start(inbound_zone());
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  mx:
    bind: 127.0.0.1:{{port:mx}}
    tls: none
    pipeline: inbound
  guarded:
    bind: 127.0.0.1:{{port:guarded}}
    tls: none
    pipeline: guarded
  grey:
    bind: 127.0.0.1:{{port:grey}}
    tls: none
    pipeline: grey
relay:
  local_domains: [example.org, void.example.org]
dns:
  servers: ["{dns}"]
  timeout: 1s
routes:
  local:
    type: maildir
    path: "{{data_dir}}/mail/{{domain}}/{{local}}"
  void:
    type: discard
routing:
  default: local
metrics:
  bind: 127.0.0.1:{{metrics}}
plugins:
  auth:
    path: {auth}
    grants: [config, mail-auth, headers, symbols, tags]
    config: {{authserv_id: mx.test, enforce: true}}
  rewrite:
    path: {rewrite}
    grants: [config, headers]
    config: {{rules: [{{add: {{X-Checked-By: weir}}}}, {{when: {{tag: dmarc=pass}}, add: {{X-Sender-Verified: "yes"}}}}]}}
  router:
    path: {router}
    grants: [config, route, tags, envelope, clock]
    config: {{routes: [{{route: void, recipient_domains: [void.example.org]}}], default_route: local}}
  dnsbl:
    path: {dnsbl}
    grants: [config, dns, symbols]
    config: {{zones: [{{zone: bl.test, action: reject, codes: [127.0.0.2]}}]}}
  grey:
    path: {grey}
    grants: [config, kv, clock]
    config: {{delay_seconds: 1, pass_window_seconds: 600}}
pipelines:
  inbound:
    mail_from: [{{plugin: auth}}]
    rcpt_to: [{{plugin: router}}]
    data: [{{plugin: auth}}, {{plugin: rewrite}}]
  guarded:
    connect: [{{plugin: dnsbl}}]
  grey:
    rcpt_to: [{{plugin: grey}}]
"#,
        dns = zone.addr,
        auth = plugin("auth_check"),
        rewrite = plugin("header_rewrite"),
        router = plugin("router"),
        dnsbl = plugin("dnsbl"),
        grey = plugin("greylist"),
    );
    let s = Server::start(&cfg);
    let port = s.port("mx");
    let send = |from: &str, to: &str| {
        let mut c = Smtp::connect(port);
        c.cmd("EHLO client.test").is(250, "");
        let body = format!("From: {from}\r\nTo: {to}\r\nSubject: inbound\r\nMessage-ID: <{}@client.test>\r\n\r\nhello\r\n", rand::random::<u32>());
        let r = c.send_mail(from, &[to], &body);
        c.cmd("QUIT");
        r
    };
    // DMARC p=reject on a forged sender: refused after DATA.
    send("ceo@forged.example", "bob@example.org").is(550, "5.7.1");
    // An authenticated sender passes; the delivered copy says why.
    let ok = send("ann@good.example", "bob@example.org");
    ok.is(250, "2.0.0");
    // p=quarantine: accepted but held.
    let held = queued_id(&send("x@doubtful.example", "bob@example.org"));
    assert_eq!(s.queue_show(&held)["state"], "held");
    // The router sends void.example.org to the discard route.
    send("ann@good.example", "someone@void.example.org").is(250, "2.0.0");

    let files = wait_for(30, "delivery to bob", || Some(maildir(&s, "example.org", "bob")).filter(|v| !v.is_empty()));
    assert_eq!(files.len(), 1, "only the authenticated message is delivered");
    let text = std::fs::read_to_string(&files[0]).expect("message");
    let ar = text.lines().skip_while(|l| !l.starts_with("Authentication-Results: mx.test;")).take(6).collect::<Vec<_>>().join("\n");
    assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass"), "{text}");
    assert!(text.contains("X-Checked-By: weir") && text.contains("X-Sender-Verified: yes"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(maildir(&s, "void.example.org", "someone").is_empty(), "discarded by route");

    // dnsbl: 127.0.0.1 is listed in bl.test with 127.0.0.2.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.port("guarded"))).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut greeting = String::new();
    std::io::Read::read_to_string(&mut raw, &mut greeting).ok();
    assert!(greeting.starts_with("554 5.7.1") && greeting.contains("bl.test"), "{greeting:?}");

    // greylist: the first try is deferred, a retry after the delay passes.
    let grey = s.port("grey");
    let rcpt = || {
        let mut c = Smtp::connect(grey);
        c.cmd("EHLO client.test").is(250, "");
        c.cmd("MAIL FROM:<list@sender.example>").is(250, "2.1.0");
        let r = c.cmd("RCPT TO:<bob@example.org>");
        c.cmd("QUIT");
        r
    };
    rcpt().is(451, "4.7.1");
    rcpt().is(451, "4.7.1");
    std::thread::sleep(Duration::from_millis(1300));
    rcpt().is(250, "2.1.5");
    rcpt().is(250, "2.1.5");
}

/// The SpamAssassin public corpus (../shared/corpus/spamassassin).
fn corpus(class: &str) -> PathBuf {
    repo_root().join("..").join("shared").join("corpus").join("spamassassin").join(class)
}

/// A corpus file as a DATA payload: the mbox "From " line dropped, CRLF
/// line ends, dot-stuffed. None when a line is too long for SMTP.
fn smtp_payload(path: &std::path::Path) -> Option<String> {
    let raw = String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned();
    let mut out = String::new();
    for (i, line) in raw.lines().enumerate() {
        if i == 0 && line.starts_with("From ") {
            continue;
        }
        if line.len() > 900 {
            return None;
        }
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    Some(out)
}

/// `weir spam score` of one file: (score, the line).
fn spam_score(model: &std::path::Path, file: &std::path::Path) -> (f64, String) {
    let out = run_ok(Command::new(WEIR).args(["spam", "score", "-m"]).arg(model).arg(file));
    let line = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
    let score = line.split("score=").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).expect("a score");
    (score, line)
}

#[test]
fn spam_eval_reports_recall_and_false_positives_on_the_corpus() {
    let out = run_ok(Command::new(WEIR).args(["spam", "eval", "--seed", "42", "--ham"]).arg(corpus("ham")).arg("--spam").arg(corpus("spam")));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{table}");
    assert!(table.contains("seed 42, 80% train: 2000 ham + 400 spam trained"), "{table}");
    let row = table.lines().find(|l| l.starts_with("rules + classifier")).expect("combined row");
    // method, ham, FP, FP rate, spam, caught, recall
    let cols: Vec<&str> = row.split_whitespace().rev().take(6).collect();
    let (recall, caught, spam, fp_rate, fp, ham) = (cols[0], cols[1], cols[2], cols[3], cols[4], cols[5]);
    assert_eq!((ham, spam), ("500", "100"), "{row}");
    let fp: usize = fp.parse().expect("FP");
    let caught: usize = caught.parse().expect("caught");
    assert!(fp as f64 / 500.0 <= 0.005, "false positives {fp} ({fp_rate}) over 0.5%: {table}");
    assert!(caught >= 95, "recall {recall} under 95%: {table}");
}

#[test]
fn inbound_spam_score_tags_quarantines_and_rejects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("spam.model");
    let out = run_ok(Command::new(WEIR).args(["spam", "train", "--ham"]).arg(corpus("ham")).arg("--spam").arg(corpus("spam")).arg("-o").arg(&model));
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained on 2500 ham and 500 spam"));
    // A clear spam and a clear ham of the corpus that fit in SMTP lines.
    let pick = |class: &str, want: &dyn Fn(f64) -> bool| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(class)).expect("corpus").filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        files
            .into_iter()
            .find_map(|f| {
                let payload = smtp_payload(&f)?;
                want(spam_score(&model, &f).0).then_some(payload)
            })
            .expect("a message to send")
    };
    let spam = pick("spam", &|s| s >= 8.0);
    let ham = pick("ham", &|s| s <= 0.0);
    let cfg = format!(
        r#"
server:
  hostname: mx.test
listeners:
  mx:
    bind: 127.0.0.1:{{port:mx}}
    tls: none
    pipeline: inbound
  strict:
    bind: 127.0.0.1:{{port:strict}}
    tls: none
    pipeline: strict
relay:
  local_domains: [example.org]
routes:
  local:
    type: maildir
    path: "{{data_dir}}/mail/{{domain}}/{{local}}"
routing:
  default: local
metrics:
  bind: 127.0.0.1:{{metrics}}
plugins:
  spam:
    path: {spam_plugin}
    grants: [config, body, files, headers, symbols, tags]
    files: {{model: {model}}}
    limits: {{time_budget: 2s, memory_mb: 64}}
    config: {{model: model, thresholds: {{spam: 5, reject: 100}}}}
  rewrite:
    path: {rewrite}
    grants: [config, headers]
    config: {{rules: [{{when: {{min_score: 5}}, subject_prefix: "[SPAM] "}}]}}
pipelines:
  inbound:
    data: [{{plugin: spam}}, {{plugin: rewrite}}]
  strict:
    data: [{{plugin: spam, config: {{model: model, thresholds: {{spam: 5, quarantine: 5}}}}}}]
"#,
        spam_plugin = plugin("spam_score"),
        rewrite = plugin("header_rewrite"),
        model = yaml_string(&model.display().to_string()),
    );
    let s = Server::start(&cfg);
    let send = |port: u16, body: &str| {
        let mut c = Smtp::connect(port);
        c.cmd("EHLO client.test").is(250, "");
        let r = c.send_mail("sender@client.test", &["bob@example.org"], body);
        c.cmd("QUIT");
        r
    };
    // GTUBE: refused after DATA, whatever the classifier says.
    let gtube = "From: a@client.test\r\nSubject: test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    let r = send(s.port("mx"), gtube);
    r.is(550, "5.7.1");
    assert!(r.text.contains("spam"), "{r:?}");
    // Spam is delivered tagged (headers, and the Subject by header-rewrite
    // from spam-score's symbols); ham is delivered marked No.
    send(s.port("mx"), &spam).is(250, "2.0.0");
    send(s.port("mx"), &ham).is(250, "2.0.0");
    let files = wait_for(30, "two deliveries", || Some(maildir(&s, "example.org", "bob")).filter(|v| v.len() == 2));
    let texts: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).expect("message")).collect();
    let flagged: Vec<&String> = texts.iter().filter(|t| t.contains("X-Spam-Flag: YES")).collect();
    assert_eq!(flagged.len(), 1, "{texts:?}");
    assert!(flagged[0].contains("X-Spam-Status: Yes, score=") && flagged[0].contains("BAYES_99"), "{}", flagged[0]);
    assert!(flagged[0].lines().any(|l| l.starts_with("Subject: [SPAM] ")), "{}", flagged[0]);
    let clean = texts.iter().find(|t| !t.contains("X-Spam-Flag")).expect("the ham");
    assert!(clean.contains("X-Spam-Status: No, score=") && !clean.contains("[SPAM]"), "{clean}");
    // The strict listener quarantines the same spam; the trail says why.
    let held = queued_id(&send(s.port("strict"), &spam));
    let shown = s.queue_show(&held);
    assert_eq!(shown["state"], "held", "{shown}");
    assert!(shown.to_string().contains("BAYES_99"), "{shown}");
}
