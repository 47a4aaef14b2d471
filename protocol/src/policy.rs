//! The per-pool policies of a `PoolRoute`, in resolved form.
//!
//! Field names and enum values are those of the `BackendPool` spec
//! (DESIGN.md). A policy left out of a route means its defaults; the defaults
//! are written once here, in each type's `Default`, and documented in the
//! README. Every value is validated while deserializing, so a bad file names
//! the line and field and a bad stream message never reaches a table.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Duration;

/// Endpoint selection algorithm of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// Rotates through endpoints; with unequal weights it follows the smooth
    /// weighted schedule, as Envoy's round robin does.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm).
    WeightedRoundRobin,
    /// Power of two choices: the less loaded (in-flight ÷ weight) of two
    /// random endpoints.
    LeastRequest,
    /// A random endpoint, in proportion to its weight.
    Random,
    /// Linkerd's peak-EWMA: the lower of two random endpoints'
    /// latency × (in-flight + 1), with latency peaks remembered.
    PeakEwma,
    /// Ketama-style consistent hashing on [`HashKey`].
    RingHash,
    /// Google's Maglev consistent hashing on [`HashKey`].
    Maglev,
}

impl Algorithm {
    /// Every algorithm, in the order the design lists them.
    pub const ALL: [Algorithm; 7] = [
        Self::RoundRobin,
        Self::WeightedRoundRobin,
        Self::LeastRequest,
        Self::Random,
        Self::PeakEwma,
        Self::RingHash,
        Self::Maglev,
    ];

    /// Whether the algorithm hashes requests with a [`HashKey`].
    pub fn is_hashing(self) -> bool {
        matches!(self, Self::RingHash | Self::Maglev)
    }
}

/// What RingHash and Maglev hash: a header, a cookie or the client's IP.
/// Without one, they hash the source IP. A request that lacks the header or
/// cookie goes to a random endpoint, as Envoy does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "HashKeySpec", into = "HashKeySpec")]
pub enum HashKey {
    /// A request header (name lower-cased).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address (the TCP peer).
    SourceIp,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HashKeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
    #[serde(rename = "sourceIP", default, skip_serializing_if = "Option::is_none")]
    source_ip: Option<bool>,
}

impl TryFrom<HashKeySpec> for HashKey {
    type Error = String;
    fn try_from(spec: HashKeySpec) -> Result<Self, String> {
        match (spec.header, spec.cookie, spec.source_ip) {
            (Some(h), None, None) => Ok(Self::Header(header_name(&h)?)),
            (None, Some(c), None) => Ok(Self::Cookie(token(&c, "cookie name")?)),
            (None, None, Some(true)) => Ok(Self::SourceIp),
            (None, None, Some(false)) => Err("sourceIP must be true when given".into()),
            _ => Err("hashKey takes exactly one of header, cookie or sourceIP".into()),
        }
    }
}

impl From<HashKey> for HashKeySpec {
    fn from(key: HashKey) -> Self {
        let mut spec = HashKeySpec {
            header: None,
            cookie: None,
            source_ip: None,
        };
        match key {
            HashKey::Header(h) => spec.header = Some(h),
            HashKey::Cookie(c) => spec.cookie = Some(c),
            HashKey::SourceIp => spec.source_ip = Some(true),
        }
        spec
    }
}

/// Cookie-based sticky sessions: the first response sets a cookie naming the
/// endpoint (not its address), later requests with it go to that endpoint
/// while it is available, else to the algorithm's pick (and get a new cookie).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAffinity {
    /// Name of the cookie.
    #[serde(deserialize_with = "de_cookie_name")]
    pub cookie_name: String,
    /// `Max-Age` of the cookie; a session cookie when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

impl Default for SessionAffinity {
    fn default() -> Self {
        Self {
            cookie_name: "sluice-affinity".into(),
            ttl: None,
        }
    }
}

