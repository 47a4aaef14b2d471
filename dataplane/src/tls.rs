//! TLS termination: the certificate, and whether a client certificate is
//! required, are chosen per connection by SNI from the pools of the table
//! being served.
//!
//! Every pool with `tls` becomes a [`Site`]: a rustls `ServerConfig` of its
//! own (its certificate, its client-certificate verifier, ALPN `h2` and
//! `http/1.1`) serving the pool's `hosts`. The listener reads the
//! ClientHello first (`tokio_rustls::LazyConfigAcceptor`), looks the SNI up
//! in the [`Sites`] map and finishes the handshake with that site's config.
//! A per-SNI config rather than one config with a `ResolvesServerCert` is
//! what lets client-certificate validation differ between pools: rustls
//! holds the verifier per config, not per certificate.
//!
//! The map is rebuilt whenever a table is installed and swapped whole
//! (`ArcSwap`), so a new certificate is served to new connections without a
//! restart while open connections keep the one they negotiated. A pool whose
//! TLS settings did not change keeps its `ServerConfig`, and with it the
//! session-resumption cache.
//!
//! Which site a name gets: the exact host, then the longest `*.suffix`
//! wildcard, then a fallback: the pool whose hosts include `*`, or else, when
//! the table holds exactly one certificate, that one. A ClientHello without
//! SNI (a client dialing an IP address) gets the fallback too. With no
//! fallback an unknown name is refused: the handshake is aborted.
//!
//! A pool whose PEM or files cannot be used is logged and left without TLS;
//! the other pools are not affected. The standalone file is checked with
//! [`check`] when it is read, so a broken certificate there rejects the file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sluice_protocol::policy::Tls;
use sluice_protocol::{PoolRoute, RouteTable};

use crate::table::normalize_host;

/// Why a pool's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("pool {pool:?}: tls: {message}")]
pub struct TlsError {
    /// The pool.
    pub pool: String,
    /// What is wrong, naming the field.
    pub message: String,
}

/// A pool's TLS endpoint: the config its connections are served with.
#[derive(Debug)]
pub struct Site {
    /// The pool it was built for.
    pub pool: String,
    /// The rustls config: certificate, client verifier, ALPN.
    pub config: Arc<ServerConfig>,
    /// The client CA setting the connection's certificate was checked
    /// against, if any (see [`admits`]).
    client_ca: Option<(Option<String>, Option<PathBuf>)>,
}

/// Whether a request on a connection negotiated with `site` (`None`: plain
/// HTTP) may go to a pool with `route`. A pool that requires client
/// certificates only takes requests from connections whose certificate was
/// verified against its CA: without this check a client could handshake
/// with another pool's name (no certificate asked) and send `Host:` of the
/// protected one.
pub fn admits(site: Option<&Site>, route: &PoolRoute) -> bool {
    let Some(tls) = &route.tls else { return true };
    if tls.client_ca.is_none() && tls.client_ca_file.is_none() {
        return true;
    }
    site.and_then(|s| s.client_ca.as_ref())
        .is_some_and(|(pem, file)| *pem == tls.client_ca && *file == tls.client_ca_file)
}

/// Name → site, for one table version.
#[derive(Debug, Default)]
struct SniMap {
    exact: HashMap<String, Arc<Site>>,
    /// `(".suffix", site)`, longest suffix first.
    wildcard: Vec<(String, Arc<Site>)>,
    fallback: Option<Arc<Site>>,
}

/// The sites of the table being served, swapped whole on every table.
#[derive(Debug, Default)]
pub struct Sites {
    map: ArcSwap<SniMap>,
    /// Built sites by pool name, with the settings they were built from,
    /// so that an unchanged pool keeps its config across tables.
    built: Mutex<HashMap<String, (Tls, Arc<Site>)>>,
}

