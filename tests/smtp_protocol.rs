//! The ESMTP receiver against a raw client: reply codes and enhanced codes,
//! limits, DATA framing (dot-stuffing, bare CR/LF), BDAT, STARTTLS, AUTH,
//! pipelining. Each test starts its own `weir serve` on free loopback ports.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn ehlo_advertises_extensions_and_hides_auth_before_tls() {
    let s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    let r = c.cmd("EHLO client.test");
    r.is(250, "");
    for ext in ["PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "STARTTLS", "HELP"] {
        assert!(r.text.contains(ext), "EHLO lacks {ext}: {}", r.text);
    }
    assert!(!r.text.contains("AUTH"), "AUTH offered before TLS: {}", r.text);
    // AUTH before TLS where TLS is required for it: 538 5.7.11.
    c.cmd("AUTH PLAIN AGFsaWNlAHB3").is(538, "5.7.11");
    // After STARTTLS, AUTH is offered.
    let mut c = c.starttls(&s.cert_path(), "");
    let r = c.cmd("EHLO client.test");
    assert!(r.text.contains("AUTH PLAIN LOGIN"), "{}", r.text);
    assert!(!r.text.contains("STARTTLS"), "{}", r.text);
    c.cmd("QUIT").is(221, "2.0.0");
}

#[test]
fn reply_codes_for_sequence_syntax_and_unknown_commands() {
    let s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    // Out of sequence: 503 5.5.1.
    c.cmd("MAIL FROM:<a@example.org>").is(503, "5.5.1");
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("RCPT TO:<postmaster@localhost>").is(503, "5.5.1");
    c.cmd("DATA").is(503, "5.5.1");
    // Bad syntax: 501 5.5.2 / 5.5.4, bad addresses 501 5.1.x.
    c.cmd("MAIL FROM:a@example.org").is(501, "5.5.2");
    c.cmd("MAIL FROM:<a@example.org> SIZE=notanumber").is(501, "5.5.4");
    c.cmd("MAIL FROM:<a@example.org> FOO=BAR").is(555, "5.5.4");
    c.cmd("EHLO").is(501, "5.5.2");
    // Unknown command: 500 5.5.1.
    c.cmd("FROB nicate").is(500, "5.5.1");
    // VRFY 252, NOOP, HELP, RSET.
    c.cmd("VRFY postmaster").is(252, "2.5.0");
    c.cmd("NOOP").is(250, "2.0.0");
    c.cmd("HELP").is(214, "2.0.0");
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    c.cmd("MAIL FROM:<a@example.org>").is(503, "5.5.1");
    c.cmd("RSET").is(250, "2.0.0");
    // Relay to a foreign domain without AUTH: 554 5.7.1.
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    c.cmd("RCPT TO:<someone@elsewhere.example>").is(554, "5.7.1");
    c.cmd("RCPT TO:<postmaster>").is(250, "2.1.5");
    // DATA with MAIL but no accepted recipient in a new transaction: 554 5.5.1.
    c.cmd("RSET").is(250, "2.0.0");
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    c.cmd("DATA").is(554, "5.5.1");
    c.cmd("QUIT").is(221, "2.0.0");
    assert!(c.closed());
}

#[test]
fn too_many_recipients_and_too_large() {
    let cfg = BASIC.replace("    auth: offer\n", "    auth: offer\n    limits:\n      max_recipients: 3\n      max_message_size: 2000\n");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    for i in 0..3 {
        c.cmd(&format!("RCPT TO:<u{i}@localhost>")).is(250, "2.1.5");
    }
    c.cmd("RCPT TO:<u3@localhost>").is(452, "4.5.3");
    c.cmd("RSET").is(250, "2.0.0");
    // Declared too large: refused at MAIL.
    c.cmd("MAIL FROM:<a@example.org> SIZE=5000").is(552, "5.3.4");
    // Undeclared but too large: refused after DATA, and the session goes on.
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    c.cmd("RCPT TO:<u@localhost>").is(250, "2.1.5");
    c.cmd("DATA").is(354, "");
    let line = "x".repeat(70) + "\r\n";
    c.send(line.repeat(40).as_bytes());
    c.send(b".\r\n");
    c.read().is(552, "5.3.4");
    c.cmd("NOOP").is(250, "2.0.0");
    // Same through BDAT.
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    c.cmd("RCPT TO:<u@localhost>").is(250, "2.1.5");
    c.send(format!("BDAT 3000 LAST\r\n{}", "y".repeat(3000)).as_bytes());
    c.read().is(552, "5.3.4");
    c.cmd("NOOP").is(250, "2.0.0");
    assert!(s.queue_list().is_empty());
}

