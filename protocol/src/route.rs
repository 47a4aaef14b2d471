//! `PoolRoute`: one pool's resolved routing entry, as streamed and as written in
//! the standalone file.
//!
//! Validation happens while deserializing (newtypes with `try_from`), so an error
//! in a YAML file carries the field path and line of the offending value, and a
//! malformed stream message can never become a half-valid table.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::policy::{
    Activation, Algorithm, CircuitBreaker, HashKey, HealthCheck, OutlierDetection, RateLimit,
    RateLimitKey, Retries, SessionAffinity, Timeouts, Tls,
};

/// The routing entry of one pool: where it matches, where it sends traffic,
/// and every policy, resolved. `None` policies take their defaults (see each
/// type's `Default`); health checks, affinity, rate limits, TLS and
/// activation are off when omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolRoute {
    /// Unique name; `namespace/name` for pools from the cluster.
    pub name: String,
    /// Host patterns matched against `Host` (and SNI): exact names, `*.suffix`
    /// wildcards, or `*`. Empty means catch-all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Host>,
    /// Requests whose path starts with this prefix match; the longest prefix
    /// wins among pools sharing a host.
    #[serde(default)]
    pub path_prefix: PathPrefix,
    /// How an endpoint is picked for each request.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// The endpoints, already resolved (ready state, weights across backends).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// What RingHash and Maglev hash; the source IP when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
    /// Cookie-based sticky sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// Active HTTP health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection (on by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Per-pool limits (Envoy's defaults when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Retry policy (connect failures, twice, by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Connect, request and idle timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Local rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// TLS termination for `hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Request holding while the pool has no ready endpoint (scale from zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// The pool is only a backend of [`crate::HttpRoute`] rules: it implies
    /// no route of its own (otherwise a pool without `hosts` would catch
    /// every host). Takes no `hosts`, `pathPrefix` or `tls`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backend_only: bool,
}

impl PoolRoute {
    /// A pool named `name` with no endpoints and every policy at its default.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The policies that are on by default, resolved.
    pub fn outlier_detection(&self) -> OutlierDetection {
        self.outlier_detection.clone().unwrap_or_default()
    }
    /// Circuit breaker thresholds, resolved.
    pub fn circuit_breaker(&self) -> CircuitBreaker {
        self.circuit_breaker.clone().unwrap_or_default()
    }
    /// Retry policy, resolved.
    pub fn retries(&self) -> Retries {
        self.retries.clone().unwrap_or_default()
    }
    /// Timeouts, resolved.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts.clone().unwrap_or_default()
    }
    /// The hash key, resolved (source IP by default).
    pub fn hash_key(&self) -> HashKey {
        self.hash_key.clone().unwrap_or(HashKey::SourceIp)
    }
}

/// One upstream address of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port` the dataplane connects to.
    pub address: SocketAddr,
    /// Relative share of the pool's traffic.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: NonZeroU32,
    /// Topology zone, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Not-ready endpoints take no traffic.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub ready: bool,
    /// Terminating endpoints take traffic only while nothing else is ready;
    /// the controller already applies that rule when it builds the route.
    #[serde(default, skip_serializing_if = "is_false")]
    pub terminating: bool,
}

impl Endpoint {
    /// A ready endpoint of weight 1.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            weight: one(),
            zone: None,
            ready: true,
            terminating: false,
        }
    }

    /// The same endpoint with another weight.
    pub fn with_weight(mut self, weight: NonZeroU32) -> Self {
        self.weight = weight;
        self
    }
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}
fn is_one(w: &NonZeroU32) -> bool {
    w.get() == 1
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// A path prefix: always starts with `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPrefix(String);

impl PathPrefix {
    /// The prefix as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` falls under this prefix. `/api` matches `/api`, `/api/x`
    /// and `/api?q`, but not `/apix`: prefixes match whole path segments, as
    /// Gateway API's `PathPrefix` does, so a pool never catches a sibling's paths.
    pub fn matches(&self, path: &str) -> bool {
        let p = self.0.trim_end_matches('/');
        if p.is_empty() {
            return true;
        }
        match path.strip_prefix(p) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// Length used to pick the longest match (trailing slash ignored).
    pub fn specificity(&self) -> usize {
        self.0.trim_end_matches('/').len()
    }
}

impl Default for PathPrefix {
    fn default() -> Self {
        Self("/".to_string())
    }
}

impl TryFrom<String> for PathPrefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if !s.starts_with('/') {
            return Err(format!("pathPrefix {s:?} must start with '/'"));
        }
        if s.contains(['?', '#']) || s.chars().any(char::is_whitespace) {
            return Err(format!(
                "pathPrefix {s:?} must not contain '?', '#' or spaces"
            ));
        }
        Ok(Self(s))
    }
}

