//! The outbound SMTP and LMTP client: greeting, EHLO/LHLO (HELO fallback),
//! STARTTLS (opportunistic or required, rustls, verification per route),
//! AUTH PLAIN/LOGIN, then per message MAIL/RCPT (pipelined when offered,
//! with SIZE, BODY, SMTPUTF8 and DSN parameters when offered), DATA with
//! dot-stuffing or BDAT when CHUNKING is offered, and a result per
//! recipient. A connection is reused for further messages after RSET.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::auth::encode_b64;
use crate::queue::message::{BodyType, DsnRet, MessageMeta, Recipient};

/// A reply from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub code: u16,
    /// All lines joined with a space, codes stripped from continuation lines.
    pub text: String,
}

impl RemoteReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// The enhanced status code at the start of the text, if any.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.text.split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| first.to_string())
    }
}

impl std::fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Why a connection or a transaction failed as a whole.
#[derive(Debug, Clone)]
pub enum ClientError {
    /// The server said no (to the greeting, EHLO, MAIL, DATA, ...).
    Reply(RemoteReply),
    /// Network, TLS or protocol trouble: always temporary.
    Io(String),
    /// A reused connection turned out to be closed before the new
    /// transaction got anywhere: safe to retry on a fresh connection.
    Stale(String),
}

impl ClientError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Reply(r) if r.is_permanent())
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Reply(r) => write!(f, "{r}"),
            ClientError::Io(m) | ClientError::Stale(m) => write!(f, "{m}"),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TCP stream is being moved into TLS.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection is being upgraded")
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How to talk to one server.
#[derive(Clone)]
pub struct ClientOptions {
    pub lmtp: bool,
    pub helo_name: String,
    pub tls: crate::config::OutboundTls,
    /// Name the certificate must carry (the MX or smarthost host name).
    pub tls_name: String,
    pub tls_config: Arc<rustls::ClientConfig>,
    pub auth: Option<(String, String)>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
}

