//! Operator actions on queued messages — retry, hold, release, bounce,
//! delete — shared by the control socket (server running: the scheduler is
//! told, and a message being delivered right now is left alone) and the CLI
//! working on the queue directly (server stopped).

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

use crate::delivery::{queue_dsn, reports, Delivery};
use crate::queue::id::now_ms;
use crate::queue::message::{MessageMeta, MessageState, RecipientStatus};
use crate::queue::Queue;

pub struct QueueOps {
    pub queue: Arc<Queue>,
    pub delivery: Option<Arc<Delivery>>,
    pub hostname: String,
}

/// Which messages `retry` applies to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Id(String),
    All,
    Destination(String),
}

impl QueueOps {
    fn check_idle(&self, id: &str) -> Result<()> {
        if self.delivery.as_ref().is_some_and(|d| d.is_in_flight(id)) {
            bail!("message {id} is being delivered right now; try again in a moment");
        }
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<MessageMeta>> {
        self.queue.get(id)
    }

    fn wake(&self) {
        if let Some(d) = &self.delivery {
            d.wake.notify_one();
        }
    }

    /// Schedules messages for an attempt now; returns how many.
    pub async fn retry(&self, sel: &Selector) -> Result<usize> {
        let targets: Vec<MessageMeta> = match sel {
            Selector::Id(id) => vec![self.get(id)?.ok_or_else(|| anyhow!("no message {id} in the queue"))?],
            Selector::All => self.queue.list()?,
            Selector::Destination(d) => {
                let d = d.to_ascii_lowercase();
                self.queue
                    .list()?
                    .into_iter()
                    .filter(|m| m.pending().any(|(_, r)| r.domain().eq_ignore_ascii_case(&d)))
                    .collect()
            }
        };
        let mut n = 0;
        for m in targets {
            if m.state != MessageState::Queued {
                if matches!(sel, Selector::Id(_)) {
                    bail!("message {} is held; release it instead", m.id);
                }
                continue;
            }
            if self.delivery.as_ref().is_some_and(|d| d.is_in_flight(&m.id)) {
                continue;
            }
            let mut new = m.clone();
            new.next_attempt_ms = now_ms();
            self.queue.update(&m, &new).await?;
            n += 1;
        }
        self.wake();
        Ok(n)
    }

    /// Takes a message out of scheduling until released.
    pub async fn hold(&self, id: &str) -> Result<()> {
        self.check_idle(id)?;
        let m = self.get(id)?.ok_or_else(|| anyhow!("no message {id} in the queue"))?;
        if m.state == MessageState::Held {
            return Ok(());
        }
        let mut new = m.clone();
        new.state = MessageState::Held;
        self.queue.update(&m, &new).await?;
        tracing::info!(id = %id, "held by operator");
        Ok(())
    }

    pub async fn release(&self, id: &str) -> Result<()> {
        let m = self.get(id)?.ok_or_else(|| anyhow!("no message {id} in the queue"))?;
        if m.state == MessageState::Queued {
            return Ok(());
        }
        let mut new = m.clone();
        new.state = MessageState::Queued;
        new.next_attempt_ms = now_ms();
        self.queue.update(&m, &new).await?;
        tracing::info!(id = %id, "released by operator");
        self.wake();
        Ok(())
    }

    /// Fails every pending recipient now, sends the DSN, removes the message.
    pub async fn bounce(&self, id: &str) -> Result<()> {
        self.check_idle(id)?;
        let m = self.get(id)?.ok_or_else(|| anyhow!("no message {id} in the queue"))?;
        let body = self.queue.body(id)?.unwrap_or_default();
        let mut cur = m.clone();
        for r in cur.recipients.iter_mut().filter(|r| r.status == RecipientStatus::Pending) {
            r.status = RecipientStatus::Failed;
            r.last_reply = Some("5.0.0 returned to sender by the postmaster".into());
        }
        for report in reports(&mut cur, false) {
            queue_dsn(&self.queue, &self.hostname, &cur, &body, &report).await?;
        }
        self.queue.remove(&m).await?;
        tracing::info!(id = %id, "bounced by operator");
        self.wake();
        Ok(())
    }

    pub async fn delete(&self, id: &str) -> Result<bool> {
        self.check_idle(id)?;
        let deleted = self.queue.delete(id).await?;
        if deleted {
            tracing::info!(id = %id, "deleted by operator");
        }
        Ok(deleted)
    }
}
