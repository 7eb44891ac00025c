//! AUTH users: argon2 password hashing (`weir passwd`) and verification, and
//! decoding of the SASL PLAIN (RFC 4616) and LOGIN exchanges used by AUTH
//! (RFC 4954).

use std::collections::BTreeMap;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;

use crate::config::AuthConfig;

/// Hashes a password into an argon2id PHC string.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// The configured users.
#[derive(Debug, Default, Clone)]
pub struct Users {
    users: BTreeMap<String, String>,
    /// Verified against when the user is unknown, so that timing does not
    /// tell which user names exist.
    dummy: String,
}

impl Users {
    pub fn from_config(c: &AuthConfig) -> Users {
        Users {
            users: c.users.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
            dummy: hash_password("weir-dummy-password").unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a user name and password. CPU-heavy by design: call it from a
    /// blocking thread.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = match PasswordHash::new(hash) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        };
        ok && known
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SaslError {
    /// Not valid base64.
    Encoding,
    /// Decoded, but not of the mechanism's form.
    Malformed,
}

pub fn decode_b64(s: &str) -> Result<Vec<u8>, SaslError> {
    let s = s.trim();
    if s == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| SaslError::Encoding)
}

pub fn encode_b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes a PLAIN response: `[authzid] NUL authcid NUL passwd`. An authzid
/// different from the authcid (acting as someone else) is refused.
pub fn decode_plain(b64: &str) -> Result<(String, String), SaslError> {
    let raw = decode_b64(b64)?;
    let mut parts = raw.split(|b| *b == 0);
    let (authz, authc, pass) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(z), Some(c), Some(p), None) => (z, c, p),
        _ => return Err(SaslError::Malformed),
    };
    let authc = String::from_utf8(authc.to_vec()).map_err(|_| SaslError::Malformed)?;
    let pass = String::from_utf8(pass.to_vec()).map_err(|_| SaslError::Malformed)?;
    if authc.is_empty() || (!authz.is_empty() && authz != authc.as_bytes()) {
        return Err(SaslError::Malformed);
    }
    Ok((authc, pass))
}

/// Decodes one LOGIN step (a base64 user name or password).
pub fn decode_login_field(b64: &str) -> Result<String, SaslError> {
    let raw = decode_b64(b64)?;
    String::from_utf8(raw).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PasswordHashString;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let mut c = AuthConfig::default();
        c.users.insert("alice".into(), PasswordHashString(h));
        let u = Users::from_config(&c);
        assert!(u.verify("alice", "s3cret"));
        assert!(!u.verify("alice", "wrong"));
        assert!(!u.verify("bob", "s3cret"));
        assert!(!u.verify("bob", "weir-dummy-password"));
    }

    #[test]
    fn plain_decoding() {
        let b = encode_b64(b"\0alice\0pw");
        assert_eq!(decode_plain(&b).unwrap(), ("alice".into(), "pw".into()));
        let b = encode_b64(b"alice\0alice\0pw");
        assert_eq!(decode_plain(&b).unwrap(), ("alice".into(), "pw".into()));
        let b = encode_b64(b"bob\0alice\0pw");
        assert_eq!(decode_plain(&b), Err(SaslError::Malformed));
        assert_eq!(decode_plain("%%%"), Err(SaslError::Encoding));
        assert_eq!(decode_plain(&encode_b64(b"nonul")), Err(SaslError::Malformed));
    }
}
