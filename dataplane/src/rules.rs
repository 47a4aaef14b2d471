//! Rules compiled for the request path: host → matches in precedence order
//! → a pool, or a rule's action (filters, weighted backends, timeouts).
//!
//! One mechanism for both kinds of route: a pool with hosts becomes one
//! `PathPrefix` match whose target is the pool itself, and an `HttpRoute`
//! rule with a single backend and nothing else to do becomes the same kind
//! of match, so the plain host + prefix request costs what it always did
//! (a hash of the host, then a prefix compare per candidate).
//!
//! Hosts are tried by tier — the exact host, then `*.suffix` wildcards
//! (longest suffix first), then catch-all — and a tier none of whose
//! matches holds falls through to the next. Within a tier, matches are
//! ordered as Gateway API orders them: an `Exact` path, then regular
//! expressions (longer pattern first), then the longest `PathPrefix`; then
//! a method condition before none, more header conditions first, more query
//! conditions first; then the route's `order`, its name, the rule's and the
//! match's index. Pools' own routes take part under the pool's name, with
//! order 0.
//!
//! Everything here is built with the table, off the request path; regular
//! expressions are compiled once per table.

mod compile;
pub mod rewrite;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use sluice_protocol::route::Host;
use sluice_protocol::{HttpRoute, Listener, RouteTable};

use self::rewrite::{HeaderOps, PathChange, RedirectTo};

/// What a request is matched on, borrowed from its head.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The path, without the query.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
    /// The method.
    pub method: &'a Method,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// Where a matched request goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Straight to the pool at this index of the table, as a plain pool
    /// route always did.
    Pool(usize),
    /// Through a rule's filters to its weighted backends.
    Rule(Arc<RuleAction>),
}

