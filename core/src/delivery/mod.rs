//! Delivery: the scheduler takes due messages from the queue's due index
//! (higher priority classes first), groups each message's pending
//! recipients by route and destination, delivers the groups concurrently
//! within the global and per-destination limits, and records every outcome.
//! A confirmed delivery is written to the queue before anything else
//! happens; what failed for now is retried with exponential backoff and
//! jitter; what failed for good (or expired) is bounced with a DSN.

pub mod client;
pub mod dsn;
pub mod ops;
pub mod transport;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DeliveryConfig};
use crate::queue::id::{new_id, now_ms};
use crate::queue::message::{Attempt, BodyType, MessageMeta, MessageState, Recipient, RecipientStatus, SessionFacts};
use crate::queue::Queue;
use dsn::{Action, ReportEntry};
use transport::{Outcome, Transports};

/// A message being delivered: removed from the in-flight set on drop.
struct InFlight {
    delivery: Arc<Delivery>,
    id: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.delivery.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

pub struct Delivery {
    queue: Arc<Queue>,
    cfg: DeliveryConfig,
    hostname: String,
    transports: Transports,
    in_flight: Mutex<HashSet<String>>,
    /// Woken when a message is queued or rescheduled.
    pub wake: Arc<Notify>,
}

impl Delivery {
    pub fn new(
        config: &Config,
        data_dir: &std::path::Path,
        queue: Arc<Queue>,
        dns: Arc<crate::dns::Dns>,
        wake: Arc<Notify>,
    ) -> Result<Arc<Delivery>> {
        Ok(Arc::new(Delivery {
            queue,
            cfg: config.delivery.clone(),
            hostname: config.hostname(),
            transports: Transports::new(config, data_dir, dns)?,
            in_flight: Mutex::new(HashSet::new()),
            wake,
        }))
    }