impl Sites {
    /// The site for a ClientHello's SNI (`None`: the client sent none).
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<Site>> {
        let map = self.map.load();
        if let Some(name) = sni {
            let name = normalize_host(name);
            if let Some(site) = map.exact.get(name.as_ref()) {
                return Some(Arc::clone(site));
            }
            for (suffix, site) in &map.wildcard {
                if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                    return Some(Arc::clone(site));
                }
            }
        }
        map.fallback.clone()
    }

    /// Rebuilds the map from `routes`. Pools whose TLS cannot be used are
    /// logged and skipped.
    pub fn update(&self, routes: &RouteTable) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: HashMap<String, (Tls, Arc<Site>)> = HashMap::new();
        let mut map = SniMap::default();
        let (mut catch_all, mut only) = (None, None);
        for route in routes.pools.values() {
            let Some(tls) = &route.tls else { continue };
            let site = match built.get(&route.name) {
                Some((old, site)) if old == tls => Arc::clone(site),
                _ => match build(route, tls) {
                    Ok(site) => Arc::new(site),
                    Err(e) => {
                        tracing::error!(error = %e, "certificate not served");
                        continue;
                    }
                },
            };
            next.insert(route.name.clone(), (tls.clone(), Arc::clone(&site)));
            // The only site, until a second one shows up.
            only = if next.len() == 1 {
                Some(Arc::clone(&site))
            } else {
                None
            };
            for host in &route.hosts {
                if host.is_catch_all() {
                    catch_all.get_or_insert_with(|| Arc::clone(&site));
                } else if let Some(suffix) = host.wildcard_suffix() {
                    if !map.wildcard.iter().any(|(s, _)| s == suffix) {
                        map.wildcard.push((suffix.to_string(), Arc::clone(&site)));
                    }
                } else {
                    let name = host.as_str().to_string();
                    map.exact.entry(name).or_insert_with(|| Arc::clone(&site));
                }
            }
        }
        map.fallback = catch_all.or(only);
        map.wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        *built = next;
        self.map.store(Arc::new(map));
    }

    /// Whether any pool has a certificate.
    pub fn is_empty(&self) -> bool {
        let map = self.map.load();
        map.exact.is_empty() && map.wildcard.is_empty() && map.fallback.is_none()
    }
}

/// Checks that every pool's TLS settings can be used, naming the first
/// that cannot (the standalone file is rejected with this).
pub fn check(pools: &[PoolRoute]) -> Result<(), TlsError> {
    for route in pools {
        if let Some(tls) = &route.tls {
            build(route, tls)?;
        }
    }
    Ok(())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM text from the inline field or the file.
fn pem(
    route: &PoolRoute,
    field: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Vec<u8>>, TlsError> {
    match (inline, file) {
        (Some(text), _) => Ok(Some(text.as_bytes().to_vec())),
        (None, Some(path)) => std::fs::read(path).map(Some).map_err(|e| TlsError {
            pool: route.name.clone(),
            message: format!("{field} {}: {e}", path.display()),
        }),
        (None, None) => Ok(None),
    }
}

fn build(route: &PoolRoute, tls: &Tls) -> Result<Site, TlsError> {
    let fail = |message: String| TlsError {
        pool: route.name.clone(),
        message,
    };
    let cert_pem = pem(route, "certFile", &tls.certificate, &tls.cert_file)?
        .ok_or_else(|| fail("no certificate".into()))?;
    let key_pem = pem(route, "keyFile", &tls.private_key, &tls.key_file)?
        .ok_or_else(|| fail("no private key".into()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(fail("certificate: no PEM certificate found".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| fail(format!("privateKey: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?;
    let ca_pem = pem(route, "clientCAFile", &tls.client_ca, &tls.client_ca_file)?;
    let builder = match &ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert.map_err(|e| fail(format!("clientCA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("clientCA: {e}")))?;
            }
            if roots.is_empty() {
                return Err(fail("clientCA: no PEM certificate found".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| fail(format!("clientCA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| fail(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let client_ca = ca_pem
        .is_some()
        .then(|| (tls.client_ca.clone(), tls.client_ca_file.clone()));
    Ok(Site {
        pool: route.name.clone(),
        config: Arc::new(config),
        client_ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::RouteFile;

    fn routes(yaml: &str) -> RouteTable {
        let file = RouteFile::from_yaml(yaml).expect("valid");
        RouteTable::from_pools(1, file.pools)
    }

    #[test]
    fn broken_pem_is_named_and_skipped() {
        let t = routes(
            "pools:\n  - {name: bad, hosts: [a.example.com], tls: {certificate: nope, privateKey: nope}}\n",
        );
        let pools: Vec<_> = t.pools.values().cloned().collect();
        let err = check(&pools).expect_err("broken PEM");
        assert!(err.to_string().contains("pool \"bad\""), "{err}");
        let sites = Sites::default();
        sites.update(&t);
        assert!(sites.is_empty());
        assert!(sites.lookup(Some("a.example.com")).is_none());
    }
}
