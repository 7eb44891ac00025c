//! The durable queue on RocksDB. Three column families: `meta` (the
//! envelope and facts, JSON, by queue id), `body` (the raw message, by queue
//! id; large values go to blob files) and `due` (an index keyed by priority
//! class, then the next attempt time in big-endian milliseconds, then the
//! id, that the delivery scheduler walks in order; held messages have no
//! entry).
//!
//! The scheduler does not scan the `due` column family (deleted keys pile up
//! there as tombstones until compaction, which would make every scan slower
//! than the last): an in-memory ordered copy of the index, loaded at open
//! and kept in step with every durable write, answers `due()`.
//!
//! Every change goes through one writer thread that does group commit: it
//! takes everything that arrived while the previous write was syncing, writes
//! it as one batch with `sync = true` (the WAL is fsync'd) and only then
//! answers each caller. A session replies 250 only after its answer came.

pub mod id;
pub mod message;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

pub use message::MessageMeta;

const CF_META: &str = "meta";
const CF_BODY: &str = "body";
const CF_DUE: &str = "due";

/// The largest batch one sync takes (in bytes of values); more waits for the next.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// How long past its first request a batch may wait for messages on their
/// way ([`Incoming`]) before it is synced (`server.commit_wait`).
pub const DEFAULT_COMMIT_WAIT: Duration = Duration::from_micros(300);

enum Op {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
}

struct WriteReq {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<(), String>>,
}

pub struct Queue {
    db: Arc<DB>,
    path: PathBuf,
    writer: Option<mpsc::Sender<WriteReq>>,
    writer_thread: Option<JoinHandle<()>>,
    depth: Arc<AtomicI64>,
    /// Messages on their way to `insert` ([`Queue::incoming`]).
    incoming: Arc<AtomicUsize>,
    /// Batches synced so far.
    syncs: Arc<AtomicU64>,
    /// (priority class, due time ms, id) of every scheduled message.
    index: Mutex<BTreeSet<IndexKey>>,
}

type IndexKey = (u8, u64, String);

fn index_key(meta: &MessageMeta) -> IndexKey {
    (meta.priority.index(), meta.next_attempt_ms, meta.id.clone())
}

/// Priority classes have one byte each at the front of `due` keys.
const PRIORITY_CLASSES: u8 = 3;

fn due_key(meta: &MessageMeta) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + meta.id.len());
    k.push(meta.priority.index());
    k.extend_from_slice(&meta.next_attempt_ms.to_be_bytes());
    k.extend_from_slice(meta.id.as_bytes());
    k
}

fn is_scheduled(meta: &MessageMeta) -> bool {
    meta.state == message::MessageState::Queued
}

/// The queue's RocksDB directory inside a data directory.
pub fn queue_path(data_dir: &Path) -> PathBuf {
    data_dir.join("queue")
}

impl Queue {
    /// Opens (creating if needed) the queue under `data_dir`. Fails if
    /// another process (a running server) has it open.
    pub fn open(data_dir: &Path) -> Result<Queue> {
        Queue::open_with(data_dir, DEFAULT_COMMIT_WAIT)
    }

