//! SPF (RFC 7208): check_host() with strict record syntax, macro
//! expansion, the DNS lookup and void-lookup limits, and exp= explanations,
//! over the host's resolver. Weir evaluates SPF itself rather than through
//! mail-auth 0.13, whose lenient parser gives a pass for records RFC 7208
//! calls a permerror (`ip4:…/33`, `ip6:::/0` for an IPv4 client, several
//! SPF records); the RFC 7208 test suite in tests/mail_auth.rs holds this
//! module to every scenario.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

use crate::dns::{Dns, DnsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// The domain whose policy was checked.
    pub domain: String,
    /// The expanded exp= text of a fail, when the domain publishes one.
    pub explanation: Option<String>,
}

/// RFC 7208 4.6.4: at most 10 terms that cause DNS lookups.
const MAX_LOOKUPS: u32 = 10;
/// RFC 7208 4.6.4: at most 2 lookups that find nothing.
const MAX_VOID: u32 = 2;
/// RFC 7208 4.6.4: at most 10 MX or PTR names looked at.
const MAX_NAMES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

#[derive(Debug, Default)]
struct Record {
    terms: Vec<(Qualifier, Mechanism)>,
    redirect: Option<String>,
    exp: Option<String>,
}

/// A syntax error: the record is a permerror.
#[derive(Debug)]
struct Syntax;

/// Whether `s` starts an SPF version 1 record ("v=spf1" then a space or the end).
fn is_spf1(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

fn cidr(s: &str, max: u8) -> Result<u8, Syntax> {
    // ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT): no leading zeros.
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|c| c.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(Syntax);
    }
    let n: u8 = s.parse().map_err(|_| Syntax)?;
    if n > max {
        return Err(Syntax);
    }
    Ok(n)
}

/// Splits "domain/24//64" into the domain part and the two prefix lengths.
/// A '/' followed by something other than digits belongs to the domain.
fn dual_cidr(s: &str) -> Result<(&str, u8, u8), Syntax> {
    let digits_after = |p: usize, skip: usize| s[p + skip..].bytes().all(|c| c.is_ascii_digit());
    let (rest, v6) = match s.rfind("//") {
        Some(p) if digits_after(p, 2) => (&s[..p], cidr(&s[p + 2..], 128)?),
        _ => (s, 128),
    };
    match rest.rfind('/') {
        Some(p) if rest[p + 1..].bytes().all(|c| c.is_ascii_digit()) => Ok((&rest[..p], cidr(&rest[p + 1..], 32)?, v6)),
        _ => Ok((rest, 32, v6)),
    }
}

fn is_macro_letter(c: u8, in_exp: bool) -> bool {
    matches!(c.to_ascii_lowercase(), b's' | b'l' | b'o' | b'd' | b'i' | b'p' | b'h' | b'v')
        || (in_exp && matches!(c.to_ascii_lowercase(), b'c' | b'r' | b't'))
}

/// Checks a macro-string (RFC 7208 7.1).
fn check_macro_string(s: &str, in_exp: bool) -> Result<(), Syntax> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            match b.get(i + 1) {
                Some(b'%' | b'_' | b'-') => i += 2,
                Some(b'{') => {
                    let end = s[i..].find('}').ok_or(Syntax)? + i;
                    let inner = &b[i + 2..end];
                    let (&letter, rest) = inner.split_first().ok_or(Syntax)?;
                    if !is_macro_letter(letter, in_exp) {
                        return Err(Syntax);
                    }
                    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
                    if digits > 0 && rest[..digits].iter().all(|c| *c == b'0') {
                        return Err(Syntax);
                    }
                    let mut rest = &rest[digits..];
                    if rest.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'r')) {
                        rest = &rest[1..];
                    }
                    if !rest.iter().all(|c| b".-+,/_=".contains(c)) {
                        return Err(Syntax);
                    }
                    i = end + 1;
                }
                _ => return Err(Syntax),
            }
        } else if in_exp {
            if !(c == b' ' || (0x21..=0x7e).contains(&c)) {
                return Err(Syntax);
            }
            i += 1;
        } else {
            if !(0x21..=0x7e).contains(&c) {
                return Err(Syntax);
            }
            i += 1;
        }
    }
    Ok(())
}

