//! The contract between the Sluice controller and its dataplanes.
//!
//! Everything that crosses the wire lives here, and nothing else does: the
//! self-contained [`PoolRoute`], the stream events ([`Snapshot`], [`Delta`]) and
//! their Server-Sent-Events framing ([`sse`]), and the per-second [`Report`].
//! The same types parse the standalone dataplane's YAML file, so a file, a
//! stream message and (after the controller resolves it) a `BackendPool` all
//! become one validated shape. This crate knows nothing of Kubernetes.

pub mod duration;
pub mod file;
pub mod http_route;
pub mod policy;
pub mod report;
pub mod route;
pub mod sse;
pub mod table;

pub use duration::Duration;
pub use file::RouteFile;
pub use http_route::{Backend, Filter, HttpRoute, Listener, PathMatch, RouteMatch, Rule};
pub use policy::{
    Activation, Algorithm, CircuitBreaker, HashKey, HealthCheck, OutlierDetection, Percent,
    RateLimit, RateLimitAlgorithm, RateLimitKey, Retries, RetryOn, SessionAffinity, Timeouts, Tls,
};
pub use report::{Histogram, PoolReport, Rejected, Report};
pub use route::{Endpoint, PathPrefix, PoolRoute};
pub use table::{ApplyError, Delta, RouteEvent, RouteTable, Snapshot};

/// Path of the route stream served by the controller.
pub const ROUTES_PATH: &str = "/v1/routes";
/// Path the dataplanes post their reports to.
pub const REPORTS_PATH: &str = "/v1/reports";
/// SSE event name of a full table.
pub const EVENT_SNAPSHOT: &str = "snapshot";
/// SSE event name of an incremental change.
pub const EVENT_DELTA: &str = "delta";
