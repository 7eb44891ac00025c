//! The plugins' key-value store: its own RocksDB (`<data_dir>/kv`), keys
//! prefixed by the plugin's name so each plugin sees only its own. Values
//! carry an expiry time; expired values read as absent. Writes go to the
//! WAL without fsync (greylisting and rate-limit state may lose the last
//! moments before a machine crash; queued mail never does). A database of
//! its own, because writes to the queue's would wait behind its syncs.

use std::sync::{Arc, Mutex};

use rocksdb::{WriteOptions, DB};

pub const CF_KV: &str = "kv";

#[derive(Clone)]
pub struct Kv {
    db: Arc<DB>,
    /// Serialises read-modify-write (incr).
    lock: Arc<Mutex<()>>,
}

fn key(plugin: &str, k: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(plugin.len() + 1 + k.len());
    v.extend_from_slice(plugin.as_bytes());
    v.push(0);
    v.extend_from_slice(k.as_bytes());
    v
}

fn now_s() -> u64 {
    crate::queue::id::now_ms() / 1000
}

fn encode(value: &[u8], ttl: Option<u32>) -> Vec<u8> {
    let expires = ttl.map(|t| now_s() + t as u64).unwrap_or(0);
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 8 {
        return None;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&raw[..8]);
    let expires = u64::from_be_bytes(t);
    if expires != 0 && expires <= now_s() {
        return None;
    }
    Some(raw[8..].to_vec())
}

impl Kv {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &std::path::Path) -> anyhow::Result<Kv> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(3);
        let cfs = vec![rocksdb::ColumnFamilyDescriptor::new(CF_KV, rocksdb::Options::default())];
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|e| anyhow::anyhow!("opening the plugin kv store at {}: {e}", dir.display()))?;
        Ok(Kv { db: Arc::new(db), lock: Arc::new(Mutex::new(())) })
    }

    fn write_opts() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(false);
        w
    }

    pub fn get(&self, plugin: &str, k: &str) -> Option<Vec<u8>> {
        let cf = self.db.cf_handle(CF_KV)?;
        self.db.get_cf(cf, key(plugin, k)).ok().flatten().and_then(|raw| decode(&raw))
    }

    pub fn set(&self, plugin: &str, k: &str, value: &[u8], ttl: Option<u32>) {
        if let Some(cf) = self.db.cf_handle(CF_KV) {
            if let Err(e) = self.db.put_cf_opt(cf, key(plugin, k), encode(value, ttl), &Self::write_opts()) {
                tracing::warn!(plugin, error = %e, "kv write failed");
            }
        }
    }

    pub fn delete(&self, plugin: &str, k: &str) {
        if let Some(cf) = self.db.cf_handle(CF_KV) {
            let _ = self.db.delete_cf_opt(cf, key(plugin, k), &Self::write_opts());
        }
    }

    /// Adds to a decimal counter; a new or expired key starts at 0 and gets `ttl`.
    pub fn incr(&self, plugin: &str, k: &str, delta: i64, ttl: Option<u32>) -> i64 {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cf) = self.db.cf_handle(CF_KV) else {
            return 0;
        };
        let full = key(plugin, k);
        let (cur, keep_expiry) = match self.db.get_cf(cf, &full).ok().flatten() {
            Some(raw) if decode(&raw).is_some() => {
                let v = decode(&raw).unwrap_or_default();
                let n = std::str::from_utf8(&v).ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
                let mut t = [0u8; 8];
                t.copy_from_slice(&raw[..8]);
                (n, Some(u64::from_be_bytes(t)))
            }
            _ => (0, None),
        };
        let new = cur.saturating_add(delta);
        let value = new.to_string();
        let stored = match keep_expiry {
            // A live counter keeps its window.
            Some(exp) => {
                let mut v = exp.to_be_bytes().to_vec();
                v.extend_from_slice(value.as_bytes());
                v
            }
            None => encode(value.as_bytes(), ttl),
        };
        let _ = self.db.put_cf_opt(cf, full, stored, &Self::write_opts());
        new
    }
}