fn is_toplabel(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().any(|c| c.is_ascii_alphabetic())
}

/// domain-spec = macro-string domain-end;
/// domain-end = ( "." toplabel [ "." ] ) / macro-expand
fn check_domain_spec(s: &str) -> Result<(), Syntax> {
    check_macro_string(s, false)?;
    if s.ends_with('}') {
        return Ok(());
    }
    let t = s.strip_suffix('.').unwrap_or(s);
    let (head, top) = t.rsplit_once('.').ok_or(Syntax)?;
    if head.is_empty() && !s.contains('%') || !is_toplabel(top) {
        return Err(Syntax);
    }
    Ok(())
}

fn is_modifier_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn parse_record(text: &str) -> Result<Record, Syntax> {
    let mut rec = Record::default();
    // Terms are separated by spaces only (RFC 7208 4.6.1).
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        let (q, body) = match term.as_bytes()[0] {
            b'+' => (Some(Qualifier::Pass), &term[1..]),
            b'-' => (Some(Qualifier::Fail), &term[1..]),
            b'~' => (Some(Qualifier::SoftFail), &term[1..]),
            b'?' => (Some(Qualifier::Neutral), &term[1..]),
            _ => (None, term),
        };
        let name_end = body.find([':', '/', '=']).unwrap_or(body.len());
        let name = body[..name_end].to_ascii_lowercase();
        let rest = &body[name_end..];
        if rest.starts_with('=') {
            if q.is_some() || !is_modifier_name(&name) {
                return Err(Syntax);
            }
            let value = &rest[1..];
            match name.as_str() {
                "redirect" => {
                    check_domain_spec(value)?;
                    if rec.redirect.replace(value.to_string()).is_some() {
                        return Err(Syntax);
                    }
                }
                "exp" => {
                    check_domain_spec(value)?;
                    if rec.exp.replace(value.to_string()).is_some() {
                        return Err(Syntax);
                    }
                }
                _ => check_macro_string(value, false)?,
            }
            continue;
        }
        let q = q.unwrap_or(Qualifier::Pass);
        let target = |rest: &str| -> Result<Option<String>, Syntax> {
            match rest.strip_prefix(':') {
                Some(d) => {
                    check_domain_spec(d)?;
                    Ok(Some(d.to_string()))
                }
                None if rest.is_empty() => Ok(None),
                None => Err(Syntax),
            }
        };
        let required = |rest: &str| -> Result<String, Syntax> { target(rest)?.ok_or(Syntax) };
        let mech = match name.as_str() {
            "all" if rest.is_empty() => Mechanism::All,
            "include" => Mechanism::Include(required(rest)?),
            "exists" => Mechanism::Exists(required(rest)?),
            "ptr" => Mechanism::Ptr(target(rest)?),
            "a" | "mx" => {
                // The domain may itself contain '/', so CIDRs are taken from the end.
                let (d, v4, v6) = dual_cidr(rest)?;
                let d = target(d)?;
                if name == "a" {
                    Mechanism::A(d, v4, v6)
                } else {
                    Mechanism::Mx(d, v4, v6)
                }
            }
            "ip4" => {
                let v = rest.strip_prefix(':').ok_or(Syntax)?;
                let (addr, len) = match v.split_once('/') {
                    Some((a, l)) => (a, cidr(l, 32)?),
                    None => (v, 32),
                };
                // Only dotted quads; no leading "::ffff:" forms.
                if addr.split('.').count() != 4 {
                    return Err(Syntax);
                }
                Mechanism::Ip4(addr.parse().map_err(|_| Syntax)?, len)
            }
            "ip6" => {
                let v = rest.strip_prefix(':').ok_or(Syntax)?;
                let (addr, len) = match v.split_once('/') {
                    Some((a, l)) => (a, cidr(l, 128)?),
                    None => (v, 128),
                };
                Mechanism::Ip6(addr.parse().map_err(|_| Syntax)?, len)
            }
            _ => return Err(Syntax),
        };
        rec.terms.push((q, mech));
    }
    Ok(rec)
}