/// Active HTTP health checking: `GET path` on every endpoint each
/// `interval`; a 2xx answer within `timeout` is a success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested; must start with `/`.
    #[serde(deserialize_with = "de_path")]
    pub path: String,
    /// Time between checks of one endpoint.
    #[serde(deserialize_with = "de_positive")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(deserialize_with = "de_positive")]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy endpoint healthy.
    pub healthy_threshold: NonZeroU32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: NonZeroU32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
            unhealthy_threshold: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Passive outlier detection from live traffic. A failure is a connect
/// error, a reset, a timeout or a 502/503/504 from the endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint; 0 turns detection off.
    pub consecutive_failures: u32,
    /// Ejection lasts this long × the number of times the endpoint was ejected.
    #[serde(deserialize_with = "de_positive")]
    pub base_ejection_time: Duration,
    /// At most this share of the pool's endpoints is ejected at once (at
    /// least one endpoint may always be ejected, as in Envoy).
    pub max_ejection_percent: Percent,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: Percent(50),
        }
    }
}

/// Per-pool limits, per dataplane (Envoy's circuit breaker thresholds and
/// defaults). Over a limit a request gets a fast 503 naming the limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open connections to the pool's endpoints.
    pub max_connections: NonZeroU32,
    /// Requests waiting for a connection or an endpoint.
    pub max_pending_requests: NonZeroU32,
    /// Requests in flight to the pool.
    pub max_requests: NonZeroU32,
    /// Retries in flight to the pool.
    pub max_retries: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        let n = NonZeroU32::new(1024).unwrap_or(NonZeroU32::MIN);
        Self {
            max_connections: n,
            max_pending_requests: n,
            max_requests: n,
            max_retries: 3,
        }
    }
}

/// When a failed attempt is tried again, on another endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// The endpoint could not be reached: the request was never sent, so
    /// any method is retried. Also an idempotent request whose connection
    /// was lost before any byte of a response (the endpoint died or closed
    /// the connection under it). These retries take no place in the retry
    /// budget nor in `maxRetries`.
    ConnectFailure,
    /// The connection failed after the request was sent (idempotent
    /// requests, or requests whose body was not sent yet).
    Reset,
    /// A 502, 503 or 504 from the endpoint, or a per-try timeout
    /// (idempotent requests).
    GatewayError,
}

/// Retry policy. `attempts` counts retries after the first try, as Istio's
/// `attempts` does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt; 0 turns retries off.
    pub attempts: u32,
    /// Timeout of each attempt (to the response head); none when omitted.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_positive"
    )]
    pub per_try_timeout: Option<Duration>,
    /// What is retried.
    pub retry_on: Vec<RetryOn>,
    /// Retries may add at most this share of the pool's requests (over the
    /// last 10 s, with a floor of 10 retries per second), as Linkerd's
    /// retry budget.
    pub budget_percent: Percent,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: vec![RetryOn::ConnectFailure],
            budget_percent: Percent(20),
        }
    }
}

/// Timeouts of a pool's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Dialing an endpoint.
    #[serde(deserialize_with = "de_positive")]
    pub connect: Duration,
    /// Longest wait for the response head once the request is sent: from
    /// the arrival of a request without a body (connects and retries
    /// included), from the last byte of a request body otherwise; 504 when
    /// it passes. It does not bound the upload itself: a body that keeps
    /// flowing is never cut for its length (as nginx's
    /// `proxy_read_timeout`, HAProxy's `timeout server`). `perTryTimeout`
    /// is the same wait for one attempt.
    #[serde(deserialize_with = "de_positive")]
    pub request: Duration,
    /// Longest silence on a connection: client keep-alive, an upstream
    /// connection in the pool, a response body that stops flowing, and a
    /// request body on its way (the client sending nothing: 408; the
    /// endpoint taking nothing: 504), and a tunnel silent both ways (closed).
    #[serde(deserialize_with = "de_positive")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// Algorithm of a rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateLimitAlgorithm {
    /// Refills `requestsPerSecond` tokens a second, up to `burst`.
    #[default]
    TokenBucket,
    /// Counts requests in the last second, weighting the previous
    /// one-second window by its overlap (Cloudflare's approximation).
    SlidingWindow,
}

