//! Shared helpers for the end-to-end tests: start a real `weir serve` on
//! free loopback ports in a temporary data directory, talk raw SMTP to it
//! (plain or TLS), run `weir` subcommands, and stop it.
#![allow(dead_code)]

pub mod zone;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A free port for helpers (sinks, LMTP and DNS servers, metrics): chosen
/// at random below the kernel's ephemeral range, where Weir's own
/// listeners (bound to port 0 in tests) and outgoing connections live, so
/// that concurrently running tests do not hand each other the same port.
pub fn free_port() -> u16 {
    loop {
        let p: u16 = 20000 + (rand::random::<u16>() % 12000);
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Caps the address space (RLIMIT_AS) of the process `cmd` will start.
pub fn limit_address_space(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit, async-signal-safe, runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The repository root (for tests/clients scripts and shared/): as cargo
/// and nextest tell the test process when they run it, else where this
/// test binary was built (which may be another checkout sharing the target
/// directory; see scripts/claim-target.sh).
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
}

pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub ports: HashMap<String, u16>,
    pub metrics_port: u16,
    /// A cap on the server process's address space (RLIMIT_AS), if any.
    pub address_space_limit: Option<u64>,
}

/// A config template: `{port:NAME}` (in listener NAME's bind address)
/// becomes port 0 — the server picks, and says where in
/// data_dir/listeners.json — and `{metrics}` a free port.
pub fn render(template: &str, metrics_port: u16) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{port:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let j = after.find('}').expect("closing brace");
        out.push('0');
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out.replace("{metrics}", &metrics_port.to_string())
}

/// A listener block with sensible test defaults.
pub const BASIC: &str = r#"
server:
  hostname: mx.test
  shutdown_grace: 10s
listeners:
  mx:
    bind: 127.0.0.1:{port:mx}
    tls: starttls
    auth: offer
metrics:
  bind: 127.0.0.1:{metrics}
relay:
  local_domains: [localhost, example.org]
delivery:
  enabled: false
"#;

impl Server {
    pub fn start(template: &str) -> Server {
        Self::start_with(template, &[])
    }

    pub fn start_with(template: &str, extra_args: &[&str]) -> Server {
        Self::start_limited(template, extra_args, None)
    }

    /// Like `start_with`, with the process's address space capped at
    /// `address_space_limit` bytes (RLIMIT_AS) when given.
    pub fn start_limited(template: &str, extra_args: &[&str], address_space_limit: Option<u64>) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = HashMap::new();
        let metrics_port = free_port();
        let text = render(template, metrics_port);
        let config = dir.path().join("weir.yaml");
        std::fs::write(&config, text).expect("write config");
        let mut s = Server {
            child: None,
            dir,
            config,
            ports,
            metrics_port,
            address_space_limit,
        };
        s.spawn(extra_args);
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weir.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts (or restarts) the server process and waits until every listener answers.
    pub fn spawn(&mut self, extra_args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(WEIR);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(limit) = self.address_space_limit {
            limit_address_space(&mut cmd, limit);
        }
        let listeners_file = self.data_dir().join("listeners.json");
        let _ = std::fs::remove_file(&listeners_file);
        let child = cmd.spawn().expect("spawn weir");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The server writes where its listeners are once they are bound.
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("weir exited early ({status}):\n{}", self.log());
                }
            }
            if let Ok(text) = std::fs::read_to_string(&listeners_file) {
                if let Ok(map) = serde_json::from_str::<HashMap<String, String>>(&text) {
                    self.ports = map
                        .into_iter()
                        .map(|(k, v)| (k, v.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)))
                        .collect();
                    break;
                }
            }
            assert!(Instant::now() < deadline, "weir never wrote {}:\n{}", listeners_file.display(), self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        for (name, port) in self.ports.clone() {
            loop {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("weir exited early ({status}) starting listener {name}:\n{}", self.log());
                    }
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "listener {name} on {port} never came up:\n{}", self.log());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn port(&self, name: &str) -> u16 {
        *self.ports.get(name).unwrap_or_else(|| panic!("no port named {name}"))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal and waits for the process to end; returns its exit status.
    pub fn signal_and_wait(&mut self, sig: i32, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.pid();
        unsafe {
            libc::kill(pid, sig);
        }
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "weir did not exit after signal {sig}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if self.child.is_some() {
            let st = self.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
            assert!(st.success(), "weir exited with {st} on SIGTERM:\n{}", self.log());
        }
    }

    pub fn kill(&mut self) {
        if self.child.is_some() {
            self.signal_and_wait(libc::SIGKILL, Duration::from_secs(30));
        }
    }

    /// Runs `weir ARGS --config CONFIG --data-dir DATA`.
    pub fn weir(&self, args: &[&str]) -> Output {
        Command::new(WEIR)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .expect("run weir")
    }

    /// The queue as `weir queue list --json` reports it.
    pub fn queue_list(&self) -> Vec<serde_json::Value> {
        let out = self.weir(&["queue", "list", "--json"]);
        assert!(out.status.success(), "queue list failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("queue list JSON")
    }

    pub fn queue_show(&self, id: &str) -> serde_json::Value {
        let out = self.weir(&["queue", "show", id, "--json"]);
        assert!(out.status.success(), "queue show failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("queue show JSON")
    }

    pub fn queue_raw(&self, id: &str) -> Vec<u8> {
        let out = self.weir(&["queue", "show", id, "--raw"]);
        assert!(out.status.success(), "queue show --raw failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.data_dir().join("tls").join("selfsigned.crt")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of the weir log ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    out
}

/// Reads the value of a Prometheus series line that starts with `prefix`
/// (name plus labels), summing every match.
pub fn metric_value(text: &str, name: &str, label_parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| label_parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The client side of a test connection: plain TCP, or TLS over it.
pub enum ClientStream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.read(buf),
            ClientStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.write(buf),
            ClientStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.flush(),
            ClientStream::Tls(s) => s.flush(),
        }
    }
}

/// A raw SMTP client for protocol tests, over TCP or TLS.
pub struct Smtp {
    r: BufReader<ClientStream>,
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub code: u16,
    pub text: String,
}

impl Resp {
    /// Asserts code and enhanced code, e.g. `r.is(503, "5.5.1")`.
    pub fn is(&self, code: u16, enhanced: &str) -> &Self {
        assert_eq!(self.code, code, "unexpected reply: {}", self.text);
        if !enhanced.is_empty() {
            let first = self.text.lines().next().unwrap_or("");
            assert!(
                first.get(4..).unwrap_or("").starts_with(enhanced),
                "expected enhanced code {enhanced} in: {}",
                self.text
            );
        }
        self
    }
}

impl Smtp {
    pub fn connect(port: u16) -> Smtp {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s.set_nodelay(true).ok();
        let mut c = Smtp {
            r: BufReader::new(ClientStream::Tcp(s)),
        };
        c.read().is(220, "");
        c
    }

    pub fn connect_tls(port: u16, cert: &Path) -> Smtp {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let tls = tls_client(s, cert);
        let mut c = Smtp {
            r: BufReader::new(ClientStream::Tls(Box::new(tls))),
        };
        c.read().is(220, "");
        c
    }

    /// Sends STARTTLS (plus `pipelined` in the same write) and upgrades.
    pub fn starttls(self, cert: &Path, pipelined: &str) -> Smtp {
        let mut inner = self.r;
        assert!(inner.buffer().is_empty(), "unread data before STARTTLS");
        let stream = inner.get_mut();
        // One write, so the injected bytes travel with STARTTLS as an attacker's would.
        stream
            .write_all(format!("STARTTLS\r\n{pipelined}").as_bytes())
            .expect("send STARTTLS");
        stream.flush().ok();
        let mut c = Smtp { r: inner };
        c.read().is(220, "2.0.0");
        assert!(c.r.buffer().is_empty(), "the server answered the command pipelined after STARTTLS");
        let tcp = match c.r.into_inner() {
            ClientStream::Tcp(t) => t,
            ClientStream::Tls(_) => panic!("STARTTLS on a TLS connection"),
        };
        let tls = tls_client(tcp, cert);
        Smtp {
            r: BufReader::new(ClientStream::Tls(Box::new(tls))),
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        let s = self.r.get_mut();
        s.write_all(data).expect("send");
        s.flush().ok();
    }

    pub fn read(&mut self) -> Resp {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed while reading a reply (so far: {text:?})");
            text.push_str(&line);
            let b = line.as_bytes();
            assert!(b.len() >= 4, "short reply line {line:?}");
            if b[3] == b' ' || b[3] == b'\r' {
                let code = line[..3].parse().expect("reply code");
                return Resp { code, text };
            }
        }
    }

    /// Reads until the server closes; true if it did within the timeout.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(self.r.read(&mut buf), Ok(0))
    }

    pub fn cmd(&mut self, line: &str) -> Resp {
        self.send(format!("{line}\r\n").as_bytes());
        self.read()
    }

    /// EHLO, MAIL, RCPT..., DATA, the message, and the final reply.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> Resp {
        self.cmd(&format!("MAIL FROM:<{from}>")).is(250, "2.1.0");
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>")).is(250, "2.1.5");
        }
        self.cmd("DATA").is(354, "");
        self.send(body.as_bytes());
        self.send(b"\r\n.\r\n");
        self.read()
    }
}

