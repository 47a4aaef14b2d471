//! The compiled routing table: pools, and the rules that send requests to
//! them ([`crate::rules`]: host, then matches in precedence order).
//!
//! Built off the request path from a protocol `RouteTable` and swapped in
//! whole (`State::install` stores it in an `ArcSwap`), so a request reads one
//! consistent table from routing to the endpoint it dials.
//!
//! A pool with hosts is a route with one `PathPrefix` rule to itself.
//! Matching order: the exact host, then `*.suffix` wildcards (longest suffix
//! first), then catch-all routes (`*` or no hosts). Within a tier the
//! longest matching path prefix wins. A tier whose rules all miss the
//! request falls through to the next one: a request for
//! `api.example.com/docs` reaches `*.example.com`'s `/` when the exact pool
//! only serves `/v1`, rather than failing while another pool matches.

pub mod host;
pub mod selector;

pub use host::{normalize_host, port_colon};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{Listener, PoolRoute, RouteTable};

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};

use crate::balance::KeySource;
pub use crate::balance::PickRequest;
use crate::balance::affinity::Affinity;
use crate::endpoint::{Endpoint, KeptPool, Registry};
use crate::metrics::{Metrics, PoolMetrics};
use crate::policy::ratelimit::RateLimiter;
use crate::policy::retry::RetryPolicy;
use crate::rules::{Matched, RequestView, Rules, Target};
use crate::table::selector::{Picker, Selector};
use crate::upstream::client::Upstream;

/// One pool as the proxy uses it. The route, endpoints and weights are fixed
/// for the pool's life; which endpoints the balancer spreads traffic over
/// follows their availability (health checks, ejections): the [`Selector`]
/// is rebuilt over the available endpoints, or over all of them when none
/// is (panic mode), by whoever changes an endpoint's availability.
/// A table that keeps an unchanged route reuses the previous `Arc<Pool>`.
#[derive(Debug)]
pub struct Pool {
    /// The route it was built from.
    pub route: PoolRoute,
    /// The ready endpoints, in route order. Shared with earlier and later
    /// tables for as long as the endpoint stays in the pool.
    pub endpoints: Vec<Arc<Endpoint>>,
    selector: Arc<Selector>,
    /// Where RingHash and Maglev take the request's key from.
    key: Option<KeySource>,
    /// Cookie session affinity, when the route asks for it.
    affinity: Option<Affinity>,
    /// State kept across table versions.
    pub state: Arc<KeptPool>,
    /// Counters of the pool's requests.
    pub metrics: Arc<PoolMetrics>,
    /// Client, retries, timeouts and rate limit.
    pub policy: Policy,
}

/// What the request path needs of a pool's policies ([`crate::policy`]),
/// resolved once: its client (connect and idle timeouts, connection
/// counting), retry policy, request timeout and rate limiter. The client and
/// the limiter are taken from the pool's [`KeptPool`] when their settings are
/// unchanged, so pooled connections and rate-limit counts survive table
/// updates, and the circuit breaker's limits are updated in place.
#[derive(Debug)]
pub struct Policy {
    /// The pool's client to its endpoints.
    pub upstream: Arc<Upstream>,
    /// When failed attempts are retried.
    pub retry: RetryPolicy,
    /// From a request's arrival to its response head, retries included.
    pub request_timeout: Duration,
    /// The rate limit, when the pool has one.
    pub limiter: Option<Arc<RateLimiter>>,
}

impl Policy {
    /// Compiles `route`'s policies over the pool's kept `state`.
    pub fn new(route: &PoolRoute, state: &KeptPool) -> Self {
        state.breaker.configure(&route.circuit_breaker());
        let timeouts = route.timeouts();
        Self {
            upstream: Upstream::kept(&state.upstream, &timeouts, &state.breaker),
            retry: RetryPolicy::new(&route.retries()),
            request_timeout: timeouts.request.get(),
            limiter: RateLimiter::kept(&state.limiter, route.rate_limit.as_ref()),
        }
    }
}