fn in_net4(a: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    (u32::from(a) & mask) == (u32::from(net) & mask)
}

fn in_net6(a: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    (u128::from(a) & mask) == (u128::from(net) & mask)
}

fn ip_matches(ip: IpAddr, candidate: IpAddr, v4: u8, v6: u8) -> bool {
    match (ip, candidate) {
        (IpAddr::V4(a), IpAddr::V4(b)) => in_net4(a, b, v4),
        (IpAddr::V6(a), IpAddr::V6(b)) => in_net6(a, b, v6),
        _ => false,
    }
}

/// Whether `name` is a subdomain of `parent` (both lowercase).
fn is_under(name: &str, parent: &str) -> bool {
    name.strip_suffix(parent).is_some_and(|head| head.ends_with('.'))
}

/// A name SPF may look up: labels of 1 to 63 octets, at most 253 in all.
fn valid_target(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty() && d.len() <= 253 && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// RFC 7208 4.3: a domain that is not a multi-label name (or a literal)
/// has no SPF record to check.
fn valid_identity(d: &str) -> bool {
    valid_target(d) && d.trim_end_matches('.').contains('.') && !d.starts_with('[')
}

struct Check<'a> {
    dns: &'a Dns,
    ip: IpAddr,
    /// The full sender (local@domain) and its parts.
    sender: String,
    local: String,
    sender_domain: String,
    helo: String,
    receiver: String,
    lookups: u32,
    voids: u32,
}

/// The outcome of one check_host() level.
type Eval = (SpfResult, Option<String>);

enum Stop {
    Temp,
    Perm,
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dotted_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let hex: String = a.octets().iter().map(|o| format!("{o:02X}")).collect();
            hex.chars().map(String::from).collect::<Vec<_>>().join(".")
        }
    }
}