/// Queue id from a "250 2.0.0 OK: queued as ID" reply.
pub fn queued_id(r: &Resp) -> String {
    r.is(250, "2.0.0");
    r.text
        .trim_end()
        .rsplit(' ')
        .next()
        .expect("queue id")
        .to_string()
}

pub fn tls_client(tcp: TcpStream, cert: &Path) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).expect("read cert") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client conn");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake now so failures show here.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

/// Runs a command, failing the test with its output if it does not succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it returns Some, or fails the test after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Postfix's smtp-sink on a loopback address, dumping each message to a file.
pub struct Sink {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: String,
}

impl Sink {
    /// `ip` is the loopback address to bind (127.0.0.1, 127.0.0.2, ...).
    pub fn start(ip: &str, port: u16, extra: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let addr = format!("{ip}:{port}");
        let child = Command::new("smtp-sink")
            .args(["-u", "nobody", "-d"])
            .arg(format!("{}/%H%M%S.", dir.path().display()))
            .args(extra)
            .arg(&addr)
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn smtp-sink (apt-get install postfix)");
        wait_for(20, "smtp-sink to listen", || TcpStream::connect(&addr).ok());
        Sink { child, dir, addr }
    }

    /// The dumped messages.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    out.push(s);
                }
            }
        }
        out
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Weir queue id in a delivered message's Received: header.
pub fn weir_id(message: &str) -> Option<String> {
    let i = message.find("(Weir) with ")?;
    let rest = &message[i..];
    let j = rest.find(" id ")?;
    Some(rest[j + 4..].split(|c: char| !c.is_ascii_alphanumeric()).next()?.to_string())
}

