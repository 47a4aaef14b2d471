//! What a matched rule does to a request before it goes on to a pool, when
//! it does more than send everything to one pool: redirect, header
//! changes, rewrite, mirror, a backend chosen by weight, the rule's
//! timeouts. Plain pool routes never come here; the request then takes the
//! same path as theirs (client certificates, rate limit, breaker,
//! endpoint, retries).
//!
//! Mirrors copy only requests without a body: copying a body would mean
//! holding it in memory until both pools have read it, or slowing the
//! client to the pace of the mirror; a request with a body goes to its
//! backend alone. A mirror's answer is read and dropped; it counts in the
//! mirror endpoint's request metrics but not in its health or outlier
//! verdicts, and never in the client's response.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;

use super::{Origin, ProxyBody, local};
use crate::client_body::ClientBody;
use crate::proxy::forward::{self, RoutedHost};
use crate::rules::RuleAction;
use crate::table::{Pool, Table};
use crate::upstream::RequestBody;

/// A matched rule's timeouts: each only ever shortens the pool's own.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RuleLimits {
    request: Option<Duration>,
    backend: Option<Duration>,
}

impl RuleLimits {
    /// The request's limit, given the pool's.
    pub(super) fn request(self, pool: Duration) -> Duration {
        self.request.map_or(pool, |r| r.min(pool))
    }

    /// One try's limit, given the pool's `perTryTimeout`.
    pub(super) fn per_try(self, pool: Option<Duration>) -> Option<Duration> {
        match (self.backend, pool) {
            (Some(b), Some(p)) => Some(b.min(p)),
            (b, p) => b.or(p),
        }
    }

    /// The timeouts of `rule`.
    pub(super) fn of(rule: &RuleAction) -> Self {
        Self {
            request: rule.request_timeout,
            backend: rule.backend_timeout,
        }
    }
}

/// The answer of a matched rule that redirects (`action.redirect`), to a
/// request for `host` (the `Host` as the client sent it) on the HTTPS
/// listener (`https`) or the plain one. Apart from [`apply`] so that the
/// request is only read here: the caller keeps borrowing its `Host`
/// instead of copying it for every rule-routed request.
pub(super) fn redirect(
    action: &RuleAction,
    prefix_len: usize,
    host: &str,
    req: &Request<ClientBody>,
    https: bool,
) -> Option<Response<ProxyBody>> {
    let redirect = action.redirect.as_ref()?;
    let (path, query) = (req.uri().path(), req.uri().query());
    let location = redirect.location(https, host, path, query, prefix_len);
    let Ok(value) = HeaderValue::try_from(location) else {
        let body = format!("{}: the redirect target is not a valid URL\n", action.name);
        return Some(local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad-redirect",
            body,
        ));
    };
    let mut resp = Response::new(ProxyBody::Local(Default::default()));
    *resp.status_mut() = redirect.status;
    resp.headers_mut().insert(header::LOCATION, value);
    if let Some(ops) = &action.response_headers {
        ops.apply(resp.headers_mut());
    }
    Some(resp)
}

/// Applies a matched rule that does not redirect ([`redirect`] first) to
/// the request, in place: a 500 when its weights land on no pool, or the
/// pool to forward to, with the request as the rule changed it (headers,
/// host and path rewritten, mirrors sent). `original_host`: the value
/// `X-Forwarded-Host` will carry. The response side
/// (`ResponseHeaderModifier`) is the caller's. Not inlined, and the
/// request changed in place rather than moved through: plain pool routes
/// never run it and pay nothing for it.
#[inline(never)]
#[allow(clippy::result_large_err)]
pub(super) fn apply<'t>(
    table: &'t Table,
    action: &RuleAction,
    prefix_len: usize,
    original_host: &mut Option<RoutedHost>,
    req: &mut Request<ClientBody>,
    from: Origin<'_>,
) -> Result<&'t Arc<Pool>, Response<ProxyBody>> {
    if let Some(ops) = &action.request_headers {
        ops.apply(req.headers_mut());
    }
    if let Some(change) = &action.rewrite_path {
        let path = change.apply(req.uri().path(), prefix_len);
        let target = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let Ok(pq) = PathAndQuery::try_from(target) else {
            let body = format!("{}: the rewritten path is not valid\n", action.name);
            return Err(local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad-rewrite",
                body,
            ));
        };
        *req.uri_mut() = Uri::from(pq);
    }
    if let Some(value) = &action.rewrite_host {
        req.headers_mut().insert(header::HOST, value.clone());
        // The pool sees the new `Host`; `X-Forwarded-Host` keeps the
        // client's.
        if let Some(routed) = original_host {
            routed.in_host_header = true;
        }
    }
    if req.body().is_end_stream() {
        for (_, pool) in action.mirrors.iter() {
            if let Some(pool) = pool.and_then(|i| table.pool_at(i)) {
                mirror(Arc::clone(pool), req, from, original_host.clone());
            }
        }
    }
    let Some(backend) = action.pick() else {
        let body = format!("{}: no backend has a weight above 0\n", action.name);
        return Err(local(StatusCode::INTERNAL_SERVER_ERROR, "no-backend", body));
    };
    backend.pool.and_then(|i| table.pool_at(i)).ok_or_else(|| {
        let body = format!(
            "{}: backend pool {:?} is not in the table\n",
            action.name, backend.name
        );
        local(StatusCode::INTERNAL_SERVER_ERROR, "invalid-backend", body)
    })
}

/// Sends a copy of a bodiless request head to one of `pool`'s endpoints,
/// in the background, within the pool's request timeout; the answer is
/// dropped.
fn mirror(pool: Arc<Pool>, req: &Request<ClientBody>, from: Origin<'_>, host: Option<RoutedHost>) {
    let mut head = Request::new(()).into_parts().0;
    head.method = req.method().clone();
    head.uri = req.uri().clone();
    head.version = req.version();
    head.headers = req.headers().clone();
    let peer = from.peer.ip();
    let https = from.site.is_some();
    // The mirrored copy carries the same trace context as the original.
    let trace = from.trace;
    tokio::spawn(async move {
        let pick = pool.pick_request(&head.headers, peer);
        let Some(target) = pool.pick(&pick).cloned() else {
            return;
        };
        let forwarded = forward::request(&mut head, peer, host, https, trace);
        let exchange = async {
            let resp = pool
                .policy
                .upstream
                .send(&target, &mut head, RequestBody::Empty, &forwarded)
                .await?;
            target.upstream.inc(resp.status().as_u16());
            // Read to the end, so the connection goes back to the pool.
            let mut body = resp.into_body();
            while let Some(Ok(_)) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
            {
            }
            Ok::<_, crate::upstream::Unsent>(())
        };
        if let Ok(Err(_)) | Err(_) =
            tokio::time::timeout(pool.policy.request_timeout, exchange).await
        {
            target.upstream.inc(0);
        }
    });
}
