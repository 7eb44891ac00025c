//! The `mail-auth` host capability: SPF (RFC 7208, evaluated by
//! `crate::spf`), and DKIM verification and signing (RFC 6376, RSA and
//! Ed25519), ARC (RFC 8617) and DMARC (RFC 7489) through the mail-auth
//! crate, all with DNS through the host's resolver.
//! Plugins keep the policy (what to do with a fail); the host keeps the
//! cryptography and the DNS. Signing keys are parsed once per distinct
//! key and signer settings, then kept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use sha2::Digest;

use super::weir::plugin::mail_auth as w;

/// A prepared DKIM signer.
enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// Most signers a server keeps (one per key, domain and header list).
const MAX_SIGNERS: usize = 1024;

pub struct MailAuth {
    dns: Arc<crate::dns::Dns>,
    auth: MessageAuthenticator,
    signers: Mutex<HashMap<[u8; 32], Arc<Signer>>>,
}

fn spf_word(r: crate::spf::SpfResult) -> w::AuthResult {
    use crate::spf::SpfResult as S;
    match r {
        S::Pass => w::AuthResult::Pass,
        S::Fail => w::AuthResult::Fail,
        S::SoftFail => w::AuthResult::SoftFail,
        S::Neutral => w::AuthResult::Neutral,
        S::TempError => w::AuthResult::TempError,
        S::PermError => w::AuthResult::PermError,
        S::None => w::AuthResult::None,
    }
}

fn spf_from_word(r: w::AuthResult) -> SpfResult {
    match r {
        w::AuthResult::Pass => SpfResult::Pass,
        w::AuthResult::Fail => SpfResult::Fail,
        w::AuthResult::SoftFail => SpfResult::SoftFail,
        w::AuthResult::Neutral => SpfResult::Neutral,
        w::AuthResult::TempError => SpfResult::TempError,
        w::AuthResult::PermError => SpfResult::PermError,
        w::AuthResult::None => SpfResult::None,
    }
}

fn dkim_word(r: &DkimResult) -> (w::AuthResult, Option<String>) {
    match r {
        DkimResult::Pass => (w::AuthResult::Pass, None),
        DkimResult::Neutral(e) => (w::AuthResult::Neutral, Some(e.to_string())),
        DkimResult::Fail(e) => (w::AuthResult::Fail, Some(e.to_string())),
        DkimResult::PermError(e) => (w::AuthResult::PermError, Some(e.to_string())),
        DkimResult::TempError(e) => (w::AuthResult::TempError, Some(e.to_string())),
        DkimResult::None => (w::AuthResult::None, None),
    }
}

fn dmarc_word(r: &DmarcResult) -> w::AuthResult {
    match r {
        DmarcResult::Pass => w::AuthResult::Pass,
        DmarcResult::Fail(_) => w::AuthResult::Fail,
        DmarcResult::TempError(_) => w::AuthResult::TempError,
        DmarcResult::PermError(_) => w::AuthResult::PermError,
        DmarcResult::None => w::AuthResult::None,
    }
}

/// A signer for `key` with the request's domain, selector, headers,
/// canonicalisation and expiry.
fn configure<K: SigningKey>(key: K, req: &w::SignRequest) -> DkimSigner<K, Done> {
    let s = DkimSigner::from_key(key)
        .domain(req.domain.clone())
        .selector(req.selector.clone())
        .headers(req.headers.iter().map(String::as_str))
        .header_canonicalization(canon(req.header_canonicalization))
        .body_canonicalization(canon(req.body_canonicalization));
    match req.expire_seconds {
        Some(x) => s.expiration(x),
        None => s,
    }
}

fn canon(c: w::Canonicalization) -> Canonicalization {
    match c {
        w::Canonicalization::Simple => Canonicalization::Simple,
        w::Canonicalization::Relaxed => Canonicalization::Relaxed,
    }
}

/// A header value as produced by mail-auth's writers, without its name.
fn header_value(full: &str, name: &str) -> String {
    let v = full.get(name.len() + 1..).unwrap_or(full);
    v.trim_start_matches(' ').trim_end_matches("\r\n").to_string()
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| format!("{s:?} is not an IP address"))
}

impl MailAuth {
    /// Uses the host's resolver (its name servers, cache and options).
    pub fn new(dns: &Arc<crate::dns::Dns>) -> MailAuth {
        MailAuth { dns: dns.clone(), auth: MessageAuthenticator(dns.resolver().clone()), signers: Mutex::new(HashMap::new()) }
    }

    /// SPF for `ip`: the MAIL FROM identity, or the HELO identity when
    /// `mail_from` is empty (RFC 7208 section 2.3/2.4). `host_domain` is
    /// this server's name, for the %{r} macro.
    pub async fn spf(&self, ip: &str, helo: &str, mail_from: &str, host_domain: &str, budget: Duration) -> Result<w::SpfOutput, String> {
        let ip = parse_ip(ip)?;
        let out = match tokio::time::timeout(budget, crate::spf::check(&self.dns, ip, helo, mail_from, host_domain)).await {
            Ok(o) => o,
            Err(_) => crate::spf::SpfOutcome {
                result: crate::spf::SpfResult::TempError,
                domain: mail_from.rsplit_once('@').map_or(helo, |(_, d)| d).to_string(),
                explanation: None,
            },
        };
        Ok(w::SpfOutput { result: spf_word(out.result), domain: out.domain, explanation: out.explanation })
    }