    /// [`Queue::open`], with how long a sync may wait for messages on
    /// their way ([`Queue::incoming`]).
    pub fn open_with(data_dir: &Path, commit_wait: Duration) -> Result<Queue> {
        let path = queue_path(data_dir);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(5);
        opts.set_max_total_wal_size(512 * 1024 * 1024);
        let mut body_opts = Options::default();
        body_opts.set_enable_blob_files(true);
        body_opts.set_min_blob_size(4096);
        body_opts.set_blob_compression_type(rocksdb::DBCompressionType::Lz4);
        body_opts.set_enable_blob_gc(true);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_BODY, body_opts),
            ColumnFamilyDescriptor::new(CF_DUE, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| {
            let s = e.to_string();
            if s.contains("lock") || s.contains("Resource temporarily unavailable") {
                anyhow!(
                    "the queue at {} is in use by another process (a running `weir serve`?): {s}",
                    path.display()
                )
            } else {
                anyhow!("opening the queue at {}: {s}", path.display())
            }
        })?;
        let db = Arc::new(db);
        let mut q = Queue {
            db: db.clone(),
            path,
            writer: None,
            writer_thread: None,
            depth: Arc::new(AtomicI64::new(0)),
            incoming: Arc::new(AtomicUsize::new(0)),
            syncs: Arc::new(AtomicU64::new(0)),
            index: Mutex::new(BTreeSet::new()),
        };
        q.load_index()?;
        let n = q.count()?;
        q.depth.store(n as i64, Ordering::Relaxed);
        metrics::gauge!("weir_queue_depth").set(n as f64);
        let (tx, rx) = mpsc::channel();
        let (incoming, syncs) = (q.incoming.clone(), q.syncs.clone());
        let handle = std::thread::Builder::new()
            .name("weir-queue-writer".into())
            .spawn(move || writer_loop(db, rx, &incoming, commit_wait, &syncs))
            .context("starting the queue writer thread")?;
        q.writer = Some(tx);
        q.writer_thread = Some(handle);
        Ok(q)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }


    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| anyhow!("queue column family {name} is missing"))
    }

    fn load_index(&self) -> Result<()> {
        let cf = self.cf(CF_DUE)?;
        let mut idx = self.index_lock();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.context("reading the due index")?;
            if k.len() < 9 {
                continue;
            }
            let mut t = [0u8; 8];
            t.copy_from_slice(&k[1..9]);
            idx.insert((k[0], u64::from_be_bytes(t), String::from_utf8_lossy(&k[9..]).into_owned()));
        }
        Ok(())
    }

    fn index_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<IndexKey>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self) -> Result<usize> {
        let cf = self.cf(CF_META)?;
        let mut n = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            item.context("reading the queue")?;
            n += 1;
        }
        Ok(n)
    }

    /// Messages in the queue now.
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }

    async fn submit(&self, ops: Vec<Op>, incoming: Option<Incoming>) -> Result<()> {
        let (done, rx) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or_else(|| anyhow!("queue writer is closed"))?;
        // No longer on its way: said before the send, so that the writer,
        // once it has the request, never waits for it.
        drop(incoming);
        writer.send(WriteReq { ops, done }).map_err(|_| anyhow!("queue writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("queue writer dropped the request"))?
            .map_err(|e| anyhow!("queue write failed: {e}"))
    }

    /// How many batches the writer has synced.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Says that a message is on its way to [`Queue::insert_incoming`]
    /// (its content is in; its policy steps are running), until the
    /// returned mark is handed to it or dropped. While any is, the writer
    /// holds a batch back for up to `commit_wait` to sync them with it:
    /// one sync for several sessions' messages instead of one each, as
    /// PostgreSQL's `commit_delay` does when other transactions are active.
    pub fn incoming(&self) -> Incoming {
        self.incoming.fetch_add(1, Ordering::AcqRel);
        Incoming(self.incoming.clone())
    }

    /// Writes a new message durably. Returns once it is synced to disk.
    /// The body moves to the writer thread rather than being copied.
    pub async fn insert(&self, meta: &MessageMeta, body: Vec<u8>) -> Result<()> {
        self.insert_incoming(meta, body, None).await
    }

    /// [`Queue::insert`] of a message [`Queue::incoming`] announced (its
    /// mark is given back once the writer has the message).
    pub async fn insert_incoming(&self, meta: &MessageMeta, body: Vec<u8>, incoming: Option<Incoming>) -> Result<()> {
        let key = meta.id.as_bytes().to_vec();
        let mut ops = vec![
            Op::Put(CF_BODY, key.clone(), body),
            Op::Put(CF_META, key.clone(), encode_meta(meta)?),
        ];
        if is_scheduled(meta) {
            ops.push(Op::Put(CF_DUE, due_key(meta), Vec::new()));
        }
        self.submit(ops, incoming).await?;
        if is_scheduled(meta) {
            self.index_lock().insert(index_key(meta));
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("weir_queue_depth").set(self.depth() as f64);
        Ok(())
    }

    /// Replaces a message's record (`old` is what was stored, for its
    /// index entry), durably.
    pub async fn update(&self, old: &MessageMeta, new: &MessageMeta) -> Result<()> {
        let mut ops = Vec::with_capacity(3);
        if is_scheduled(old) {
            ops.push(Op::Delete(CF_DUE, due_key(old)));
        }
        ops.push(Op::Put(CF_META, new.id.as_bytes().to_vec(), encode_meta(new)?));
        if is_scheduled(new) {
            ops.push(Op::Put(CF_DUE, due_key(new), Vec::new()));
        }
        self.submit(ops, None).await?;
        let mut idx = self.index_lock();
        if is_scheduled(old) {
            idx.remove(&index_key(old));
        }
        if is_scheduled(new) {
            idx.insert(index_key(new));
        }
        Ok(())
    }

    /// Removes a message; false if there was none with that id.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let Some(meta) = self.get(id)? else {
            return Ok(false);
        };
        self.remove(&meta).await?;
        Ok(true)
    }

    /// Removes a message whose current record is `meta`.
    pub async fn remove(&self, meta: &MessageMeta) -> Result<()> {
        let key = meta.id.as_bytes().to_vec();
        let mut ops = Vec::with_capacity(3);
        if is_scheduled(meta) {
            ops.push(Op::Delete(CF_DUE, due_key(meta)));
        }
        ops.push(Op::Delete(CF_META, key.clone()));
        ops.push(Op::Delete(CF_BODY, key));
        self.submit(ops, None).await?;
        if is_scheduled(meta) {
            self.index_lock().remove(&index_key(meta));
        }
        self.depth.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("weir_queue_depth").set(self.depth() as f64);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<MessageMeta>> {
        let cf = self.cf(CF_META)?;
        match self.db.get_cf(cf, id.as_bytes()).context("reading the queue")? {
            None => Ok(None),
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).with_context(|| format!("queue record {id} is unreadable"))?,
            )),
        }
    }

    pub fn body(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let cf = self.cf(CF_BODY)?;
        self.db.get_cf(cf, id.as_bytes()).context("reading the queue")
    }

    /// Every message, oldest first.
    pub fn list(&self) -> Result<Vec<MessageMeta>> {
        let cf = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.context("reading the queue")?;
            match serde_json::from_slice::<MessageMeta>(&v) {
                Ok(m) => out.push(m),
                Err(e) => tracing::warn!(id = %String::from_utf8_lossy(&k), error = %e, "unreadable queue record skipped"),
            }
        }
        Ok(out)
    }

    /// Ids whose next attempt is due at or before `now_ms`: every due id of
    /// a higher priority class before any of a lower one, earliest first
    /// within a class.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.each_due(now_ms, |id| {
            out.push(id.to_string());
            out.len() < limit
        });
        Ok(out)
    }

    /// The first due id (in `due()` order) that `wanted` accepts.
    pub fn first_due(&self, now_ms: u64, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let mut found = None;
        self.each_due(now_ms, |id| {
            if wanted(id) {
                found = Some(id.to_string());
                false
            } else {
                true
            }
        });
        found
    }

    /// Calls `f` for due ids in order until it returns false.
    fn each_due(&self, now_ms: u64, mut f: impl FnMut(&str) -> bool) {
        let idx = self.index_lock();
        for class in 0..PRIORITY_CLASSES {
            let from = (class, 0u64, String::new());
            for (c, t, id) in idx.range(from..) {
                if *c != class || *t > now_ms {
                    break;
                }
                if !f(id) {
                    return;
                }
            }
        }
    }

    /// The earliest next-attempt time of any scheduled message, if any.
    pub fn next_due_ms(&self) -> Result<Option<u64>> {
        let idx = self.index_lock();
        let mut best: Option<u64> = None;
        for class in 0..PRIORITY_CLASSES {
            if let Some((c, t, _)) = idx.range((class, 0u64, String::new())..).next() {
                if *c == class {
                    best = Some(best.map_or(*t, |b| b.min(*t)));
                }
            }
        }
        Ok(best)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what it has, then stop.
        self.writer.take();
        if let Some(h) = self.writer_thread.take() {
            let _ = h.join();
        }
    }
}

