//! Pool + Services + EndpointSlices → `PoolRoute`: a pure function.
//!
//! Rules, as kube-proxy and Gateway API implementations apply them:
//! - a backend's port names a *Service* port (by name or number); the slice
//!   port with that port's name gives the endpoint's target port;
//! - an address seen in several slices (during slice churn) counts once, with
//!   the best state any slice gives it;
//! - terminating endpoints take no traffic while the same backend has a ready
//!   one, and serve as a fallback when it has none (per backend, like
//!   kube-proxy's per-Service rule);
//! - backend weights split traffic across backends whatever their endpoint
//!   counts: each endpoint of backend `b` weighs `w_b / n_b`, scaled to integers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_crds::{Algorithm as CrdAlgorithm, Backend, BackendPoolSpec, EndpointCounts};
use sluice_protocol::route::{Host, PathPrefix, RouteError, validate_pools};
use sluice_protocol::{Algorithm, Endpoint, PoolRoute, Tls};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Read access to the Services and slices a pool may reference.
pub trait Lookup {
    /// The Service `namespace/name`, if it exists.
    fn service(&self, namespace: &str, name: &str) -> Option<&Service>;
    /// Every EndpointSlice of the Service `namespace/name`.
    fn slices(&self, namespace: &str, service: &str) -> Vec<&EndpointSlice>;
    /// The `kubernetes.io/tls` Secret `namespace/name`, if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<&Secret>;
}

/// Condition reasons of a TLS Secret that did not resolve; the index keeps
/// the pool's last good certificate when it sees one of them.
pub const TLS_REASONS: [&str; 2] = ["SecretNotFound", "InvalidSecret"];

/// A reference the controller could not resolve; becomes `ResolvedRefs=False`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// Condition reason (PascalCase).
    pub reason: &'static str,
    /// What is wrong, naming the object and field.
    pub message: String,
}

/// The spec itself is unusable; becomes `Accepted=False, reason=InvalidSpec`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// The route of one pool and what was learned while building it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The route to stream (possibly without endpoints).
    pub route: PoolRoute,
    /// Endpoint counts for the status.
    pub endpoints: EndpointCounts,
    /// References that did not resolve (the route carries what did).
    pub unresolved: Vec<Unresolved>,
}