#[test]
fn long_lines_get_500_and_the_session_goes_on() {
    let s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    let long = format!("NOOP {}", "a".repeat(600));
    c.cmd(&long).is(500, "5.5.2");
    // A very long line (far past any buffer) is also survived.
    let huge = format!("NOOP {}", "b".repeat(200_000));
    c.cmd(&huge).is(500, "5.5.2");
    c.cmd("NOOP").is(250, "2.0.0");
    // A text line over 1000 octets in DATA.
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    c.cmd("RCPT TO:<postmaster@localhost>").is(250, "2.1.5");
    c.cmd("DATA").is(354, "");
    c.send(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "z".repeat(1200)).as_bytes());
    let r = c.read();
    assert_eq!(r.code / 100, 5, "{}", r.text);
    assert_eq!(r.code, 500, "{}", r.text);
    c.cmd("NOOP").is(250, "2.0.0");
    assert!(s.queue_list().is_empty());
}

#[test]
fn too_many_errors_disconnects_with_421() {
    let cfg = BASIC.replace("    auth: offer\n", "    auth: offer\n    limits:\n      max_errors: 3\n");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("BOGUS").is(500, "5.5.1");
    c.cmd("BOGUS").is(500, "5.5.1");
    c.send(b"BOGUS\r\n");
    c.read().is(500, "5.5.1");
    c.read().is(421, "4.7.0");
    assert!(c.closed());
    // The server still takes new clients.
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("NOOP").is(250, "2.0.0");
}

#[test]
fn bare_lf_and_bare_cr_never_end_data() {
    let cfg = r#"
server:
  hostname: mx.test
listeners:
  strict:
    bind: 127.0.0.1:{port:strict}
    tls: none
  lenient:
    bind: 127.0.0.1:{port:lenient}
    tls: none
    bare_line_endings: normalize
metrics:
  bind: null
"#;
    let s = Server::start(cfg);
    for (listener, smuggle) in [
        ("strict", "\n.\n"),
        ("strict", "\r\n.\n"),
        ("strict", "\n.\r\n"),
        ("strict", "\r.\r"),
        ("strict", "\r\n.\r"),
        ("lenient", "\n.\n"),
        ("lenient", "\n.\r\n"),
        ("lenient", "\r.\r\n"),
    ] {
        let mut c = Smtp::connect(s.port(listener));
        c.cmd("EHLO client.test").is(250, "");
        c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
        c.cmd("RCPT TO:<postmaster@localhost>").is(250, "2.1.5");
        c.cmd("DATA").is(354, "");
        // A smuggled transaction after a bare line ending, then the real end.
        let payload = format!(
            "Subject: smuggle\r\n\r\nbefore{smuggle}MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\nsmuggled\r\n.\r\n"
        );
        c.send(payload.as_bytes());
        let r = c.read();
        // Exactly one reply for the whole thing: nothing smuggled was executed.
        c.send(b"NOOP\r\n");
        let next = c.read();
        next.is(250, "2.0.0");
        if listener == "strict" {
            r.is(550, "5.6.0");
        } else {
            let id = queued_id(&r);
            let raw = s.queue_raw(&id);
            let text = String::from_utf8_lossy(&raw);
            assert!(text.contains("MAIL FROM:<evil@example.org>\r\n"), "content kept as content: {text:?}");
            for (i, b) in raw.iter().enumerate() {
                if *b == b'\n' {
                    assert_eq!(raw[i - 1], b'\r', "bare LF stored for {smuggle:?}: {text:?}");
                }
            }
        }
    }
    // Only the normalising listener queued anything, one message per attempt.
    let q = s.queue_list();
    assert_eq!(q.len(), 3, "{q:?}");
    assert!(q.iter().all(|m| m["session"]["listener"] == "lenient"));
}