/// A message on its way to the queue ([`Queue::incoming`]); dropped, it
/// is no longer.
pub struct Incoming(Arc<AtomicUsize>);

impl Drop for Incoming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn writer_loop(db: Arc<DB>, rx: mpsc::Receiver<WriteReq>, incoming: &AtomicUsize, commit_wait: Duration, syncs: &AtomicU64) {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + commit_wait;
        let mut reqs = vec![first];
        let mut bytes: usize = reqs[0].ops.iter().map(op_len).sum();
        while bytes < MAX_BATCH_BYTES {
            let next = match rx.try_recv() {
                Ok(r) => Some(r),
                // Messages on their way: wait for them, up to the deadline
                // (one that policy refuses never comes; the wait ends there).
                Err(mpsc::TryRecvError::Empty) if incoming.load(Ordering::Acquire) > 0 => {
                    deadline.checked_duration_since(Instant::now()).and_then(|left| rx.recv_timeout(left).ok())
                }
                Err(_) => None,
            };
            let Some(r) = next else { break };
            bytes += r.ops.iter().map(op_len).sum::<usize>();
            reqs.push(r);
        }
        let started = Instant::now();
        let result = write_batch(&db, &wo, &reqs);
        let elapsed = started.elapsed();
        syncs.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("weir_queue_sync_batch_size").record(reqs.len() as f64);
        metrics::histogram!("weir_queue_sync_seconds").record(elapsed.as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(error = %e, batch = reqs.len(), "queue write failed");
            metrics::counter!("weir_queue_write_errors_total").increment(1);
        }
        for r in reqs {
            let _ = r.done.send(result.clone());
        }
    }
}

