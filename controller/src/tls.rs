//! TLS for the route stream: a certificate and key from files, reloaded when
//! the files change (a renewed cert-manager Secret, a rotated mount), with
//! the old pair kept when the new one does not load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// How often the files are looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Where the stream's certificate and key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Why a certificate pair did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM or the key is unusable.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Loads and checks a pair: parseable chain, a key rustls can sign with,
/// matching the leaf.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let invalid = |path: &Path, why: String| TlsError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(&files.cert, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid(&files.key, e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(&files.key, e.to_string()))?;
    let certified = CertifiedKey::new(certs, signer);
    certified
        .keys_match()
        .map_err(|e| invalid(&files.key, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

/// Serves whatever pair was loaded last.
#[derive(Debug)]
pub struct Reloading {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A server config over `files` and the resolver that swaps its pair; the
/// first load must succeed.
pub fn server_config(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Arc<Reloading>), TlsError> {
    let resolver = Arc::new(Reloading {
        current: ArcSwap::from_pointee(load(files)?),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: files.cert.clone(),
            why: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), resolver))
}

fn modified(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// Reloads the pair whenever either file's modification time changes, until
/// `stop`. A pair that fails to load is logged and the old one kept; it is
/// tried again on the next change.
pub async fn watch_files(
    files: TlsFiles,
    resolver: Arc<Reloading>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = modified(&files);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = modified(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&files) {
            Ok(pair) => {
                resolver.current.store(Arc::new(pair));
                tracing::info!(cert = %files.cert.display(), "stream certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "new stream certificate refused; the previous one keeps serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRT_A: &str = include_str!("testdata/tls.crt");
    const KEY_A: &str = include_str!("testdata/tls.key");
    const CRT_B: &str = include_str!("../../tests/testdata/stream.crt");
    const KEY_B: &str = include_str!("../../tests/testdata/stream.key");

    fn leaf(r: &Reloading) -> Vec<u8> {
        r.current.load().cert[0].to_vec()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_changed_pair_is_served_and_a_broken_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, CRT_A).expect("write");
        std::fs::write(&files.key, KEY_A).expect("write");
        let (_, resolver) = server_config(&files).expect("first pair loads");
        assert_eq!(leaf(&resolver), der(CRT_A));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_files(
            files.clone(),
            Arc::clone(&resolver),
            Duration::from_millis(10),
            stop_rx,
        ));

        // A mismatched pair (new certificate, old key) is refused: A stays.
        std::fs::write(&files.cert, CRT_B).expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(leaf(&resolver), der(CRT_A));
        // The key follows: B is served.
        std::fs::write(&files.key, KEY_B).expect("write");
        for _ in 0..200 {
            if leaf(&resolver) == der(CRT_B) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(leaf(&resolver), der(CRT_B));
        let _ = stop.send(true);
        let _ = task.await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_or_mismatched_pair_names_the_file() {
        let files = TlsFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
        };
        let err = load(&files).expect_err("missing").to_string();
        assert!(err.contains("/nonexistent/tls.crt"), "{err}");
    }
}