impl From<PathPrefix> for String {
    fn from(p: PathPrefix) -> Self {
        p.0
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host pattern: `example.com`, `*.example.com` or `*` (lower-cased).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Host(String);

impl Host {
    /// The pattern, lower-cased.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `Some(".example.com")` for `*.example.com`.
    pub fn wildcard_suffix(&self) -> Option<&str> {
        self.0.strip_prefix('*').filter(|s| s.starts_with('.'))
    }

    /// Whether this pattern matches every host.
    pub fn is_catch_all(&self) -> bool {
        self.0 == "*"
    }
}

impl TryFrom<String> for Host {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let lower = s.to_ascii_lowercase();
        if lower == "*" {
            return Ok(Self(lower));
        }
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "host {s:?} is not a DNS name, a '*.' wildcard of one, or '*'"
            ));
        }
        Ok(Self(lower))
    }
}

impl From<Host> for String {
    fn from(h: Host) -> Self {
        h.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a route file or a set of routes was refused.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The YAML did not parse into the schema; the message names line and field.
    #[error("{0}")]
    Yaml(String),
    /// Two pools share a name.
    #[error("pools[{index}]: name {name:?} is used by more than one pool")]
    DuplicateName { index: usize, name: String },
    /// A pool lists the same address twice.
    #[error("pool {pool:?}: endpoint {address} is listed more than once")]
    DuplicateEndpoint { pool: String, address: SocketAddr },
    /// A pool has an empty name.
    #[error("pools[{index}]: name must not be empty")]
    EmptyName { index: usize },
    /// Policies that do not fit together.
    #[error("pool {pool:?}: {message}")]
    Policy { pool: String, message: String },
    /// Two routes share a name.
    #[error("routes[{index}]: name {name:?} is used by more than one route")]
    DuplicateRouteName { index: usize, name: String },
    /// A route has an empty name.
    #[error("routes[{index}]: name must not be empty")]
    EmptyRouteName { index: usize },
    /// A rule whose parts do not fit together.
    #[error("route {route:?}: rules[{rule}]: {message}")]
    Rule {
        route: String,
        rule: usize,
        message: String,
    },
}

/// Checks what the types alone cannot: unique names, unique endpoints.
pub fn validate_pools(pools: &[PoolRoute]) -> Result<(), RouteError> {
    let mut names = BTreeSet::new();
    for (index, pool) in pools.iter().enumerate() {
        if pool.name.is_empty() {
            return Err(RouteError::EmptyName { index });
        }
        if !names.insert(pool.name.as_str()) {
            return Err(RouteError::DuplicateName {
                index,
                name: pool.name.clone(),
            });
        }
        if let Err(message) = check_policies(pool) {
            return Err(RouteError::Policy {
                pool: pool.name.clone(),
                message,
            });
        }
        let mut seen = BTreeSet::new();
        for ep in &pool.endpoints {
            if !seen.insert(ep.address) {
                return Err(RouteError::DuplicateEndpoint {
                    pool: pool.name.clone(),
                    address: ep.address,
                });
            }
        }
    }
    Ok(())
}

/// What the serde types alone cannot check: fields that depend on others.
fn check_policies(pool: &PoolRoute) -> Result<(), String> {
    if pool.hash_key.is_some() && !pool.algorithm.is_hashing() {
        return Err(format!(
            "hashKey is only used by RingHash and Maglev, not {:?}",
            pool.algorithm
        ));
    }
    if let Some(rl) = &pool.rate_limit {
        match (rl.key, &rl.header) {
            (RateLimitKey::Header, None) => {
                return Err("rateLimit: key Header needs a header name".into());
            }
            (RateLimitKey::Pool | RateLimitKey::SourceIp, Some(_)) => {
                return Err("rateLimit: header is only used with key Header".into());
            }
            _ => {}
        }
    }
    if pool.backend_only
        && (!pool.hosts.is_empty() || pool.tls.is_some() || pool.path_prefix.as_str() != "/")
    {
        return Err(
            "backendOnly: the pool implies no route, so it takes no hosts, pathPrefix or tls"
                .into(),
        );
    }
    if let Some(tls) = &pool.tls {
        tls.check()?;
        if pool.hosts.is_empty() {
            return Err("tls needs hosts: the certificate is chosen by SNI".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::RouteFile;

    const EXAMPLE: &str = r#"
pools:
  - name: web
    hosts: ["*"]
    pathPrefix: /
    algorithm: WeightedRoundRobin
    endpoints:
      - {address: 127.0.0.1:9001, weight: 3}
      - {address: 127.0.0.1:9002}
"#;

    #[test]
    fn parses_the_design_example() {
        let file = RouteFile::from_yaml(EXAMPLE).expect("example parses");
        let pool = &file.pools[0];
        assert_eq!(pool.name, "web");
        assert_eq!(pool.algorithm, Algorithm::WeightedRoundRobin);
        assert_eq!(pool.endpoints[0].weight.get(), 3);
        assert_eq!(pool.endpoints[1].weight.get(), 1);
        assert!(pool.endpoints[1].ready);
        assert!(pool.hosts[0].is_catch_all());
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let bad = EXAMPLE.replace("127.0.0.1:9002", "127.0.0.1:99999");
        let err = RouteFile::from_yaml(&bad)
            .expect_err("port out of range")
            .to_string();
        assert!(err.contains("line 9"), "{err}");

        let bad = EXAMPLE.replace("pathPrefix: /", "pathPrefix: api");
        let err = RouteFile::from_yaml(&bad)
            .expect_err("relative prefix")
            .to_string();
        assert!(
            err.contains("must start with '/'") && err.contains("line 5"),
            "{err}"
        );

        let bad = EXAMPLE.replace("algorithm: WeightedRoundRobin", "algorithm: Fastest");
        let err = RouteFile::from_yaml(&bad)
            .expect_err("unknown algorithm")
            .to_string();
        assert!(err.contains("Fastest"), "{err}");

        let bad = EXAMPLE.replace("weight: 3", "wieght: 3");
        let err = RouteFile::from_yaml(&bad).expect_err("typo").to_string();
        assert!(err.contains("wieght"), "{err}");
    }

    #[test]
    fn duplicate_names_and_endpoints_are_refused() {
        let twice = format!("{EXAMPLE}{}", &EXAMPLE["\npools:\n".len()..]);
        let err = RouteFile::from_yaml(&twice)
            .expect_err("duplicate")
            .to_string();
        assert!(
            err.contains("\"web\" is used by more than one pool"),
            "{err}"
        );

        let dup = EXAMPLE.replace("127.0.0.1:9002", "127.0.0.1:9001");
        let err = RouteFile::from_yaml(&dup)
            .expect_err("duplicate endpoint")
            .to_string();
        assert!(
            err.contains("127.0.0.1:9001 is listed more than once"),
            "{err}"
        );
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = PathPrefix::try_from("/api".to_string()).unwrap();
        assert!(p.matches("/api"));
        assert!(p.matches("/api/v1"));
        assert!(!p.matches("/apix"));
        assert!(!p.matches("/"));
        let root = PathPrefix::default();
        assert!(root.matches("/anything"));
        let slash = PathPrefix::try_from("/api/".to_string()).unwrap();
        assert!(slash.matches("/api/v1") && slash.matches("/api"));
    }

    #[test]
    fn hosts_are_validated_and_lowercased() {
        assert_eq!(
            Host::try_from("Shop.Example.com".to_string())
                .unwrap()
                .as_str(),
            "shop.example.com"
        );
        let w = Host::try_from("*.example.com".to_string()).unwrap();
        assert_eq!(w.wildcard_suffix(), Some(".example.com"));
        for bad in ["", "exa mple.com", "*example.com", "-a.com", "a..com"] {
            assert!(Host::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }
}
