//! The plugins' key-value store: its own RocksDB (`<data_dir>/kv`), keys
//! prefixed by the plugin's name so each plugin sees only its own. Values
//! carry an expiry time; expired values read as absent.
//!
//! Plugins call it on the message path (a rate-limit counter per message,
//! a greylist lookup per recipient), so it is served from memory: a sharded
//! cache in front of RocksDB answers reads, and writes change the cache at
//! once and reach RocksDB in the background, one batch every `FLUSH_EVERY`
//! (and when the store is dropped at shutdown). A RocksDB read-modify-write
//! and a WAL `write()` per `incr` cost tens of microseconds once the caches
//! went cold between messages. What this trades: a crash of the process, or
//! of the machine, loses the writes of the last moments (at most
//! `FLUSH_EVERY`, plus what the OS had not written) — greylisting and rate
//! limits may forget an instant; queued mail never does (its database syncs
//! before every 250). A database of its own, because writes to the queue's
//! would wait behind its syncs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rocksdb::{WriteBatch, WriteOptions, DB};

pub const CF_KV: &str = "kv";

/// How often written entries go to RocksDB.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
const SHARDS: usize = 16;
/// Entries cached per shard before clean ones are dropped.
const SHARD_CAPACITY: usize = 16 * 1024;
/// Unwritten entries in one shard that wake the writer early.
const PENDING_WAKE: usize = 4096;

/// A handle to the store (cheap to clone).
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    shards: Vec<Mutex<Shard>>,
    /// Writes made now belong to this generation of the writer.
    generation: AtomicU64,
    /// Every write of this generation and before is in RocksDB.
    written: AtomicU64,
    writer: Mutex<Option<std::thread::Thread>>,
}

struct Shard {
    cache: HashMap<Vec<u8>, Cached>,
    /// The size at which clean entries are dropped next.
    limit: usize,
    /// Writes not yet in RocksDB: the stored form, or None to delete. One
    /// entry a key: a key written again before the writer took the list
    /// (a counter at every message) has its entry overwritten, so RocksDB
    /// gets the last value once rather than every step on the way.
    pending: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// How many times the writer has taken `pending`: a `Cached::slot`
    /// counts only while this has not moved on.
    taken: u64,
}

struct Cached {
    /// The stored form (expiry + value), or None when the key is absent.
    raw: Option<Vec<u8>>,
    /// The writer generation that wrote it; 0 for what was read from RocksDB.
    generation: u64,
    /// Its entry in the shard's `pending` (the shard's `taken`, the index),
    /// while that list has not been taken.
    slot: Option<(u64, usize)>,
}

fn key(plugin: &str, k: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(plugin.len() + 1 + k.len());
    v.extend_from_slice(plugin.as_bytes());
    v.push(0);
    v.extend_from_slice(k.as_bytes());
    v
}

/// The shard a key belongs to. FNV-1a: cheap, and keys are the plugin's
/// own, not an attacker's to collide (a collision only shares a lock).
fn shard_index(key: &[u8]) -> usize {
    let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
    (h as usize) % SHARDS
}

fn now_s() -> u64 {
    crate::queue::id::now_ms() / 1000
}

