//! Host capabilities. In Weir each is granted per plugin in the policy
//! YAML; calling one that was not granted ends the call with a fault (the
//! step's `on_error` applies). In native tests they are answered by the
//! [`crate::testing::Harness`].

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::weir::plugin as w;

    pub fn log(level: Level, message: &str) {
        let l = match level {
            Level::Debug => w::log::Level::Debug,
            Level::Info => w::log::Level::Info,
            Level::Warn => w::log::Level::Warn,
            Level::Error => w::log::Level::Error,
        };
        w::log::write(l, message)
    }
    pub fn config() -> String {
        w::config::get()
    }
    pub fn now_ms() -> u64 {
        w::clock::now_ms()
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        w::kv::get(key)
    }
    pub fn kv_set(key: &str, value: &[u8], ttl: Option<u32>) {
        w::kv::set(key, value, ttl)
    }
    pub fn kv_incr(key: &str, delta: i64, ttl: Option<u32>) -> i64 {
        w::kv::incr(key, delta, ttl)
    }
    pub fn kv_delete(key: &str) {
        w::kv::delete(key)
    }
    pub fn dns_a(name: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_a(name)
    }
    pub fn dns_aaaa(name: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_aaaa(name)
    }
    pub fn dns_mx(name: &str) -> Result<Vec<(u16, String)>, String> {
        w::dns::lookup_mx(name)
    }
    pub fn dns_txt(name: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_txt(name)
    }
    pub fn dns_ptr(ip: &str) -> Result<Vec<String>, String> {
        w::dns::lookup_ptr(ip)
    }
    pub fn body_read(offset: u64, len: u32) -> Vec<u8> {
        w::body::read(offset, len)
    }
    pub fn file_read(name: &str) -> Result<Vec<u8>, String> {
        w::files::read(name)
    }

    use super::mail_auth as m;
    use w::mail_auth as wa;

    fn word(r: wa::AuthResult) -> m::AuthResult {
        match r {
            wa::AuthResult::None => m::AuthResult::None,
            wa::AuthResult::Pass => m::AuthResult::Pass,
            wa::AuthResult::Fail => m::AuthResult::Fail,
            wa::AuthResult::SoftFail => m::AuthResult::SoftFail,
            wa::AuthResult::Neutral => m::AuthResult::Neutral,
            wa::AuthResult::TempError => m::AuthResult::TempError,
            wa::AuthResult::PermError => m::AuthResult::PermError,
        }
    }
    fn to_word(r: m::AuthResult) -> wa::AuthResult {
        match r {
            m::AuthResult::None => wa::AuthResult::None,
            m::AuthResult::Pass => wa::AuthResult::Pass,
            m::AuthResult::Fail => wa::AuthResult::Fail,
            m::AuthResult::SoftFail => wa::AuthResult::SoftFail,
            m::AuthResult::Neutral => wa::AuthResult::Neutral,
            m::AuthResult::TempError => wa::AuthResult::TempError,
            m::AuthResult::PermError => wa::AuthResult::PermError,
        }
    }
    fn canon(c: m::Canonicalization) -> wa::Canonicalization {
        match c {
            m::Canonicalization::Simple => wa::Canonicalization::Simple,
            m::Canonicalization::Relaxed => wa::Canonicalization::Relaxed,
        }
    }
    pub fn spf(ip: &str, helo: &str, mail_from: &str) -> Result<m::SpfOutput, String> {
        wa::spf(ip, helo, mail_from)
            .map(|o| m::SpfOutput { result: word(o.result), domain: o.domain, explanation: o.explanation })
    }
    pub fn verify_message(c: &m::MessageChecks) -> Result<m::MessageAuth, String> {
        let checks = wa::MessageChecks {
            remote_ip: c.remote_ip.clone(),
            helo: c.helo.clone(),
            mail_from: c.mail_from.clone(),
            spf: c.spf.as_ref().map(|s| wa::SpfOutput {
                result: to_word(s.result),
                domain: s.domain.clone(),
                explanation: s.explanation.clone(),
            }),
            authserv_id: c.authserv_id.clone(),
        };
        wa::verify_message(&checks).map(|o| m::MessageAuth {
            dkim: o
                .dkim
                .into_iter()
                .map(|d| m::DkimOutput { result: word(d.result), domain: d.domain, selector: d.selector, detail: d.detail })
                .collect(),
            arc: word(o.arc),
            dmarc: m::DmarcOutput {
                result: word(o.dmarc.result),
                domain: o.dmarc.domain,
                policy: match o.dmarc.policy {
                    wa::DmarcPolicy::None => m::DmarcPolicy::None,
                    wa::DmarcPolicy::Quarantine => m::DmarcPolicy::Quarantine,
                    wa::DmarcPolicy::Reject => m::DmarcPolicy::Reject,
                    wa::DmarcPolicy::Unspecified => m::DmarcPolicy::Unspecified,
                },
                spf_aligned: o.dmarc.spf_aligned,
                dkim_aligned: o.dmarc.dkim_aligned,
                testing: o.dmarc.testing,
            },
            authentication_results: o.authentication_results,
        })
    }
    pub fn dkim_sign(r: &m::SignRequest) -> Result<String, String> {
        wa::dkim_sign(&wa::SignRequest {
            domain: r.domain.clone(),
            selector: r.selector.clone(),
            private_key: r.private_key.clone(),
            headers: r.headers.clone(),
            header_canonicalization: canon(r.header_canonicalization),
            body_canonicalization: canon(r.body_canonicalization),
            expire_seconds: r.expire_seconds,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use crate::testing::with_host;

    pub fn log(level: Level, message: &str) {
        with_host(|h| h.logs.push((level, message.to_string())))
    }
    pub fn config() -> String {
        with_host(|h| h.config.clone())
    }
    pub fn now_ms() -> u64 {
        with_host(|h| h.now_ms)
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.kv.get(key).cloned())
    }
    pub fn kv_set(key: &str, value: &[u8], _ttl: Option<u32>) {
        with_host(|h| {
            h.kv.insert(key.to_string(), value.to_vec());
        })
    }
    pub fn kv_incr(key: &str, delta: i64, _ttl: Option<u32>) -> i64 {
        with_host(|h| {
            let cur = h
                .kv
                .get(key)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            let new = cur + delta;
            h.kv.insert(key.to_string(), new.to_string().into_bytes());
            new
        })
    }
    pub fn kv_delete(key: &str) {
        with_host(|h| {
            h.kv.remove(key);
        })
    }
    fn lookup<T: Clone>(table: &std::collections::HashMap<String, Result<Vec<T>, String>>, name: &str) -> Result<Vec<T>, String> {
        table.get(&name.to_ascii_lowercase()).cloned().unwrap_or_else(|| Err("nxdomain".into()))
    }
    pub fn dns_a(name: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_a, name))
    }
    pub fn dns_aaaa(name: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_aaaa, name))
    }
    pub fn dns_mx(name: &str) -> Result<Vec<(u16, String)>, String> {
        with_host(|h| lookup(&h.dns_mx, name))
    }
    pub fn dns_txt(name: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_txt, name))
    }
    pub fn dns_ptr(ip: &str) -> Result<Vec<String>, String> {
        with_host(|h| lookup(&h.dns_ptr, ip))
    }
    pub fn file_read(name: &str) -> Result<Vec<u8>, String> {
        with_host(|h| h.files.get(name).cloned().ok_or_else(|| format!("no file named {name:?} is declared under this plugin's files:")))
    }
    pub fn body_read(offset: u64, len: u32) -> Vec<u8> {
        with_host(|h| {
            let start = (offset as usize).min(h.body.len());
            let end = start.saturating_add(len as usize).min(h.body.len());
            h.body[start..end].to_vec()
        })
    }

    use super::mail_auth as m;
    pub fn spf(_ip: &str, _helo: &str, mail_from: &str) -> Result<m::SpfOutput, String> {
        with_host(|h| {
            let domain = mail_from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
            h.spf.get(&domain).cloned().unwrap_or_else(|| Ok(m::SpfOutput { domain, ..Default::default() }))
        })
    }
    pub fn verify_message(c: &m::MessageChecks) -> Result<m::MessageAuth, String> {
        with_host(|h| {
            h.verified.push(c.clone());
            h.message_auth.clone().unwrap_or_else(|| Ok(m::MessageAuth::default()))
        })
    }
    pub fn dkim_sign(r: &m::SignRequest) -> Result<String, String> {
        with_host(|h| {
            h.sign_requests.push(r.clone());
            h.dkim_sign.clone().unwrap_or_else(|| Ok(format!("v=1; d={}; s={}; b=test", r.domain, r.selector)))
        })
    }
}

