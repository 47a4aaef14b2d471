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
//! The map is rebuilt whenever a table is installed, and every
//! [`FILE_POLL`] for certificates given as files (`certFile`, `keyFile`,
//! `clientCAFile`: a renewed certificate written over the old one), and
//! swapped whole (`ArcSwap`), so a new certificate is served to new
//! connections without a restart while open connections keep the one they
//! negotiated. A pool whose settings and PEM did not change keeps its
//! `ServerConfig`, and with it the session-resumption cache.
//!
//! Which site a name gets: the exact host, then the longest `*.suffix`
//! wildcard, then a fallback: the pool whose hosts include `*`, or else, when
//! the table holds exactly one certificate, that one. A ClientHello without
//! SNI (a client dialing an IP address) gets the fallback too. With no
//! fallback an unknown name is refused: the handshake is aborted.
//!
//! A pool whose PEM or files cannot be used is logged (once per error) and
//! keeps the last certificate that worked, or has no TLS if none did; the
//! other pools are not affected. The standalone file is checked with
//! [`check`] when it is read, so a broken certificate there rejects the file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sluice_protocol::policy::Tls;
use sluice_protocol::route::Host;
use sluice_protocol::{PoolRoute, RouteTable};

use crate::table::host::normalize_host;

/// How often certificate files are re-read.
pub const FILE_POLL: Duration = Duration::from_secs(2);

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

/// The PEM a site is built from, as read (inline or from its files).
#[derive(Debug, PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// A built site with the settings and PEM it was built from.
type Built = (Tls, Material, Arc<Site>);

/// The sites of the table being served, swapped whole on every table.
#[derive(Debug, Default)]
pub struct Sites {
    map: ArcSwap<SniMap>,
    /// Built sites by pool name, with the settings and PEM they were built
    /// from, so that an unchanged pool keeps its config across tables.
    built: Mutex<HashMap<String, Built>>,
    /// The last error of each pool whose certificate failed, logged once.
    failed: Mutex<HashMap<String, String>>,
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

    /// Rebuilds the map from `routes`, re-reading certificate files (a
    /// changed file is a new certificate). Pools whose TLS cannot be used
    /// are logged and skipped.
    pub fn update(&self, routes: &RouteTable) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let sites = with_route_certificates(routes);
        failed.retain(|pool, _| sites.iter().any(|r| r.name == *pool));
        let mut next: HashMap<String, Built> = HashMap::new();
        let mut map = SniMap::default();
        let (mut catch_all, mut only) = (None, None);
        for route in sites.iter() {
            let Some(tls) = &route.tls else { continue };
            let previous = built.remove(&route.name);
            // `Ok(None)`: the previous site is still right.
            let fresh = load(route, tls).and_then(|material| {
                if let Some((old, was, _)) = &previous
                    && old == tls
                    && *was == material
                {
                    return Ok(None);
                }
                let site = Arc::new(build(route, tls, &material)?);
                tracing::info!(pool = %route.name, "certificate loaded");
                Ok(Some((tls.clone(), material, site)))
            });
            let entry = match (fresh, previous) {
                (Ok(Some(entry)), _) | (Ok(None), Some(entry)) => {
                    failed.remove(&route.name);
                    entry
                }
                (Ok(None), None) => continue,
                // A file being rewritten, a broken Secret: the last good
                // certificate of the pool stays, if there is one.
                (Err(e), previous) => {
                    let message = e.to_string();
                    if failed.get(&route.name) != Some(&message) {
                        let kept = previous.is_some();
                        tracing::error!(error = %message, kept_previous = kept, "certificate not loaded");
                        failed.insert(route.name.clone(), message);
                    }
                    match previous {
                        Some(entry) => entry,
                        None => continue,
                    }
                }
            };
            let site = Arc::clone(&entry.2);
            next.insert(route.name.clone(), entry);
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

    /// Whether any pool's certificate comes from files.
    pub fn has_files(&self) -> bool {
        let built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        built.values().any(|(tls, _, _)| {
            tls.cert_file.is_some() || tls.key_file.is_some() || tls.client_ca_file.is_some()
        })
    }

    /// Whether any pool has a certificate.
    pub fn is_empty(&self) -> bool {
        let map = self.map.load();
        map.exact.is_empty() && map.wildcard.is_empty() && map.fallback.is_none()
    }
}

/// The pools with `tls`, then each `HttpRoute` with `tls` in the shape of
/// a pool serving its hosts (`*` when it has none), named
/// `route:<name>` so the two cannot collide. Routes carry a Gateway
/// listener's certificate; they share the pools' SNI map and its rules.
fn with_route_certificates(routes: &RouteTable) -> Vec<std::borrow::Cow<'_, PoolRoute>> {
    use std::borrow::Cow;
    let pools = routes
        .pools
        .values()
        .filter(|p| p.tls.is_some())
        .map(Cow::Borrowed);
    let from_routes = routes.routes.values().filter(|r| r.tls.is_some()).map(|r| {
        let hosts = if r.hosts.is_empty() {
            Host::try_from("*".to_string()).into_iter().collect()
        } else {
            r.hosts.clone()
        };
        Cow::Owned(PoolRoute {
            name: format!("route:{}", r.name),
            hosts,
            tls: r.tls.clone(),
            ..PoolRoute::default()
        })
    });
    pools.chain(from_routes).collect()
}