/// A rule's work once it matched.
#[derive(Debug)]
pub struct RuleAction {
    /// `route rules[i]`, for messages.
    pub name: String,
    /// Pools by weight; `None` where the table has no pool of that name.
    pub backends: Box<[WeightedBackend]>,
    /// Sum of the weights.
    pub total_weight: u64,
    /// `RequestHeaderModifier`.
    pub request_headers: Option<HeaderOps>,
    /// `ResponseHeaderModifier`.
    pub response_headers: Option<HeaderOps>,
    /// `RequestRedirect`: answered without a backend.
    pub redirect: Option<RedirectTo>,
    /// `URLRewrite` of the host: the `Host` the pool receives.
    pub rewrite_host: Option<HeaderValue>,
    /// `URLRewrite` of the path.
    pub rewrite_path: Option<PathChange>,
    /// `RequestMirror` pools (`None`: not in the table).
    pub mirrors: Box<[(String, Option<usize>)]>,
    /// `timeouts.request`, when set and not zero.
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`, when set and not zero.
    pub backend_timeout: Option<Duration>,
}

/// One entry of a rule's `backends`.
#[derive(Debug)]
pub struct WeightedBackend {
    /// The pool's name, as the rule wrote it.
    pub name: String,
    /// Its index in the table, when the table has it.
    pub pool: Option<usize>,
    /// Its share.
    pub weight: u32,
}

impl RuleAction {
    /// The backend for one request, by weight (`None`: all weights are 0,
    /// or there are no backends).
    pub fn pick(&self) -> Option<&WeightedBackend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut r = fastrand::u64(..self.total_weight);
        for b in self.backends.iter() {
            let w = u64::from(b.weight);
            if r < w {
                return Some(b);
            }
            r -= w;
        }
        None
    }
}

/// A match that held: its target and, for a `PathPrefix`, the length of the
/// prefix it matched (trailing `/` dropped), for `ReplacePrefixMatch`.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'t> {
    /// Where the request goes.
    pub target: &'t Target,
    /// Bytes of the path the prefix covered.
    pub prefix_len: usize,
}

#[derive(Debug)]
struct Entry {
    path: PathCond,
    /// Method, header and query conditions; `None` for the common match
    /// on the path alone (one pointer compare on the request path).
    extra: Option<Box<Extra>>,
    target: Target,
}

#[derive(Debug)]
enum PathCond {
    /// Trailing `/` removed; empty for `/`.
    Prefix(Box<str>),
    Exact(Box<str>),
    Regex(Regex),
}

#[derive(Debug)]
struct Extra {
    method: Option<Method>,
    headers: Box<[(HeaderName, ValueCond)]>,
    query: Box<[(Box<str>, ValueCond)]>,
}

#[derive(Debug)]
enum ValueCond {
    Exact(Box<str>),
    Regex(Regex),
}

impl ValueCond {
    fn holds(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(v) => v.as_bytes() == value,
            Self::Regex(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

impl Entry {
    /// The prefix length when the entry holds for `req`.
    #[inline]
    fn holds(&self, req: &RequestView<'_>) -> Option<usize> {
        let len = match &self.path {
            PathCond::Prefix(p) => {
                let rest = req.path.strip_prefix(&**p)?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                p.len()
            }
            PathCond::Exact(p) => (req.path == &**p).then_some(0)?,
            PathCond::Regex(re) => re.is_match(req.path).then_some(0)?,
        };
        match &self.extra {
            None => Some(len),
            Some(extra) => extra.holds(req).then_some(len),
        }
    }
}

impl Extra {
    fn holds(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        let header = |(name, cond): &(HeaderName, ValueCond)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| cond.holds(v.as_bytes()))
        };
        if !self.headers.iter().all(header) {
            return false;
        }
        let query = req.query.unwrap_or_default();
        self.query.iter().all(|(name, cond)| {
            // The first value of the parameter, as sent (not decoded).
            query
                .split('&')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == &**name).then_some(v)
                })
                .next()
                .is_some_and(|v| cond.holds(v.as_bytes()))
        })
    }
}

/// Precedence of one entry; smaller sorts first.
type Key = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    u64,
    String,
    usize,
    usize,
);

/// Every host's matches, in precedence order.
#[derive(Debug, Default)]
pub struct Rules {
    entries: Vec<Entry>,
    exact: HashMap<String, Vec<u32>>,
    /// `(".suffix", entries)`, longest suffix first.
    wildcard: Vec<(String, Vec<u32>)>,
    catch_all: Vec<u32>,
}

impl Rules {
    /// Compiles the routes of `table`: each pool's own (unless it is
    /// `backendOnly`) and every `HttpRoute` served on `listener` (every
    /// one when `None`). `pool_index` resolves a pool name to its index in
    /// the compiled table.
    pub fn build(
        table: &RouteTable,
        listener: Option<Listener>,
        pool_index: impl Fn(&str) -> Option<usize>,
    ) -> Self {
        let mut staged: Vec<(Key, &[Host], Entry)> = Vec::new();
        for pool in table.pools.values().filter(|p| !p.backend_only) {
            let Some(i) = pool_index(&pool.name) else {
                continue;
            };
            let prefix = pool.path_prefix.as_str().trim_end_matches('/');
            let key = (
                2,
                Reverse(prefix.len()),
                Reverse(false),
                Reverse(0),
                Reverse(0),
                0,
                pool.name.clone(),
                0,
                0,
            );
            let entry = Entry {
                path: PathCond::Prefix(prefix.into()),
                extra: None,
                target: Target::Pool(i),
            };
            staged.push((key, &pool.hosts, entry));
        }
        let served = |r: &&HttpRoute| listener.is_none_or(|l| r.serves(l));
        for route in table.routes.values().filter(served) {
            compile::stage_route(route, &pool_index, &mut staged);
        }
        staged.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rules = Rules::default();
        let mut wildcard: HashMap<String, Vec<u32>> = HashMap::new();
        for (_, hosts, entry) in staged {
            let i = rules.entries.len() as u32;
            rules.entries.push(entry);
            if hosts.is_empty() {
                rules.catch_all.push(i);
            }
            for host in hosts {
                let list = if host.is_catch_all() {
                    &mut rules.catch_all
                } else if let Some(suffix) = host.wildcard_suffix() {
                    wildcard.entry(suffix.to_string()).or_default()
                } else {
                    rules.exact.entry(host.as_str().to_string()).or_default()
                };
                // A route listing a host twice adds its entry once.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        rules.wildcard = wildcard.into_iter().collect();
        rules
            .wildcard
            .sort_by_key(|(suffix, _)| Reverse(suffix.len()));
        rules
    }

    /// The first match for `host` (as `normalize_host` returns it) that
    /// holds for `req`.
    pub fn find(&self, host: &str, req: &RequestView<'_>) -> Option<Matched<'_>> {
        let first = |list: &[u32]| {
            list.iter().find_map(|i| {
                let entry = &self.entries[*i as usize];
                entry.holds(req).map(|prefix_len| Matched {
                    target: &entry.target,
                    prefix_len,
                })
            })
        };
        if let Some(m) = self.exact.get(host).and_then(|l| first(l)) {
            return Some(m);
        }
        for (suffix, list) in &self.wildcard {
            // `*.example.com` matches `a.example.com`, not `example.com`.
            if host.len() > suffix.len()
                && host.ends_with(suffix.as_str())
                && let Some(m) = first(list)
            {
                return Some(m);
            }
        }
        first(&self.catch_all)
    }

    /// Number of compiled matches (for the benchmark and tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
