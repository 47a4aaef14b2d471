//! The compiled routing table: host + longest path prefix → pool.
//!
//! Built off the request path from a protocol `RouteTable` and swapped in
//! whole (see `State::install`), so a request reads one consistent table.
//! Matching order: exact host, then the longest `*.suffix` wildcard, then
//! catch-all pools; within a tier the longest matching prefix wins, and a
//! tier without a matching prefix falls through to the next.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_protocol::{PoolRoute, RouteTable};

use crate::balance::Balancer;
use crate::metrics::PoolStats;

/// One pool as the proxy uses it.
#[derive(Debug)]
pub struct Pool {
    /// The route it was built from.
    pub route: PoolRoute,
    /// Endpoint selection.
    pub balancer: Balancer,
    /// Counters, shared across table versions.
    pub stats: Arc<PoolStats>,
}

/// The table.
#[derive(Debug, Default)]
pub struct Table {
    /// Version of the route table it was built from.
    pub version: u64,
    pools: Vec<Arc<Pool>>,
    exact: HashMap<String, Vec<usize>>,
    /// `(".suffix", pools)`, longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    catch_all: Vec<usize>,
}

impl Table {
    /// Builds a table; `stats` gives each pool its (surviving) counters.
    pub fn build(routes: &RouteTable, mut stats: impl FnMut(&str) -> Arc<PoolStats>) -> Self {
        let mut table = Table {
            version: routes.version,
            ..Default::default()
        };
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for route in routes.pools.values() {
            let i = table.pools.len();
            table.pools.push(Arc::new(Pool {
                balancer: Balancer::new(route.algorithm, &route.endpoints),
                stats: stats(&route.name),
                route: route.clone(),
            }));
            if route.hosts.is_empty() {
                table.catch_all.push(i);
            }
            for host in &route.hosts {
                if host.is_catch_all() {
                    table.catch_all.push(i);
                } else if let Some(suffix) = host.wildcard_suffix() {
                    wildcard.entry(suffix.to_string()).or_default().push(i);
                } else {
                    table
                        .exact
                        .entry(host.as_str().to_string())
                        .or_default()
                        .push(i);
                }
            }
        }
        let by_specificity = |pools: &[Arc<Pool>], list: &mut Vec<usize>| {
            list.sort_by_key(|i| std::cmp::Reverse(pools[*i].route.path_prefix.specificity()));
            list.dedup();
        };
        for list in table.exact.values_mut() {
            by_specificity(&table.pools, list);
        }
        by_specificity(&table.pools, &mut table.catch_all);
        table.wildcard = wildcard.into_iter().collect();
        table
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        for (_, list) in &mut table.wildcard {
            by_specificity(&table.pools, list);
        }
        table
    }

    /// The pool for `host` (lower-case, no port) and `path`.
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

    /// Every pool.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::RouteFile;

    fn table(yaml: &str) -> Table {
        let file = RouteFile::from_yaml(yaml).expect("valid");
        let rt = RouteTable::from_pools(1, file.pools);
        Table::build(&rt, |_| Arc::new(PoolStats::default()))
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
        let name = |h: &str, p: &str| t.route(h, p).map(|p| p.route.name.clone());
        assert_eq!(name("api.example.com", "/v1/users"), Some("api".into()));
        assert_eq!(name("api.example.com", "/v1"), Some("api".into()));
        assert_eq!(name("api.example.com", "/v10"), Some("api-root".into()));
        assert_eq!(name("www.example.com", "/"), Some("web".into()));
        assert_eq!(name("x.a.example.com", "/"), Some("deep".into()));
        assert_eq!(name("example.com", "/"), Some("any".into()));
        assert_eq!(
            name("other.org", "/static/app.js"),
            Some("any-static".into())
        );
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = table("pools:\n  - {name: a, hosts: [a.example.com], pathPrefix: /a}\n");
        assert!(t.route("b.example.com", "/a").is_none());
        assert!(t.route("a.example.com", "/b").is_none());
    }
}