#[test]
fn dot_stuffing_received_header_and_dsn_parameters_are_stored() {
    let s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("MAIL FROM:<sender@example.org> RET=HDRS ENVID=abc+2Bdef BODY=8BITMIME SIZE=100").is(250, "2.1.0");
    c.cmd("RCPT TO:<postmaster@localhost> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig@example.org").is(250, "2.1.5");
    c.cmd("DATA").is(354, "");
    c.send(b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n.\r\n");
    let id = queued_id(&c.read());
    let m = s.queue_show(&id);
    assert_eq!(m["sender"], "sender@example.org");
    assert_eq!(m["dsn_ret"], "hdrs");
    assert_eq!(m["dsn_envid"], "abc+def");
    assert_eq!(m["body_type"], "8bitmime");
    assert_eq!(m["declared_size"], 100);
    let r = &m["recipients"][0];
    assert_eq!(r["address"], "postmaster@localhost");
    assert_eq!(r["notify"]["success"], true);
    assert_eq!(r["notify"]["delay"], true);
    assert!(r["notify"].get("failure").is_none());
    assert!(r["orcpt"].as_str().unwrap().contains("orig@example.org"), "{r}");
    assert_eq!(m["session"]["helo"], "client.test");
    assert_eq!(m["session"]["client_ip"], "127.0.0.1");
    assert_eq!(m["session"]["listener"], "mx");
    let raw = String::from_utf8(s.queue_raw(&id)).unwrap();
    assert!(raw.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Weir) with ESMTP id "), "{raw}");
    assert!(raw.contains(&format!("id {id}")), "{raw}");
    assert!(raw.ends_with("Subject: dots\r\n\r\n.leading dot\r\n..two\r\n"), "{raw:?}");
    // NOTIFY=NEVER and a bad NOTIFY value.
    c.cmd("MAIL FROM:<sender@example.org>").is(250, "2.1.0");
    c.cmd("RCPT TO:<postmaster@localhost> NOTIFY=NEVER").is(250, "2.1.5");
    c.cmd("RCPT TO:<x@localhost> NOTIFY=SOMETIMES").is(501, "5.5.4");
}

#[test]
fn pipelined_commands_get_replies_in_order() {
    let s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster@localhost>\r\nRCPT TO:<nobody@elsewhere.example>\r\nRCPT TO:<abuse@localhost>\r\nDATA\r\n");
    c.read().is(250, "2.1.0");
    c.read().is(250, "2.1.5");
    c.read().is(554, "5.7.1");
    c.read().is(250, "2.1.5");
    c.read().is(354, "");
    c.send(b"Subject: p\r\n\r\nhi\r\n.\r\nMAIL FROM:<b@example.org>\r\nRCPT TO:<postmaster@localhost>\r\nBDAT 5 LAST\r\nhello");
    let first = queued_id(&c.read());
    c.read().is(250, "2.1.0");
    c.read().is(250, "2.1.5");
    let second = queued_id(&c.read());
    assert_ne!(first, second);
    let m = s.queue_show(&first);
    assert_eq!(m["recipients"].as_array().unwrap().len(), 2);
    let raw = String::from_utf8(s.queue_raw(&second)).unwrap();
    assert!(raw.ends_with("\r\nhello"), "{raw:?}");
}

#[test]
fn bdat_chunks_are_joined_and_checked() {
    let s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    // BDAT without a transaction: the chunk is still consumed, then 503.
    c.send(b"BDAT 4\r\nNOOP");
    c.read().is(503, "5.5.1");
    c.cmd("NOOP").is(250, "2.0.0");
    c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0");
    c.cmd("RCPT TO:<postmaster@localhost>").is(250, "2.1.5");
    c.send(b"BDAT 18\r\nSubject: chunked\r\n");
    c.read().is(250, "2.0.0");
    // Binary-safe: CR, LF and dots are data here.
    c.send(b"BDAT 9\r\n\r\n.\r\nab\r\n");
    c.read().is(250, "2.0.0");
    c.cmd("DATA").is(503, "5.5.1");
    c.send(b"BDAT 0 LAST\r\n");
    let id = queued_id(&c.read());
    let raw = String::from_utf8(s.queue_raw(&id)).unwrap();
    assert!(raw.ends_with("\r\nSubject: chunked\r\n\r\n.\r\nab\r\n"), "{raw:?}");
}

#[test]
fn starttls_discards_pipelined_commands() {
    let s = Server::start(BASIC);
    let mut c = Smtp::connect(s.port("mx"));
    c.cmd("EHLO client.test").is(250, "");
    // The classic injection: a command sent in the clear right behind STARTTLS.
    let mut c = c.starttls(&s.cert_path(), "MAIL FROM:<injected@example.org>\r\n");
    // The first reply inside TLS must be the one to our EHLO.
    let r = c.cmd("EHLO client.test");
    r.is(250, "");
    assert!(r.text.contains("Hello client.test"), "{}", r.text);
    // And no transaction was started by the injected MAIL.
    c.cmd("RCPT TO:<postmaster@localhost>").is(503, "5.5.1");
    // STARTTLS again inside TLS: 503.
    c.cmd("STARTTLS").is(503, "5.5.1");
    let id = queued_id(&c.send_mail("a@example.org", &["postmaster@localhost"], "Subject: tls\r\n\r\nx"));
    let m = s.queue_show(&id);
    assert_eq!(m["session"]["tls"]["version"], "TLSv1.3");
    let raw = String::from_utf8(s.queue_raw(&id)).unwrap();
    assert!(raw.contains("with ESMTPS id"), "{raw}");
}

fn auth_config() -> String {
    let hash = password_hash("s3cret");
    format!(
        r#"
server:
  hostname: mx.test
listeners:
  sub:
    bind: 127.0.0.1:{{port:sub}}
    tls: starttls
    require_tls: true
    auth: require
  plain:
    bind: 127.0.0.1:{{port:plain}}
    tls: none
    auth: offer
    auth_over_plaintext: true
auth:
  users:
    alice: "{}"
metrics:
  bind: null
delivery:
  enabled: false
"#,
        hash.trim()
    )
}

#[test]
fn auth_plain_and_login_with_required_tls() {
    let s = Server::start(&auth_config());
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    // Submission: TLS first, then AUTH, then mail.
    let mut c = Smtp::connect(s.port("sub"));
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("MAIL FROM:<alice@example.org>").is(530, "5.7.0");
    c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==").is(530, "5.7.0");
    let mut c = c.starttls(&s.cert_path(), "");
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("MAIL FROM:<alice@example.org>").is(530, "5.7.0");
    c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0wrong"))).is(535, "5.7.8");
    c.cmd(&format!("AUTH PLAIN {}", b64("\0mallory\0s3cret"))).is(535, "5.7.8");
    c.cmd("AUTH CRAM-MD5").is(504, "5.5.4");
    c.cmd("AUTH PLAIN").is(334, "");
    c.cmd("*").is(501, "5.7.0");
    c.cmd("AUTH PLAIN").is(334, "");
    c.cmd("not base64!").is(501, "5.5.2");
    c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0s3cret"))).is(235, "2.7.0");
    c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0s3cret"))).is(503, "5.5.1");
    let id = queued_id(&c.send_mail("alice@example.org", &["anyone@elsewhere.example"], "Subject: a\r\n\r\nb"));
    let m = s.queue_show(&id);
    assert_eq!(m["session"]["auth_user"], "alice");
    let raw = String::from_utf8(s.queue_raw(&id)).unwrap();
    assert!(raw.contains("with ESMTPSA id"), "{raw}");
    // LOGIN, allowed in the clear on the `plain` listener.
    let mut c = Smtp::connect(s.port("plain"));
    c.cmd("EHLO client.test").is(250, "");
    c.cmd("AUTH LOGIN").is(334, "");
    c.cmd(&b64("alice")).is(334, "");
    c.cmd(&b64("nope")).is(535, "5.7.8");
    c.cmd("AUTH LOGIN").is(334, "");
    c.cmd(&b64("alice")).is(334, "");
    c.cmd(&b64("s3cret")).is(235, "2.7.0");
}

#[test]
fn connection_limits_per_ip() {
    let cfg = BASIC.replace("    auth: offer\n", "    auth: offer\n    limits:\n      max_connections_per_ip: 2\n");
    let s = Server::start(&cfg);
    let greeting = |port: u16| {
        let mut t = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 3];
        t.read_exact(&mut buf).ok();
        (t, buf)
    };
    use std::io::Read;
    // Two connections greeted (the start-up probe may still hold a slot for a moment).
    let (a, b) = wait_for(10, "two greeted connections", || {
        let (a, ga) = greeting(s.port("mx"));
        let (b, gb) = greeting(s.port("mx"));
        (&ga == b"220" && &gb == b"220").then_some((a, b))
    });
    let mut third = std::net::TcpStream::connect(("127.0.0.1", s.port("mx"))).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = String::new();
    third.read_to_string(&mut buf).unwrap();
    assert!(buf.starts_with("421 4.7.0"), "{buf:?}");
    drop(a);
    drop(b);
    // Slots are released when sessions end: two connections get greeted again.
    wait_for(10, "connection slots to be released", || {
        let (_c, g1) = greeting(s.port("mx"));
        let (_d, g2) = greeting(s.port("mx"));
        (&g1 == b"220" && &g2 == b"220").then_some(())
    });
    let m = s.metrics();
    assert!(metric_value(&m, "weir_connections_refused_total", &["reason=\"per_ip\""]) >= 1.0, "{m}");
}

