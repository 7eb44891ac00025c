//! The durable queue on RocksDB. Three column families: `meta` (the
//! envelope and facts, JSON, by queue id), `body` (the raw message, by queue
//! id; large values go to blob files) and `due` (an index keyed by the next
//! attempt time in big-endian milliseconds, then the id, that the delivery
//! scheduler walks in order).
//!
//! Every change goes through one writer thread that does group commit: it
//! takes everything that arrived while the previous write was syncing, writes
//! it as one batch with `sync = true` (the WAL is fsync'd) and only then
//! answers each caller. A session replies 250 only after its answer came.

pub mod id;
pub mod message;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

pub use message::MessageMeta;

const CF_META: &str = "meta";
const CF_BODY: &str = "body";
const CF_DUE: &str = "due";

/// The largest batch one sync takes (in bytes of values); more waits for the next.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

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
}

fn due_key(due_ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// The queue's RocksDB directory inside a data directory.
pub fn queue_path(data_dir: &Path) -> PathBuf {
    data_dir.join("queue")
}

impl Queue {
    /// Opens (creating if needed) the queue under `data_dir`. Fails if
    /// another process (a running server) has it open.
    pub fn open(data_dir: &Path) -> Result<Queue> {
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
        };
        let n = q.count()?;
        q.depth.store(n as i64, Ordering::Relaxed);
        metrics::gauge!("weir_queue_depth").set(n as f64);
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("weir-queue-writer".into())
            .spawn(move || writer_loop(db, rx))
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

    async fn submit(&self, ops: Vec<Op>) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| anyhow!("queue writer is closed"))?
            .send(WriteReq { ops, done })
            .map_err(|_| anyhow!("queue writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("queue writer dropped the request"))?
            .map_err(|e| anyhow!("queue write failed: {e}"))
    }

    /// Writes a new message durably. Returns once it is synced to disk.
    pub async fn insert(&self, meta: &MessageMeta, body: &[u8]) -> Result<()> {
        let key = meta.id.as_bytes().to_vec();
        let ops = vec![
            Op::Put(CF_BODY, key.clone(), body.to_vec()),
            Op::Put(CF_META, key.clone(), serde_json::to_vec(meta)?),
            Op::Put(CF_DUE, due_key(meta.next_attempt_ms, &meta.id), Vec::new()),
        ];
        self.submit(ops).await?;
        self.depth.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("weir_queue_depth").set(self.depth() as f64);
        Ok(())
    }

    /// Removes a message; false if there was none with that id.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let Some(meta) = self.get(id)? else {
            return Ok(false);
        };
        let key = id.as_bytes().to_vec();
        let ops = vec![
            Op::Delete(CF_DUE, due_key(meta.next_attempt_ms, id)),
            Op::Delete(CF_META, key.clone()),
            Op::Delete(CF_BODY, key),
        ];
        self.submit(ops).await?;
        self.depth.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("weir_queue_depth").set(self.depth() as f64);
        Ok(true)
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

    /// Ids whose next attempt is due at or before `now_ms`, earliest first.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<String>> {
        let cf = self.cf(CF_DUE)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.context("reading the due index")?;
            if k.len() < 8 {
                continue;
            }
            let mut t = [0u8; 8];
            t.copy_from_slice(&k[..8]);
            if u64::from_be_bytes(t) > now_ms || out.len() >= limit {
                break;
            }
            out.push(String::from_utf8_lossy(&k[8..]).into_owned());
        }
        Ok(out)
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

fn writer_loop(db: Arc<DB>, rx: mpsc::Receiver<WriteReq>) {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    while let Ok(first) = rx.recv() {
        let mut reqs = vec![first];
        let mut bytes: usize = reqs[0].ops.iter().map(op_len).sum();
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.ops.iter().map(op_len).sum::<usize>();
                    reqs.push(r);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = write_batch(&db, &wo, &reqs);
        let elapsed = started.elapsed();
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
                address: "b@example.org".into(),
                orcpt: Some("rfc822;b@example.org".into()),
                notify: Notify { failure: true, ..Default::default() },
                status: RecipientStatus::Pending,
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
        }
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
                    q.insert(&m, b"hello").await.unwrap();
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
}