/// Writes to Weir's log, prefixed with the plugin's name (grant: `log`).
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// The plugin's `config:` block as JSON text (grant: `config`).
pub fn config_json() -> String {
    imp::config()
}

/// The plugin's `config:` block, deserialised (grant: `config`).
pub fn config<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    let text = imp::config();
    let text = if text.trim().is_empty() { "null".to_string() } else { text };
    serde_json::from_str(&text).map_err(|e| format!("plugin config: {e}"))
}

thread_local! {
    /// The `config-id` of the call in progress.
    static CONFIG_ID: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
    /// Parsed configs by (config id, type), for the life of the instance.
    static CONFIGS: core::cell::RefCell<Vec<(u32, core::any::TypeId, Rc<dyn core::any::Any>)>> = const { core::cell::RefCell::new(Vec::new()) };
    /// Data files read through `files::cached`, for the life of the instance.
    static FILES: core::cell::RefCell<Vec<(String, Result<Rc<Vec<u8>>, String>)>> = const { core::cell::RefCell::new(Vec::new()) };
}

use std::rc::Rc;

/// Which step's config the call in progress runs with (set by the export
/// glue from the event, and by the harness).
#[doc(hidden)]
pub fn set_config_id(id: u32) {
    CONFIG_ID.with(|c| c.set(id));
}