impl Pool {
    fn build(route: &PoolRoute, metrics: &Metrics, registry: &Registry) -> Self {
        let state = registry.pool(&route.name);
        let ready: Vec<_> = route.endpoints.iter().filter(|e| e.ready).collect();
        let endpoints = ready
            .iter()
            .map(|e| {
                registry.endpoint(&route.name, e.address, || {
                    let upstream = metrics.endpoint(&route.name, e.address);
                    let healthy = metrics.endpoint_healthy(&route.name, e.address);
                    Endpoint::new(e.address, upstream, healthy, Arc::clone(&state))
                })
            })
            .collect::<Vec<_>>();
        state
            .outlier
            .configure(&route.outlier_detection(), &endpoints);
        let weights = ready.iter().map(|e| e.weight).collect();
        let key = route
            .algorithm
            .is_hashing()
            .then(|| KeySource::new(&route.hash_key()));
        let affinity = route.session_affinity.as_ref().map(|policy| {
            let addrs: Vec<SocketAddr> = ready.iter().map(|e| e.address).collect();
            Affinity::new(policy, &route.name, &addrs)
        });
        let selector = Selector::new(
            &state,
            &route.name,
            route.algorithm,
            endpoints.clone(),
            weights,
        );
        Self {
            route: route.clone(),
            endpoints,
            selector,
            policy: Policy::new(route, &state),
            key,
            affinity,
            state,
            metrics: Arc::new(metrics.pool(&route.name)),
        }
    }

    /// What selection needs from a request: its hash key (hashing
    /// algorithms) and the endpoint its affinity cookie names.
    pub fn pick_request(&self, headers: &HeaderMap, peer: IpAddr) -> PickRequest {
        PickRequest {
            hash: self.key.as_ref().and_then(|k| k.hash(headers, peer)),
            sticky: self.affinity.as_ref().and_then(|a| a.sticky(headers)),
        }
    }

    /// The endpoint for the next request, or `None` when none is ready: the
    /// one the affinity cookie names while it is available, else the
    /// algorithm's pick.
    pub fn pick(&self, req: &PickRequest) -> Option<&Arc<Endpoint>> {
        let picker = self.selector.picker();
        if let Some(sticky) = req.sticky
            && picker.members.binary_search(&sticky).is_ok()
        {
            return self.endpoints.get(sticky as usize);
        }
        self.pick_member(&picker, req.hash)
    }

    fn pick_member(&self, picker: &Picker, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        let i = picker
            .balancer
            .pick(&self.endpoints, &picker.members, hash)?;
        let member = *picker.members.get(i)?;
        self.endpoints.get(member as usize)
    }

