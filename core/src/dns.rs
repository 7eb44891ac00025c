//! DNS for the host: MX, A/AAAA (and later TXT/PTR for plugins) through
//! hickory's caching resolver. Name servers come from `dns.servers`, or the
//! system's resolv.conf; tests point `dns.servers` at a resolver serving a
//! test zone on loopback.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Result};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

use crate::config::DnsConfig;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN).
    NoSuchDomain,
    /// The name exists but has no records of that type.
    NoRecords,
    /// Anything that may go away on its own (timeouts, SERVFAIL).
    Temporary(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NoSuchDomain => write!(f, "no such domain"),
            DnsError::NoRecords => write!(f, "no records"),
            DnsError::Temporary(m) => write!(f, "temporary DNS failure: {m}"),
        }
    }
}

/// A name's labels as text, without presentation-format escapes.
fn name_text(n: &Name) -> String {
    n.iter().map(String::from_utf8_lossy).collect::<Vec<_>>().join(".")
}

pub struct Dns {
    resolver: TokioResolver,
}

fn classify(e: hickory_resolver::net::NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NoSuchDomain
    } else if e.is_no_records_found() {
        DnsError::NoRecords
    } else {
        DnsError::Temporary(e.to_string())
    }
}

/// A query name. Names that are not host names (SPF macros can produce
/// labels with spaces or '%') are sent as the octets they are.
fn fqdn(name: &str) -> Result<Name, DnsError> {
    let name = name.trim_end_matches('.');
    if let Ok(mut n) = Name::from_utf8(name) {
        n.set_fqdn(true);
        return Ok(n);
    }
    Name::from_labels(name.split('.').map(str::as_bytes))
        .map(|mut n| {
            n.set_fqdn(true);
            n
        })
        .map_err(|_| DnsError::NoSuchDomain)
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Result<Dns> {
        let mut builder = if cfg.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| anyhow!("reading the system DNS configuration: {e}"))?
        } else {
            let mut servers = Vec::new();
            for s in &cfg.servers {
                let addr: SocketAddr = s
                    .parse()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| anyhow!("dns.servers: {s:?} is not IP or IP:PORT"))?;
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                servers.push(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        if !cfg.servers.is_empty() {
            // Configured servers are the only source: no hosts file.
            opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        }
        opts.timeout = cfg.timeout.unwrap_or(Duration::from_secs(5));
        opts.attempts = 2;
        opts.cache_size = 4096;
        let resolver = builder.build().map_err(|e| anyhow!("building the DNS resolver: {e}"))?;
        Ok(Dns { resolver })
    }

    /// The resolver itself, for mail-auth.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// MX records as (preference, exchange without the trailing dot), lowest first.
    pub async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let lookup = self.resolver.mx_lookup(fqdn(domain)?).await.map_err(classify)?;
        let mut out: Vec<(u16, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((
                    mx.preference,
                    name_text(&mx.exchange).to_ascii_lowercase(),
                )),
                _ => None,
            })
            .collect();
        if out.is_empty() {
            return Err(DnsError::NoRecords);
        }
        out.sort();
        Ok(out)
    }

    pub async fn a(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let l = self.resolver.ipv4_lookup(fqdn(name)?).await.map_err(classify)?;
        Ok(l.answers().iter().filter_map(|r| match &r.data { RData::A(a) => Some(a.0.to_string()), _ => None }).collect())
    }

    pub async fn aaaa(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let l = self.resolver.ipv6_lookup(fqdn(name)?).await.map_err(classify)?;
        Ok(l.answers().iter().filter_map(|r| match &r.data { RData::AAAA(a) => Some(a.0.to_string()), _ => None }).collect())
    }

    /// TXT records, each one's strings joined.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let l = self.resolver.txt_lookup(fqdn(name)?).await.map_err(classify)?;
        Ok(l.answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t.txt_data.iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect::<String>()),
                _ => None,
            })
            .collect())
    }

    pub async fn ptr(&self, ip: &str) -> Result<Vec<String>, DnsError> {
        let ip: IpAddr = ip.parse().map_err(|_| DnsError::Temporary(format!("{ip:?} is not an IP address")))?;
        let l = self.resolver.reverse_lookup(ip).await.map_err(classify)?;
        Ok(l.answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(name_text(&p.0)),
                _ => None,
            })
            .collect())
    }

    /// A and AAAA addresses of a host (an IP literal is returned as is).
    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let lookup = self.resolver.lookup_ip(fqdn(host)?).await.map_err(classify)?;
        let ips: Vec<IpAddr> = lookup.iter().collect();
        if ips.is_empty() {
            Err(DnsError::NoRecords)
        } else {
            Ok(ips)
        }
    }
}