fn encode_with_expiry(expires: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn encode(value: &[u8], ttl: Option<u32>) -> Vec<u8> {
    encode_with_expiry(ttl.map(|t| now_s() + t as u64).unwrap_or(0), value)
}

/// (expiry, value) of a stored form, unless it is malformed or expired.
fn decode(raw: &[u8]) -> Option<(u64, &[u8])> {
    let (t, value) = raw.split_first_chunk::<8>()?;
    let expires = u64::from_be_bytes(*t);
    if expires != 0 && expires <= now_s() {
        return None;
    }
    Some((expires, value))
}

impl Kv {
    /// Opens (creating) the store under `dir` and starts its writer.
    pub fn open(dir: &std::path::Path) -> anyhow::Result<Kv> {
        Self::open_with(dir, true)
    }

    /// `background: false` (tests): nothing is written until `flush`.
    fn open_with(dir: &std::path::Path, background: bool) -> anyhow::Result<Kv> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(3);
        let cfs = vec![rocksdb::ColumnFamilyDescriptor::new(CF_KV, rocksdb::Options::default())];
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|e| anyhow::anyhow!("opening the plugin kv store at {}: {e}", dir.display()))?;
        let inner = Arc::new(Inner {
            db,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        cache: HashMap::new(),
                        limit: SHARD_CAPACITY,
                        pending: Vec::new(),
                        taken: 0,
                    })
                })
                .collect(),
            generation: AtomicU64::new(1),
            written: AtomicU64::new(0),
            writer: Mutex::new(None),
        });
        if background {
            let weak = Arc::downgrade(&inner);
            let writer = std::thread::Builder::new()
                .name("weir-kv-writer".into())
                .spawn(move || writer_loop(weak))
                .map_err(|e| anyhow::anyhow!("starting the kv writer: {e}"))?;
            *inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer.thread().clone());
        }
        Ok(Kv { inner })
    }

    pub fn get(&self, plugin: &str, k: &str) -> Option<Vec<u8>> {
        let full = key(plugin, k);
        let mut shard = self.inner.shard(&full);
        let raw = self.inner.cached(&mut shard, full);
        raw.and_then(|r| decode(r)).map(|(_, v)| v.to_vec())
    }

    pub fn set(&self, plugin: &str, k: &str, value: &[u8], ttl: Option<u32>) {
        self.inner.write(key(plugin, k), Some(encode(value, ttl)));
    }

    pub fn delete(&self, plugin: &str, k: &str) {
        self.inner.write(key(plugin, k), None);
    }

    /// Adds to a decimal counter; a new or expired key starts at 0 and gets `ttl`.
    pub fn incr(&self, plugin: &str, k: &str, delta: i64, ttl: Option<u32>) -> i64 {
        let full = key(plugin, k);
        let mut shard = self.inner.shard(&full);
        let (cur, keep_expiry) = match self.inner.cached(&mut shard, full.clone()).and_then(|r| decode(r)) {
            // A live counter keeps its window.
            Some((expires, v)) => (std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0), Some(expires)),
            None => (0, None),
        };
        let new = cur.saturating_add(delta);
        let value = new.to_string();
        let stored = match keep_expiry {
            Some(exp) => encode_with_expiry(exp, value.as_bytes()),
            None => encode(value.as_bytes(), ttl),
        };
        self.inner.write_locked(&mut shard, full, Some(stored));
        new
    }

    /// Writes every pending change to RocksDB now.
    pub fn flush(&self) {
        self.inner.flush();
    }
}