    pub fn is_in_flight(&self, id: &str) -> bool {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    /// Runs until `shutdown`; then waits (bounded by the caller) for jobs in flight.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tracker: TaskTracker) {
        let slots = Arc::new(Semaphore::new(self.cfg.max_concurrency));
        let sweeper = {
            let me = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                let mut n: u64 = 0;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            me.transports.sweep().await;
                            // The per-destination gauges read the whole queue: not too often.
                            if n % 8 == 0 {
                                me.update_gauges();
                            }
                            n += 1;
                        }
                    }
                }
            })
        };
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let Some(id) = self.next_due(&shutdown).await else {
                break;
            };
            self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
            let me = self.clone();
            tracker.spawn(async move {
                // Released however the job ends, a panic included.
                let _slot = InFlight { delivery: me.clone(), id: id.clone(), _permit: permit };
                if let Err(e) = me.deliver_message(&id).await {
                    tracing::error!(id = %id, error = %format!("{e:#}"), "delivery attempt could not be recorded");
                    // Leave it in the queue; look again a little later.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
        sweeper.abort();
        self.transports.close_all().await;
    }

    /// Waits for the next due message that is not already being delivered.
    async fn next_due(&self, shutdown: &CancellationToken) -> Option<String> {
        loop {
            let now = now_ms();
            let busy_any = {
                let busy = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(id) = self.queue.first_due(now, |id| !busy.contains(id)) {
                    return Some(id);
                }
                !busy.is_empty()
            };
            let wait = match self.queue.next_due_ms() {
                Ok(Some(t)) if t > now => Duration::from_millis((t - now).min(60_000)),
                // Due now but all in flight, or an error: look again soon.
                _ => Duration::from_millis(if busy_any { 200 } else { 60_000 }),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.cfg.retry_schedule;
        let base = s[(attempts.max(1) as usize - 1).min(s.len() - 1)];
        let j = self.cfg.retry_jitter;
        let factor = 1.0 + j * (rand::random::<f64>() * 2.0 - 1.0);
        base.mul_f64(factor.max(0.0))
    }

    /// One attempt at every pending recipient of a message.
    async fn deliver_message(&self, id: &str) -> Result<()> {
        let Some(stored) = self.queue.get(id)? else {
            return Ok(());
        };
        if stored.state != MessageState::Queued {
            return Ok(());
        }
        let Some(body) = self.queue.body(id)? else {
            anyhow::bail!("message {id} has no body in the queue");
        };
        let mut stored = stored;
        let mut cur = stored.clone();
        let now = chrono::Utc::now().timestamp();
        let age = Duration::from_secs((now - cur.received_at).max(0) as u64);

        if age > self.cfg.max_age {
            for r in cur.recipients.iter_mut().filter(|r| r.status == RecipientStatus::Pending) {
                r.status = RecipientStatus::Failed;
                let last = r.last_reply.take().unwrap_or_else(|| "no attempt succeeded".into());
                r.last_reply = Some(format!(
                    "451 4.4.7 message expired after {} in the queue; last error: {last}",
                    humantime::format_duration(Duration::from_secs(age.as_secs()))
                ));
            }
            return self.finish_attempt(stored, cur, &body).await;
        }

        // Group pending recipients by route and destination.
        let mut groups: BTreeMap<(String, String), (Arc<transport::Route>, Vec<usize>)> = BTreeMap::new();
        let pending: Vec<usize> = cur.pending().map(|(i, _)| i).collect();
        for i in pending {
            let r = &cur.recipients[i];
            match self.transports.routes.for_recipient(r) {
                Ok(route) => {
                    let key = (route.name.clone(), route.destination(r));
                    groups.entry(key).or_insert_with(|| (route.clone(), Vec::new())).1.push(i);
                }
                Err(missing) => {
                    let msg = format!("451 4.3.5 no route named {missing:?} (check routes: in the configuration)");
                    cur.recipients[i].last_reply = Some(msg);
                }
            }
        }
        let snapshot = cur.clone();
        let mut jobs: FuturesUnordered<_> = groups
            .into_iter()
            .map(|((route_name, destination), (route, idxs))| {
                let snapshot = &snapshot;
                let body = &body;
                async move {
                    let started = std::time::Instant::now();
                    let out = self.transports.deliver(&route, snapshot, &idxs, body).await;
                    (route_name, destination, out, started.elapsed())
                }
            })
            .collect();
        while let Some((route, destination, out, took)) = jobs.next().await {
            let mut delivered_any = false;
            let mut summary = Vec::new();
            let mut reply = String::new();
            for (i, outcome) in &out.outcomes {
                let r = &mut cur.recipients[*i];
                r.remote = out.remote.clone();
                let (status, text, label) = match outcome {
                    Outcome::Delivered(t, handoff) => {
                        match handoff {
                            // The next hop got NOTIFY and answers for it from here on.
                            transport::Handoff::RelayedWithDsn => r.dsn_done = true,
                            transport::Handoff::RelayedWithoutDsn => r.relayed = true,
                            transport::Handoff::Final => {}
                        }
                        (RecipientStatus::Delivered, t, "delivered")
                    }
                    Outcome::Deferred(t) => (RecipientStatus::Pending, t, "deferred"),
                    Outcome::Failed(t) => (RecipientStatus::Failed, t, "failed"),
                };
                r.status = status;
                r.last_reply = Some(text.clone());
                delivered_any |= status == RecipientStatus::Delivered;
                summary.push(label);
                reply = text.clone();
                metrics::counter!("weir_delivery_attempts_total", "route" => route.clone(), "result" => label).increment(1);
                if status == RecipientStatus::Delivered {
                    let secs = (chrono::Utc::now().timestamp() - cur.received_at).max(0) as f64;
                    metrics::histogram!("weir_delivery_latency_seconds", "route" => route.clone()).record(secs);
                }
            }
            summary.sort();
            summary.dedup();
            tracing::info!(
                id = %cur.id, route = %route, destination = %destination,
                remote = out.remote.as_deref().unwrap_or("-"), result = %summary.join(","),
                reply = %reply, took = ?took, "delivery attempt"
            );
            cur.record(Attempt {
                at: chrono::Utc::now().timestamp(),
                route,
                destination,
                remote: out.remote.clone(),
                result: summary.join(","),
                reply,
                recipients: out.outcomes.iter().map(|(i, _)| cur.recipients[*i].address.clone()).collect(),
            });
            // What the remote side confirmed is on disk before anything else —
            // unless this was the last group, the message is done and no DSN is
            // due: then removing it (next) is that record, in one write.
            let removal_records_it = jobs.is_empty() && cur.is_done() && reports(&mut cur.clone(), false).is_empty();
            if delivered_any && !removal_records_it {
                self.queue.update(&stored, &cur).await?;
                stored = cur.clone();
            }
        }
        drop(jobs);
        self.finish_attempt(stored, cur, &body).await
    }

    /// After an attempt: queue the DSNs it calls for, then remove the
    /// message (all recipients done) or schedule the next attempt.
    async fn finish_attempt(&self, stored: MessageMeta, mut cur: MessageMeta, body: &[u8]) -> Result<()> {
        let now = chrono::Utc::now().timestamp();
        let done = cur.is_done();
        if !done {
            cur.attempts += 1;
            cur.next_attempt_ms = now_ms() + self.backoff(cur.attempts).as_millis() as u64;
        }
        let delay_due = !done
            && !cur.delay_notified
            && self
                .cfg
                .delay_notice_after
                .is_some_and(|d| (now - cur.received_at).max(0) as u64 >= d.as_secs());
        if cur.sender.is_empty() && cur.recipients.iter().any(|r| r.status == RecipientStatus::Failed && !r.dsn_done) {
            tracing::warn!(id = %cur.id, "a message from the null sender failed; no DSN is sent");
        }
        for dsn in reports(&mut cur, delay_due) {
            self.queue_dsn(&cur, body, &dsn).await?;
        }
        if delay_due {
            cur.delay_notified = true;
        }
        if done {
            self.queue.remove(&stored).await?;
            tracing::info!(id = %cur.id, "all recipients done; removed from the queue");
        } else {
            self.queue.update(&stored, &cur).await?;
        }
        Ok(())
    }

    /// Queues a DSN to the original sender (never for the null sender).
    async fn queue_dsn(&self, original: &MessageMeta, body: &[u8], report: &Report) -> Result<()> {
        queue_dsn(&self.queue, &self.hostname, original, body, report).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Queue gauges by state and destination (recipients), for /metrics.
    fn update_gauges(&self) {
        let Ok(list) = self.queue.list() else {
            return;
        };
        let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
        for m in &list {
            let state = match (m.state, m.attempts) {
                (MessageState::Held, _) => "held",
                (_, 0) => "queued",
                _ => "deferred",
            };
            for r in m.recipients.iter().filter(|r| r.status == RecipientStatus::Pending) {
                *by.entry((state.into(), r.domain().to_ascii_lowercase())).or_default() += 1;
            }
        }
        // Bound label cardinality: the 50 largest destinations, the rest as "other".
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1));
        let mut other: BTreeMap<String, u64> = BTreeMap::new();
        for (k, ((state, dest), n)) in rows.into_iter().enumerate() {
            if k < 50 {
                metrics::gauge!("weir_queue_recipients", "state" => state, "destination" => dest).set(n as f64);
            } else {
                *other.entry(state).or_default() += n;
            }
        }
        for (state, n) in other {
            metrics::gauge!("weir_queue_recipients", "state" => state, "destination" => "other").set(n as f64);
        }
    }
}

/// A DSN to send: which action, and about which recipients.
pub struct Report {
    pub action: Action,
    pub recipients: Vec<usize>,
}

/// Decides the DSNs an attempt calls for, marking recipients reported.
pub fn reports(meta: &mut MessageMeta, delay_due: bool) -> Vec<Report> {
    let mut failed = Vec::new();
    let mut delivered = Vec::new();
    let mut relayed = Vec::new();
    let mut delayed = Vec::new();
    for (i, r) in meta.recipients.iter_mut().enumerate() {
        match r.status {
            RecipientStatus::Failed if !r.dsn_done => {
                r.dsn_done = true;
                if dsn::wants(r, Action::Failed) {
                    failed.push(i);
                }
            }
            RecipientStatus::Delivered if !r.dsn_done => {
                r.dsn_done = true;
                if dsn::wants(r, Action::Delivered) {
                    if r.relayed {
                        relayed.push(i);
                    } else {
                        delivered.push(i);
                    }
                }
            }
            RecipientStatus::Pending if delay_due && dsn::wants(r, Action::Delayed) => delayed.push(i),
            _ => {}
        }
    }
    if meta.sender.is_empty() {
        // Never a bounce to the null sender (RFC 5321 §6.1): it would loop.
        return Vec::new();
    }
    let mut out = Vec::new();
    for (action, list) in [
        (Action::Failed, failed),
        (Action::Delivered, delivered),
        (Action::Relayed, relayed),
        (Action::Delayed, delayed),
    ] {
        if !list.is_empty() {
            out.push(Report { action, recipients: list });
        }
    }
    out
}

/// Builds and queues a DSN about `original` (shared with operator bounces).
pub async fn queue_dsn(queue: &Queue, hostname: &str, original: &MessageMeta, body: &[u8], report: &Report) -> Result<String> {
    let entries: Vec<ReportEntry<'_>> = report
        .recipients
        .iter()
        .map(|i| {
            let r = &original.recipients[*i];
            let status = match report.action {
                Action::Failed => dsn::status_of(r.last_reply.as_deref(), true),
                Action::Delayed => dsn::status_of(r.last_reply.as_deref(), false),
                Action::Delivered | Action::Relayed => "2.0.0".into(),
            };
            ReportEntry { recipient: r, action: report.action, status }
        })
        .collect();
    let id = new_id();
    let text = dsn::build(hostname, original, body, &entries, &id);
    let meta = MessageMeta {
        id: id.clone(),
        received_at: chrono::Utc::now().timestamp(),
        sender: String::new(),
        recipients: vec![Recipient::new(original.sender.clone())],
        body_type: if text.iter().any(|b| *b >= 0x80) { BodyType::EightBitMime } else { BodyType::SevenBit },
        smtputf8: !original.sender.is_ascii(),
        declared_size: None,
        dsn_ret: None,
        dsn_envid: None,
        session: SessionFacts {
            listener: "dsn".into(),
            client_ip: "127.0.0.1".into(),
            client_port: 0,
            local_addr: String::new(),
            helo: hostname.to_string(),
            esmtp: true,
            tls: None,
            auth_user: None,
        },
        size: text.len() as u64,
        state: MessageState::Queued,
        next_attempt_ms: now_ms(),
        attempts: 0,
        priority: crate::config::Priority::Transactional,
        history: Vec::new(),
        delay_notified: false,
        decisions: Vec::new(),
        tags: Vec::new(),
        symbols: Vec::new(),
        quarantine: None,
    };
    queue.insert(&meta, text).await?;
    metrics::counter!("weir_dsn_total", "action" => format!("{:?}", report.action).to_lowercase()).increment(1);
    tracing::info!(id = %id, about = %original.id, to = %original.sender, action = ?report.action, "DSN queued");
    Ok(id)
}
