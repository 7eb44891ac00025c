//! TLS server configuration (rustls with the ring provider): certificates
//! and keys from PEM files, or a self-signed pair generated with rcgen at
//! first start and kept under `<data_dir>/tls/` so that it survives restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// Loads a certificate chain and key into a rustls server configuration.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{}: no certificate found", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading private key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "certificate {} does not match key {}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    cfg.alpn_protocols.clear();
    Ok(Arc::new(cfg))
}

/// Where the generated self-signed pair lives.
pub fn self_signed_paths(data_dir: &Path) -> TlsFiles {
    let dir = data_dir.join("tls");
    TlsFiles {
        cert: dir.join("selfsigned.crt"),
        key: dir.join("selfsigned.key"),
    }
}

/// Returns the self-signed pair under `data_dir`, generating it if missing.
pub fn ensure_self_signed(data_dir: &Path, hostnames: &[String]) -> Result<TlsFiles> {
    let files = self_signed_paths(data_dir);
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let dir: PathBuf = files
        .cert
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names: Vec<String> = hostnames.to_vec();
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_string());
        }
    }
    let cert = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    write_private(&files.key, cert.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, cert.cert.pem())
        .with_context(|| format!("writing {}", files.cert.display()))?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed TLS certificate");
    Ok(files)
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