impl Check<'_> {
    fn count_lookup(&mut self) -> Result<(), Stop> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            Err(Stop::Perm)
        } else {
            Ok(())
        }
    }

    fn void(&mut self) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID {
            Err(Stop::Perm)
        } else {
            Ok(())
        }
    }

    /// RFC 7208 5.5: names of the client address (at most 10) that `keep`
    /// accepts and whose addresses include it. DNS errors skip a name.
    async fn validated_names(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let names = self.dns.ptr(&self.ip.to_string()).await.unwrap_or_default();
        let mut valid = Vec::new();
        for name in names.into_iter().take(MAX_NAMES) {
            let n = name.trim_end_matches('.').to_ascii_lowercase();
            if keep(&n) && self.addresses(&n).await.is_ok_and(|ips| ips.contains(&self.ip)) {
                valid.push(n);
            }
        }
        valid
    }

    /// %{p}: a validated name of the client address, preferring `domain`
    /// itself, then its subdomains; "unknown" when there is none.
    async fn validated_name(&self, domain: &str) -> String {
        let d = domain.to_ascii_lowercase();
        let valid = self.validated_names(|_| true).await;
        valid
            .iter()
            .find(|n| **n == d)
            .or_else(|| valid.iter().find(|n| is_under(n, &d)))
            .or(valid.first())
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    }

    async fn expand(&self, s: &str, domain: &str, in_exp: bool) -> Result<String, Stop> {
        let b = s.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                let next = s[i..].find('%').map_or(s.len(), |p| p + i);
                out.push_str(&s[i..next]);
                i = next;
                continue;
            }
            match b.get(i + 1) {
                Some(b'%') => out.push('%'),
                Some(b'_') => out.push(' '),
                Some(b'-') => out.push_str("%20"),
                Some(b'{') => {
                    let end = s[i..].find('}').ok_or(Stop::Perm)? + i;
                    let inner = &s[i + 2..end];
                    let letter = *inner.as_bytes().first().ok_or(Stop::Perm)?;
                    let value = match letter.to_ascii_lowercase() {
                        b's' => self.sender.clone(),
                        b'l' => self.local.clone(),
                        b'o' => self.sender_domain.clone(),
                        b'd' => domain.to_string(),
                        b'i' => dotted_ip(self.ip),
                        b'p' => self.validated_name(domain).await,
                        b'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
                        b'h' => self.helo.clone(),
                        b'c' if in_exp => self.ip.to_string(),
                        b'r' if in_exp => self.receiver.clone(),
                        b't' if in_exp => crate::queue::id::now_ms().saturating_div(1000).to_string(),
                        _ => return Err(Stop::Perm),
                    };
                    let rest = &inner[1..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let rest = &rest[digits.len()..];
                    let reverse = rest.starts_with(['r', 'R']);
                    let delims = if reverse { &rest[1..] } else { rest };
                    let delims: Vec<char> = if delims.is_empty() { vec!['.'] } else { delims.chars().collect() };
                    let mut parts: Vec<&str> = value.split(|c| delims.contains(&c)).collect();
                    if reverse {
                        parts.reverse();
                    }
                    if !digits.is_empty() {
                        let n: usize = digits.parse().unwrap_or(usize::MAX);
                        if n == 0 {
                            return Err(Stop::Perm);
                        }
                        if parts.len() > n {
                            parts = parts.split_off(parts.len() - n);
                        }
                    }
                    let joined = parts.join(".");
                    if letter.is_ascii_uppercase() {
                        out.push_str(&url_escape(&joined));
                    } else {
                        out.push_str(&joined);
                    }
                    i = end + 1;
                    continue;
                }
                _ => return Err(Stop::Perm),
            }
            i += 2;
        }
        Ok(out)
    }

    /// A target domain: expanded, then shortened from the left to 253 octets.
    async fn target(&self, spec: &Option<String>, domain: &str) -> Result<String, Stop> {
        let Some(spec) = spec else {
            return Ok(domain.to_string());
        };
        let mut d = self.expand(spec, domain, false).await?;
        while d.trim_end_matches('.').len() > 253 {
            match d.find('.') {
                Some(p) => d = d[p + 1..].to_string(),
                None => break,
            }
        }
        Ok(d.trim_end_matches('.').to_string())
    }

    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let parse = |v: Vec<String>| v.iter().filter_map(|s| s.parse().ok()).collect::<Vec<IpAddr>>();
        if self.ip.is_ipv4() {
            self.dns.a(name).await.map(parse)
        } else {
            self.dns.aaaa(name).await.map(parse)
        }
    }

    /// Addresses of a name for a/mx: errors become temperror, nothing found counts as void.
    async fn lookup_addresses(&mut self, name: &str) -> Result<Vec<IpAddr>, Stop> {
        if !valid_target(name) {
            self.void()?;
            return Ok(Vec::new());
        }
        match self.addresses(name).await {
            Ok(v) if v.is_empty() => {
                self.void()?;
                Ok(v)
            }
            Ok(v) => Ok(v),
            Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {
                self.void()?;
                Ok(Vec::new())
            }
            Err(DnsError::Temporary(_)) => Err(Stop::Temp),
        }
    }

    /// The SPF record of a domain: None when there is none.
    async fn record(&mut self, domain: &str) -> Result<Option<Record>, Stop> {
        if !valid_target(domain) {
            return Ok(None);
        }
        let texts = match self.dns.txt(domain).await {
            Ok(t) => t,
            Err(DnsError::NoSuchDomain | DnsError::NoRecords) => return Ok(None),
            Err(DnsError::Temporary(_)) => return Err(Stop::Temp),
        };
        let spf: Vec<&String> = texts.iter().filter(|t| is_spf1(t)).collect();
        match spf.as_slice() {
            [] => Ok(None),
            [one] => parse_record(one).map(Some).map_err(|_| Stop::Perm),
            _ => Err(Stop::Perm),
        }
    }

    fn check_host<'s>(&'s mut self, domain: String) -> Pin<Box<dyn Future<Output = Eval> + Send + 's>> {
        Box::pin(async move {
            let rec = match self.record(&domain).await {
                Ok(Some(r)) => r,
                Ok(None) => return (SpfResult::None, None),
                Err(Stop::Temp) => return (SpfResult::TempError, None),
                Err(Stop::Perm) => return (SpfResult::PermError, None),
            };
            match self.evaluate(&rec, &domain).await {
                Ok(Some(q)) => {
                    let result = q.result();
                    let exp = if result == SpfResult::Fail { self.explain(&rec, &domain).await } else { None };
                    (result, exp)
                }
                Ok(None) => match &rec.redirect {
                    Some(spec) => {
                        if self.count_lookup().is_err() {
                            return (SpfResult::PermError, None);
                        }
                        let target = match self.target(&Some(spec.clone()), &domain).await {
                            Ok(t) => t,
                            Err(_) => return (SpfResult::PermError, None),
                        };
                        if !valid_target(&target) {
                            return (SpfResult::PermError, None);
                        }
                        match self.check_host(target).await {
                            (SpfResult::None, _) => (SpfResult::PermError, None),
                            other => other,
                        }
                    }
                    None => (SpfResult::Neutral, None),
                },
                Err(Stop::Temp) => (SpfResult::TempError, None),
                Err(Stop::Perm) => (SpfResult::PermError, None),
            }
        })
    }

    /// The qualifier of the first mechanism that matches, if any.
    async fn evaluate(&mut self, rec: &Record, domain: &str) -> Result<Option<Qualifier>, Stop> {
        for (q, mech) in &rec.terms {
            let matched = match mech {
                Mechanism::All => true,
                Mechanism::Ip4(net, len) => matches!(self.ip, IpAddr::V4(a) if in_net4(a, *net, *len)),
                Mechanism::Ip6(net, len) => matches!(self.ip, IpAddr::V6(a) if in_net6(a, *net, *len)),
                Mechanism::A(spec, v4, v6) => {
                    self.count_lookup()?;
                    let t = self.target(spec, domain).await?;
                    let ips = self.lookup_addresses(&t).await?;
                    ips.iter().any(|c| ip_matches(self.ip, *c, *v4, *v6))
                }
                Mechanism::Mx(spec, v4, v6) => {
                    self.count_lookup()?;
                    let t = self.target(spec, domain).await?;
                    let mxs = if valid_target(&t) {
                        match self.dns.mx(&t).await {
                            Ok(m) => m,
                            Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {
                                self.void()?;
                                Vec::new()
                            }
                            Err(DnsError::Temporary(_)) => return Err(Stop::Temp),
                        }
                    } else {
                        self.void()?;
                        Vec::new()
                    };
                    if mxs.len() > MAX_NAMES {
                        return Err(Stop::Perm);
                    }
                    let mut hit = false;
                    for (_, host) in mxs {
                        if host.is_empty() {
                            continue;
                        }
                        let ips = self.lookup_addresses(&host).await?;
                        if ips.iter().any(|c| ip_matches(self.ip, *c, *v4, *v6)) {
                            hit = true;
                            break;
                        }
                    }
                    hit
                }
                Mechanism::Ptr(spec) => {
                    self.count_lookup()?;
                    let t = self.target(spec, domain).await?.to_ascii_lowercase();
                    !self.validated_names(|n| n == t || is_under(n, &t)).await.is_empty()
                }
                Mechanism::Exists(spec) => {
                    self.count_lookup()?;
                    let t = self.target(&Some(spec.clone()), domain).await?;
                    if !valid_target(&t) {
                        self.void()?;
                        false
                    } else {
                        match self.dns.a(&t).await {
                            Ok(v) if !v.is_empty() => true,
                            Ok(_) | Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {
                                self.void()?;
                                false
                            }
                            Err(DnsError::Temporary(_)) => return Err(Stop::Temp),
                        }
                    }
                }
                Mechanism::Include(spec) => {
                    self.count_lookup()?;
                    let t = self.target(&Some(spec.clone()), domain).await?;
                    if !valid_target(&t) {
                        return Err(Stop::Perm);
                    }
                    match self.check_host(t).await.0 {
                        SpfResult::Pass => true,
                        SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => false,
                        SpfResult::TempError => return Err(Stop::Temp),
                        SpfResult::PermError | SpfResult::None => return Err(Stop::Perm),
                    }
                }
            };
            if matched {
                return Ok(Some(*q));
            }
        }
        Ok(None)
    }

    /// RFC 7208 6.2: the exp= text; any problem gives no explanation.
    async fn explain(&mut self, rec: &Record, domain: &str) -> Option<String> {
        let spec = rec.exp.clone()?;
        let target = self.target(&Some(spec), domain).await.ok()?;
        if !valid_target(&target) {
            return None;
        }
        let texts = self.dns.txt(&target).await.ok()?;
        let [text] = texts.as_slice() else {
            return None;
        };
        if !text.is_ascii() || check_macro_string(text, true).is_err() {
            return None;
        }
        self.expand(text, domain, true).await.ok()
    }
}

