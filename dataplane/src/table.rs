//! The compiled routing table: host + longest path prefix → pool.
//!
//! Built off the request path from a protocol `RouteTable` and swapped in
//! whole (`State::install` stores it in an `ArcSwap`), so a request reads one
//! consistent table from routing to the endpoint it dials.
//!
//! Matching order: the exact host, then `*.suffix` wildcards (longest suffix
//! first), then catch-all pools (`*` or no hosts). Within a tier the longest
//! matching path prefix wins. A tier whose pools all miss the path falls
//! through to the next one, as Gateway API's precedence does: a request for
//! `api.example.com/docs` reaches `*.example.com`'s `/` when the exact pool
//! only serves `/v1`, rather than failing while another pool matches.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Authority;
use sluice_protocol::{Algorithm, PoolRoute, RouteTable};

use crate::balance::Balancer;
use crate::metrics::{CodeCounters, Metrics, PoolEndpointCode, PoolMetrics};

/// A ready endpoint, with what the request path needs of it precomputed.
#[derive(Debug)]
pub struct Target {
    /// Socket address.
    pub addr: SocketAddr,
    /// The same, as the upstream URI's authority (parsed once, not per request).
    pub authority: Authority,
    /// `sluice_upstream_requests_total` of this endpoint.
    pub upstream: CodeCounters<PoolEndpointCode>,
}

/// One pool as the proxy uses it. Immutable once built; a table that keeps
/// an unchanged route reuses the previous version's `Arc<Pool>`, so its
/// rotation carries on where it was.
#[derive(Debug)]
pub struct Pool {
    /// The route it was built from.
    pub route: PoolRoute,
    targets: Vec<Target>,
    balancer: Balancer,
    /// Counters of the pool's requests.
    pub metrics: Arc<PoolMetrics>,
}

impl Pool {
    fn build(route: &PoolRoute, metrics: &Metrics) -> Self {
        let ready: Vec<_> = route.endpoints.iter().filter(|e| e.ready).collect();
        let targets = ready
            .iter()
            .map(|e| Target {
                addr: e.address,
                // A socket address always renders as a valid authority.
                authority: Authority::try_from(e.address.to_string())
                    .unwrap_or_else(|_| Authority::from_static("invalid")),
                upstream: metrics.endpoint(&route.name, e.address),
            })
            .collect();
        let weights: Vec<_> = ready.iter().map(|e| e.weight).collect();
        // Both algorithms follow the smooth weighted schedule (equal weights
        // make it a plain rotation); the match makes a new algorithm a
        // compile error here rather than a silent round robin.
        let balancer = match route.algorithm {
            Algorithm::RoundRobin | Algorithm::WeightedRoundRobin => Balancer::new(&weights),
        };
        Self {
            route: route.clone(),
            targets,
            balancer,
            metrics: Arc::new(metrics.pool(&route.name)),
        }
    }

    /// The endpoint for the next request, or `None` when none is ready.
    pub fn pick(&self) -> Option<&Target> {
        self.balancer.pick().and_then(|i| self.targets.get(i))
    }
}

/// The routing table of one version.
#[derive(Debug, Default)]
pub struct Table {
    /// Version of the route table it was built from; 0 before any.
    pub version: u64,
    pools: Vec<Arc<Pool>>,
    by_name: HashMap<String, usize>,
    exact: HashMap<String, Vec<usize>>,
    /// `(".suffix", pools)`, longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    catch_all: Vec<usize>,
}

impl Table {
    /// Compiles `routes`. Pools whose route equals the one in `previous`
    /// are carried over as they are; the others get fresh balancers and
    /// metric handles from `metrics`.
    pub fn build(routes: &RouteTable, previous: &Table, metrics: &Metrics) -> Self {
        let mut table = Table {
            version: routes.version,
            ..Default::default()
        };
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for route in routes.pools.values() {
            let i = table.pools.len();
            let pool = match previous.pool(&route.name) {
                Some(old) if old.route == *route => Arc::clone(old),
                _ => Arc::new(Pool::build(route, metrics)),
            };
            table.pools.push(pool);
            table.by_name.insert(route.name.clone(), i);
            if route.hosts.is_empty() {
                table.catch_all.push(i);
            }
            for host in &route.hosts {
                if host.is_catch_all() {
                    table.catch_all.push(i);
                } else if let Some(suffix) = host.wildcard_suffix() {
                    wildcard.entry(suffix.to_string()).or_default().push(i);
                } else {
                    let list = table.exact.entry(host.as_str().to_string());
                    list.or_default().push(i);
                }
            }
        }
        let pools = &table.pools;
        let by_specificity = |list: &mut Vec<usize>| {
            list.sort_by_key(|i| std::cmp::Reverse(pools[*i].route.path_prefix.specificity()));
            list.dedup();
        };
        table.exact.values_mut().for_each(by_specificity);
        wildcard.values_mut().for_each(by_specificity);
        by_specificity(&mut table.catch_all);
        table.wildcard = wildcard.into_iter().collect();
        table
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// The pool for `host` (as [`normalize_host`] returns it) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Pool>> {
        let first_match = |list: &[usize]| {
            list.iter()
                .map(|i| &self.pools[*i])
                .find(|p| p.route.path_prefix.matches(path))
        };
        if let Some(p) = self.exact.get(host).and_then(|l| first_match(l)) {
            return Some(p);
        }
        for (suffix, list) in &self.wildcard {
            // `*.example.com` matches `a.example.com`, not `example.com`.
            if host.len() > suffix.len()
                && host.ends_with(suffix.as_str())
                && let Some(p) = first_match(list)
            {
                return Some(p);
            }
        }
        first_match(&self.catch_all)
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.by_name.get(name).map(|i| &self.pools[*i])
    }

    /// Every pool.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }
}

/// A Host header or `:authority` as the table matches it: port stripped,
/// lower-cased, trailing dot dropped. Borrows when nothing changes.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        },
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::RouteFile;

    fn routes(version: u64, yaml: &str) -> RouteTable {
        let file = RouteFile::from_yaml(yaml).expect("valid");
        RouteTable::from_pools(version, file.pools)
    }

    fn table(yaml: &str) -> Table {
        Table::build(&routes(1, yaml), &Table::default(), &Metrics::new())
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
            assert_eq!(pool.pick().map(|t| t.addr.port()), Some(2));
        }
        let t = table("pools:\n  - {name: p, endpoints: [{address: 127.0.0.1:1, ready: false}]}\n");
        assert!(t.pool("p").expect("pool").pick().is_none());
    }

    #[test]
    fn unchanged_pools_are_carried_over_and_changed_ones_rebuilt() {
        let metrics = Metrics::new();
        let v1 = routes(
            1,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}]}\n  - {name: b, endpoints: [{address: 127.0.0.1:2}]}\n",
        );
        let old = Table::build(&v1, &Table::default(), &metrics);
        let v2 = routes(
            2,
            "pools:\n  - {name: a, endpoints: [{address: 127.0.0.1:1}]}\n  - {name: b, endpoints: [{address: 127.0.0.1:3}]}\n",
        );
        let new = Table::build(&v2, &old, &metrics);
        assert_eq!(new.version, 2);
        let same = |n: &str| Arc::ptr_eq(old.pool(n).expect("old"), new.pool(n).expect("new"));
        assert!(same("a"));
        assert!(!same("b"));
    }
}
