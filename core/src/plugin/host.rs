//! The host capabilities a plugin may be granted: log, config, clock, kv,
//! dns, body, files and mail-auth (its machinery is in `mail_auth`). Each
//! checks its grant first; an ungranted call traps, which ends the call
//! with a "refused" fault and the step's on_error. Only dns and mail-auth
//! wait, so only they are async (a sync host call costs less).
//!
//! The two reads of bulk data, `body.read` and `files.read`, are linked by
//! hand ([`link_reads`]) rather than through bindgen's traits, whose
//! `Vec<u8>` result made a copy of every chunk before wasmtime copied it
//! into the guest: they hand wasmtime a `bytes::Bytes` view of the host's
//! one copy instead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::Linker;
use wasmtime::{Result, StoreContextMut};

use super::weir::plugin::{clock, config, dns, kv, log, mail_auth, types};
use super::{PluginState, INTERFACE_VERSION};
use crate::dns::DnsError;
use crate::policy::types::Grant;

impl types::Host for PluginState {}

impl log::Host for PluginState {
    fn write(&mut self, level: log::Level, message: String) -> Result<()> {
        self.require(Grant::Log)?;
        let name = &self.plugin.name;
        let message: String = message.chars().take(4096).collect();
        match level {
            log::Level::Debug => tracing::debug!(plugin = %name, "{message}"),
            log::Level::Info => tracing::info!(plugin = %name, "{message}"),
            log::Level::Warn => tracing::warn!(plugin = %name, "{message}"),
            log::Level::Error => tracing::error!(plugin = %name, "{message}"),
        }
        Ok(())
    }
}

impl config::Host for PluginState {
    fn get(&mut self) -> Result<String> {
        self.require(Grant::Config)?;
        Ok(self.config_json.to_string())
    }
}

impl clock::Host for PluginState {
    fn now_ms(&mut self) -> Result<u64> {
        self.require(Grant::Clock)?;
        Ok(crate::queue::id::now_ms())
    }
}

impl PluginState {
    fn store(&mut self) -> Result<crate::plugin::kv::Kv> {
        self.require(Grant::Kv)?;
        self.services
            .kv
            .clone()
            .ok_or_else(|| wasmtime::Error::msg("the kv store is not available while checking a policy"))
    }
}

impl kv::Host for PluginState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        Ok(self.store()?.get(&self.plugin.name, &key))
    }
    fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<u32>) -> Result<()> {
        self.store()?.set(&self.plugin.name, &key, &value, ttl);
        Ok(())
    }
    fn incr(&mut self, key: String, delta: i64, ttl: Option<u32>) -> Result<i64> {
        Ok(self.store()?.incr(&self.plugin.name, &key, delta, ttl))
    }
    fn delete(&mut self, key: String) -> Result<()> {
        self.store()?.delete(&self.plugin.name, &key);
        Ok(())
    }
}

fn dns_error(e: DnsError) -> String {
    match e {
        DnsError::NoSuchDomain => "nxdomain".into(),
        DnsError::NoRecords => "nodata".into(),
        DnsError::Temporary(m) => format!("temporary: {m}"),
    }
}

async fn budgeted<T>(budget: Duration, f: impl std::future::Future<Output = Result<T, DnsError>>) -> Result<T, String> {
    match tokio::time::timeout(budget, f).await {
        Ok(r) => r.map_err(dns_error),
        Err(_) => Err(format!("temporary: no answer within {budget:?}")),
    }
}

impl dns::Host for PluginState {
    async fn lookup_a(&mut self, name: String) -> Result<Result<Vec<String>, String>> {
        self.require(Grant::Dns)?;
        let (d, b) = (self.services.dns.clone(), self.wait_budget()?);
        Ok(budgeted(b, async move { d.a(&name).await }).await)
    }
    async fn lookup_aaaa(&mut self, name: String) -> Result<Result<Vec<String>, String>> {
        self.require(Grant::Dns)?;
        let (d, b) = (self.services.dns.clone(), self.wait_budget()?);
        Ok(budgeted(b, async move { d.aaaa(&name).await }).await)
    }
    async fn lookup_mx(&mut self, name: String) -> Result<Result<Vec<(u16, String)>, String>> {
        self.require(Grant::Dns)?;
        let (d, b) = (self.services.dns.clone(), self.wait_budget()?);
        Ok(budgeted(b, async move { d.mx(&name).await }).await)
    }
    async fn lookup_txt(&mut self, name: String) -> Result<Result<Vec<String>, String>> {
        self.require(Grant::Dns)?;
        let (d, b) = (self.services.dns.clone(), self.wait_budget()?);
        Ok(budgeted(b, async move { d.txt(&name).await }).await)
    }
    async fn lookup_ptr(&mut self, ip: String) -> Result<Result<Vec<String>, String>> {
        self.require(Grant::Dns)?;
        let (d, b) = (self.services.dns.clone(), self.wait_budget()?);
        Ok(budgeted(b, async move { d.ptr(&ip).await }).await)
    }
}