/// Checks that the TLS settings of every pool and every route can be used,
/// naming the first that cannot (a route as `route:<name>`); the
/// standalone file is rejected with this.
pub fn check(routes: &RouteTable) -> Result<(), TlsError> {
    for route in with_route_certificates(routes) {
        if let Some(tls) = &route.tls {
            build(&route, tls, &load(&route, tls)?)?;
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

fn load(route: &PoolRoute, tls: &Tls) -> Result<Material, TlsError> {
    let fail = |message: &str| TlsError {
        pool: route.name.clone(),
        message: message.into(),
    };
    Ok(Material {
        cert: pem(route, "certFile", &tls.certificate, &tls.cert_file)?
            .ok_or_else(|| fail("no certificate"))?,
        key: pem(route, "keyFile", &tls.private_key, &tls.key_file)?
            .ok_or_else(|| fail("no private key"))?,
        client_ca: pem(route, "clientCAFile", &tls.client_ca, &tls.client_ca_file)?,
    })
}

fn build(route: &PoolRoute, tls: &Tls, material: &Material) -> Result<Site, TlsError> {
    let fail = |message: String| TlsError {
        pool: route.name.clone(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&material.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(fail("certificate: no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key)
        .map_err(|e| fail(format!("privateKey: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?;
    let builder = match &material.client_ca {
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
    let client_ca = (material.client_ca.as_ref())
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
        let err = check(&t).expect_err("broken PEM");
        assert!(err.to_string().contains("pool \"bad\""), "{err}");
        let sites = Sites::default();
        sites.update(&t);
        assert!(sites.is_empty());
        assert!(sites.lookup(Some("a.example.com")).is_none());
    }

    fn pool_with_cert(name: &str, host: &str, cert: &str, key: &str) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("json");
        format!(
            "  - {{name: {name}, hosts: [{host}], tls: {{certificate: {}, privateKey: {}}}}}\n",
            q(cert),
            q(key)
        )
    }

    #[test]
    fn a_pool_whose_new_pem_is_broken_keeps_its_last_good_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (cert, key) = (cert.pem(), key.serialize_pem());
        let sites = Sites::default();
        let good = pool_with_cert("a", "a.example.com", &cert, &key);
        sites.update(&routes(&format!("pools:\n{good}")));
        let first = sites.lookup(Some("a.example.com")).expect("a site");
        // The same settings again: the same config (and session cache).
        sites.update(&routes(&format!("pools:\n{good}")));
        let again = sites.lookup(Some("A.example.com")).expect("a site");
        assert!(Arc::ptr_eq(&first, &again));
        // Only one certificate: it is also the fallback.
        assert!(sites.lookup(None).is_some_and(|s| Arc::ptr_eq(&s, &first)));
        assert!(sites.lookup(Some("other.org")).is_some());

        let broken = pool_with_cert("a", "a.example.com", "broken", &key);
        let other = pool_with_cert("b", "b.example.com", &cert, &key);
        sites.update(&routes(&format!("pools:\n{broken}{other}")));
        let kept = sites.lookup(Some("a.example.com")).expect("still a site");
        assert!(Arc::ptr_eq(&first, &kept));
        assert_eq!(sites.lookup(Some("b.example.com")).expect("b").pool, "b");
        // Two certificates, no catch-all: no fallback.
        assert!(sites.lookup(None).is_none());
        assert!(sites.lookup(Some("other.org")).is_none());
    }
}