    /// DKIM and ARC verification of `message`, then DMARC from them and the
    /// SPF result, and an Authentication-Results value with all of them.
    pub async fn verify_message(&self, message: &[u8], checks: &w::MessageChecks, budget: Duration) -> Result<w::MessageAuth, String> {
        let ip = parse_ip(&checks.remote_ip)?;
        let parsed = AuthenticatedMessage::parse(message).ok_or_else(|| "the message has no parsable header".to_string())?;
        let work = async {
            let dkim = self.auth.verify_dkim(&parsed).await;
            let arc = self.auth.verify_arc(&parsed).await;
            (dkim, arc)
        };
        let Ok((dkim, arc)) = tokio::time::timeout(budget, work).await else {
            return Err(format!("DKIM/ARC verification took longer than {budget:?}"));
        };
        let mail_from_domain = checks
            .mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_else(|| checks.helo.clone());
        let spf = match &checks.spf {
            Some(s) => SpfOutput::new(s.domain.clone()).with_result(spf_from_word(s.result)),
            None => SpfOutput::new(mail_from_domain.clone()),
        };
        let dmarc_params = mail_auth::dmarc::verify::DmarcParameters::new(&parsed, &dkim, &mail_from_domain, &spf);
        let Ok(dmarc) = tokio::time::timeout(budget, self.auth.verify_dmarc(dmarc_params)).await else {
            return Err(format!("DMARC evaluation took longer than {budget:?}"));
        };
        let header_from = parsed.from.first().cloned().unwrap_or_default();
        let mut ar = AuthenticationResults::new(&checks.authserv_id).with_dkim_results(&dkim, &header_from);
        if checks.spf.is_some() {
            ar = ar.with_spf_mailfrom_result(&spf, ip, &checks.mail_from, &checks.helo);
        }
        if !parsed.ams_headers.is_empty() || !parsed.as_headers.is_empty() {
            ar = ar.with_arc_result(&arc, ip);
        }
        ar = ar.with_dmarc_result(&dmarc);
        let record = dmarc.dmarc_record();
        let out = w::MessageAuth {
            dkim: dkim
                .iter()
                .map(|d| {
                    let (result, detail) = dkim_word(d.result());
                    w::DkimOutput {
                        result,
                        domain: d.signature().map(|s| s.d.clone()).unwrap_or_default(),
                        selector: d.signature().map(|s| s.s.clone()).unwrap_or_default(),
                        detail,
                    }
                })
                .collect(),
            arc: dkim_word(arc.result()).0,
            dmarc: w::DmarcOutput {
                result: dmarc_word(&dmarc.result()),
                domain: dmarc.domain().to_string(),
                policy: match dmarc.policy() {
                    Policy::None => w::DmarcPolicy::None,
                    Policy::Quarantine => w::DmarcPolicy::Quarantine,
                    Policy::Reject => w::DmarcPolicy::Reject,
                    Policy::Unspecified => w::DmarcPolicy::Unspecified,
                },
                spf_aligned: matches!(dmarc.spf_result(), DmarcResult::Pass),
                dkim_aligned: matches!(dmarc.dkim_result(), DmarcResult::Pass),
                testing: record.is_some_and(|r| r.t),
            },
            authentication_results: header_value(&ar.to_header(), "Authentication-Results"),
        };
        Ok(out)
    }

    fn signer(&self, req: &w::SignRequest) -> Result<Arc<Signer>, String> {
        let mut h = sha2::Sha256::new();
        for part in [req.private_key.as_str(), &req.domain, &req.selector] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for name in &req.headers {
            h.update(name.to_ascii_lowercase().as_bytes());
            h.update([0]);
        }
        h.update([req.header_canonicalization as u8, req.body_canonicalization as u8]);
        h.update(req.expire_seconds.unwrap_or(0).to_le_bytes());
        let key: [u8; 32] = h.finalize().into();
        if let Some(s) = self.signers.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        if req.headers.is_empty() {
            return Err("the signed header list is empty".into());
        }
        if !req.headers.iter().any(|n| n.eq_ignore_ascii_case("from")) {
            return Err("the signed header list must include From (RFC 6376 section 5.4)".into());
        }
        let der = PrivateKeyDer::from_pem_slice(req.private_key.as_bytes())
            .map_err(|e| format!("the private key is not a PEM private key: {e}"))?;
        let ed25519 = match &der {
            PrivateKeyDer::Pkcs8(p) => Ed25519Key::from_pkcs8_der(p.secret_pkcs8_der()).ok(),
            _ => None,
        };
        let signer = match ed25519 {
            Some(k) => Signer::Ed25519(configure(k, req)),
            None => {
                let k = RsaKey::<Sha256>::from_key_der(der.clone_key()).map_err(|e| format!("the private key: {e}"))?;
                Signer::Rsa(configure(k, req))
            }
        };
        let signer = Arc::new(signer);
        let mut cache = self.signers.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_SIGNERS {
            cache.clear();
        }
        cache.insert(key, signer.clone());
        Ok(signer)
    }

    /// A DKIM-Signature value (folded, without the header name) for `message`.
    pub fn dkim_sign(&self, message: &[u8], req: &w::SignRequest) -> Result<String, String> {
        let signer = self.signer(req)?;
        let sig = match &*signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| format!("signing: {e}"))?;
        Ok(header_value(&sig.to_header(), "DKIM-Signature"))
    }
}