/// What a rate limit counts requests by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateLimitKey {
    /// One limit for the whole pool.
    #[default]
    Pool,
    /// One limit per client IP.
    #[serde(rename = "SourceIP")]
    SourceIp,
    /// One limit per value of the header named in `header`.
    Header,
}

/// Local rate limiting (per dataplane): over the limit, 429 with `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate allowed.
    pub requests_per_second: NonZeroU32,
    /// Extra requests allowed at once above the rate (token bucket size);
    /// defaults to `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Token bucket or sliding window.
    #[serde(default)]
    pub algorithm: RateLimitAlgorithm,
    /// What requests are counted by.
    #[serde(default)]
    pub key: RateLimitKey,
    /// The header when `key` is `Header` (name lower-cased).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_header"
    )]
    pub header: Option<String>,
}

/// TLS termination for the pool's hosts: a certificate chain and key, as PEM
/// (what the controller ships from a `kubernetes.io/tls` Secret) or as file
/// paths (standalone files; re-read when the file is reloaded), and an
/// optional CA that client certificates must chain to.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Certificate chain file (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key file (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed.
    #[serde(rename = "clientCA", default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// The same, as a file (standalone mode).
    #[serde(
        rename = "clientCAFile",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_ca_file: Option<PathBuf>,
}

impl fmt::Debug for Tls {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("certificate", &self.certificate.as_ref().map(|_| "<pem>"))
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca", &self.client_ca.as_ref().map(|_| "<pem>"))
            .field("client_ca_file", &self.client_ca_file)
            .finish()
    }
}

impl Tls {
    /// A copy safe to show: PEM bodies replaced by a marker.
    pub fn redacted(&self) -> Self {
        let mark = |v: &Option<String>| v.as_ref().map(|_| "<redacted>".to_string());
        Self {
            certificate: self.certificate.clone(),
            private_key: mark(&self.private_key),
            client_ca: self.client_ca.clone(),
            ..self.clone()
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        match (
            &self.certificate,
            &self.private_key,
            &self.cert_file,
            &self.key_file,
        ) {
            (Some(_), Some(_), None, None) | (None, None, Some(_), Some(_)) => {}
            _ => {
                return Err(
                    "tls needs either certificate and privateKey (PEM) or certFile and keyFile"
                        .into(),
                );
            }
        }
        if self.client_ca.is_some() && self.client_ca_file.is_some() {
            return Err("tls takes clientCA or clientCAFile, not both".into());
        }
        Ok(())
    }
}

/// Request holding for pools that scale to zero: with no ready endpoint, a
/// request waits (at most `maxPending` of them, at most `timeout` each) for
/// endpoints to appear, then 503.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Activation {
    /// Requests held at once; more get 503 at once.
    pub max_pending: u32,
    /// How long one request is held.
    #[serde(deserialize_with = "de_positive")]
    pub timeout: Duration,
}

impl Default for Activation {
    fn default() -> Self {
        Self {
            max_pending: 1000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A percentage, 0 to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Percent(u8);

impl Percent {
    /// The percentage, 0 to 100.
    pub fn get(self) -> u32 {
        u32::from(self.0)
    }
    /// As a fraction, 0.0 to 1.0.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl TryFrom<u32> for Percent {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        u8::try_from(v)
            .ok()
            .filter(|v| *v <= 100)
            .map(Percent)
            .ok_or_else(|| format!("{v} is not a percentage (0 to 100)"))
    }
}

impl From<Percent> for u32 {
    fn from(p: Percent) -> u32 {
        p.get()
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() || !s.bytes().all(is_tchar) {
        return Err(format!("{s:?} is not a valid {what}"));
    }
    Ok(s.to_string())
}

fn header_name(s: &str) -> Result<String, String> {
    token(s, "header name").map(|s| s.to_ascii_lowercase())
}

fn de_cookie_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    token(&s, "cookie name").map_err(serde::de::Error::custom)
}

fn de_opt_header<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|h| header_name(&h))
        .transpose()
        .map_err(serde::de::Error::custom)
}