/// Builds the route of pool `namespace/name`.
pub fn compute(
    namespace: &str,
    name: &str,
    spec: &BackendPoolSpec,
    lookup: &impl Lookup,
) -> Result<Resolved, InvalidSpec> {
    let hosts = spec
        .hosts
        .iter()
        .map(|h| Host::try_from(h.clone()).map_err(|e| InvalidSpec(format!("spec.hosts: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let path_prefix = PathPrefix::try_from(spec.path_prefix.clone())
        .map_err(|e| InvalidSpec(format!("spec.pathPrefix: {e}")))?;
    if spec.backends.is_empty() {
        return Err(InvalidSpec(
            "spec.backends: at least one backend is required".into(),
        ));
    }

    let mut unresolved = Vec::new();
    let mut counts = EndpointCounts::default();
    let mut per_backend: Vec<(u32, Vec<Candidate>)> = Vec::with_capacity(spec.backends.len());
    for (i, backend) in spec.backends.iter().enumerate() {
        let weight = backend.weight.unwrap_or(1).max(1);
        match resolve_backend(namespace, i, backend, lookup) {
            Ok(found) => {
                counts.total += found.len() as u32;
                let serving = pick_serving(found);
                counts.ready += serving.iter().filter(|c| !c.terminating).count() as u32;
                per_backend.push((weight, serving));
            }
            Err(problem) => unresolved.push(problem),
        }
    }

    if spec.algorithm == CrdAlgorithm::Unknown {
        let known: Vec<String> = Algorithm::ALL.iter().map(|a| format!("{a:?}")).collect();
        return Err(InvalidSpec(format!(
            "spec.algorithm: not one of {}",
            known.join(", ")
        )));
    }
    let mut route = PoolRoute {
        name: format!("{namespace}/{name}"),
        hosts,
        path_prefix,
        algorithm: match spec.algorithm {
            CrdAlgorithm::RoundRobin => Algorithm::RoundRobin,
            CrdAlgorithm::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
            CrdAlgorithm::LeastRequest => Algorithm::LeastRequest,
            CrdAlgorithm::Random => Algorithm::Random,
            CrdAlgorithm::PeakEwma => Algorithm::PeakEwma,
            CrdAlgorithm::RingHash => Algorithm::RingHash,
            CrdAlgorithm::Maglev => Algorithm::Maglev,
            // Refused above.
            CrdAlgorithm::Unknown => Algorithm::RoundRobin,
        },
        endpoints: weigh(per_backend),
        hash_key: policy("hashKey", &spec.hash_key)?,
        session_affinity: policy("sessionAffinity", &spec.session_affinity)?,
        health_check: policy("healthCheck", &spec.health_check)?,
        outlier_detection: policy("outlierDetection", &spec.outlier_detection)?,
        circuit_breaker: policy("circuitBreaker", &spec.circuit_breaker)?,
        retries: policy("retries", &spec.retries)?,
        timeouts: policy("timeouts", &spec.timeouts)?,
        rate_limit: policy("rateLimit", &spec.rate_limit)?,
        tls: None,
        activation: None,
        backend_only: false,
    };
    if let Some(tls) = &spec.tls {
        match resolve_tls(namespace, &tls.secret_name, lookup) {
            Ok(tls) => route.tls = Some(tls),
            Err(problem) => unresolved.push(problem),
        }
    }
    validate_pools(std::slice::from_ref(&route)).map_err(|e| match e {
        RouteError::Policy { message, .. } => InvalidSpec(format!("spec: {message}")),
        other => InvalidSpec(other.to_string()),
    })?;
    Ok(Resolved {
        route,
        endpoints: counts,
        unresolved,
    })
}

/// The certificate and key of a `kubernetes.io/tls` Secret, checked: both
/// keys present, PEM that parses into at least one certificate and a key.
fn resolve_tls(namespace: &str, name: &str, lookup: &impl Lookup) -> Result<Tls, Unresolved> {
    let (certificate, private_key) = certificate_of(namespace, name, "spec.tls", lookup)?;
    Ok(Tls {
        certificate: Some(certificate),
        private_key: Some(private_key),
        ..Tls::default()
    })
}

/// The PEM chain and key of the `kubernetes.io/tls` Secret
/// `namespace/name`, checked as the dataplane's rustls will; `field` names
/// the reference in messages. Shared by pools and Gateway listeners.
pub fn certificate_of(
    namespace: &str,
    name: &str,
    field: &str,
    lookup: &impl Lookup,
) -> Result<(String, String), Unresolved> {
    let secret = lookup.secret(namespace, name).ok_or_else(|| Unresolved {
        reason: "SecretNotFound",
        message: format!(
            "{field}: Secret {namespace}/{name} not found (or not of type kubernetes.io/tls)"
        ),
    })?;
    let invalid = |why: String| Unresolved {
        reason: "InvalidSecret",
        message: format!("{field}: Secret {namespace}/{name}: {why}"),
    };
    let field = |key: &str| -> Result<String, Unresolved> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| invalid(format!("has no {key}")))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| invalid(format!("{key} is not PEM text")))
    };
    let certificate = field("tls.crt")?;
    let private_key = field("tls.key")?;
    let certs = CertificateDer::pem_slice_iter(certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("tls.crt: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("tls.crt holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(private_key.as_bytes())
        .map_err(|e| invalid(format!("tls.key: {e}")))?;
    // The same check the dataplane's rustls makes: a key it can sign with,
    // matching the leaf certificate.
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(format!("tls.key: {e}")))?;
    rustls::sign::CertifiedKey::new(certs, signer)
        .keys_match()
        .map_err(|e| invalid(format!("tls.key does not match tls.crt: {e}")))?;
    Ok((certificate, private_key))
}

/// Carries one policy of the spec into the route. The CRD and the protocol
/// share field names, so the spec's JSON is read again in the protocol's
/// type, which validates it (durations, combinations the schema cannot
/// express) and fills in the defaults.
fn policy<C: Serialize, P: DeserializeOwned>(
    field: &str,
    value: &Option<C>,
) -> Result<Option<P>, InvalidSpec> {
    value
        .as_ref()
        .map(|v| {
            serde_json::to_value(v)
                .and_then(serde_json::from_value)
                .map_err(|e| InvalidSpec(format!("spec.{field}: {e}")))
        })
        .transpose()
}

/// One endpoint address as the slices describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    address: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
}

fn resolve_backend(
    namespace: &str,
    index: usize,
    backend: &Backend,
    lookup: &impl Lookup,
) -> Result<Vec<Candidate>, Unresolved> {
    if let Some(address) = &backend.address {
        let address: SocketAddr = address.parse().map_err(|_| Unresolved {
            reason: "InvalidAddress",
            message: format!("spec.backends[{index}].address {address:?} is not ip:port"),
        })?;
        return Ok(vec![Candidate {
            address,
            ready: true,
            serving: true,
            terminating: false,
        }]);
    }
    let Some(service_name) = &backend.service else {
        return Err(Unresolved {
            reason: "InvalidBackend",
            message: format!("spec.backends[{index}] sets neither service nor address"),
        });
    };
    let service = lookup
        .service(namespace, service_name)
        .ok_or_else(|| Unresolved {
            reason: "BackendNotFound",
            message: format!(
                "spec.backends[{index}]: Service {namespace}/{service_name} not found"
            ),
        })?;
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
    let wanted = backend.port.as_ref();
    let port = ports.into_iter().flatten().find(|p| match wanted {
        Some(IntOrString::String(n)) => p.name.as_deref() == Some(n.as_str()),
        Some(IntOrString::Int(n)) => p.port == *n,
        None => false,
    });
    let Some(port) = port else {
        let shown = match wanted {
            Some(IntOrString::String(n)) => format!("{n:?}"),
            Some(IntOrString::Int(n)) => n.to_string(),
            None => "(none)".to_string(),
        };
        return Err(Unresolved {
            reason: "PortNotFound",
            message: format!(
                "spec.backends[{index}]: Service {namespace}/{service_name} has no port {shown}"
            ),
        });
    };
    let port_name = port.name.as_deref().unwrap_or("");

    let mut by_address: BTreeMap<SocketAddr, Candidate> = BTreeMap::new();
    for slice in lookup.slices(namespace, service_name) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let cond = ep.conditions.as_ref();
            // Nil conditions mean "unknown" and are read as ready, per the API docs.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let candidate = Candidate {
                address: SocketAddr::new(ip, target),
                ready,
                serving: cond.and_then(|c| c.serving).unwrap_or(ready),
                terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            };
            by_address
                .entry(candidate.address)
                .and_modify(|c| {
                    c.ready |= candidate.ready;
                    c.serving |= candidate.serving;
                    c.terminating &= candidate.terminating;
                })
                .or_insert(candidate);
        }
    }
    Ok(by_address.into_values().collect())
}