    /// An endpoint not in `tried` (for retries), or `None` when every
    /// available endpoint was tried (the caller may then [`Pool::pick`]
    /// again). A few picks by the algorithm first (hashing algorithms move
    /// to the key's next choices), then a scan from a random member.
    pub fn pick_excluding(
        &self,
        req: &PickRequest,
        tried: &[SocketAddr],
    ) -> Option<&Arc<Endpoint>> {
        let picker = self.selector.picker();
        let fresh = |ep: &&Arc<Endpoint>| !tried.contains(&ep.addr);
        if let Some(sticky) = req.sticky
            && picker.members.binary_search(&sticky).is_ok()
            && let Some(ep) = self.endpoints.get(sticky as usize).filter(fresh)
        {
            return Some(ep);
        }
        for attempt in 0..4u64 {
            // Rehashing keeps retries of one key on the same sequence of
            // endpoints, on every dataplane.
            let hash = req
                .hash
                .map(|h| h ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            if let Some(ep) = self.pick_member(&picker, hash).filter(fresh) {
                return Some(ep);
            }
        }
        let n = picker.members.len();
        if n == 0 {
            return None;
        }
        let start = fastrand::usize(..n);
        (0..n)
            .filter_map(|k| self.endpoints.get(picker.members[(start + k) % n] as usize))
            .find(fresh)
    }

    /// The `Set-Cookie` value to add to the response when the pool has
    /// session affinity and the request's cookie did not already name
    /// `target`.
    pub fn affinity_cookie(&self, req: &PickRequest, target: &Endpoint) -> Option<&HeaderValue> {
        let affinity = self.affinity.as_ref()?;
        if req.sticky.is_some() && req.sticky == affinity.index(&target.addr) {
            return None;
        }
        affinity.set_cookie(&target.addr)
    }

    /// Whether the pool holds its requests rather than answering 503 at
    /// once (scale from zero, [`crate::activation`]): its route has
    /// `activation` and it has no ready endpoint.
    pub fn holds_requests(&self) -> bool {
        self.route.activation.is_some() && self.endpoints.is_empty()
    }

    /// Whether no endpoint is available and traffic goes to all of them.
    pub fn in_panic(&self) -> bool {
        self.selector.picker().panic
    }

    /// Balancers built for this pool version so far (see
    /// [`Selector::builds`]).
    pub fn selector_builds(&self) -> u64 {
        self.selector.builds()
    }
}

/// The routing table of one version.
#[derive(Debug, Default)]
pub struct Table {
    /// Version of the route table it was built from; 0 before any.
    pub version: u64,
    pools: Vec<Arc<Pool>>,
    by_name: HashMap<String, usize>,
    /// Rules of the plain HTTP listener (of both, when no route is
    /// limited to one listener).
    rules: Rules,
    /// Rules of the HTTPS listener, when they differ: a second set
    /// compiled with the table, so choosing it costs a request nothing.
    tls_rules: Option<Rules>,
}

impl Table {
    /// Compiles `routes`. Pools whose route equals the one in `previous`
    /// are carried over as they are; the others get fresh balancers, with
    /// the state of endpoints they keep taken from `registry` and metric
    /// handles from `metrics`.
    pub fn build(
        routes: &RouteTable,
        previous: &Table,
        metrics: &Metrics,
        registry: &Registry,
    ) -> Self {
        let mut table = Table {
            version: routes.version,
            ..Default::default()
        };
        for route in routes.pools.values() {
            let i = table.pools.len();
            let pool = match previous.pool(&route.name) {
                Some(old) if old.route == *route => Arc::clone(old),
                _ => Arc::new(Pool::build(route, metrics, registry)),
            };
            table.pools.push(pool);
            table.by_name.insert(route.name.clone(), i);
        }
        let index = |name: &str| table.by_name.get(name).copied();
        if routes.routes.values().any(|r| !r.listeners.is_empty()) {
            table.rules = Rules::build(routes, Some(Listener::Http), index);
            table.tls_rules = Some(Rules::build(routes, Some(Listener::Https), index));
        } else {
            table.rules = Rules::build(routes, None, index);
        }
        table
    }

    /// The first rule for `host` (as [`normalize_host`] returns it) that
    /// holds for `req` on the HTTPS listener (`tls`) or the plain one.
    pub fn select(&self, host: &str, req: &RequestView<'_>, tls: bool) -> Option<Matched<'_>> {
        match (&self.tls_rules, tls) {
            (Some(rules), true) => rules.find(host, req),
            _ => self.rules.find(host, req),
        }
    }

    /// The pool at `index` (a [`Target::Pool`], a rule's backend).
    pub fn pool_at(&self, index: usize) -> Option<&Arc<Pool>> {
        self.pools.get(index)
    }

    /// The pool a `GET` of `path` without headers goes to on `host`: for a
    /// rule with several backends, the heaviest one present. For the
    /// access log and tests; the proxy routes with [`Table::select`].
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Pool>> {
        let headers = HeaderMap::new();
        let view = RequestView {
            path,
            query: None,
            method: &http::Method::GET,
            headers: &headers,
        };
        match self.select(host, &view, false)?.target {
            Target::Pool(i) => self.pool_at(*i),
            Target::Rule(action) => action
                .backends
                .iter()
                .filter(|b| b.weight > 0 && b.pool.is_some())
                .max_by_key(|b| b.weight)
                .and_then(|b| self.pool_at(b.pool?)),
        }
    }

    /// Number of compiled rule matches, pools' own included.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.by_name.get(name).map(|i| &self.pools[*i])
    }