#[test]
fn idle_clients_time_out_with_421() {
    let cfg = BASIC.replace("    auth: offer\n", "    auth: offer\n    limits:\n      command_timeout: 1s\n");
    let s = Server::start(&cfg);
    let mut c = Smtp::connect(s.port("mx"));
    std::thread::sleep(Duration::from_millis(1500));
    c.read().is(421, "4.4.2");
    assert!(c.closed());
}

#[test]
fn garbage_input_never_takes_the_server_down() {
    let s = Server::start(BASIC);
    let port = s.port("mx");
    // A well-behaved client stays connected throughout.
    let mut good = Smtp::connect(port);
    good.cmd("EHLO good.test").is(250, "");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let fragments: [&[u8]; 12] = [
        b"MAIL FROM:<", b"RCPT TO:<", b"DATA\r\n", b"BDAT 99999999999999999999\r\n", b"\r\n.\r\n", b"\n", b"\r",
        b"\0\xff\xfe", b"AUTH PLAIN =\r\n", b"EHLO x\r\n", b"BDAT 3 LAST\r\n", b"STARTTLS\r\n",
    ];
    for _ in 0..40 {
        let mut t = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        t.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut junk = Vec::new();
        for _ in 0..(next() % 30) {
            if next() % 3 == 0 {
                junk.extend_from_slice(fragments[(next() % fragments.len() as u64) as usize]);
            } else {
                for _ in 0..(next() % 40) {
                    junk.push((next() & 0xff) as u8);
                }
            }
        }
        use std::io::{Read, Write};
        let _ = t.write_all(&junk);
        let mut sink = [0u8; 4096];
        let _ = t.read(&mut sink);
    }
    good.cmd("NOOP").is(250, "2.0.0");
    let id = queued_id(&good.send_mail("a@example.org", &["postmaster@localhost"], "Subject: still here\r\n\r\nok"));
    assert!(!id.is_empty());
    let mut fresh = Smtp::connect(port);
    fresh.cmd("NOOP").is(250, "2.0.0");
}
