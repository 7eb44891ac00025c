//! Durability: SIGKILL the server while 20 clients send; after a restart,
//! every message that got a 250 is in the queue, and none is there twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Reads one reply; None on any error (the server may vanish at any time).
fn reply(r: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 || line.len() < 4 {
            return None;
        }
        if line.as_bytes()[3] == b' ' {
            return Some((line[..3].parse().ok()?, line));
        }
    }
}

/// Sends messages until the connection dies; returns (token, queue id) for each 250.
fn client(port: u16, n: usize, stop: Arc<AtomicBool>, acked: Arc<AtomicUsize>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else { return out };
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return out,
    };
    let mut r = BufReader::new(s);
    if reply(&mut r).map(|x| x.0) != Some(220) {
        return out;
    }
    if w.write_all(b"EHLO durability.test\r\n").is_err() || reply(&mut r).is_none() {
        return out;
    }
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let token = format!("client{n}-msg{i}");
        i += 1;
        let msg = format!(
            "MAIL FROM:<c{n}@example.org>\r\nRCPT TO:<postmaster@localhost>\r\nDATA\r\n"
        );
        if w.write_all(msg.as_bytes()).is_err() {
            break;
        }
        let ok = (0..3).all(|_| matches!(reply(&mut r), Some((250, _)) | Some((354, _))));
        if !ok {
            break;
        }
        let body = format!("Subject: {token}\r\nX-Token: {token}\r\n\r\n{}.\r\n", ("d".repeat(76) + "\r\n").repeat(26));
        if w.write_all(body.as_bytes()).is_err() {
            break;
        }
        match reply(&mut r) {
            Some((250, text)) => {
                let id = text.trim_end().rsplit(' ').next().unwrap_or("").to_string();
                out.push((token, id));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    out
}

#[test]
fn sigkill_during_load_loses_nothing_acknowledged() {
    let mut s = Server::start(BASIC);
    let port = s.port("mx");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for n in 0..20 {
        let (stop, acked, results) = (stop.clone(), acked.clone(), results.clone());
        threads.push(std::thread::spawn(move || {
            let r = client(port, n, stop, acked);
            results.lock().unwrap().extend(r);
        }));
    }
    // Kill mid-stream, once a fair number of messages went through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked: Vec<(String, String)> = results.lock().unwrap().clone();
    assert!(acked.len() >= 400, "only {} messages were acknowledged before the kill", acked.len());

    // Restart on the same data directory.
    s.spawn(&[]);
    let q = s.queue_list();
    let in_queue: HashSet<String> = q.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    let missing: Vec<&(String, String)> = acked.iter().filter(|(_, id)| !in_queue.contains(id)).collect();
    assert!(missing.is_empty(), "{} acknowledged messages lost, e.g. {:?}", missing.len(), missing.first());
    // At most one message per client can be on disk without its 250 (in flight at the kill).
    assert!(q.len() <= acked.len() + 20, "queue {} vs acknowledged {}", q.len(), acked.len());

    // No message is there twice: every token appears once.
    let mut tokens: HashMap<String, usize> = HashMap::new();
    for m in &q {
        let raw = String::from_utf8(s.queue_raw(m["id"].as_str().unwrap())).unwrap();
        let token = raw
            .lines()
            .find_map(|l| l.strip_prefix("X-Token: "))
            .expect("token header")
            .to_string();
        *tokens.entry(token).or_default() += 1;
    }
    let dups: Vec<_> = tokens.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated: {dups:?}");
    for (token, id) in &acked {
        assert_eq!(tokens.get(token), Some(&1), "{token} ({id}) not exactly once");
    }
    println!("acknowledged {} messages, {} in the queue after restart, 0 lost, 0 duplicated", acked.len(), q.len());
    s.stop();
}
