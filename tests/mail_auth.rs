//! The host's mail-auth capability against published test suites: every
//! scenario of the RFC 7208 SPF suite (../shared/vectors/spf), with its DNS
//! answered from the scenario's zone data by a test DNS server the host's
//! resolver is pointed at; the DKIM vectors (../shared/vectors/dkim); and
//! DKIM signing that verifies with mail-auth and with python3-dkim.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::zone::{Rec, Zone, ZoneServer};
use serde::Deserialize;
use serde_norway::Value;
use weir::plugin::mail_auth::MailAuth;
use weir::plugin::wit_auth as w;

fn shared(path: &str) -> std::path::PathBuf {
    common::repo_root().join("..").join("shared").join(path)
}

fn mail_auth_for(server: &ZoneServer) -> MailAuth {
    let cfg = weir::config::DnsConfig { servers: vec![server.addr.to_string()], timeout: Some(Duration::from_millis(400)) };
    let dns = Arc::new(weir::dns::Dns::new(&cfg).expect("resolver"));
    MailAuth::new(&dns)
}

/// YAML strings of the suite stand for octets (the suite was written for
/// Python 2): characters below 256 are single octets.
fn octets(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in s.chars() {
        if (c as u32) < 256 {
            out.push(c as u32 as u8);
        } else {
            let mut b = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("unexpected value {other:?}"),
    }
}

/// The zone of one suite document. SPF-type records stand in for TXT
/// records at names without TXT records (as the suite's drivers do), and
/// `TXT: NONE` says a name has none.
fn zone_from(doc: &Value) -> Zone {
    let mut zone = Zone::new();
    let Some(data) = doc.get("zonedata").and_then(Value::as_mapping) else {
        return zone;
    };
    for (name, recs) in data {
        let name = text(name);
        zone.touch(&name);
        let mut txt: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut spf: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut txt_none = false;
        for rec in recs.as_sequence().into_iter().flatten() {
            if rec.as_str() == Some("TIMEOUT") {
                zone.add(&name, Rec::Timeout);
                continue;
            }
            let Some(map) = rec.as_mapping() else { panic!("record {rec:?}") };
            for (kind, value) in map {
                let strings = || -> Vec<Vec<u8>> {
                    match value {
                        Value::Sequence(parts) => parts.iter().map(|p| octets(&text(p))).collect(),
                        v => vec![octets(&text(v))],
                    }
                };
                match text(kind).as_str() {
                    "TXT" if value.as_str() == Some("NONE") => txt_none = true,
                    "TXT" => txt.push(strings()),
                    "SPF" => spf.push(strings()),
                    "A" => {
                        zone.add(&name, Rec::A(text(value).parse().expect("A")));
                    }
                    "AAAA" => {
                        zone.add(&name, Rec::Aaaa(text(value).parse().expect("AAAA")));
                    }
                    "MX" => {
                        let s = value.as_sequence().expect("MX is [pref, name]");
                        let pref = s[0].as_u64().expect("MX preference") as u16;
                        zone.add(&name, Rec::Mx(pref, text(&s[1])));
                    }
                    "PTR" => {
                        zone.add(&name, Rec::Ptr(text(value)));
                    }
                    "CNAME" => {
                        zone.add(&name, Rec::Cname(text(value)));
                    }
                    other => panic!("record type {other} in the suite"),
                }
            }
        }
        let records = if txt.is_empty() && !txt_none { spf } else { txt };
        for r in records {
            zone.add(&name, Rec::Txt(r));
        }
    }
    zone
}

fn word(r: w::AuthResult) -> &'static str {
    match r {
        w::AuthResult::None => "none",
        w::AuthResult::Pass => "pass",
        w::AuthResult::Fail => "fail",
        w::AuthResult::SoftFail => "softfail",
        w::AuthResult::Neutral => "neutral",
        w::AuthResult::TempError => "temperror",
        w::AuthResult::PermError => "permerror",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7208_spf_suite() {
    let text_all = std::fs::read_to_string(shared("vectors/spf/rfc7208-tests.yml")).expect("the SPF suite");
    let mut total = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut passed_by_section: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for doc in serde_norway::Deserializer::from_str(&text_all) {
        let doc = Value::deserialize(doc).expect("a suite document");
        let section = doc.get("description").map(text).unwrap_or_default();
        let server = ZoneServer::start(zone_from(&doc));
        let auth = Arc::new(mail_auth_for(&server));
        let tests = doc.get("tests").and_then(Value::as_mapping).expect("tests");
        for (name, t) in tests {
            total += 1;
            let name = text(name);
            let helo = t.get("helo").map(text).unwrap_or_default();
            let host = t.get("host").map(text).unwrap_or_default();
            let mail_from = t.get("mailfrom").map(text).unwrap_or_default();
            let expected: Vec<String> = match t.get("result") {
                Some(Value::Sequence(s)) => s.iter().map(text).collect(),
                Some(v) => vec![text(v)],
                None => panic!("{name}: no result"),
            };
            let ip: IpAddr = host.parse().expect("host address");
            // An empty MAIL FROM is checked as postmaster@HELO (RFC 7208 2.4).
            let got = auth
                .spf(&ip.to_string(), &helo, &mail_from, "checker.example.org", Duration::from_secs(20))
                .await
                .expect("spf");
            let entry = passed_by_section.entry(section.clone()).or_default();
            entry.1 += 1;
            let got_word = word(got.result);
            if expected.iter().any(|e| e == got_word) {
                entry.0 += 1;
                // Where the suite names the explanation of a fail, check it.
                if let (Some(exp), "fail") = (t.get("explanation").map(text), got_word) {
                    if got.explanation.as_deref().is_some_and(|g| g != exp) {
                        entry.0 -= 1;
                        failures.push(format!("{section} / {name}: explanation {:?}, expected {exp:?}", got.explanation));
                    }
                }
            } else {
                failures.push(format!("{section} / {name}: got {got_word}, expected {expected:?}"));
            }
        }
    }
    println!("RFC 7208 SPF suite, by section (passed/total):");
    for (section, (ok, n)) in &passed_by_section {
        println!("  {ok:>3}/{n:<3} {section}");
    }
    let passed = total - failures.len();
    println!("SPF suite: {passed} of {total} scenarios give the expected result");
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(total >= 200, "only {total} scenarios were read");
    assert!(failures.is_empty(), "{} of {total} SPF scenarios failed:\n{}", failures.len(), failures.join("\n"));
}

/// A vector file: TXT records ("name value" lines), a blank line, the message.
fn dkim_vector(path: &std::path::Path) -> (Zone, Vec<u8>) {
    let raw = std::fs::read(path).expect("vector");
    let split = raw.windows(2).position(|w| w == b"\n\n").expect("blank line after the records");
    let mut zone = Zone::new();
    for line in String::from_utf8_lossy(&raw[..split]).lines() {
        if let Some((name, value)) = line.trim().split_once(' ') {
            zone.txt(name, value.trim());
        }
    }
    let body = &raw[split + 2..];
    // Vectors are stored with LF line ends; messages travel with CRLF.
    let mut msg = Vec::with_capacity(body.len() + body.len() / 20);
    for (i, b) in body.iter().enumerate() {
        if *b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            msg.push(b'\r');
        }
        msg.push(*b);
    }
    (zone, msg)
}

fn checks() -> w::MessageChecks {
    w::MessageChecks {
        remote_ip: "192.0.2.1".into(),
        helo: "mail.example.net".into(),
        mail_from: "sender@example.net".into(),
        spf: None,
        authserv_id: "mx.test.example".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_vectors_verify() {
    let dir = shared("vectors/dkim");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("vectors")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt") && !p.to_string_lossy().contains("LICENSE"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "DKIM vectors missing in {}", dir.display());
    let mut report = Vec::new();
    for f in &files {
        let (zone, msg) = dkim_vector(f);
        let server = ZoneServer::start(zone);
        let auth = mail_auth_for(&server);
        let out = auth.verify_message(&msg, &checks(), Duration::from_secs(10)).await.expect("verify");
        assert!(!out.dkim.is_empty(), "{}: no DKIM signature found", f.display());
        let expired: Vec<(String, u64)> = {
            // x= of each signature: one whose expiry has passed must not pass.
            let text = String::from_utf8_lossy(&msg).replace("\r\n\t", " ").replace("\r\n ", " ");
            text.lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
                .filter_map(|l| {
                    let tag = |t: &str| l.split(';').find_map(|p| p.trim().strip_prefix(t).map(|v| v.trim().to_string()));
                    let x: u64 = tag("x=")?.parse().ok()?;
                    Some((tag("s=")?, x))
                })
                .collect()
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        for d in &out.dkim {
            if expired.iter().any(|(s, x)| *s == d.selector && *x < now) {
                assert_ne!(d.result, w::AuthResult::Pass, "{}: an expired signature passed", f.display());
                assert!(d.detail.as_deref().unwrap_or("").contains("xpired"), "{:?}", d.detail);
                continue;
            }
            assert_eq!(
                d.result,
                w::AuthResult::Pass,
                "{}: signature d={} s={} did not verify: {:?}",
                f.display(),
                d.domain,
                d.selector,
                d.detail
            );
        }
        assert!(out.authentication_results.starts_with("mx.test.example;"), "{}", out.authentication_results);
        assert!(out.authentication_results.contains("dkim="), "{}", out.authentication_results);
        report.push(format!("{}: {} signature(s) pass", f.file_name().unwrap_or_default().to_string_lossy(), out.dkim.len()));

        // One changed octet in the body must break every signature.
        let mut tampered = msg.clone();
        let pos = tampered.len() - 4;
        tampered[pos] = if tampered[pos] == b'x' { b'y' } else { b'x' };
        let bad = auth.verify_message(&tampered, &checks(), Duration::from_secs(10)).await.expect("verify");
        assert!(bad.dkim.iter().all(|d| d.result != w::AuthResult::Pass), "{}: tampered body still passes", f.display());
    }
    println!("{}", report.join("\n"));
}

fn sign_request(domain: &str, selector: &str, key: &str, canon: w::Canonicalization) -> w::SignRequest {
    w::SignRequest {
        domain: domain.into(),
        selector: selector.into(),
        private_key: key.into(),
        headers: ["From", "To", "Subject", "Date", "Message-ID"].map(String::from).to_vec(),
        header_canonicalization: canon,
        body_canonicalization: canon,
        expire_seconds: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signatures_verify_here_and_with_python_dkim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = common::dkim_keys(dir.path());
    let mut zone = Zone::new();
    zone.txt("rsa._domainkey.example.com", &keys.rsa_record);
    zone.txt("ed._domainkey.example.com", &keys.ed25519_record);
    zone.txt("_dmarc.example.com", "v=DMARC1; p=reject");
    let server = ZoneServer::start(zone);
    let auth = mail_auth_for(&server);
    let message = b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\nSubject: signed  twice\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello Bob.\r\n\r\nSee you.\r\n";
    let rsa = auth.dkim_sign(message, &sign_request("example.com", "rsa", &keys.rsa_pem, w::Canonicalization::Relaxed)).expect("rsa sign");
    let ed = auth.dkim_sign(message, &sign_request("example.com", "ed", &keys.ed25519_pem, w::Canonicalization::Simple)).expect("ed25519 sign");
    assert!(rsa.contains("a=rsa-sha256") && ed.contains("a=ed25519-sha256"), "{rsa}\n{ed}");
    let mut signed = format!("DKIM-Signature: {rsa}\r\nDKIM-Signature: {ed}\r\n").into_bytes();
    signed.extend_from_slice(message);

    let out = auth.verify_message(&signed, &checks(), Duration::from_secs(10)).await.expect("verify");
    assert_eq!(out.dkim.len(), 2);
    assert!(out.dkim.iter().all(|d| d.result == w::AuthResult::Pass), "{:?}", out.dkim);
    // DMARC: From is example.com and an aligned DKIM signature passes.
    assert_eq!(out.dmarc.result, w::AuthResult::Pass, "{:?}", out.dmarc);
    assert!(out.dmarc.dkim_aligned);
    assert_eq!(out.dmarc.policy, w::DmarcPolicy::Reject);

    let records = [
        ("rsa._domainkey.example.com", keys.rsa_record.as_str()),
        ("ed._domainkey.example.com", keys.ed25519_record.as_str()),
    ];
    let (ok, text) = common::dkimpy_verify(&signed, &records);
    assert!(ok, "python3-dkim did not verify:\n{text}\n{}", String::from_utf8_lossy(&signed));
    assert_eq!(text.matches("pass").count(), 2, "{text}");

    // A changed Subject breaks both, for python3-dkim too.
    let forged = String::from_utf8_lossy(&signed).replace("signed  twice", "signed thrice").into_bytes();
    let (ok, text) = common::dkimpy_verify(&forged, &records);
    assert!(!ok, "python3-dkim accepted a changed Subject:\n{text}");
    let out = auth.verify_message(&forged, &checks(), Duration::from_secs(10)).await.expect("verify");
    assert!(out.dkim.iter().all(|d| d.result == w::AuthResult::Fail), "{:?}", out.dkim);
    assert_eq!(out.dmarc.result, w::AuthResult::Fail);

    // Bad keys and header lists are refused with a reason, not a panic.
    let bad = auth.dkim_sign(message, &sign_request("example.com", "x", "not a key", w::Canonicalization::Relaxed));
    assert!(bad.is_err());
    let mut no_from = sign_request("example.com", "rsa", &keys.rsa_pem, w::Canonicalization::Relaxed);
    no_from.headers = vec!["Subject".into()];
    assert!(auth.dkim_sign(message, &no_from).unwrap_err().contains("From"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_and_dmarc_policy_for_a_forged_sender() {
    let mut zone = Zone::new();
    zone.txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all");
    zone.txt("_dmarc.example.com", "v=DMARC1; p=quarantine");
    let server = ZoneServer::start(zone);
    let auth = mail_auth_for(&server);
    let pass = auth.spf("192.0.2.7", "mail.example.com", "ann@example.com", "mx.test", Duration::from_secs(5)).await.expect("spf");
    assert_eq!(pass.result, w::AuthResult::Pass);
    let fail = auth.spf("198.51.100.9", "evil.example.net", "ann@example.com", "mx.test", Duration::from_secs(5)).await.expect("spf");
    assert_eq!(fail.result, w::AuthResult::Fail);
    assert_eq!(fail.domain, "example.com");
    let mut c = checks();
    c.remote_ip = "198.51.100.9".into();
    c.mail_from = "ann@example.com".into();
    c.spf = Some(fail);
    let msg = b"From: ann@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
    let out = auth.verify_message(msg, &c, Duration::from_secs(5)).await.expect("verify");
    assert_eq!(out.dmarc.result, w::AuthResult::Fail);
    assert_eq!(out.dmarc.policy, w::DmarcPolicy::Quarantine);
    assert!(out.authentication_results.contains("spf=fail"), "{}", out.authentication_results);
    assert!(out.authentication_results.contains("dmarc=fail"), "{}", out.authentication_results);
    assert!(out.dkim.is_empty());
}