fn de_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.starts_with('/')
        || s.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(serde::de::Error::custom(format!(
            "{s:?} is not a path: it must start with '/' and hold no spaces"
        )));
    }
    Ok(s)
}

fn de_positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Duration::deserialize(d)?;
    if v.get().is_zero() {
        return Err(serde::de::Error::custom("must be longer than 0s"));
    }
    Ok(v)
}

fn de_opt_positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<Duration>::deserialize(d)? {
        Some(v) if v.get().is_zero() => Err(serde::de::Error::custom("must be longer than 0s")),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
        serde_saphyr::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn hash_keys_take_exactly_one_source() {
        assert_eq!(
            yaml::<HashKey>("{header: X-User}"),
            Ok(HashKey::Header("x-user".into()))
        );
        assert_eq!(
            yaml::<HashKey>("{cookie: sid}"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert_eq!(yaml::<HashKey>("{sourceIP: true}"), Ok(HashKey::SourceIp));
        for bad in [
            "{}",
            "{header: a, cookie: b}",
            "{sourceIP: false}",
            "{header: \"a b\"}",
        ] {
            assert!(yaml::<HashKey>(bad).is_err(), "{bad}");
        }
        let round = serde_json::to_string(&HashKey::SourceIp).expect("serializes");
        assert_eq!(round, r#"{"sourceIP":true}"#);
    }

    #[test]
    fn omitted_fields_take_defaults_and_bad_values_are_refused() {
        let r: Retries = yaml("{attempts: 3}").expect("valid");
        assert_eq!(r.attempts, 3);
        assert_eq!(r.retry_on, vec![RetryOn::ConnectFailure]);
        assert_eq!(r.budget_percent.get(), 20);
        assert!(yaml::<Retries>("{budgetPercent: 101}").is_err());
        assert!(yaml::<Retries>("{retryOn: [Sometimes]}").is_err());
        assert!(yaml::<Timeouts>("{connect: 0s}").is_err());
        let h: HealthCheck = yaml("{path: /ready}").expect("valid");
        assert_eq!(h.interval, Duration::from_secs(5));
        assert!(yaml::<HealthCheck>("{path: ready}").is_err());
        assert!(yaml::<CircuitBreaker>("{maxRequests: 0}").is_err());
        let rl: RateLimit =
            yaml("{requestsPerSecond: 5, key: Header, header: X-Api-Key}").expect("valid");
        assert_eq!(rl.header.as_deref(), Some("x-api-key"));
        assert_eq!(rl.key, RateLimitKey::Header);
        assert_eq!(
            yaml::<RateLimit>("{requestsPerSecond: 5, key: SourceIP}").map(|r| r.key),
            Ok(RateLimitKey::SourceIp)
        );
    }

    #[test]
    fn tls_needs_a_key_pair_and_never_prints_the_key() {
        let t: Tls = yaml("{certificate: CERT, privateKey: SECRET}").expect("valid");
        assert!(t.check().is_ok());
        assert!(!format!("{t:?}").contains("SECRET"));
        assert!(
            !serde_json::to_string(&t.redacted())
                .expect("json")
                .contains("SECRET")
        );
        let half: Tls = yaml("{certificate: CERT}").expect("parses");
        assert!(half.check().is_err());
        let files: Tls = yaml("{certFile: /a, keyFile: /b}").expect("parses");
        assert!(files.check().is_ok());
    }
}