/// Ready, non-terminating endpoints; failing those, serving terminating ones.
fn pick_serving(found: Vec<Candidate>) -> Vec<Candidate> {
    let active: Vec<Candidate> = found
        .iter()
        .copied()
        .filter(|c| c.ready && !c.terminating)
        .collect();
    if !active.is_empty() {
        return active;
    }
    found
        .into_iter()
        .filter(|c| c.serving && c.terminating)
        .collect()
}

/// Largest per-endpoint weight scale before exact ratios are approximated.
const MAX_SCALE: u64 = 100_000;

/// Turns per-backend weights into per-endpoint integer weights.
fn weigh(per_backend: Vec<(u32, Vec<Candidate>)>) -> Vec<Endpoint> {
    let sizes: Vec<u64> = per_backend
        .iter()
        .map(|(_, eps)| eps.len() as u64)
        .filter(|n| *n > 0)
        .collect();
    // Exact when the lcm of the endpoint counts is small; otherwise each
    // endpoint's share is rounded at a fixed scale (error < 1/MAX_SCALE).
    let lcm = sizes.iter().try_fold(1u64, |acc, n| {
        let l = acc / gcd(acc, *n) * n;
        (l <= MAX_SCALE).then_some(l)
    });
    let scale = lcm.unwrap_or(MAX_SCALE);

    let mut merged: BTreeMap<SocketAddr, (u64, bool)> = BTreeMap::new();
    for (weight, eps) in &per_backend {
        let n = eps.len() as u64;
        for c in eps {
            let w = (u64::from(*weight) * scale / n.max(1)).max(1);
            let entry = merged.entry(c.address).or_insert((0, c.terminating));
            entry.0 += w;
            entry.1 &= c.terminating;
        }
    }
    let common = merged.values().fold(0, |g, (w, _)| gcd(g, *w)).max(1);
    merged
        .into_iter()
        .map(|(address, (w, terminating))| {
            let w = u32::try_from(w / common).unwrap_or(u32::MAX);
            let mut ep =
                Endpoint::new(address).with_weight(NonZeroU32::new(w).unwrap_or(NonZeroU32::MIN));
            ep.terminating = terminating;
            ep
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };
    use kube::api::ObjectMeta;

    /// Services and slices held in maps, as the index holds them.
    #[derive(Default)]
    pub struct Fixture {
        pub services: BTreeMap<(String, String), Service>,
        pub slices: Vec<EndpointSlice>,
        pub secrets: BTreeMap<(String, String), Secret>,
    }

    impl Lookup for Fixture {
        fn service(&self, ns: &str, name: &str) -> Option<&Service> {
            self.services.get(&(ns.to_string(), name.to_string()))
        }
        fn secret(&self, ns: &str, name: &str) -> Option<&Secret> {
            self.secrets.get(&(ns.to_string(), name.to_string()))
        }
        fn slices(&self, ns: &str, svc: &str) -> Vec<&EndpointSlice> {
            self.slices
                .iter()
                .filter(|s| {
                    s.metadata.namespace.as_deref() == Some(ns)
                        && s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(SERVICE_NAME_LABEL))
                            .map(String::as_str)
                            == Some(svc)
                })
                .collect()
        }
    }

    pub fn service(ns: &str, name: &str, ports: &[(&str, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: Some((*n).into()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A slice of `svc` with target port `port` named `port_name`; each
    /// endpoint is `(ip, ready, terminating)`.
    pub fn slice(
        ns: &str,
        name: &str,
        svc: &str,
        port_name: &str,
        port: i32,
        eps: &[(&str, bool, bool)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(port),
                ..Default::default()
            }]),
            endpoints: eps
                .iter()
                .map(|(ip, ready, terminating)| SliceEndpoint {
                    addresses: vec![(*ip).into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready && !*terminating),
                        serving: Some(*ready),
                        terminating: Some(*terminating),
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn spec(backends: serde_json::Value) -> BackendPoolSpec {
        serde_json::from_value(serde_json::json!({"backends": backends})).expect("spec")
    }

    fn addrs(r: &Resolved) -> Vec<(String, u32, bool)> {
        r.route
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.weight.get(), e.terminating))
            .collect()
    }

    #[test]
    fn resolves_ready_endpoints_by_port_name_and_dedups_across_slices() {
        let mut f = Fixture::default();
        f.services.insert(
            ("shop".into(), "web".into()),
            service("shop", "web", &[("http", 80), ("admin", 81)]),
        );
        f.slices.push(slice(
            "shop",
            "web-a",
            "web",
            "http",
            8080,
            &[("10.0.0.1", true, false), ("10.0.0.2", false, false)],
        ));
        f.slices.push(slice(
            "shop",
            "web-b",
            "web",
            "http",
            8080,
            &[("10.0.0.1", true, false), ("10.0.0.3", true, false)],
        ));
        f.slices.push(slice(
            "shop",
            "web-c",
            "web",
            "admin",
            9000,
            &[("10.0.0.9", true, false)],
        ));
        let r = compute(
            "shop",
            "web",
            &spec(serde_json::json!([{"service": "web", "port": "http"}])),
            &f,
        )
        .unwrap();
        assert_eq!(r.route.name, "shop/web");
        assert_eq!(
            addrs(&r),
            vec![
                ("10.0.0.1:8080".into(), 1, false),
                ("10.0.0.3:8080".into(), 1, false)
            ]
        );
        assert_eq!(r.endpoints, EndpointCounts { ready: 2, total: 3 });
        // By number: the Service port 81 is the slice port named "admin".
        let r = compute(
            "shop",
            "web",
            &spec(serde_json::json!([{"service": "web", "port": 81}])),
            &f,
        )
        .unwrap();
        assert_eq!(addrs(&r), vec![("10.0.0.9:9000".into(), 1, false)]);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_else_is_ready() {
        let mut f = Fixture::default();
        f.services.insert(
            ("ns".into(), "s".into()),
            service("ns", "s", &[("http", 80)]),
        );
        f.slices.push(slice(
            "ns",
            "s1",
            "s",
            "http",
            80,
            &[("10.0.0.1", true, true), ("10.0.0.2", true, false)],
        ));
        let sp = spec(serde_json::json!([{"service": "s", "port": "http"}]));
        assert_eq!(
            addrs(&compute("ns", "p", &sp, &f).unwrap()),
            vec![("10.0.0.2:80".into(), 1, false)]
        );
        f.slices[0] = slice(
            "ns",
            "s1",
            "s",
            "http",
            80,
            &[("10.0.0.1", true, true), ("10.0.0.2", false, false)],
        );
        let r = compute("ns", "p", &sp, &f).unwrap();
        assert_eq!(addrs(&r), vec![("10.0.0.1:80".into(), 1, true)]);
        assert_eq!(r.endpoints.ready, 0);
    }

    #[test]
    fn backend_weights_split_traffic_whatever_the_endpoint_counts() {
        let mut f = Fixture::default();
        f.services.insert(
            ("ns".into(), "a".into()),
            service("ns", "a", &[("http", 80)]),
        );
        f.services.insert(
            ("ns".into(), "b".into()),
            service("ns", "b", &[("http", 80)]),
        );
        f.slices.push(slice(
            "ns",
            "a1",
            "a",
            "http",
            80,
            &[
                ("10.0.0.1", true, false),
                ("10.0.0.2", true, false),
                ("10.0.0.3", true, false),
            ],
        ));
        f.slices.push(slice(
            "ns",
            "b1",
            "b",
            "http",
            80,
            &[("10.0.1.1", true, false)],
        ));
        let sp = spec(serde_json::json!([
            {"service": "a", "port": "http", "weight": 90},
            {"service": "b", "port": "http", "weight": 10},
        ]));
        let r = compute("ns", "p", &sp, &f).unwrap();
        let w: Vec<u32> = r.route.endpoints.iter().map(|e| e.weight.get()).collect();
        // 90 split over three endpoints, 10 on one: 30:30:30:10, reduced.
        assert_eq!(w, vec![3, 3, 3, 1]);
    }

    #[test]
    fn missing_service_and_port_are_reported_and_static_addresses_still_route() {
        let mut f = Fixture::default();
        f.services.insert(
            ("ns".into(), "s".into()),
            service("ns", "s", &[("http", 80)]),
        );
        let sp = spec(serde_json::json!([
            {"service": "gone", "port": "http"},
            {"service": "s", "port": "grpc"},
            {"address": "192.0.2.10:8080"},
        ]));
        let r = compute("ns", "p", &sp, &f).unwrap();
        let reasons: Vec<&str> = r.unresolved.iter().map(|u| u.reason).collect();
        assert_eq!(reasons, vec!["BackendNotFound", "PortNotFound"]);
        assert!(
            r.unresolved[0]
                .message
                .contains("Service ns/gone not found")
        );
        assert!(r.unresolved[1].message.contains("has no port \"grpc\""));
        assert_eq!(addrs(&r), vec![("192.0.2.10:8080".into(), 1, false)]);
    }

    #[test]
    fn invalid_hosts_and_prefixes_are_refused() {
        let f = Fixture::default();
        let mut sp = spec(serde_json::json!([{"address": "192.0.2.1:80"}]));
        sp.path_prefix = "api".into();
        let err = compute("ns", "p", &sp, &f).unwrap_err();
        assert!(err.0.starts_with("spec.pathPrefix"), "{err}");
        sp.path_prefix = "/".into();
        sp.hosts = vec!["bad host".into()];
        assert!(
            compute("ns", "p", &sp, &f)
                .unwrap_err()
                .0
                .starts_with("spec.hosts")
        );
    }

    #[test]
    fn policies_reach_the_route_with_defaults_filled_in() {
        let spec: BackendPoolSpec = serde_json::from_value(serde_json::json!({
            "backends": [{"address": "192.0.2.10:8080"}],
            "algorithm": "Maglev",
            "hashKey": {"cookie": "sid"},
            "retries": {"attempts": 3, "retryOn": ["GatewayError"]},
            "rateLimit": {"requestsPerSecond": 10, "key": "SourceIP"},
            "healthCheck": {"path": "/ready"},
        }))
        .expect("spec");
        let r = compute("ns", "p", &spec, &Fixture::default()).expect("valid");
        assert_eq!(r.route.algorithm, Algorithm::Maglev);
        assert_eq!(
            r.route.hash_key,
            Some(sluice_protocol::HashKey::Cookie("sid".into()))
        );
        let retries = r.route.retries();
        assert_eq!(retries.attempts, 3);
        assert_eq!(retries.budget_percent.get(), 20, "default filled in");
        let hc = r.route.health_check.expect("health check");
        assert_eq!(
            (hc.path.as_str(), hc.interval.get().as_secs()),
            ("/ready", 5)
        );
        assert!(r.route.timeouts.is_none(), "omitted stays omitted");
    }

    #[test]
    fn a_policy_the_schema_cannot_judge_is_an_invalid_spec() {
        let spec: BackendPoolSpec = serde_json::from_value(serde_json::json!({
            "backends": [{"address": "192.0.2.10:8080"}],
            "timeouts": {"connect": "0s"},
        }))
        .expect("spec");
        let err = compute("ns", "p", &spec, &Fixture::default()).expect_err("0s connect");
        assert!(
            err.0.contains("spec.timeouts") && err.0.contains("longer than 0s"),
            "{err}"
        );
        let spec: BackendPoolSpec = serde_json::from_value(serde_json::json!({
            "backends": [{"address": "192.0.2.10:8080"}],
            "hashKey": {"header": "x-user"},
        }))
        .expect("spec");
        let err = compute("ns", "p", &spec, &Fixture::default()).expect_err("hashKey with RR");
        assert!(err.0.contains("hashKey"), "{err}");
    }

    pub fn tls_secret(ns: &str, name: &str, crt: &str, key: &str) -> Secret {
        use k8s_openapi::ByteString;
        Secret {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
                    ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        }
    }

    pub const CRT: &str = include_str!("testdata/tls.crt");
    pub const KEY: &str = include_str!("testdata/tls.key");

    #[test]
    fn a_tls_secret_is_shipped_as_pem_and_a_bad_one_is_a_reason() {
        let spec: BackendPoolSpec = serde_json::from_value(serde_json::json!({
            "hosts": ["shop.example.com"],
            "backends": [{"address": "192.0.2.10:8080"}],
            "tls": {"secretName": "shop-tls"},
        }))
        .expect("spec");
        let mut fx = Fixture::default();
        let r = compute("ns", "p", &spec, &fx).expect("valid spec");
        assert_eq!(r.unresolved[0].reason, "SecretNotFound");
        assert!(r.route.tls.is_none());
        assert_eq!(r.route.endpoints.len(), 1, "plain traffic still routes");

        fx.secrets.insert(
            ("ns".into(), "shop-tls".into()),
            tls_secret("ns", "shop-tls", CRT, KEY),
        );
        let r = compute("ns", "p", &spec, &fx).expect("valid spec");
        assert!(r.unresolved.is_empty(), "{:?}", r.unresolved);
        let tls = r.route.tls.expect("tls");
        assert_eq!(tls.certificate.as_deref(), Some(CRT));
        assert_eq!(tls.private_key.as_deref(), Some(KEY));

        for (crt, key, why) in [
            ("not pem", KEY, "tls.crt holds no certificate"),
            (
                CRT,
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "tls.key",
            ),
        ] {
            fx.secrets.insert(
                ("ns".into(), "shop-tls".into()),
                tls_secret("ns", "shop-tls", crt, key),
            );
            let r = compute("ns", "p", &spec, &fx).expect("valid spec");
            assert_eq!(r.unresolved[0].reason, "InvalidSecret");
            assert!(
                r.unresolved[0].message.contains(why),
                "{}",
                r.unresolved[0].message
            );
        }
    }

    #[test]
    fn an_unknown_enum_value_in_a_policy_is_an_invalid_spec_naming_the_field() {
        let spec: BackendPoolSpec = serde_json::from_value(serde_json::json!({
            "backends": [{"address": "192.0.2.10:8080"}],
            "retries": {"retryOn": ["ConnectFailure", "Sometimes"]},
        }))
        .expect("an unknown value still parses");
        let err = compute("ns", "p", &spec, &Fixture::default()).expect_err("refused");
        assert!(err.0.contains("spec.retries"), "{err}");
    }
}