impl Capabilities {
    fn from_ehlo(text_lines: &[String]) -> Capabilities {
        let mut c = Capabilities {
            esmtp: true,
            ..Default::default()
        };
        for l in text_lines.iter().skip(1) {
            let mut words = l.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = words.next().and_then(|w| w.parse().ok()).filter(|n| *n > 0),
                "8BITMIME" => c.eight_bit = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "CHUNKING" => c.chunking = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                "AUTH" => {
                    for m in words {
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => c.auth_plain = true,
                            "LOGIN" => c.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }
}

/// Per-recipient result of one transaction.
#[derive(Debug, Clone)]
pub enum RcptResult {
    Accepted(RemoteReply),
    Refused(RemoteReply),
}

pub struct SmtpClient {
    stream: Stream,
    rbuf: Vec<u8>,
    pub caps: Capabilities,
    /// What the server called itself in its greeting, and its address.
    pub remote: String,
    pub tls_active: bool,
    pub messages_sent: usize,
    opts: ClientOptions,
    /// Text lines of the last reply (EHLO capabilities are read from them).
    last_lines: Vec<String>,
}

/// Outcome of sending one message: a result for every recipient given.
pub type SendResult = Result<Vec<RcptResult>, ClientError>;

impl SmtpClient {
    pub async fn connect(target: &Target, opts: &ClientOptions) -> Result<SmtpClient, ClientError> {
        let stream = match target {
            Target::Tcp(addr) => {
                let tcp = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| ClientError::Io(format!("connect to {addr} timed out")))?
                    .map_err(|e| ClientError::Io(format!("connect to {addr}: {e}")))?;
                let _ = tcp.set_nodelay(true);
                Stream::Tcp(tcp)
            }
            Target::Unix(p) => Stream::Unix(
                tokio::time::timeout(opts.connect_timeout, UnixStream::connect(p))
                    .await
                    .map_err(|_| ClientError::Io(format!("connect to {} timed out", p.display())))?
                    .map_err(|e| ClientError::Io(format!("connect to {}: {e}", p.display())))?,
            ),
        };
        let mut c = SmtpClient {
            stream,
            rbuf: Vec::new(),
            caps: Capabilities::default(),
            remote: target.to_string(),
            tls_active: false,
            messages_sent: 0,
            opts: opts.clone(),
            last_lines: Vec::new(),
        };
        if opts.tls == crate::config::OutboundTls::Implicit {
            c.handshake().await?;
        }
        let greeting = c.read_reply(opts.command_timeout).await?;
        if greeting.code != 220 {
            return Err(ClientError::Reply(greeting));
        }
        if let Some(name) = greeting.text.split_whitespace().next() {
            c.remote = format!("{name} [{target}]");
        }
        c.hello().await?;
        use crate::config::OutboundTls;
        if !c.tls_active && !opts.lmtp {
            match opts.tls {
                OutboundTls::Required if !c.caps.starttls => {
                    return Err(ClientError::Io(format!("{}: TLS required but STARTTLS not offered", c.remote)));
                }
                OutboundTls::Required | OutboundTls::Opportunistic if c.caps.starttls => {
                    let r = c.command("STARTTLS", opts.command_timeout).await?;
                    if r.code != 220 {
                        if opts.tls == OutboundTls::Required {
                            return Err(ClientError::Reply(r));
                        }
                    } else {
                        c.handshake().await?;
                        c.hello().await?;
                    }
                }
                _ => {}
            }
        }
        if let Some((user, pass)) = opts.auth.clone() {
            c.authenticate(&user, &pass).await?;
        }
        Ok(c)
    }

    async fn handshake(&mut self) -> Result<(), ClientError> {
        if !self.rbuf.is_empty() {
            return Err(ClientError::Io("server sent data before the TLS handshake".into()));
        }
        let tcp = match std::mem::replace(&mut self.stream, Stream::Detached) {
            Stream::Tcp(t) => t,
            other => {
                self.stream = other;
                return Err(ClientError::Io("TLS is only possible over TCP".into()));
            }
        };
        let name = rustls::pki_types::ServerName::try_from(self.opts.tls_name.clone())
            .map_err(|e| ClientError::Io(format!("bad TLS name {}: {e}", self.opts.tls_name)))?;
        let connector = TlsConnector::from(self.opts.tls_config.clone());
        let tls = tokio::time::timeout(self.opts.command_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Io("TLS handshake timed out".into()))?
            .map_err(|e| ClientError::Io(format!("TLS handshake with {}: {e}", self.remote)))?;
        self.stream = Stream::Tls(Box::new(tls));
        self.tls_active = true;
        Ok(())
    }

    async fn hello(&mut self) -> Result<(), ClientError> {
        let t = self.opts.command_timeout;
        if self.opts.lmtp {
            let r = self.command(&format!("LHLO {}", self.opts.helo_name), t).await?;
            if r.code != 250 {
                return Err(ClientError::Reply(r));
            }
            self.caps = Capabilities::from_ehlo(&self.last_lines);
            return Ok(());
        }
        let r = self.command(&format!("EHLO {}", self.opts.helo_name), t).await?;
        if r.code == 250 {
            self.caps = Capabilities::from_ehlo(&self.last_lines);
            return Ok(());
        }
        if r.is_permanent() {
            let r = self.command(&format!("HELO {}", self.opts.helo_name), t).await?;
            if r.code == 250 {
                self.caps = Capabilities::default();
                return Ok(());
            }
            return Err(ClientError::Reply(r));
        }
        Err(ClientError::Reply(r))
    }

    async fn authenticate(&mut self, user: &str, pass: &str) -> Result<(), ClientError> {
        if !self.tls_active {
            return Err(ClientError::Io("refusing to authenticate without TLS".into()));
        }
        let t = self.opts.command_timeout;
        let r = if self.caps.auth_plain {
            let token = encode_b64(format!("\0{user}\0{pass}").as_bytes());
            self.command(&format!("AUTH PLAIN {token}"), t).await?
        } else if self.caps.auth_login {
            let r = self.command("AUTH LOGIN", t).await?;
            if r.code != 334 {
                return Err(ClientError::Reply(r));
            }
            let r = self.command(&encode_b64(user.as_bytes()), t).await?;
            if r.code != 334 {
                return Err(ClientError::Reply(r));
            }
            self.command(&encode_b64(pass.as_bytes()), t).await?
        } else {
            return Err(ClientError::Io(format!("{} offers no AUTH mechanism we speak", self.remote)));
        };
        if r.code != 235 {
            return Err(ClientError::Reply(r));
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let t = self.opts.data_timeout;
        tokio::time::timeout(t, async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Io("write timed out".into()))??;
        Ok(())
    }

    async fn command(&mut self, line: &str, timeout: Duration) -> Result<RemoteReply, ClientError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(timeout).await
    }

    async fn read_reply(&mut self, timeout: Duration) -> Result<RemoteReply, ClientError> {
        let mut lines = Vec::new();
        let mut code = 0u16;
        loop {
            let line = self.read_line(timeout).await?;
            // Byte-wise: a hostile server's non-UTF-8 must not split a character.
            let c: u16 = line
                .get(..3)
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| ClientError::Io(format!("malformed reply line {line:?}")))?;
            code = if code == 0 { c } else { code };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                break;
            }
            if lines.len() > 1000 {
                return Err(ClientError::Io("reply too long".into()));
            }
        }
        let text = lines.join(" ");
        self.last_lines = lines;
        Ok(RemoteReply { code, text })
    }