/// check_host() for the MAIL FROM identity, or for the HELO identity when
/// `mail_from` is empty (RFC 7208 2.3, 2.4). `receiver` is this server's
/// name (%{r}).
pub async fn check(dns: &Dns, ip: IpAddr, helo: &str, mail_from: &str, receiver: &str) -> SpfOutcome {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let (local, domain) = match mail_from.rsplit_once('@') {
        Some((l, d)) if !mail_from.is_empty() => (if l.is_empty() { "postmaster" } else { l }, d),
        _ if mail_from.is_empty() => ("postmaster", helo),
        _ => ("postmaster", mail_from),
    };
    let domain = domain.trim_end_matches('.').to_string();
    if !valid_identity(&domain) {
        return SpfOutcome { result: SpfResult::None, domain, explanation: None };
    }
    let mut c = Check {
        dns,
        ip,
        sender: format!("{local}@{domain}"),
        local: local.to_string(),
        sender_domain: domain.clone(),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
        lookups: 0,
        voids: 0,
    };
    let (result, explanation) = c.check_host(domain.clone()).await;
    SpfOutcome { result, domain, explanation }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_syntax() {
        assert!(parse_record("v=spf1 ip4:192.0.2.0/24 -all").is_ok());
        assert!(parse_record("v=spf1 ip4:192.0.2.0/33 -all").is_err());
        assert!(parse_record("v=spf1 ip4:192.0.2.0/032 -all").is_err());
        assert!(parse_record("v=spf1 a:foo:bar/baz.example.com").is_ok());
        assert!(parse_record("v=spf1 a:museum").is_err());
        assert!(parse_record("v=spf1 a:example.123").is_err());
        assert!(parse_record("v=spf1 redirect=a.example redirect=b.example").is_err());
        assert!(parse_record("v=spf1 =foo").is_err());
        assert!(parse_record("v=spf1 a/24//64 mx:%{d}/24").is_ok());
        assert!(parse_record("v=spf1 exists:%{c}.example.com").is_err());
        assert!(is_spf1("V=SPF1") && !is_spf1("v=spf10"));
    }

    #[test]
    fn cidr_matching() {
        assert!(in_net4("192.0.2.77".parse().unwrap(), "192.0.2.0".parse().unwrap(), 24));
        assert!(!in_net4("192.0.3.1".parse().unwrap(), "192.0.2.0".parse().unwrap(), 24));
        assert!(in_net6("2001:db8::1".parse().unwrap(), "2001:db8::".parse().unwrap(), 32));
        assert!(in_net4("1.2.3.4".parse().unwrap(), "9.9.9.9".parse().unwrap(), 0));
    }
}