/// Forgets the cached configs and files, as a new instance would have none
/// (the harness calls it before each run).
#[doc(hidden)]
pub fn forget_cached() {
    CONFIGS.with(|c| c.borrow_mut().clear());
    FILES.with(|f| f.borrow_mut().clear());
}

/// The step's `config:` block, deserialised the first time the instance
/// meets that step's config and kept for the instance's life (grant:
/// `config`). Each step of a pipeline may give the plugin its own config;
/// the host names them, so this always answers with the config of the step
/// being run, parsed once rather than once per session or call.
pub fn cached_config<T: serde::de::DeserializeOwned + 'static>() -> Result<Rc<T>, String> {
    prepared_config(config::<T>)
}

/// Something built from the step's config — a parsed config with its
/// networks and patterns compiled, say — built by `build` the first time
/// the instance meets that step's config, and kept for the instance's life
/// like [`cached_config`]. An error is kept too: a broken config stays
/// broken until the policy is reloaded.
pub fn prepared_config<T: 'static>(build: impl FnOnce() -> Result<T, String>) -> Result<Rc<T>, String> {
    let id = CONFIG_ID.with(|c| c.get());
    let ty = core::any::TypeId::of::<T>();
    let hit = CONFIGS.with(|c| c.borrow().iter().find(|(i, t, _)| *i == id && *t == ty).map(|(_, _, v)| v.clone()));
    if let Some(r) = hit.as_deref().and_then(|v| v.downcast_ref::<Result<Rc<T>, String>>()) {
        return r.clone();
    }
    let built: Result<Rc<T>, String> = build().map(Rc::new);
    CONFIGS.with(|c| c.borrow_mut().push((id, ty, Rc::new(built.clone()))));
    built
}

/// Milliseconds since the Unix epoch (grant: `clock`).
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// The plugin's private key-value store (grant: `kv`).
pub mod kv {
    pub fn get(key: &str) -> Option<Vec<u8>> {
        super::imp::kv_get(key)
    }
    pub fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) {
        super::imp::kv_set(key, value, ttl_seconds)
    }
    pub fn incr(key: &str, delta: i64, ttl_seconds: Option<u32>) -> i64 {
        super::imp::kv_incr(key, delta, ttl_seconds)
    }
    pub fn delete(key: &str) {
        super::imp::kv_delete(key)
    }
}

/// DNS through the host's resolver (grant: `dns`).
pub mod dns {
    pub fn a(name: &str) -> Result<Vec<String>, String> {
        super::imp::dns_a(name)
    }
    pub fn aaaa(name: &str) -> Result<Vec<String>, String> {
        super::imp::dns_aaaa(name)
    }
    pub fn mx(name: &str) -> Result<Vec<(u16, String)>, String> {
        super::imp::dns_mx(name)
    }
    pub fn txt(name: &str) -> Result<Vec<String>, String> {
        super::imp::dns_txt(name)
    }
    pub fn ptr(ip: &str) -> Result<Vec<String>, String> {
        super::imp::dns_ptr(ip)
    }
}

/// The message at data/route, in chunks (grant: `body`).
pub mod body {
    /// Up to `len` octets from `offset`; empty at the end.
    pub fn read(offset: u64, len: u32) -> Vec<u8> {
        super::imp::body_read(offset, len)
    }