    async fn read_line(&mut self, timeout: Duration) -> Result<String, ClientError> {
        loop {
            if let Some(p) = self.rbuf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.rbuf.drain(..=p).collect();
                let s = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
                return Ok(s);
            }
            if self.rbuf.len() > 64 * 1024 {
                return Err(ClientError::Io("reply line too long".into()));
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(timeout, self.stream.read(&mut buf))
                .await
                .map_err(|_| ClientError::Io(format!("{}: timed out waiting for a reply", self.remote)))??;
            if n == 0 {
                return Err(ClientError::Io(format!("{}: connection closed", self.remote)));
            }
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// Sends one message to `rcpts`. Ok carries a result per recipient, in
    /// order; Err means the transaction failed as a whole.
    pub async fn send(&mut self, meta: &MessageMeta, rcpts: &[&Recipient], body: &[u8]) -> SendResult {
        let t = self.opts.command_timeout;
        let caps = self.caps.clone();
        let mut mail = format!("MAIL FROM:<{}>", meta.sender);
        if caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if let Some(max) = caps.size {
            if body.len() as u64 > max {
                return Err(ClientError::Reply(RemoteReply {
                    code: 552,
                    text: format!("5.3.4 message size {} exceeds the remote limit of {max}", body.len()),
                }));
            }
        }
        if meta.body_type == BodyType::EightBitMime && caps.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if meta.smtputf8 {
            if !caps.smtputf8 {
                return Err(ClientError::Reply(RemoteReply {
                    code: 553,
                    text: "5.6.7 the remote server does not support SMTPUTF8".into(),
                }));
            }
            mail.push_str(" SMTPUTF8");
        }
        if caps.dsn {
            match meta.dsn_ret {
                Some(DsnRet::Full) => mail.push_str(" RET=FULL"),
                Some(DsnRet::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(e) = &meta.dsn_envid {
                mail.push_str(&format!(" ENVID={}", xtext(e)));
            }
        }
        let mut rcpt_lines = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            let mut l = format!("RCPT TO:<{}>", r.address);
            if caps.dsn {
                let n = &r.notify;
                let mut parts = Vec::new();
                if n.never {
                    parts.push("NEVER");
                } else {
                    if n.success {
                        parts.push("SUCCESS");
                    }
                    if n.failure {
                        parts.push("FAILURE");
                    }
                    if n.delay {
                        parts.push("DELAY");
                    }
                }
                if !parts.is_empty() {
                    l.push_str(&format!(" NOTIFY={}", parts.join(",")));
                }
                if let Some(o) = &r.orcpt {
                    let o = if o.contains(';') { o.clone() } else { format!("rfc822;{o}") };
                    let (kind, addr) = o.split_once(';').unwrap_or(("rfc822", &o));
                    l.push_str(&format!(" ORCPT={kind};{}", xtext(addr)));
                }
            }
            rcpt_lines.push(l);
        }
        // MAIL and RCPT: pipelined when offered (RFC 2920), else in lock-step.
        let stale = |e: ClientError| match e {
            ClientError::Io(m) => ClientError::Stale(m),
            other => other,
        };
        let (mail_reply, rcpt_replies) = if caps.pipelining {
            let mut batch = format!("{mail}\r\n");
            for l in &rcpt_lines {
                batch.push_str(l);
                batch.push_str("\r\n");
            }
            self.write(batch.as_bytes()).await.map_err(stale)?;
            let m = self.read_reply(t).await.map_err(stale)?;
            let mut rr = Vec::with_capacity(rcpt_lines.len());
            for _ in &rcpt_lines {
                rr.push(self.read_reply(t).await?);
            }
            (m, rr)
        } else {
            let m = self.command(&mail, t).await.map_err(stale)?;
            let mut rr = Vec::new();
            if m.is_positive() {
                for l in &rcpt_lines {
                    rr.push(self.command(l, t).await?);
                }
            }
            (m, rr)
        };
        if !mail_reply.is_positive() {
            let _ = self.reset().await;
            return Err(ClientError::Reply(mail_reply));
        }
        let accepted: Vec<usize> = rcpt_replies
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_positive())
            .map(|(i, _)| i)
            .collect();
        if accepted.is_empty() {
            let _ = self.reset().await;
            return Ok(rcpt_replies.into_iter().map(RcptResult::Refused).collect());
        }
        // The message itself.
        let final_replies: Vec<RemoteReply> = if caps.chunking && !self.opts.lmtp {
            let mut chunk = format!("BDAT {} LAST\r\n", body.len()).into_bytes();
            chunk.extend_from_slice(body);
            self.write(&chunk).await?;
            vec![self.read_reply(self.opts.data_timeout).await?]
        } else {
            let r = self.command("DATA", t).await?;
            if r.code != 354 {
                let _ = self.reset().await;
                return Err(ClientError::Reply(r));
            }
            let mut data = dot_stuff(body);
            data.extend_from_slice(b".\r\n");
            self.write(&data).await?;
            if self.opts.lmtp {
                // RFC 2033: one reply per accepted recipient, in order.
                let mut v = Vec::with_capacity(accepted.len());
                for _ in &accepted {
                    v.push(self.read_reply(self.opts.data_timeout).await?);
                }
                v
            } else {
                vec![self.read_reply(self.opts.data_timeout).await?]
            }
        };
        self.messages_sent += 1;
        let mut out: Vec<RcptResult> = rcpt_replies.into_iter().map(RcptResult::Refused).collect();
        for (k, idx) in accepted.iter().enumerate() {
            let reply = if self.opts.lmtp { final_replies[k].clone() } else { final_replies[0].clone() };
            out[*idx] = if reply.is_positive() {
                RcptResult::Accepted(reply)
            } else {
                RcptResult::Refused(reply)
            };
        }
        Ok(out)
    }

    pub fn is_lmtp(&self) -> bool {
        self.opts.lmtp
    }

    /// RSET, so the connection can carry another message.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        let r = self.command("RSET", self.opts.command_timeout).await?;
        if r.code == 250 {
            Ok(())
        } else {
            Err(ClientError::Reply(r))
        }
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.command("QUIT", Duration::from_secs(5)).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// RFC 3461 xtext: `+XX` for `+`, `=` and anything outside printable ASCII.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Dot-stuffing (RFC 5321 §4.5.2), making sure the data ends with CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        if out.ends_with(b"\r") {
            out.push(b'\n');
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// TLS client settings for a route: verification against a CA file, the
/// system store, or (opportunistic MX, the norm between MTAs) not at all.
pub fn tls_config(verify: bool, ca_file: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let cfg = if verify {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(p) => {
                for c in rustls::pki_types::CertificateDer::pem_file_iter(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?
                {
                    roots.add(c.map_err(|e| anyhow::anyhow!("parsing {}: {e}", p.display()))?)?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// Accepts any certificate (opportunistic TLS: encryption without authentication).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..c\r\n"), b"..a\r\nb\r\n...c\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n");
        assert_eq!(dot_stuff(b"x\r\n.\r\n"), b"x\r\n..\r\n");
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn enhanced_code_extraction() {
        let r = RemoteReply { code: 550, text: "5.1.1 no such user".into() };
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        let r = RemoteReply { code: 550, text: "no such user".into() };
        assert_eq!(r.enhanced(), None);
    }

    #[test]
    fn capabilities() {
        let lines: Vec<String> = ["mx Hello", "PIPELINING", "SIZE 1000", "AUTH LOGIN PLAIN", "CHUNKING", "DSN", "STARTTLS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let c = Capabilities::from_ehlo(&lines);
        assert!(c.pipelining && c.chunking && c.dsn && c.starttls && c.auth_plain && c.auth_login);
        assert_eq!(c.size, Some(1000));
        assert!(!c.eight_bit);
    }
}