impl Inner {
    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        self.shards[shard_index(key)].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored form of `key` (None: absent), from the cache or RocksDB.
    fn cached<'s>(&self, shard: &'s mut Shard, key: Vec<u8>) -> Option<&'s [u8]> {
        if !shard.cache.contains_key(&key) {
            let raw = match self.db.cf_handle(CF_KV) {
                Some(cf) => self.db.get_cf(cf, &key).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "kv read failed");
                    None
                }),
                None => None,
            };
            self.make_room(shard);
            shard.cache.insert(key.clone(), Cached { raw, generation: 0, slot: None });
        }
        shard.cache.get(&key).and_then(|c| c.raw.as_deref())
    }

    fn write(&self, key: Vec<u8>, raw: Option<Vec<u8>>) {
        let mut shard = self.shard(&key);
        self.write_locked(&mut shard, key, raw);
    }

    fn write_locked(&self, shard: &mut Shard, key: Vec<u8>, raw: Option<Vec<u8>>) {
        let generation = self.generation.load(Ordering::Acquire);
        let taken = shard.taken;
        if let Some(c) = shard.cache.get_mut(&key) {
            if let Some((t, i)) = c.slot {
                if let (true, Some(entry)) = (t == taken, shard.pending.get_mut(i)) {
                    // Still unwritten: the new value replaces it in the list.
                    entry.1.clone_from(&raw);
                    c.raw = raw;
                    c.generation = generation;
                    return;
                }
            }
        } else {
            self.make_room(shard);
        }
        shard.pending.push((key.clone(), raw.clone()));
        let slot = Some((taken, shard.pending.len() - 1));
        shard.cache.insert(key, Cached { raw, generation, slot });
        if shard.pending.len() >= PENDING_WAKE {
            if let Some(t) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                t.unpark();
            }
        }
    }

    /// Keeps the cache bounded: at capacity, what RocksDB already holds is
    /// dropped (it is read again when asked for); unwritten entries stay.
    /// If they alone fill it, the next try waits until it grew by a
    /// quarter, so a burst of writes does not rescan it at every insert.
    fn make_room(&self, shard: &mut Shard) {
        if shard.cache.len() < shard.limit {
            return;
        }
        let written = self.written.load(Ordering::Acquire);
        shard.cache.retain(|_, c| c.generation > written);
        shard.limit = (shard.cache.len() + SHARD_CAPACITY / 4).max(SHARD_CAPACITY);
    }

    /// Writes the pending changes of every shard as one batch.
    fn flush(&self) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel);
        let mut batch = WriteBatch::default();
        let Some(cf) = self.db.cf_handle(CF_KV) else {
            return;
        };
        let mut n = 0;
        for s in &self.shards {
            let pending = {
                let mut shard = s.lock().unwrap_or_else(|p| p.into_inner());
                shard.taken += 1;
                std::mem::take(&mut shard.pending)
            };
            n += pending.len();
            for (k, raw) in pending {
                match raw {
                    Some(v) => batch.put_cf(cf, k, v),
                    None => batch.delete_cf(cf, k),
                }
            }
        }
        if n > 0 {
            let mut wo = WriteOptions::default();
            wo.set_sync(false);
            // On failure (a full disk), the cache still answers with what was
            // written, but the writes are lost once it drops them or stops.
            if let Err(e) = self.db.write_opt(batch, &wo) {
                tracing::error!(error = %e, writes = n, "kv write failed; these changes are lost at the next restart");
                return;
            }
        }
        self.written.store(generation, Ordering::Release);
    }
}

impl Drop for Inner {
    /// The store is closing (shutdown): what is pending goes to RocksDB.
    fn drop(&mut self) {
        self.flush();
    }
}

