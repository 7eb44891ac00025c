//! A client connection as the SMTP session sees it: plain TCP or TLS, a read
//! buffer the session controls (so that what a client pipelined after
//! STARTTLS can be thrown away), bounded line reads, and a write buffer that
//! is flushed whenever the session would otherwise wait for input — which is
//! exactly the batching PIPELINING (RFC 2920) asks of a server.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::smtp::reply::Reply;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Protocol version and cipher suite of an established TLS session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

impl TlsInfo {
    fn of(s: &TlsStream<TcpStream>) -> TlsInfo {
        let (_, c) = s.get_ref();
        let version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_string(),
        };
        let cipher = c
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_else(|| "unknown".into());
        TlsInfo { version, cipher }
    }
}

/// What a line read gave.
pub enum Line {
    /// A complete line, CRLF (or bare LF) included.
    Complete(Vec<u8>),
    /// The line was longer than allowed; it was read to its end and dropped.
    TooLong,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by client")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

const READ_CHUNK: usize = 16 * 1024;

pub struct Conn {
    stream: Option<Stream>,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn {
            stream: Some(stream),
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
        }
    }

    fn stream(&mut self) -> io::Result<&mut Stream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream taken"))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Some(Stream::Tls(_)))
    }

    /// Queues a reply; it goes out at the next flush.
    pub fn queue_reply(&mut self, r: &Reply) {
        r.write_to(&mut self.wbuf);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let s = self.stream()?;
        s.write_all(&buf).await?;
        s.flush().await?;
        self.wbuf = buf;
        self.wbuf.clear();
        Ok(())
    }

    /// Queues and sends a reply now.
    pub async fn send(&mut self, r: &Reply) -> io::Result<()> {
        self.queue_reply(r);
        self.flush().await
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.rpos = (self.rpos + n).min(self.rbuf.len());
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Throws away everything received and not yet consumed.
    pub fn discard_buffered(&mut self) {
        self.rbuf.clear();
        self.rpos = 0;
    }

    /// Flushes pending replies, then waits for more input.
    pub async fn fill(&mut self, timeout: Duration) -> Result<(), ReadError> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        // Read into the spare capacity: zeroing a whole chunk before every
        // read wrote 16 KiB per command line, pushing the plugins' and
        // other sessions' data out of the cache.
        self.rbuf.reserve(READ_CHUNK);
        let stream = self.stream.as_mut().ok_or(ReadError::Closed)?;
        let n = match tokio::time::timeout(timeout, stream.read_buf(&mut self.rbuf)).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(())
    }

    /// Reads one line of at most `max` octets (terminator included). A longer
    /// line is consumed to its LF without being kept, and reported.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, ReadError> {
        let mut too_long = false;
        loop {
            let avail = &self.rbuf[self.rpos..];
            if let Some(p) = memchr::memchr(b'\n', avail) {
                let line = if too_long || p + 1 > max {
                    None
                } else {
                    Some(avail[..=p].to_vec())
                };
                self.consume(p + 1);
                return Ok(match line {
                    Some(l) => Line::Complete(l),
                    None => Line::TooLong,
                });
            }
            if avail.len() > max {
                too_long = true;
                let n = avail.len();
                self.consume(n);
            }
            self.fill(timeout).await?;
        }
    }

    /// Takes up to `want` bytes from the buffer, reading if it is empty.
    pub async fn read_some(&mut self, want: usize, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        if self.buffered().is_empty() {
            self.fill(timeout).await?;
        }
        let n = want.min(self.buffered().len());
        let out = self.buffered()[..n].to_vec();
        self.consume(n);
        Ok(out)
    }

    /// Upgrades a plain connection to TLS (STARTTLS or implicit TLS).
    /// Anything still buffered is discarded first: it was sent in the clear
    /// before the handshake and must never be executed (RFC 3207 §5).
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor, timeout: Duration) -> io::Result<TlsInfo> {
        self.discard_buffered();
        self.wbuf.clear();
        let tcp = match self.stream.take() {
            Some(Stream::Plain(t)) => t,
            Some(other) => {
                self.stream = Some(other);
                return Err(io::Error::other("TLS already active"));
            }
            None => return Err(io::Error::new(io::ErrorKind::NotConnected, "stream taken")),
        };
        let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let info = TlsInfo::of(&tls);
        self.stream = Some(Stream::Tls(Box::new(tls)));
        Ok(info)
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        if let Some(s) = self.stream.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
        }
    }
}

/// Builds the acceptor used for STARTTLS and implicit TLS.
pub fn acceptor(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config)
}
