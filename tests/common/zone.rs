//! A small authoritative DNS server for tests: answers UDP queries on a
//! loopback port from an in-memory zone (A, AAAA, MX, TXT, PTR, CNAME),
//! with NXDOMAIN for unknown names, an empty answer for a known name
//! without records of the asked type, and no answer at all for names
//! marked `Timeout` (as the RFC 7208 suite's TIMEOUT entries want).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

#[derive(Debug, Clone)]
pub enum Rec {
    A(std::net::Ipv4Addr),
    Aaaa(std::net::Ipv6Addr),
    Mx(u16, String),
    /// One TXT record made of these character-strings.
    Txt(Vec<Vec<u8>>),
    Ptr(String),
    Cname(String),
    /// Queries for types this name has no records of are not answered.
    Timeout,
}

#[derive(Debug, Default, Clone)]
pub struct Zone {
    names: HashMap<String, Vec<Rec>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }
    /// Adds a record; a name with an empty list exists but has no records.
    pub fn add(&mut self, name: &str, rec: Rec) -> &mut Self {
        self.names.entry(key(name)).or_default().push(rec);
        self
    }
    pub fn touch(&mut self, name: &str) -> &mut Self {
        self.names.entry(key(name)).or_default();
        self
    }
    pub fn txt(&mut self, name: &str, text: &str) -> &mut Self {
        // Long values are split into 255-octet character-strings.
        let chunks = text.as_bytes().chunks(255).map(<[u8]>::to_vec).collect();
        self.add(name, Rec::Txt(chunks))
    }
    /// PTR for an address, under in-addr.arpa or ip6.arpa.
    pub fn ptr(&mut self, ip: IpAddr, target: &str) -> &mut Self {
        let name = Name::from(ip).to_ascii();
        self.add(&name, Rec::Ptr(target.to_string()))
    }
}

/// The zone key of a name from the wire: its labels as they are (names
/// in the SPF suite hold characters a presentation format would escape).
fn wire_key(name: &Name) -> String {
    name.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect::<Vec<_>>().join(".")
}

fn fqdn(n: &str) -> Option<Name> {
    let n = n.trim_end_matches('.');
    let mut name = Name::from_str(&format!("{n}.")).or_else(|_| Name::from_labels(n.split('.').map(str::as_bytes))).ok()?;
    name.set_fqdn(true);
    Some(name)
}

fn rdata(rec: &Rec, qtype: RecordType) -> Option<RData> {
    Some(match (rec, qtype) {
        (Rec::A(ip), RecordType::A) => RData::A(A(*ip)),
        (Rec::Aaaa(ip), RecordType::AAAA) => RData::AAAA(AAAA(*ip)),
        (Rec::Mx(p, n), RecordType::MX) => RData::MX(MX::new(*p, fqdn(n)?)),
        (Rec::Txt(parts), RecordType::TXT) => {
            let parts: Vec<&[u8]> = if parts.is_empty() { vec![b"".as_slice()] } else { parts.iter().map(Vec::as_slice).collect() };
            RData::TXT(TXT::from_bytes(parts))
        }
        (Rec::Ptr(n), RecordType::PTR) => RData::PTR(PTR(fqdn(n)?)),
        (Rec::Cname(n), RecordType::CNAME) => RData::CNAME(CNAME(fqdn(n)?)),
        _ => return None,
    })
}

/// Answers for (name, type), following CNAMEs a few steps. None: stay silent.
fn answer(zone: &Zone, qname: &Name, qtype: RecordType) -> Option<(ResponseCode, Vec<Record>)> {
    let mut out = Vec::new();
    let mut name = qname.clone();
    for _ in 0..8 {
        let Some(recs) = zone.names.get(&wire_key(&name)) else {
            return Some((if out.is_empty() { ResponseCode::NXDomain } else { ResponseCode::NoError }, out));
        };
        let found: Vec<Record> =
            recs.iter().filter_map(|r| rdata(r, qtype)).map(|d| Record::from_rdata(name.clone(), 300, d)).collect();
        if !found.is_empty() {
            out.extend(found);
            return Some((ResponseCode::NoError, out));
        }
        if let Some(Rec::Cname(target)) = recs.iter().find(|r| matches!(r, Rec::Cname(_))) {
            let t = fqdn(target)?;
            out.push(Record::from_rdata(name.clone(), 300, RData::CNAME(CNAME(t.clone()))));
            name = t;
            continue;
        }
        if recs.iter().any(|r| matches!(r, Rec::Timeout)) {
            return None;
        }
        return Some((ResponseCode::NoError, out));
    }
    Some((ResponseCode::ServFail, Vec::new()))
}

/// A running zone server; stops when dropped.
pub struct ZoneServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
}

impl ZoneServer {
    pub fn start(zone: Zone) -> ZoneServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("binding the test DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("socket timeout");
        let addr = sock.local_addr().expect("local address");
        let zone = Arc::new(Mutex::new(zone));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, s) = (zone.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                let Some(query) = q.queries.first().cloned() else { continue };
                let result = {
                    let zone = z.lock().unwrap_or_else(|p| p.into_inner());
                    answer(&zone, query.name(), query.query_type())
                };
                let Some((rcode, records)) = result else { continue };
                let mut resp = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                resp.metadata.authoritative = true;
                resp.metadata.recursion_desired = q.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                resp.metadata.response_code = rcode;
                resp.add_query(query);
                resp.add_answers(records);
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, peer);
                }
            }
        });
        ZoneServer { addr, zone, stop }
    }

    /// Changes the zone while running.
    pub fn edit(&self, f: impl FnOnce(&mut Zone)) {
        f(&mut self.zone.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl Drop for ZoneServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
