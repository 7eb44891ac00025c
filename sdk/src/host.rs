//! Host capabilities. In Weir each is granted per plugin in the policy
//! YAML; calling one that was not granted ends the call with a fault (the
//! step's `on_error` applies). In native tests they are answered by the
//! [`crate::testing::Harness`].

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::weir::plugin as w;

    pub fn log(level: Level, message: &str) {
        let l = match level {
            Level::Debug => w::log::Level::Debug,
            Level::Info => w::log::Level::Info,
            Level::Warn => w::log::Level::Warn,
            Level::Error => w::log::Level::Error,
        };
        w::log::write(l, message)
    }
    pub fn config() -> String {
        w::config::get()
    }
    pub fn now_ms() -> u64 {
        w::clock::now_ms()
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        w::kv::get(key)
    }
    pub fn kv_set(key: &str, value: &[u8], ttl: Option<u32>) {
        w::kv::set(key, value, ttl)
    }
    pub fn kv_incr(key: &str, delta: i64, ttl: Option<u32>) -> i64 {
        w::kv::incr(key, delta, ttl)
    }
    pub fn kv_delete(key: &str) {
        w::kv::delete(key)
    }
    pub fn dns_a(name: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_a(name)
    }
    pub fn dns_aaaa(name: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_aaaa(name)
    }
    pub fn dns_mx(name: &str) -> Result<Vec<(u16, String)>, String> {
        w::dns::lookup_mx(name)
    }
    pub fn dns_txt(name: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_txt(name)
    }
    pub fn dns_ptr(ip: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_ptr(ip)
    }
    pub fn body_read(offset: u64, len: u32) -> Vec<u8> {
        w::body::read(offset, len)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use crate::testing::with_host;

    pub fn log(level: Level, message: &str) {
        with_host(|h| h.logs.push((level, message.to_string())))
    }
    pub fn config() -> String {
        with_host(|h| h.config.clone())
    }
    pub fn now_ms() -> u64 {
        with_host(|h| h.now_ms)
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.kv.get(key).cloned())
    }
    pub fn kv_set(key: &str, value: &[u8], _ttl: Option<u32>) {
        with_host(|h| {
            h.kv.insert(key.to_string(), value.to_vec());
        })
    }
    pub fn kv_incr(key: &str, delta: i64, _ttl: Option<u32>) -> i64 {
        with_host(|h| {
            let cur = h
                .kv
                .get(key)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            let new = cur + delta;
            h.kv.insert(key.to_string(), new.to_string().into_bytes());
            new
        })
    }
    pub fn kv_delete(key: &str) {
        with_host(|h| {
            h.kv.remove(key);
        })
    }
    fn lookup<T: Clone>(table: &std::collections::HashMap<String, Result<Vec<T>, String>>, name: &str) -> Result<Vec<T>, String> {
        table.get(&name.to_ascii_lowercase()).cloned().unwrap_or_else(|| Err("nxdomain".into()))
    }
    pub fn dns_a(name: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_a, name))
    }
    pub fn dns_aaaa(name: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_aaaa, name))
    }
    pub fn dns_mx(name: &str) -> Result<Vec<(u16, String)>, String> {
        with_host(|h| lookup(&h.dns_mx, name))
    }
    pub fn dns_txt(name: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_txt, name))
    }
    pub fn dns_ptr(ip: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_ptr, ip))
    }
    pub fn body_read(offset: u64, len: u32) -> Vec<u8> {
        with_host(|h| {
            let start = (offset as usize).min(h.body.len());
            let end = start.saturating_add(len as usize).min(h.body.len());
            h.body[start..end].to_vec()
        })
    }
}

/// Writes to Weir's log, prefixed with the plugin's name (grant: `log`).
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// The plugin's `config:` block as JSON text (grant: `config`).
pub fn config_json() -> String {
    imp::config()
}

/// The plugin's `config:` block, deserialised (grant: `config`).
pub fn config<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    let text = imp::config();
    let text = if text.trim().is_empty() { "null".to_string() } else { text };
    serde_json::from_str(&text).map_err(|e| format!("plugin config: {e}"))
}

/// Milliseconds since the Unix epoch (grant: `clock`).
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// The plugin's private key-value store (grant: `kv`).
pub mod kv {
    pub fn get(key: &str) -> Option<Vec<u8>> {
        super::imp::kv_get(key)
    }
    pub fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) {
        super::imp::kv_set(key, value, ttl_seconds)
    }
    pub fn incr(key: &str, delta: i64, ttl_seconds: Option<u32>) -> i64 {
        super::imp::kv_incr(key, delta, ttl_seconds)
    }
    pub fn delete(key: &str) {
        super::imp::kv_delete(key)
    }
}

/// DNS through the host's resolver (grant: `dns`).
pub mod dns {
    pub fn a(name: &str) -> Result<Vec<String>, String> {
        super::imp::dns_a(name)
    }
    pub fn aaaa(name: &str) -> Result<Vec<String>, String> {
        super::imp::dns_aaaa(name)
    }
    pub fn mx(name: &str) -> Result<Vec<(u16, String)>, String> {
        super::imp::dns_mx(name)
    }
    pub fn txt(name: &str) -> Result<Vec<String>, String> {
        super::imp::dns_txt(name)
    }
    pub fn ptr(ip: &str) -> Result<Vec<String>, String> {
        super::imp::dns_ptr(ip)
    }
}

/// The message at data/route, in chunks (grant: `body`).
pub mod body {
    /// Up to `len` octets from `offset`; empty at the end.
    pub fn read(offset: u64, len: u32) -> Vec<u8> {
        super::imp::body_read(offset, len)
    }

    /// The whole message, read in 64 KiB chunks.
    pub fn read_all() -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let chunk = read(out.len() as u64, 64 * 1024);
            if chunk.is_empty() {
                return out;
            }
            out.extend_from_slice(&chunk);
        }
    }
}