    /// Every pool.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Whether a request for pool `name` must be held on this table: the
    /// pool is here and [`Pool::holds_requests`].
    pub fn holds_requests(&self, name: &str) -> bool {
        self.pool(name).is_some_and(|p| p.holds_requests())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::RouteFile;
    use std::borrow::Cow;

    fn routes(version: u64, yaml: &str) -> RouteTable {
        let file = RouteFile::from_yaml(yaml).expect("valid");
        RouteTable::from_pools(version, file.pools)
    }

    fn table(yaml: &str) -> Table {
        Table::build(
            &routes(1, yaml),
            &Table::default(),
            &Metrics::new(),
            &Registry::default(),
        )
    }

    fn name(t: &Table, host: &str, path: &str) -> Option<String> {
        t.route(&normalize_host(host), path)
            .map(|p| p.route.name.clone())
    }

    #[test]
    fn exact_beats_wildcard_beats_catch_all_and_longest_prefix_wins() {
        let t = table(
            r#"
pools:
  - {name: api, hosts: [api.example.com], pathPrefix: /v1}
  - {name: api-root, hosts: [api.example.com]}
  - {name: web, hosts: ["*.example.com"]}
  - {name: deep, hosts: ["*.a.example.com"]}
  - {name: any, pathPrefix: /}
  - {name: any-static, hosts: ["*"], pathPrefix: /static}
"#,
        );
        let cases = [
            ("api.example.com", "/v1/users", "api"),
            ("api.example.com", "/v1", "api"),
            ("api.example.com", "/v10", "api-root"),
            ("www.example.com", "/", "web"),
            ("x.a.example.com", "/", "deep"),
            ("example.com", "/", "any"),
            ("other.org", "/static/app.js", "any-static"),
            ("other.org", "/staticx", "any"),
        ];
        for (host, path, want) in cases {
            assert_eq!(name(&t, host, path).as_deref(), Some(want), "{host}{path}");
        }
    }

    #[test]
    fn a_tier_that_misses_the_path_falls_through() {
        let t = table(
            r#"
pools:
  - {name: api, hosts: [api.example.com], pathPrefix: /v1}
  - {name: web, hosts: ["*.example.com"], pathPrefix: /}
"#,
        );
        assert_eq!(name(&t, "api.example.com", "/docs").as_deref(), Some("web"));
    }

    #[test]
    fn host_matching_ignores_port_case_and_trailing_dot() {
        let t = table("pools:\n  - {name: a, hosts: [a.example.com]}\n");
        for host in ["A.Example.COM:8080", "a.example.com.", "a.example.com:80"] {
            assert_eq!(name(&t, host, "/").as_deref(), Some("a"), "{host}");
        }
        assert_eq!(normalize_host("[::1]:80"), "::1");
        for (raw, host) in [
            ("a.example:", "a.example"),
            ("a:b:80", "a:b"),
            ("8080", "8080"),
            ("a.example:8x", "a.example:8x"),
            (":80", ""),
        ] {
            assert_eq!(normalize_host(raw), host, "{raw}");
        }
        assert!(matches!(normalize_host("plain.org"), Cow::Borrowed(_)));
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = table("pools:\n  - {name: a, hosts: [a.example.com], pathPrefix: /a}\n");
        assert_eq!(name(&t, "b.example.com", "/a"), None);
        assert_eq!(name(&t, "a.example.com", "/b"), None);
        assert_eq!(name(&t, "example.com", "/a"), None);
    }

    #[test]
    fn not_ready_endpoints_take_no_traffic() {
        let t = table(
            "pools:\n  - name: p\n    endpoints:\n      - {address: 127.0.0.1:1, ready: false}\n      - {address: 127.0.0.1:2}\n",
        );
        let pool = t.pool("p").expect("pool");
        for _ in 0..4 {
            let pick = pool.pick(&PickRequest::default());
            assert_eq!(pick.map(|t| t.addr.port()), Some(2));
        }
        let t = table("pools:\n  - {name: p, endpoints: [{address: 127.0.0.1:1, ready: false}]}\n");
        let pool = t.pool("p").expect("pool");
        assert!(pool.pick(&PickRequest::default()).is_none());
    }

    #[test]
    fn unchanged_pools_are_carried_over_and_changed_ones_rebuilt() {
        let metrics = Metrics::new();
        let v1 = routes(
            1,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}]}\n  - {name: b, endpoints: [{address: 127.0.0.1:2}]}\n",
        );
        let registry = Registry::default();
        let old = Table::build(&v1, &Table::default(), &metrics, &registry);
        let v2 = routes(
            2,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}]}\n  - {name: b, endpoints: [{address: 127.0.0.1:3}]}\n",
        );
        let new = Table::build(&v2, &old, &metrics, &registry);
        assert_eq!(new.version, 2);
        let same = |n: &str| Arc::ptr_eq(old.pool(n).expect("old"), new.pool(n).expect("new"));
        assert!(same("a"));
        assert!(!same("b"));
    }

    #[test]
    fn endpoints_that_stay_keep_their_state_across_updates() {
        let metrics = Metrics::new();
        let registry = Registry::default();
        let v1 = routes(
            1,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2}]}\n",
        );
        let old = Table::build(&v1, &Table::default(), &metrics, &registry);
        let kept = Arc::clone(&old.pool("a").expect("a").endpoints[0]);
        let guard = kept.begin();
        let v2 = routes(
            2,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}, {address: 127.0.0.1:3}]}\n",
        );
        let new = Table::build(&v2, &old, &metrics, &registry);
        drop(old);
        registry.prune();
        let pool = new.pool("a").expect("a");
        assert!(Arc::ptr_eq(&kept, &pool.endpoints[0]));
        assert_eq!(pool.endpoints[0].in_flight(), 1);
        assert_eq!(pool.endpoints[1].in_flight(), 0);
        drop(guard);
        assert_eq!(pool.endpoints[0].in_flight(), 0);
        // 127.0.0.1:2 left every table: its state is gone.
        assert_eq!(registry.endpoints(), 2);
    }

    #[test]
    fn client_and_limiter_survive_updates_that_keep_their_settings() {
        let (metrics, registry) = (Metrics::new(), Registry::default());
        let v1 = routes(
            1,
            "pools:\n  - {name: a, rateLimit: {requestsPerSecond: 5}, endpoints: [{address: 127.0.0.1:1}]}\n",
        );
        let t1 = Table::build(&v1, &Table::default(), &metrics, &registry);
        let v2 = routes(
            2,
            "pools:\n  - {name: a, rateLimit: {requestsPerSecond: 5}, endpoints: [{address: 127.0.0.1:2}]}\n",
        );
        let t2 = Table::build(&v2, &t1, &metrics, &registry);
        let (p1, p2) = (t1.pool("a").expect("a"), t2.pool("a").expect("a"));
        assert!(!Arc::ptr_eq(p1, p2), "the pool was rebuilt");
        let (l1, l2) = (p1.policy.limiter.as_ref(), p2.policy.limiter.as_ref());
        assert!(Arc::ptr_eq(l1.expect("l1"), l2.expect("l2")));
        assert!(Arc::ptr_eq(&p1.policy.upstream, &p2.policy.upstream));

        let v3 = routes(
            3,
            "pools:\n  - {name: a, rateLimit: {requestsPerSecond: 6}, timeouts: {connect: 1s}, endpoints: [{address: 127.0.0.1:2}]}\n",
        );
        let t3 = Table::build(&v3, &t2, &metrics, &registry);
        let p3 = t3.pool("a").expect("a");
        assert!(!Arc::ptr_eq(
            p2.policy.limiter.as_ref().expect("l2"),
            p3.policy.limiter.as_ref().expect("l3")
        ));
        assert!(!Arc::ptr_eq(&p2.policy.upstream, &p3.policy.upstream));
    }

    #[test]
    fn a_retry_goes_to_an_endpoint_not_tried() {
        let (metrics, registry) = (Metrics::new(), Registry::default());
        let v1 = routes(
            1,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2}, {address: 127.0.0.1:3}]}\n",
        );
        let t = Table::build(&v1, &Table::default(), &metrics, &registry);
        let pool = t.pool("a").expect("a");
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        for _ in 0..10 {
            let next = pool
                .pick_excluding(&PickRequest::default(), &[addr(1), addr(3)])
                .expect("one left");
            assert_eq!(next.addr, addr(2));
        }
        assert!(
            pool.pick_excluding(&PickRequest::default(), &[addr(1), addr(2), addr(3)])
                .is_none()
        );
    }
}