/// Links `body.read` and `files.read` (see the module's doc).
pub(super) fn link_reads(linker: &mut Linker<PluginState>) -> Result<()> {
    linker
        .instance(&format!("weir:plugin/body@{INTERFACE_VERSION}"))?
        .func_wrap("read", |mut store: StoreContextMut<'_, PluginState>, (offset, len): (u64, u32)| {
            Ok((store.data_mut().body_chunk(offset, len)?,))
        })?;
    linker
        .instance(&format!("weir:plugin/files@{INTERFACE_VERSION}"))?
        .func_wrap("read", |mut store: StoreContextMut<'_, PluginState>, (name,): (String,)| {
            Ok((store.data_mut().file(&name)?,))
        })?;
    Ok(())
}

/// The octets of a `total`-octet message that `body.read(offset, len)`
/// gives: at most 1 MiB, always within the message (empty past its end).
fn chunk(total: usize, offset: u64, len: u32) -> std::ops::Range<usize> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let end = start.saturating_add(len.min(1 << 20) as usize).min(total);
    start..end
}

/// The message the host keeps one copy of, as `Bytes` sees it.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PluginState {
    /// body.read: up to `len` octets (at most 1 MiB) from `offset`, fewer
    /// at the end of the message, none past it or outside data and route.
    fn body_chunk(&mut self, offset: u64, len: u32) -> Result<Bytes> {
        self.require(Grant::Body)?;
        let Some(b) = &self.body else {
            return Ok(Bytes::new());
        };
        Ok(Bytes::from_owner(Shared(b.clone())).slice(chunk(b.len(), offset, len)))
    }

    /// files.read: the whole file declared under `name`.
    fn file(&mut self, name: &str) -> Result<Result<Bytes, String>> {
        self.require(Grant::Files)?;
        Ok(match self.plugin.files.get(name) {
            Some(bytes) => Ok(bytes.clone()),
            None => Err(format!("no file named {name:?} is declared under this plugin's files:")),
        })
    }
}

impl PluginState {
    fn message(&mut self) -> Result<Option<Arc<Vec<u8>>>> {
        self.require(Grant::MailAuth)?;
        Ok(self.body.clone())
    }
}

impl mail_auth::Host for PluginState {
    async fn spf(&mut self, ip: String, helo: String, mail_from: String) -> Result<Result<mail_auth::SpfOutput, String>> {
        self.require(Grant::MailAuth)?;
        let budget = self.wait_budget()?;
        let s = self.services.clone();
        Ok(s.mail_auth.spf(&ip, &helo, &mail_from, &s.hostname, budget).await)
    }
    async fn verify_message(&mut self, checks: mail_auth::MessageChecks) -> Result<Result<mail_auth::MessageAuth, String>> {
        let Some(msg) = self.message()? else {
            return Ok(Err("there is no message before the data stage".into()));
        };
        let budget = self.wait_budget()?;
        let s = self.services.clone();
        Ok(s.mail_auth.verify_message(&msg, &checks, budget).await)
    }
    async fn dkim_sign(&mut self, request: mail_auth::SignRequest) -> Result<Result<String, String>> {
        let Some(msg) = self.message()? else {
            return Ok(Err("there is no message before the data stage".into()));
        };
        Ok(self.services.mail_auth.dkim_sign(&msg, &request))
    }
}

#[cfg(test)]
mod tests {
    use super::chunk;

    #[test]
    fn a_body_chunk_stays_within_the_message_and_one_mib() {
        assert_eq!(chunk(100, 0, 10), 0..10);
        assert_eq!(chunk(100, 95, 10), 95..100, "fewer at the end");
        assert_eq!(chunk(100, 100, 10), 100..100, "none at the end");
        assert_eq!(chunk(100, 500, 10), 100..100, "none past it");
        assert_eq!(chunk(100, u64::MAX, u32::MAX), 100..100);
        assert_eq!(chunk(100, 7, 0), 7..7);
        assert_eq!(chunk(3 << 20, 1, u32::MAX), 1..(1 + (1 << 20)), "at most 1 MiB a call");
        assert_eq!(chunk(0, 0, 1), 0..0);
    }
}
