//! The control socket (`<data_dir>/weir.sock`): how `weir queue ...` reaches
//! a running server, whose RocksDB it cannot open itself (RocksDB allows one
//! writer process). One JSON request line, one JSON response line. When no
//! server answers, the CLI opens the queue directly (`QueueAccess::Local`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::delivery::ops::{QueueOps, Selector};
use crate::queue::{MessageMeta, Queue};

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("weir.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    List,
    Show { id: String },
    Body { id: String },
    Delete { id: String },
    Retry { selector: Selector },
    Hold { id: String },
    Release { id: String },
    Bounce { id: String },
    Reload,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub result: serde_json::Value,
}

async fn handle(ops: &QueueOps, reloader: Option<&crate::server::Reloader>, req: Request) -> Result<serde_json::Value> {
    let queue: &Queue = &ops.queue;
    Ok(match req {
        Request::Reload => match reloader {
            Some(r) => {
                let m = r.reload().await.map_err(|e| anyhow!("reload failed, the previous policy keeps running: {e}"))?;
                tracing::info!("{m}");
                serde_json::Value::String(m)
            }
            None => bail!("no server is running"),
        },
        Request::List => serde_json::to_value(queue.list()?)?,
        Request::Show { id } => serde_json::to_value(queue.get(&id)?)?,
        Request::Body { id } => serde_json::to_value(queue.body(&id)?.map(|b| crate::auth::encode_b64(&b)))?,
        Request::Delete { id } => serde_json::Value::Bool(ops.delete(&id).await?),
        Request::Retry { selector } => serde_json::to_value(ops.retry(&selector).await?)?,
        Request::Hold { id } => {
            ops.hold(&id).await?;
            serde_json::Value::Null
        }
        Request::Release { id } => {
            ops.release(&id).await?;
            serde_json::Value::Null
        }
        Request::Bounce { id } => {
            ops.bounce(&id).await?;
            serde_json::Value::Null
        }
    })
}

/// Binds the control socket (replacing a stale one) and serves it until shutdown.
pub fn start(
    data_dir: &Path,
    ops: Arc<QueueOps>,
    reloader: Arc<crate::server::Reloader>,
    shutdown: CancellationToken,
) -> Result<PathBuf> {
    let path = socket_path(data_dir);
    // We hold the queue's lock, so no other server uses this data dir: any
    // socket file here is left over from a crash.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding control socket {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let ops = ops.clone();
            let reloader = reloader.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let resp = match serde_json::from_str::<Request>(&line) {
                        Err(e) => Response { ok: false, error: Some(format!("bad request: {e}")), result: Default::default() },
                        Ok(req) => match handle(&ops, Some(&reloader), req).await {
                            Ok(result) => Response { ok: true, error: None, result },
                            Err(e) => Response { ok: false, error: Some(format!("{e:#}")), result: Default::default() },
                        },
                    };
                    let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
                    out.push(b'\n');
                    if w.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(socket_path(data_dir))
}

/// How the CLI reaches a queue: through a running server, or directly.
pub enum QueueAccess {
    Remote(PathBuf),
    Local(Box<QueueOps>, tokio::runtime::Runtime),
}

impl QueueAccess {
    /// `hostname` names the reporting MTA in DSNs made offline (`bounce`).
    pub fn open(data_dir: &Path, hostname: &str) -> Result<QueueAccess> {
        let sock = socket_path(data_dir);
        if UnixStream::connect(&sock).is_ok() {
            return Ok(QueueAccess::Remote(sock));
        }
        if !crate::queue::queue_path(data_dir).exists() {
            bail!(
                "no queue under {} (is --data-dir or the configuration's server.data_dir right?)",
                data_dir.display()
            );
        }
        let queue = Arc::new(Queue::open(data_dir)?);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let ops = QueueOps {
            queue,
            delivery: None,
            hostname: hostname.to_string(),
        };
        Ok(QueueAccess::Local(Box::new(ops), rt))
    }

    /// Only a running server will do (for `weir reload`).
    pub fn open_remote(data_dir: &Path) -> Result<QueueAccess> {
        let sock = socket_path(data_dir);
        UnixStream::connect(&sock)
            .map_err(|e| anyhow!("no server is running with data directory {} ({}: {e})", data_dir.display(), sock.display()))?;
        Ok(QueueAccess::Remote(sock))
    }

    fn remote(sock: &Path, req: &Request) -> Result<serde_json::Value> {
        let mut s = UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        s.write_all(&line)?;
        let mut resp = String::new();
        BufReader::new(s).read_line(&mut resp)?;
        let resp: Response = serde_json::from_str(&resp).context("the server's answer is not understood")?;
        if resp.ok {
            Ok(resp.result)
        } else {
            Err(anyhow!(resp.error.unwrap_or_else(|| "the server refused the request".into())))
        }
    }

    fn call(&self, req: Request) -> Result<serde_json::Value> {
        match self {
            QueueAccess::Remote(sock) => Self::remote(sock, &req),
            QueueAccess::Local(q, rt) => rt.block_on(handle(q, None, req)),
        }
    }

    pub fn list(&self) -> Result<Vec<MessageMeta>> {
        Ok(serde_json::from_value(self.call(Request::List)?)?)
    }

    pub fn show(&self, id: &str) -> Result<Option<MessageMeta>> {
        Ok(serde_json::from_value(self.call(Request::Show { id: id.into() })?)?)
    }

    pub fn body(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let v: Option<String> = serde_json::from_value(self.call(Request::Body { id: id.into() })?)?;
        v.map(|b| crate::auth::decode_b64(&b).map_err(|_| anyhow!("message body not decodable")))
            .transpose()
    }

    pub fn delete(&self, id: &str) -> Result<bool> {
        Ok(serde_json::from_value(self.call(Request::Delete { id: id.into() })?)?)
    }

    pub fn retry(&self, selector: Selector) -> Result<usize> {
        Ok(serde_json::from_value(self.call(Request::Retry { selector })?)?)
    }

    pub fn hold(&self, id: &str) -> Result<()> {
        self.call(Request::Hold { id: id.into() }).map(|_| ())
    }

    pub fn release(&self, id: &str) -> Result<()> {
        self.call(Request::Release { id: id.into() }).map(|_| ())
    }

    /// Asks the running server to reload its policy.
    pub fn reload(&self) -> Result<String> {
        match self {
            QueueAccess::Remote(_) => Ok(serde_json::from_value(self.call(Request::Reload)?)?),
            QueueAccess::Local(..) => bail!("no server is running on this data directory"),
        }
    }

    pub fn bounce(&self, id: &str) -> Result<()> {
        self.call(Request::Bounce { id: id.into() }).map(|_| ())
    }
}