/// Where `make plugins` puts the plugin components.
pub fn plugin_dir() -> PathBuf {
    let weir = Path::new(WEIR);
    // <target>/release/weir -> <target>/wasm32-wasip2/release
    weir.parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("wasm32-wasip2").join("release"))
        .expect("target directory")
}

/// The path of a built plugin, e.g. `plugin("test_loop")`.
pub fn plugin(name: &str) -> String {
    let p = plugin_dir().join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `make plugins`", p.display());
    p.display().to_string()
}

/// An argon2 hash of `password`, as `weir passwd` prints it.
pub fn password_hash(password: &str) -> String {
    let out = run_ok(Command::new("sh").arg("-c").arg(format!("printf '%s\\n' '{password}' | {WEIR} passwd")));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

/// DKIM test keys made with openssl: PEM private keys and the p= values of
/// their DNS records.
pub struct DkimKeys {
    pub rsa_pem: String,
    pub rsa_record: String,
    pub ed25519_pem: String,
    pub ed25519_record: String,
}

pub fn dkim_keys(dir: &Path) -> DkimKeys {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rsa = dir.join("dkim-rsa.pem");
    let ed = dir.join("dkim-ed25519.pem");
    run_ok(Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&rsa));
    run_ok(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&ed));
    let public = |key: &Path| run_ok(Command::new("openssl").args(["pkey", "-pubout", "-outform", "DER", "-in"]).arg(key)).stdout;
    let rsa_spki = public(&rsa);
    let ed_spki = public(&ed);
    // An Ed25519 SubjectPublicKeyInfo ends with the 32-octet raw key, which
    // is what DKIM publishes (RFC 8463).
    let ed_raw = &ed_spki[ed_spki.len() - 32..];
    DkimKeys {
        rsa_pem: std::fs::read_to_string(&rsa).expect("rsa key"),
        rsa_record: format!("v=DKIM1; k=rsa; p={}", b64.encode(&rsa_spki)),
        ed25519_pem: std::fs::read_to_string(&ed).expect("ed25519 key"),
        ed25519_record: format!("v=DKIM1; k=ed25519; p={}", b64.encode(ed_raw)),
    }
}

/// Verifies a message's DKIM signatures with python3-dkim; `records` maps
/// TXT names to values. Returns (all passed, the verifier's output).
pub fn dkimpy_verify(message: &[u8], records: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = dir.path().join("message.eml");
    let recs = dir.path().join("records.json");
    std::fs::write(&msg, message).expect("write message");
    let map: serde_json::Map<String, serde_json::Value> =
        records.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    std::fs::write(&recs, serde_json::to_vec(&map).expect("json")).expect("write records");
    let out = Command::new("/usr/bin/python3")
        .arg(repo_root().join("tests/clients/dkim_verify.py"))
        .arg(&msg)
        .arg(&recs)
        .output()
        .expect("running python3 dkim_verify.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
