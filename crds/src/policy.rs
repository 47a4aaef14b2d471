//! The policy fields of a `BackendPool` spec, as the API server validates them.
//!
//! Field names and enum values are exactly those of the wire `PoolRoute`
//! (`sluice-protocol`), so the controller carries a policy into the route by
//! re-reading it in the protocol's types, which also apply the defaults. Every
//! field is optional here: what the user left out stays out of the stored
//! object, and the defaults live in one place, the protocol.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What RingHash and Maglev hash: exactly one of a header, a cookie or the
/// client's IP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.sourceIP) ? 1 : 0) == 1").message("hashKey takes exactly one of header, cookie or sourceIP"))]
#[x_kube(validation = Rule::new("!has(self.sourceIP) || self.sourceIP").message("sourceIP must be true when given"))]
pub struct HashKey {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 256))]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 256))]
    pub cookie: Option<String>,
    /// The client's IP address.
    #[serde(rename = "sourceIP", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// Cookie-based sticky sessions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Cookie name (default `sluice-affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 256))]
    pub cookie_name: Option<String>,
    /// Cookie lifetime; a session cookie when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub ttl: Option<String>,
}

/// Active HTTP health checks.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path requested (default `/healthz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\s]*$"), length(max = 1024))]
    pub path: Option<String>,
    /// Time between checks (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub interval: Option<String>,
    /// Timeout of one check (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Successes that make an endpoint healthy (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
    /// Failures that make an endpoint unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
}

/// Passive outlier detection (on by default).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint (default 5; 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// Base ejection time, multiplied by the times ejected (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub base_ejection_time: Option<String>,
    /// Most of the pool ejected at once, in percent (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Per-pool limits of each dataplane (Envoy's defaults).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Open connections to the pool (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u32>,
    /// Retries in flight (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_retries: Option<u32>,
}

/// A condition that is retried.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    /// The endpoint could not be reached; also an idempotent request whose
    /// connection was lost before any response byte.
    ConnectFailure,
    /// The connection failed after the request was sent.
    Reset,
    /// 502, 503, 504 or a per-try timeout.
    GatewayError,
    /// A value this controller does not know: the policy is refused with a
    /// condition naming the field.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Retry policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try (default 2; 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: Option<u32>,
    /// Timeout of each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub per_try_timeout: Option<String>,
    /// What is retried (default `[ConnectFailure]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 3))]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Retries add at most this share of requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: Option<u32>,
}

/// Timeouts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Dialing an endpoint (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub connect: Option<String>,
    /// Longest wait for the response head once the request (and its
    /// body) is sent; never cuts a body that keeps flowing (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub request: Option<String>,
    /// Longest silence on a connection, a response body, a request body
    /// on its way, or a tunnel (an upgraded connection, silent both ways)
    /// (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h))+$"))]
    pub idle: Option<String>,
}

/// Rate limit algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitAlgorithm {
    /// Token bucket of size `burst`.
    TokenBucket,
    /// Sliding one-second window.
    SlidingWindow,
    /// A value this controller does not know: the policy is refused with a
    /// condition naming the field.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What a rate limit counts by.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The whole pool.
    Pool,
    /// Each client IP.
    #[serde(rename = "SourceIP")]
    SourceIp,
    /// Each value of `header`.
    Header,
    /// A value this controller does not know: the policy is refused with a
    /// condition naming the field.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Local rate limit of each dataplane.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.key) && self.key == 'Header') == has(self.header)").message("rateLimit.header is required with key Header and only used with it"))]
pub struct RateLimit {
    /// Sustained rate.
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    /// Bucket size (default requestsPerSecond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub burst: Option<u32>,
    /// TokenBucket (default) or SlidingWindow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<RateLimitAlgorithm>,
    /// Pool (default), SourceIP or Header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
    /// The header, with key Header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 256))]
    pub header: Option<String>,
}