fn writer_loop(inner: Weak<Inner>) {
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        match inner.upgrade() {
            Some(i) => i.flush(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_counters_expiry_and_plugins_apart() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(dir.path()).unwrap();
        assert_eq!(kv.get("a", "k"), None);
        kv.set("a", "k", b"v", None);
        assert_eq!(kv.get("a", "k").as_deref(), Some(&b"v"[..]));
        assert_eq!(kv.get("b", "k"), None, "plugins see only their own keys");
        assert_eq!(kv.incr("a", "n", 1, Some(60)), 1);
        assert_eq!(kv.incr("a", "n", 5, Some(60)), 6);
        assert_eq!(kv.incr("a", "n", -10, None), -4);
        kv.delete("a", "k");
        assert_eq!(kv.get("a", "k"), None);
        // An expired value reads as absent, and a counter starts again.
        kv.set("a", "old", b"x", Some(0));
        assert_eq!(kv.get("a", "old"), None);
        kv.inner.write(key("a", "c"), Some(encode_with_expiry(1, b"41")));
        assert_eq!(kv.incr("a", "c", 1, None), 1);
    }

    #[test]
    fn writes_reach_the_database_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = Kv::open(dir.path()).unwrap();
            kv.set("p", "kept", b"1", None);
            kv.incr("p", "count", 3, None);
            kv.set("p", "gone", b"1", None);
            kv.delete("p", "gone");
            kv.flush();
            let cf = kv.inner.db.cf_handle(CF_KV).unwrap();
            let raw = kv.inner.db.get_cf(cf, key("p", "count")).unwrap().unwrap();
            assert_eq!(decode(&raw).map(|(_, v)| v.to_vec()), Some(b"3".to_vec()), "flush writes to RocksDB");
            kv.set("p", "late", b"at shutdown", None);
            // Dropped without a flush: the last writes go out as it closes.
        }
        let kv = Kv::open(dir.path()).unwrap();
        assert_eq!(kv.get("p", "kept").as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.incr("p", "count", 1, None), 4);
        assert_eq!(kv.get("p", "gone"), None);
        assert_eq!(kv.get("p", "late").as_deref(), Some(&b"at shutdown"[..]));
    }

    #[test]
    fn a_key_written_again_before_a_flush_is_written_once_with_its_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open_with(dir.path(), false).unwrap();
        let pending = |kv: &Kv| kv.inner.shards.iter().map(|s| s.lock().unwrap().pending.len()).sum::<usize>();
        let stored = |kv: &Kv, k: &str| {
            let cf = kv.inner.db.cf_handle(CF_KV).unwrap();
            kv.inner.db.get_cf(cf, key("p", k)).unwrap().and_then(|raw| decode(&raw).map(|(_, v)| v.to_vec()))
        };
        // Another key of the same shard, so the two share one list.
        let other = (0..).map(|i| format!("other{i}")).find(|k| shard_index(&key("p", k)) == shard_index(&key("p", "count"))).unwrap();
        let other = other.as_str();
        for _ in 0..1000 {
            kv.incr("p", "count", 1, None);
        }
        kv.set("p", other, b"x", None);
        kv.delete("p", other);
        assert_eq!(pending(&kv), 2, "one entry a key");
        kv.flush();
        assert_eq!(stored(&kv, "count"), Some(b"1000".to_vec()));
        assert_eq!(stored(&kv, other), None, "the delete, the last write, is what was written");
        // After the writer took the list, a write starts a new entry, even
        // where the old list's index is taken again (by the other key here:
        // "count" had index 0 of the old list, the other key has it now).
        kv.set("p", other, b"y", None);
        kv.incr("p", "count", 1, None);
        assert_eq!(pending(&kv), 2);
        kv.flush();
        assert_eq!(stored(&kv, "count"), Some(b"1001".to_vec()));
        assert_eq!(stored(&kv, other), Some(b"y".to_vec()));
        assert_eq!(kv.incr("p", "count", 1, None), 1002);
    }

    #[test]
    fn the_cache_stays_bounded_and_never_drops_an_unwritten_entry() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open_with(dir.path(), false).unwrap();
        let cached = |kv: &Kv| kv.inner.shards.iter().map(|s| s.lock().unwrap().cache.len()).sum::<usize>();
        let n = SHARDS * SHARD_CAPACITY * 5 / 4;
        for i in 0..n {
            kv.set("p", &format!("k{i}"), i.to_string().as_bytes(), None);
        }
        // Nothing is written yet: the cache had to keep every entry.
        assert_eq!(cached(&kv), n);
        for i in (0..n).step_by(997) {
            assert_eq!(kv.get("p", &format!("k{i}")), Some(i.to_string().into_bytes()), "k{i}");
        }
        kv.flush();
        // Written: other keys now push them out, and they read back from RocksDB.
        for i in 0..n {
            let _ = kv.get("p", &format!("other{i}"));
        }
        assert!(cached(&kv) <= SHARDS * SHARD_CAPACITY, "{} entries cached", cached(&kv));
        for i in (0..n).step_by(997) {
            assert_eq!(kv.get("p", &format!("k{i}")), Some(i.to_string().into_bytes()), "k{i}");
        }
    }
}