    /// The whole message, in as few calls as the host allows (1 MiB each;
    /// a short read is the end).
    pub fn read_all() -> Vec<u8> {
        const CHUNK: u32 = 1 << 20;
        let mut out = Vec::new();
        loop {
            let chunk = read(out.len() as u64, CHUNK);
            let end = chunk.len() < CHUNK as usize;
            if out.is_empty() {
                out = chunk;
            } else {
                out.extend_from_slice(&chunk);
            }
            if end {
                return out;
            }
        }
    }
}

/// Data files the policy declares for the plugin under `files:` (grant:
/// `files`), read by the host when the policy loads. In native tests they
/// come from [`crate::testing::Harness::file`].
pub mod files {
    use std::rc::Rc;

    /// The whole file declared under `name`.
    pub fn read(name: &str) -> Result<Vec<u8>, String> {
        super::imp::file_read(name)
    }

    /// The whole file declared under `name`, read once per instance and
    /// kept: an instance's files never change (a reload makes new
    /// instances), so a model need not be copied into every session.
    pub fn cached(name: &str) -> Result<Rc<Vec<u8>>, String> {
        if let Some(hit) = super::FILES.with(|f| f.borrow().iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())) {
            return hit;
        }
        let read = read(name).map(Rc::new);
        super::FILES.with(|f| f.borrow_mut().push((name.to_string(), read.clone())));
        read
    }
}

/// Sender authentication by the host (grant: `mail-auth`): SPF, DKIM
/// verification and signing, ARC and DMARC. In native tests the answers
/// come from [`crate::testing::HostState`]'s `spf`, `message_auth` and
/// `dkim_sign` fields, and signing requests are recorded.
pub mod mail_auth {
    /// RFC 8601 result words.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum AuthResult {
        #[default]
        None,
        Pass,
        Fail,
        SoftFail,
        Neutral,
        TempError,
        PermError,
    }

    impl AuthResult {
        /// The word in an Authentication-Results header.
        pub fn as_str(self) -> &'static str {
            match self {
                AuthResult::None => "none",
                AuthResult::Pass => "pass",
                AuthResult::Fail => "fail",
                AuthResult::SoftFail => "softfail",
                AuthResult::Neutral => "neutral",
                AuthResult::TempError => "temperror",
                AuthResult::PermError => "permerror",
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct SpfOutput {
        pub result: AuthResult,
        pub domain: String,
        pub explanation: Option<String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct DkimOutput {
        pub result: AuthResult,
        pub domain: String,
        pub selector: String,
        pub detail: Option<String>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum DmarcPolicy {
        None,
        Quarantine,
        Reject,
        #[default]
        Unspecified,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct DmarcOutput {
        pub result: AuthResult,
        pub domain: String,
        pub policy: DmarcPolicy,
        pub spf_aligned: bool,
        pub dkim_aligned: bool,
        pub testing: bool,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct MessageChecks {
        pub remote_ip: String,
        pub helo: String,
        pub mail_from: String,
        pub spf: Option<SpfOutput>,
        pub authserv_id: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct MessageAuth {
        pub dkim: Vec<DkimOutput>,
        pub arc: AuthResult,
        pub dmarc: DmarcOutput,
        /// The Authentication-Results value, without the header name.
        pub authentication_results: String,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Canonicalization {
        Simple,
        #[default]
        Relaxed,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct SignRequest {
        pub domain: String,
        pub selector: String,
        /// PEM text of an RSA or Ed25519 private key.
        pub private_key: String,
        pub headers: Vec<String>,
        pub header_canonicalization: Canonicalization,
        pub body_canonicalization: Canonicalization,
        pub expire_seconds: Option<u64>,
    }

    /// SPF for a client address; an empty `mail_from` checks the HELO name.
    pub fn spf(remote_ip: &str, helo: &str, mail_from: &str) -> Result<SpfOutput, String> {
        super::imp::spf(remote_ip, helo, mail_from)
    }

    /// DKIM, ARC and DMARC of the message (data and route stages).
    pub fn verify_message(checks: &MessageChecks) -> Result<MessageAuth, String> {
        super::imp::verify_message(checks)
    }

    /// A DKIM-Signature value for the message (data and route stages).
    pub fn dkim_sign(request: &SignRequest) -> Result<String, String> {
        super::imp::dkim_sign(request)
    }
}
