//! Turns an `HttpRoute`'s rules into entries: compiled conditions, and the
//! action each rule takes (or its pool, when forwarding is all it does).

use std::cmp::Reverse;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use sluice_protocol::HttpRoute;
use sluice_protocol::http_route::{self, Filter, PathMatch, RouteMatch, ValueMatch};
use sluice_protocol::route::Host;

use super::rewrite::{HeaderOps, PathChange, RedirectTo};
use super::{Entry, Extra, Key, PathCond, RuleAction, Target, ValueCond, WeightedBackend};

/// Adds one entry per match of each of `route`'s rules.
pub(super) fn stage_route<'r>(
    route: &'r HttpRoute,
    pool_index: &impl Fn(&str) -> Option<usize>,
    staged: &mut Vec<(Key, &'r [Host], Entry)>,
) {
    let default_match = [RouteMatch::default()];
    for (r, rule) in route.rules.iter().enumerate() {
        let action = compile_action(route, r, pool_index);
        let target = match fast_target(&action, rule) {
            Some(i) => Target::Pool(i),
            None => Target::Rule(Arc::new(action)),
        };
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        for (m, matched) in matches.iter().enumerate() {
            let (path, rank, len) = match matched.path.clone().unwrap_or_default() {
                PathMatch::Exact(p) => (Some(PathCond::Exact(p.as_str().into())), 0, p.len()),
                PathMatch::RegularExpression(p) => (
                    http_route::compile(&p).ok().map(PathCond::Regex),
                    1,
                    p.len(),
                ),
                PathMatch::PathPrefix(p) => {
                    let t = p.trim_end_matches('/');
                    (Some(PathCond::Prefix(t.into())), 2, t.len())
                }
            };
            let extra = compile_extra(matched);
            let (Some(path), Some(extra)) = (path, extra) else {
                // Validated when the table was parsed: not expected.
                tracing::warn!(route = %route.name, rule = r, "a match did not compile; it is skipped");
                continue;
            };
            let key = (
                rank,
                Reverse(len),
                Reverse(matched.method.is_some()),
                Reverse(matched.headers.len()),
                Reverse(matched.query_params.len()),
                route.order,
                route.name.clone(),
                r,
                m,
            );
            let entry = Entry {
                path,
                extra,
                target: target.clone(),
            };
            staged.push((key, &route.hosts, entry));
        }
    }
}

/// `Some(None)`: no conditions beyond the path; `None`: a regex failed.
fn compile_extra(m: &RouteMatch) -> Option<Option<Box<Extra>>> {
    if m.method.is_none() && m.headers.is_empty() && m.query_params.is_empty() {
        return Some(None);
    }
    let value = |v: &ValueMatch| -> Option<ValueCond> {
        if v.regex {
            http_route::compile(&v.value).ok().map(ValueCond::Regex)
        } else {
            Some(ValueCond::Exact(v.value.as_str().into()))
        }
    };
    let headers = m
        .headers
        .iter()
        .map(|h| Some((HeaderName::from_bytes(h.name.as_bytes()).ok()?, value(h)?)))
        .collect::<Option<Box<[_]>>>()?;
    let query = m
        .query_params
        .iter()
        .map(|q| Some((q.name.as_str().into(), value(q)?)))
        .collect::<Option<Box<[_]>>>()?;
    let method = m
        .method
        .and_then(|m| Method::from_bytes(m.as_str().as_bytes()).ok());
    Some(Some(Box::new(Extra {
        method,
        headers,
        query,
    })))
}

fn compile_action(
    route: &HttpRoute,
    r: usize,
    pool_index: &impl Fn(&str) -> Option<usize>,
) -> RuleAction {
    let rule = &route.rules[r];
    let backends: Box<[WeightedBackend]> = rule
        .backends
        .iter()
        .map(|b| WeightedBackend {
            name: b.pool.clone(),
            pool: pool_index(&b.pool),
            weight: b.weight,
        })
        .collect();
    let mut action = RuleAction {
        name: format!("route {:?} rules[{r}]", route.name),
        total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
        backends,
        request_headers: None,
        response_headers: None,
        redirect: None,
        rewrite_host: None,
        rewrite_path: None,
        mirrors: Box::default(),
        request_timeout: None,
        backend_timeout: None,
    };
    let mut mirrors = Vec::new();
    for filter in &rule.filters {
        match filter {
            Filter::RequestHeaderModifier(m) => action.request_headers = Some(HeaderOps::new(m)),
            Filter::ResponseHeaderModifier(m) => action.response_headers = Some(HeaderOps::new(m)),
            Filter::RequestRedirect(r) => action.redirect = Some(RedirectTo::new(r)),
            Filter::UrlRewrite(u) => {
                action.rewrite_host = u
                    .hostname
                    .as_ref()
                    .and_then(|h| HeaderValue::from_str(h.as_str()).ok());
                action.rewrite_path = u.path.as_ref().map(PathChange::new);
            }
            Filter::RequestMirror(m) => mirrors.push((m.pool.clone(), pool_index(&m.pool))),
        }
    }
    action.mirrors = mirrors.into_boxed_slice();
    if let Some(t) = &rule.timeouts {
        let nonzero =
            |d: Option<sluice_protocol::Duration>| d.map(|d| d.get()).filter(|d| !d.is_zero());
        action.request_timeout = nonzero(t.request);
        action.backend_timeout = nonzero(t.backend_request);
    }
    action
}

/// The pool a rule sends everything to unchanged, when that is all it
/// does: then it needs no more than a pool's own route.
fn fast_target(action: &RuleAction, rule: &sluice_protocol::Rule) -> Option<usize> {
    let [only] = &action.backends[..] else {
        return None;
    };
    (rule.filters.is_empty() && rule.timeouts.is_none() && only.weight > 0).then_some(only.pool?)
}
