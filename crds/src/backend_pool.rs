//! `BackendPool`: where a set of hosts and a path prefix send their traffic.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{
    CircuitBreaker, HashKey, HealthCheck, OutlierDetection, RateLimit, Retries, SessionAffinity,
    Timeouts,
};

/// A pool of backends behind a host and path prefix.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.io",
    version = "v1alpha1",
    kind = "BackendPool",
    namespaced,
    status = "BackendPoolStatus",
    shortname = "bp",
    category = "sluice",
    derive = "PartialEq",
    doc = "A pool of HTTP backends that Sluice dataplanes route to by host and path prefix.",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.algorithm"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.endpoints.ready"}"#,
    printcolumn = r#"{"name":"Synced","type":"integer","jsonPath":".status.dataplanes.synced"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.hashKey) || (has(self.algorithm) && self.algorithm in ['RingHash', 'Maglev'])").message("hashKey is only used by RingHash and Maglev"))]
#[x_kube(validation = Rule::new("!has(self.tls) || (has(self.hosts) && size(self.hosts) > 0 && !('*' in self.hosts))").message("tls needs hosts (the certificate is chosen by SNI), and not '*'"))]
#[serde(rename_all = "camelCase")]
pub struct BackendPoolSpec {
    /// Host names matched against the Host header (and SNI): exact names,
    /// `*.suffix` wildcards, or `*`. Empty matches every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(
            pattern = r"^(\*|(\*\.)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*)$"
        ))
    )]
    pub hosts: Vec<String>,
    /// Requests whose path starts with this prefix (whole segments) match;
    /// the longest prefix wins among pools sharing a host.
    #[serde(default = "root_prefix")]
    #[schemars(regex(pattern = r"^/[^?#\s]*$"))]
    pub path_prefix: String,
    /// Where traffic goes; `weight` splits it across backends.
    #[schemars(length(min = 1, max = 16))]
    pub backends: Vec<Backend>,
    /// How an endpoint is picked for each request.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// What RingHash and Maglev hash (the source IP when omitted).
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
    /// Per-dataplane limits (Envoy's defaults when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Retry policy (connect failures, twice, by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Connect, request and idle timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Local rate limit of each dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// TLS termination for `hosts`, with the certificate of a
    /// `kubernetes.io/tls` Secret in the pool's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsRef>,
}

/// The Secret holding a pool's certificate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsRef {
    /// A `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`) in the
    /// pool's namespace; renewals reach the dataplanes without restarts.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

fn root_prefix() -> String {
    "/".to_string()
}

/// One backend: a Service's ready endpoints, or one static address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.address)").message("a backend sets exactly one of service or address"))]
#[x_kube(validation = Rule::new("!has(self.service) || has(self.port)").message("a service backend needs a port"))]
#[x_kube(validation = Rule::new("!has(self.address) || !has(self.port)").message("an address backend carries its port in the address"))]
pub struct Backend {
    /// A Service in the pool's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service: Option<String>,
    /// The Service port, by name or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// A static endpoint outside the cluster, `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):\d{1,5}$"))]
    pub address: Option<String>,
    /// This backend's share of the pool's traffic, relative to the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: Option<u32>,
}

/// Endpoint selection algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Rotation; smooth weighted when weights differ.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin.
    WeightedRoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Latency-aware (Linkerd's peak EWMA).
    PeakEwma,
    /// Consistent hashing on a ring.
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
    /// A value this controller does not know (the schema refuses unknown
    /// values, but a newer CRD may carry one): the pool is refused with a
    /// condition rather than breaking the watch of every pool.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What the controller observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendPoolStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Endpoints found for the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointCounts>,
    /// Dataplanes serving the pool's current route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplanes: Option<DataplaneCounts>,
    /// The route-table version that carries this pool's current route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_version: Option<u64>,
}

/// Ready and total endpoints.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    /// Endpoints taking traffic.
    pub ready: u32,
    /// All endpoints, ready or not.
    pub total: u32,
}

/// Dataplanes that acknowledged the pool's current route, of those connected.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneCounts {
    /// Dataplanes that applied the current version.
    pub synced: u32,
    /// Dataplanes reporting.
    pub total: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn schema_carries_the_validation_users_rely_on() {
        let crd = serde_json::to_string(&BackendPool::crd()).expect("crd serializes");
        for needle in [
            "has(self.service) != has(self.address)",
            r#""shortNames":["bp"]"#,
            r#""enum":["RoundRobin","WeightedRoundRobin","LeastRequest","Random","PeakEwma","RingHash","Maglev"]"#,
            r#""status":{}"#,
            ".status.endpoints.ready",
            "hashKey is only used by RingHash and Maglev",
            "hashKey takes exactly one of header, cookie or sourceIP",
            "rateLimit.header is required with key Header",
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn spec_defaults_match_the_design() {
        let spec: BackendPoolSpec =
            serde_json::from_str(r#"{"backends":[{"service":"web","port":"http"}]}"#)
                .expect("parses");
        assert_eq!(spec.path_prefix, "/");
        assert_eq!(spec.algorithm, Algorithm::RoundRobin);
        assert!(spec.hosts.is_empty());
    }

    #[test]
    fn the_design_example_parses() {
        let spec: BackendPoolSpec = serde_saphyr::from_str(
            r#"
hosts: ["shop.example.com", "*.shop.example.com"]
pathPrefix: /
backends:
  - {service: web, port: http, weight: 90}
  - {service: web-canary, port: 8080, weight: 10}
  - address: 192.0.2.10:8080
algorithm: RingHash
hashKey: {header: X-User}
sessionAffinity: {cookieName: sluice-affinity, ttl: 1h}
healthCheck: {path: /healthz, interval: 5s, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 3}
outlierDetection: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}
circuitBreaker: {maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3}
retries: {attempts: 2, perTryTimeout: 2s, retryOn: [ConnectFailure, GatewayError, Reset], budgetPercent: 20}
timeouts: {connect: 1s, request: 30s, idle: 60s}
rateLimit: {requestsPerSecond: 100, burst: 50, algorithm: TokenBucket, key: SourceIP}
"#,
        )
        .expect("the design's example parses");
        assert_eq!(spec.algorithm, Algorithm::RingHash);
        assert_eq!(
            spec.retries.and_then(|r| r.retry_on).map(|r| r.len()),
            Some(3)
        );
    }
}