/// A message's stored record (JSON). The buffer starts at about the size
/// of a record (serde_json's own starts at 128 bytes and grew three times
/// a message, each a copy).
fn encode_meta(meta: &MessageMeta) -> Result<Vec<u8>> {
    let guess = 512 + meta.recipients.len() * 96 + meta.decisions.len() * 56;
    let mut out = Vec::with_capacity(guess);
    serde_json::to_writer(&mut out, meta)?;
    Ok(out)
}

fn op_len(op: &Op) -> usize {
    match op {
        Op::Put(_, k, v) => k.len() + v.len(),
        Op::Delete(_, k) => k.len(),
    }
}

fn write_batch(db: &DB, wo: &WriteOptions, reqs: &[WriteReq]) -> Result<(), String> {
    let mut batch = WriteBatch::default();
    for r in reqs {
        for op in &r.ops {
            match op {
                Op::Put(cf, k, v) => {
                    let h = db.cf_handle(cf).ok_or_else(|| format!("column family {cf} missing"))?;
                    batch.put_cf(h, k, v);
                }
                Op::Delete(cf, k) => {
                    let h = db.cf_handle(cf).ok_or_else(|| format!("column family {cf} missing"))?;
                    batch.delete_cf(h, k);
                }
            }
        }
    }
    db.write_opt(batch, wo).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::message::*;
    use super::*;

    fn meta(id: &str) -> MessageMeta {
        MessageMeta {
            id: id.to_string(),
            received_at: 1,
            sender: "a@example.org".into(),
            recipients: vec![Recipient {
                orcpt: Some("rfc822;b@example.org".into()),
                notify: Notify { failure: true, ..Default::default() },
                ..Recipient::new("b@example.org".into())
            }],
            body_type: BodyType::EightBitMime,
            smtputf8: false,
            declared_size: Some(10),
            dsn_ret: Some(DsnRet::Hdrs),
            dsn_envid: Some("env1".into()),
            session: SessionFacts {
                listener: "mx".into(),
                client_ip: "127.0.0.1".into(),
                client_port: 1,
                local_addr: "127.0.0.1:25".into(),
                helo: "client".into(),
                esmtp: true,
                tls: None,
                auth_user: None,
            },
            size: 5,
            state: MessageState::Queued,
            next_attempt_ms: 1000,
            attempts: 0,
            priority: crate::config::Priority::Normal,
            history: Vec::new(),
            delay_notified: false,
            decisions: Vec::new(),
            tags: Vec::new(),
            symbols: Vec::new(),
            quarantine: None,
        }
    }

    fn decision(plugin: &str, stage: crate::policy::types::StageName, reason: Option<&str>, recipient: Option<&str>) -> crate::policy::DecisionRecord {
        crate::policy::DecisionRecord {
            plugin: plugin.to_string().into(),
            stage,
            verdict: "continue".into(),
            micros: 68,
            reason: reason.map(String::from),
            recipient: recipient.map(String::from),
        }
    }

    /// The trail is stored as arrays, read back whole, shown as objects;
    /// a record stored with the object form (before the arrays) still reads.
    #[tokio::test]
    async fn the_decision_trail_is_stored_as_arrays_and_shown_as_objects() {
        use crate::policy::types::StageName;
        let mut m = meta("00000000000000000001");
        m.decisions = vec![
            decision("conn", StageName::Connect, None, None),
            decision("stamp", StageName::Data, Some("stamped \"1\""), None),
            decision("rcpt", StageName::RcptTo, None, Some("b@example.org")),
            decision("router", StageName::RcptTo, Some("route mx"), Some("b@example.org")),
        ];
        let stored = String::from_utf8(encode_meta(&m).unwrap()).unwrap();
        assert!(
            stored.contains(concat!(
                r#""decisions":[["conn","connect","continue",68],["stamp","data","continue",68,"stamped \"1\""],"#,
                r#"["rcpt","rcpt_to","continue",68,null,"b@example.org"],["router","rcpt_to","continue",68,"route mx","b@example.org"]]"#
            )),
            "{stored}"
        );
        assert_eq!(serde_json::from_str::<MessageMeta>(&stored).unwrap(), m);

        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.insert(&m, b"hello".to_vec()).await.unwrap();
        assert_eq!(q.get(&m.id).unwrap().unwrap(), m);

        let shown = m.to_json().unwrap();
        assert_eq!(shown["decisions"][0], serde_json::json!({"plugin": "conn", "stage": "connect", "verdict": "continue", "micros": 68}));
        assert_eq!(shown["decisions"][2]["recipient"], "b@example.org");
        assert_eq!(shown["decisions"][3]["reason"], "route mx");
        // The stored form but for the trail.
        let mut rest = shown.clone();
        rest.as_object_mut().unwrap().remove("decisions");
        let mut stored_rest: serde_json::Value = serde_json::from_str(&stored).unwrap();
        stored_rest.as_object_mut().unwrap().remove("decisions");
        assert_eq!(rest, stored_rest);

        // The object form, as records were stored before.
        let mut old: serde_json::Value = serde_json::from_str(&stored).unwrap();
        old["decisions"] = shown["decisions"].clone();
        assert_eq!(serde_json::from_value::<MessageMeta>(old).unwrap(), m);
    }

    /// A sync waits for a message on its way and takes it in the same
    /// batch; with none on its way it does not wait, and one refused on
    /// its way holds the batch no longer than the wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_waits_for_messages_on_their_way() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(Queue::open_with(dir.path(), Duration::from_secs(60)).unwrap());
        // Bounds on waits that must end, far past any wait that should.
        const BOUND: Duration = Duration::from_secs(20);
        let bounded = tokio::time::timeout(BOUND, q.insert(&meta("00000000000000000001"), b"a".to_vec())).await;
        bounded.expect("no wait with none on its way").unwrap();
        assert_eq!(q.syncs(), 1);

        let on_its_way = q.incoming();
        let first = tokio::spawn({
            let q = q.clone();
            async move { q.insert(&meta("00000000000000000002"), b"b".to_vec()).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!first.is_finished(), "the sync waits for the message on its way");
        let bounded = tokio::time::timeout(BOUND, q.insert_incoming(&meta("00000000000000000003"), b"c".to_vec(), Some(on_its_way))).await;
        bounded.unwrap().unwrap();
        tokio::time::timeout(BOUND, first).await.unwrap().unwrap().unwrap();
        assert_eq!(q.syncs(), 2, "both in one sync");
        assert_eq!(q.depth(), 3);
        drop(q);

        let q = Arc::new(Queue::open_with(dir.path(), Duration::from_millis(200)).unwrap());
        let refused = q.incoming();
        let next = tokio::spawn({
            let q = q.clone();
            async move { q.insert(&meta("00000000000000000004"), b"d".to_vec()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(refused);
        tokio::time::timeout(BOUND, next).await.expect("synced by the end of the wait").unwrap().unwrap();
        assert_eq!(q.get("00000000000000000004").unwrap().map(|m| m.id), Some("00000000000000000004".into()));
    }

    #[tokio::test]
    async fn insert_get_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path()).unwrap();
            let mut handles = Vec::new();
            let q = Arc::new(q);
            for i in 0..50 {
                let q = q.clone();
                handles.push(tokio::spawn(async move {
                    let m = meta(&format!("{:020X}", i));
                    q.insert(&m, b"hello".to_vec()).await.unwrap();
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            assert_eq!(q.depth(), 50);
            // A second open of the same directory is refused while this one is open.
            let err = Queue::open(dir.path()).err().expect("second open must fail");
            assert!(err.to_string().contains("in use"), "{err}");
        }
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.depth(), 50);
        let id = format!("{:020X}", 7);
        let m = q.get(&id).unwrap().unwrap();
        assert_eq!(m, meta(&id));
        assert_eq!(q.body(&id).unwrap().unwrap(), b"hello");
        assert_eq!(q.due(999, 100).unwrap().len(), 0);
        assert_eq!(q.due(1000, 100).unwrap().len(), 50);
        assert!(q.delete(&id).await.unwrap());
        assert!(!q.delete(&id).await.unwrap());
        assert_eq!(q.list().unwrap().len(), 49);
        assert_eq!(q.due(1000, 100).unwrap().len(), 49);
        assert!(q.body(&id).unwrap().is_none());
    }

    #[tokio::test]
    async fn due_index_orders_by_priority_then_time_and_skips_held() {
        use crate::config::Priority;
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let mut bulk = meta("B0000000000000000001");
        bulk.priority = Priority::Bulk;
        bulk.next_attempt_ms = 10;
        let mut normal = meta("N0000000000000000001");
        normal.next_attempt_ms = 500;
        let mut urgent = meta("T0000000000000000001");
        urgent.priority = Priority::Transactional;
        urgent.next_attempt_ms = 900;
        let mut later = meta("T0000000000000000002");
        later.priority = Priority::Transactional;
        later.next_attempt_ms = 5000;
        for m in [&bulk, &normal, &urgent, &later] {
            q.insert(m, b"x".to_vec()).await.unwrap();
        }
        assert_eq!(q.due(1000, 10).unwrap(), vec![urgent.id.clone(), normal.id.clone(), bulk.id.clone()]);
        assert_eq!(q.due(1000, 1).unwrap(), vec![urgent.id.clone()]);
        assert_eq!(q.next_due_ms().unwrap(), Some(10));
        // Holding takes a message out of the index; rescheduling moves it.
        let mut held = normal.clone();
        held.state = MessageState::Held;
        q.update(&normal, &held).await.unwrap();
        let mut moved = later.clone();
        moved.next_attempt_ms = 100;
        q.update(&later, &moved).await.unwrap();
        assert_eq!(q.due(1000, 10).unwrap(), vec![later.id.clone(), urgent.id.clone(), bulk.id.clone()]);
        q.remove(&bulk).await.unwrap();
        assert_eq!(q.due(1000, 10).unwrap().len(), 2);
        assert_eq!(q.depth(), 3);
    }
}
