//! The request path: route, pick an endpoint, forward, stream back.
//!
//! Bodies are never collected: the client's body streams to the endpoint and
//! the endpoint's body streams back, with hyper's back-pressure both ways.
//! Errors Sluice answers itself are short plain-text bodies saying why, with
//! the reason in `x-sluice-error` for scripts and dashboards.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::client_body::ClientBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::activation;
use crate::endpoint::{Endpoint, InFlight};
use crate::front::tls::{self, Site};
use crate::hop_by_hop;
use crate::http1::client as h1;
use crate::metrics::Exchange;
use crate::policy::breaker::{Held, OVERFLOW_HEADER, Overflow};
use crate::policy::retry::{self, Failure, RequestTraits, idempotent};
use crate::rules::{Matched, RequestView, RuleAction, Target};
use crate::state::State;
use crate::table::{PickRequest, Pool, normalize_host, port_colon};
use crate::trace::Propagated;
use crate::upstream::{BoxError, Outgoing, Progress, ResponseBody, UpstreamError, describe};
use forward::{Forwarded, RoutedHost};

pub mod access;
mod deadline;
pub mod forward;
mod hold;
mod rule;
mod tunnel;
pub mod upgrade;

use self::rule::RuleLimits;

pub use crate::own_headers::{ATTEMPTS_HEADER, ERROR_HEADER};

/// Body of every proxy response: the endpoint's, streamed, or a short one
/// of Sluice's own. An enum rather than a boxed body: no allocation, and the
/// upstream arm carries the request's [`Exchange`] so the request counts as
/// in flight until its last byte.
#[derive(Debug)]
pub enum ProxyBody {
    /// The endpoint's response body.
    Upstream {
        /// The body, read off the endpoint's connection (which goes back
        /// to the endpoint's idle list after the last byte).
        body: ResponseBody,
        /// Dropped at the end of the body (or when the client goes away).
        exchange: Option<Exchange>,
        /// The endpoint's in-flight count, held to the last byte.
        in_flight: Option<InFlight>,
        /// The request's place in the pool's `maxRequests`, held to the
        /// last byte.
        admitted: Option<Held>,
        /// Cuts a body that stays silent for `timeouts.idle`.
        idle: IdleTimer,
    },
    /// An answer from Sluice itself.
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream {
                body,
                exchange,
                in_flight,
                admitted,
                idle,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Pending => {
                        if idle.expired(cx) {
                            exchange.take();
                            in_flight.take();
                            admitted.take();
                            let limit = idle.limit;
                            return Poll::Ready(Some(Err(BodyIdle(limit).into())));
                        }
                    }
                    // (The body puts its connection back itself, with the
                    // last byte: hyper stops polling a body that says it
                    // has ended.)
                    Poll::Ready(Some(Ok(_))) => idle.activity(),
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                        exchange.take();
                        in_flight.take();
                        admitted.take();
                    }
                }
                polled
            }
            Self::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Local(body) => body.size_hint(),
        }
    }
}

/// The endpoint's response body went silent for longer than
/// `timeouts.idle`.
#[derive(Debug, thiserror::Error)]
#[error("response body idle for {0:?}")]
struct BodyIdle(Duration);

/// The idle timeout of a response body. Armed only when the body first
/// has nothing ready, so a body that arrives whole (the common small
/// response) never touches the timer; after that, a frame records the time
/// and the timer, when it fires, moves to that time plus the limit.
#[derive(Debug)]
pub struct IdleTimer {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    last: Option<tokio::time::Instant>,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            last: None,
        }
    }

    fn activity(&mut self) {
        if self.timer.is_some() {
            self.last = Some(tokio::time::Instant::now());
        }
    }

    /// Whether the body has been silent for the limit (registers the
    /// waker otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            match self.last.take() {
                Some(last) if last + limit > tokio::time::Instant::now() => {
                    timer.as_mut().reset(last + limit);
                }
                _ => return true,
            }
        }
    }
}

impl ProxyBody {
    /// The endpoint that answered, for the access log; `None` when Sluice did.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            Self::Upstream { in_flight, .. } => in_flight.as_ref().map(|f| f.endpoint().addr),
            Self::Local(_) => None,
        }
    }
}

/// The forwarding service: one per listener, cloned per connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    state: Arc<State>,
}

/// Where a request came from: the client, the TLS site its connection
/// negotiated (`None`: plain HTTP), and its place in a trace (`None`:
/// tracing off).
#[derive(Clone, Copy)]
struct Origin<'a> {
    peer: SocketAddr,
    site: Option<&'a Site>,
    trace: Option<Propagated>,
}

/// How a request ended, before its response went out.
enum Answer {
    /// The endpoint's response (a success, or the last failure when it was
    /// a gateway error), with the endpoint's in-flight count.
    Upstream {
        resp: Box<Response<ResponseBody>>,
        in_flight: InFlight,
        tries: u32,
    },
    /// One of Sluice's own, with the tries it took (boxed: the rarer
    /// answer, and the enum stays a pointer's size as the endpoint's).
    Local {
        resp: Box<Response<ProxyBody>>,
        tries: u32,
    },
}

/// What one attempt came to, as retries, metrics and passive health see
/// it.
enum Attempt {
    /// A response to pass on.
    Answered(Box<Response<ResponseBody>>),
    /// A failure; `resp` is the endpoint's own answer for a gateway error.
    Failed {
        failure: Failure,
        resp: Option<Box<Response<ResponseBody>>>,
        /// Sluice's answer if this is the last try.
        status: StatusCode,
        reason: &'static str,
        why: String,
        overflow: Option<Overflow>,
    },
}

impl Proxy {
    /// A proxy over `state`; each pool has its own keep-alive HTTP/1.1
    /// client to its endpoints ([`crate::upstream`]).
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// Handles one request from `peer`, on a connection that negotiated
    /// TLS `site` (`None`: plain HTTP); `trace`: the `traceparent` the
    /// endpoint gets (`None`: tracing off).
    ///
    /// The request comes boxed, and goes on boxed: an async fn keeps room
    /// for each argument it owns for as long as it runs, and a request
    /// passed by value through the layers here was kept five times over in
    /// the request's future (measured: 264 bytes each of its 2.8 KB).
    pub async fn handle(
        &self,
        mut req: Box<Request<ClientBody>>,
        peer: SocketAddr,
        site: Option<&Site>,
        trace: Option<Propagated>,
    ) -> Response<ProxyBody> {
        let table = self.state.table.load_full();
        let (raw_host, original_host) = match request_host(&req) {
            Ok(host) => host,
            Err(bad) => return bad_request(req.version(), bad.reason(), bad.to_string()),
        };
        let host = normalize_host(raw_host);
        let uri = req.uri();
        let view = RequestView {
            path: uri.path(),
            query: uri.query(),
            method: req.method(),
            headers: req.headers(),
        };
        let from = Origin { peer, site, trace };
        let mut original_host = original_host;
        let (pool, rule) = match table.select(&host, &view, site.is_some()) {
            Some(Matched {
                target: Target::Pool(i),
                ..
            }) => match table.pool_at(*i) {
                Some(pool) => (pool, None),
                None => return no_route(&host, view.path),
            },
            Some(Matched {
                target: Target::Rule(action),
                prefix_len,
            }) => {
                let https = site.is_some();
                if let Some(resp) = rule::redirect(action, prefix_len, raw_host, &req, https) {
                    return resp;
                }
                match rule::apply(
                    &table,
                    action,
                    prefix_len,
                    &mut original_host,
                    &mut req,
                    from,
                ) {
                    Ok(pool) => (pool, Some(&**action)),
                    Err(resp) => return resp,
                }
            }
            None => return no_route(&host, view.path),
        };
        if !tls::admits(site, &pool.route) {
            let body = format!(
                "pool {:?} requires a client certificate: connect with TLS to one of its hosts\n",
                pool.route.name
            );
            return local(
                StatusCode::MISDIRECTED_REQUEST,
                "client-cert-required",
                body,
            );
        }
        let exchange = pool.metrics.begin();
        if let Some(limiter) = &pool.policy.limiter
            && let Err(secs) = limiter.check(req.headers(), peer.ip())
        {
            pool.metrics.rate_limited();
            exchange.respond(429);
            return rate_limited(&pool.route.name, secs);
        }
        let mut resp = self
            .dispatch(pool, exchange, req, original_host, from, None, rule)
            .await;
        if let Some(ops) = rule.and_then(|r| r.response_headers.as_ref()) {
            ops.apply(resp.headers_mut());
        }
        resp
    }

    /// Takes the request (routed to `pool`, within its rate limit) on from
    /// the circuit breaker: picks an endpoint and forwards; a pool without
    /// endpoints holds it when it has `activation`. `original_host`: the
    /// `Host` the client sent, for `X-Forwarded-Host`. `turn`: a released
    /// request's place in the release order, passed on once its first
    /// attempt started (or it was answered). `rule`: the matched rule, whose
    /// timeouts can only shorten the pool's.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        pool: &Arc<Pool>,
        exchange: Exchange,
        req: Box<Request<ClientBody>>,
        original_host: Option<RoutedHost>,
        from: Origin<'_>,
        turn: Option<activation::Turn>,
        rule: Option<&RuleAction>,
    ) -> Response<ProxyBody> {
        let Origin { peer, site, trace } = from;
        let name = &pool.route.name;
        let admitted = match pool.state.breaker.request() {
            Ok(held) => held,
            Err(over) => {
                exchange.respond(503);
                return overflow(name, over);
            }
        };
        let pick = pool.pick_request(req.headers(), peer.ip());
        let Some(target) = pool.pick(&pick) else {
            if pool.holds_requests() {
                // A held request takes no place in `maxRequests`, and
                // holds up no one released after it.
                drop((admitted, turn));
                let pool = Arc::clone(pool);
                return self
                    .held(pool, exchange, req, original_host, from, rule)
                    .await;
            }
            exchange.respond(503);
            let body = format!("pool {name:?} has no ready endpoints\n");
            return local(StatusCode::SERVICE_UNAVAILABLE, "no-endpoints", body);
        };

        let (mut parts, body) = (*req).into_parts();
        let upgrade = upgrade::take(&mut parts);
        let version = parts.version;
        let https = site.is_some();
        let forwarded = forward::request(&mut parts, peer.ip(), original_host, https, trace);
        let limits = rule.map_or_else(RuleLimits::default, RuleLimits::of);
        let limit = limits.request(pool.policy.request_timeout);
        let idle = pool.policy.upstream.idle();
        let progress = (!body.is_end_stream()).then(|| Arc::new(Progress::default()));
        // Boxed: the attempts make a future of kilobytes, which the timeout
        // and activation layers above would otherwise copy whole as they
        // take it (measured, with the front end polling the request's
        // future in place: 1.6k more instructions a request unboxed).
        let per_try = limits.per_try(pool.policy.retry.per_try_timeout);
        let watch = TryWatch {
            per_try,
            progress: progress.clone(),
        };
        let attempts = boxed_attempts(pool, target, &pick, &forwarded, watch, parts, body);
        let tries = within_silence(attempts, progress.as_deref(), limit, Some(idle));
        let (mut resp, tries) = match activation::relay(tries, turn).await {
            Ok(Answer::Upstream {
                resp,
                in_flight,
                tries,
            }) => {
                exchange.respond(resp.status().as_u16());
                let (mut parts, mut body) = (*resp).into_parts();
                hop_by_hop::strip(&mut parts.headers);
                if let Some(cookie) = pool.affinity_cookie(&pick, in_flight.endpoint()) {
                    parts.headers.append(header::SET_COOKIE, cookie.clone());
                }
                upgrade::switch(upgrade, &mut parts, &mut body, in_flight.endpoint(), idle);
                let body = ProxyBody::Upstream {
                    body,
                    exchange: Some(exchange),
                    in_flight: Some(in_flight),
                    admitted: Some(admitted),
                    idle: IdleTimer::new(pool.policy.upstream.idle()),
                };
                (Response::from_parts(parts, body), tries)
            }
            Ok(Answer::Local { resp, tries }) => {
                exchange.respond(resp.status().as_u16());
                (*resp, tries)
            }
            Err(Silent::Response) => {
                exchange.respond(504);
                let body = format!("pool {name:?} gave no response within {limit:?}\n");
                (local(StatusCode::GATEWAY_TIMEOUT, "timeout", body), 0)
            }
            Err(Silent::Endpoint) => {
                exchange.respond(504);
                let body = format!("pool {name:?} took none of the request body for {idle:?}\n");
                (local(StatusCode::GATEWAY_TIMEOUT, "timeout", body), 0)
            }
            Err(Silent::Client) => {
                exchange.respond(408);
                let body = format!("the request body stalled for {idle:?}\n");
                let mut resp = local(StatusCode::REQUEST_TIMEOUT, "client-timeout", body);
                // The rest of the body may still come: an HTTP/1
                // connection cannot carry another request.
                if version < http::Version::HTTP_2 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                (resp, 0)
            }
        };
        if tries > 1 {
            resp.headers_mut()
                .insert(ATTEMPTS_HEADER, HeaderValue::from(tries));
        }
        resp
    }

    /// Holds a request for `pool`, which has no endpoints, until a table
    /// gives it some (then on through the normal path, on that table), or
    /// answers 503 (queue full, timeout, shutdown). Boxed: it recurses
    /// through [`Proxy::dispatch`], and only held requests pay for it.
    fn held<'a>(
        &'a self,
        pool: Arc<Pool>,
        exchange: Exchange,
        req: Box<Request<ClientBody>>,
        original_host: Option<RoutedHost>,
        from: Origin<'a>,
        rule: Option<&'a RuleAction>,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send + 'a>> {
        Box::pin(async move {
            let arrived = tokio::time::Instant::from_std(exchange.started());
            let pending = exchange.hold();
            match hold::hold(&self.state, &pool, arrived).await {
                Err(refused) => {
                    let exchange = pending.resume(&pool.metrics);
                    exchange.respond(503);
                    local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        refused.reason,
                        refused.body,
                    )
                }
                Ok((table, turn)) => match table.pool(&pool.route.name) {
                    Some(now) => {
                        let exchange = pending.resume(&now.metrics);
                        let host = original_host;
                        self.dispatch(now, exchange, req, host, from, turn, rule)
                            .await
                    }
                    // The pool left the table: route the request afresh.
                    None => {
                        drop((pending, turn));
                        self.handle(req, from.peer, from.site, from.trace).await
                    }
                },
            }
        })
    }
}

/// What went silent for too long before a response head came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silent {
    /// The request was sent (or had no body) and no response head came
    /// within `timeouts.request`: 504.
    Response,
    /// The endpoint took none of the request body for `timeouts.idle`
    /// (its socket stayed full): 504.
    Endpoint,
    /// The client sent none of its request body for `timeouts.idle`: its
    /// fault, 408.
    Client,
}

/// Runs `attempts` under the pool's timeouts, which measure silence, not
/// size (as nginx's `proxy_read_timeout` and HAProxy's `timeout server`
/// and `timeout client` do):
/// - `timeouts.request` bounds the wait for the response head once the
///   request is sent: from its arrival for a request without a body
///   (connects and retries included), from the body's last byte
///   otherwise;
/// - while a body is on its way, `timeouts.idle` bounds each silence: the
///   client sending nothing (408) or the endpoint taking nothing (504).
///
/// So an upload that keeps sending is never cut for its length (it was:
/// the request timeout counted from the arrival, and every upload longer
/// than 60 s failed). The response body has its own idle timeout
/// ([`ProxyBody`]). A request without a body (nearly all) takes the plain
/// timeout, with no progress to read.
///
/// `perTryTimeout` is the same wait for one attempt, with `idle` `None`.
async fn within_silence<F: Future>(
    attempts: F,
    progress: Option<&Progress>,
    request: Duration,
    idle: Option<Duration>,
) -> Result<F::Output, Silent> {
    let Some(progress) = progress else {
        return deadline::within(request, attempts)
            .await
            .map_err(|deadline::Elapsed| Silent::Response);
    };
    let mut attempts = std::pin::pin!(attempts);
    let first = idle.map_or(request, |idle| idle.min(request));
    let mut timer = std::pin::pin!(tokio::time::sleep(first));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(answer) = attempts.as_mut().poll(cx) {
            return Poll::Ready(Ok(answer));
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (last, waiting, done) = progress.state();
            let limit = if done { Some(request) } else { idle };
            // No limit yet (or none that fits the clock): the attempts
            // wake this again.
            let Some(deadline) = limit.and_then(|l| last.checked_add(l)) else {
                return Poll::Pending;
            };
            if deadline > tokio::time::Instant::now() {
                timer.as_mut().reset(deadline);
                continue;
            }
            return Poll::Ready(Err(match (done, waiting) {
                (true, _) => Silent::Response,
                (false, true) => Silent::Client,
                (false, false) => Silent::Endpoint,
            }));
        }
    })
    .await
}

/// [`attempts`], boxed. A plain function: in `dispatch` itself, the
/// unboxed future would be a temporary whose room that future keeps
/// (measured: 2.5 KB of its 4 KB). Built in its box (`Box::write` into a
/// fresh one): `Box::pin(attempts(..))` builds the future aside and copies
/// its kilobyte over (measured: 124 instructions a request).
fn boxed_attempts<'a>(
    pool: &'a Pool,
    first: &'a Arc<Endpoint>,
    pick: &'a PickRequest,
    forwarded: &'a Forwarded,
    watch: TryWatch,
    parts: Parts,
    body: ClientBody,
) -> Pin<Box<impl Future<Output = Answer> + Send + 'a>> {
    let room = Box::new_uninit();
    Box::into_pin(Box::write(
        room,
        attempts(pool, first, pick, forwarded, watch, Some(parts), body),
    ))
}

/// What bounds each try besides the request: the limit of one try (the
/// pool's `perTryTimeout`, or a rule's `backendRequest`) and, for a
/// request with a body, the body's progress, so that the limit measures
/// silence after the body's last byte, not the upload's length.
struct TryWatch {
    per_try: Option<Duration>,
    progress: Option<Arc<Progress>>,
}

/// Sends the request to `target`, and again to other endpoints while the
/// pool's retry policy, budget and `maxRetries` allow (rules in
/// [`crate::policy::retry`]).
fn attempts<'a>(
    pool: &'a Pool,
    mut target: &'a Arc<Endpoint>,
    pick: &'a PickRequest,
    forwarded: &'a Forwarded,
    watch: TryWatch,
    mut head: Option<Parts>,
    body: ClientBody,
) -> impl Future<Output = Answer> + Send + 'a {
    let TryWatch { per_try, progress } = watch;
    let policy = &pool.policy;
    let retry = policy.retry;
    let may_retry = retry.enabled() && pool.endpoints.len() > 1;
    let mut traits = RequestTraits {
        idempotent: head.as_ref().is_some_and(|p| idempotent(&p.method)),
        bodiless: body.is_end_stream(),
        body_intact: true,
    };
    // A connect failure hands the request back, so retrying it needs no
    // copy; only retries after sending (resets, gateway errors) need the
    // head kept aside, and the body shared until it is first read.
    let resends = may_retry && retry.resends();
    let mut body = Outgoing::new(body, resends, progress);
    // Boxed, and the head an argument used in place: the attempts' future
    // keeps room for each (a `Parts` is 224 bytes), and its box, allocated
    // for every request, would hold them all.
    let template = if resends {
        head.as_ref().map(|p| Box::new(p.clone()))
    } else {
        None
    };
    if may_retry {
        pool.state.budget.deposit();
    }
    // What comes before the first send is done here, and the rest in an
    // async block, not an async fn: an async fn copies each argument into
    // a local of its own and its future keeps room for both (the head
    // alone is 224 bytes); a block uses what it captured in place.
    async move {
        // The policy read through `pool`, not copied in: room again.
        let (policy, retry) = (&pool.policy, &pool.policy.retry);
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut _retrying: Option<Held> = None;
        let mut tries = 1;
        loop {
            let in_flight = target.begin();
            if head.is_none() {
                head = template.as_deref().cloned();
            }
            let Some(parts) = head.as_mut() else {
                // Unreachable: a retry after sending needs the template.
                return failed_answer(pool, target, tries);
            };
            let started = Instant::now();
            let sending = body.attempt();
            // Each send is built where it is awaited, and the one under a try
            // limit boxed: a future kept in a local and then moved into the
            // await takes room twice in this one (measured: 4.5 KB with both
            // in place, every request moving it twice).
            let result = match per_try {
                Some(limit) => Box::pin(within_silence(
                    policy.upstream.send(target, parts, sending, forwarded),
                    body.progress(),
                    limit,
                    None,
                ))
                .await
                .map_err(|_| limit),
                None => Ok(policy
                    .upstream
                    .send(target, parts, sending, forwarded)
                    .await),
            };
            // The head is spent unless the attempt says it is whole (an answer
            // took its header room; a cut try may have sent it).
            if !matches!(&result, Ok(Err(unsent)) if unsent.head_intact) {
                head = None;
            }
            let result = result.map(|r| {
                r.map_err(|unsent| {
                    // Not sent: the body stays in hand for the next try.
                    if let Some(back) = unsent.body {
                        body.restore(back);
                    }
                    unsent.error
                })
            });
            let attempt = outcome(target, result, started.elapsed());
            let (failure, resp, status, reason, why, over) = match attempt {
                Attempt::Answered(resp) => {
                    return Answer::Upstream {
                        resp,
                        in_flight,
                        tries,
                    };
                }
                Attempt::Failed {
                    failure,
                    resp,
                    status,
                    reason,
                    why,
                    overflow,
                } => (failure, resp, status, reason, why, overflow),
            };
            tracing::debug!(pool = %pool.route.name, endpoint = %target.addr, try = tries, error = %why, "attempt failed");
            traits.body_intact = body.intact();
            let next = if tries <= retry.attempts && retry.allows(failure, traits) {
                tried.push(target.addr);
                next_try(pool, pick, &tried, failure.retries_free())
            } else {
                None
            };
            let Some((next, held)) = next else {
                return match resp {
                    Some(resp) => Answer::Upstream {
                        resp,
                        in_flight,
                        tries,
                    },
                    None => {
                        let resp = match over {
                            Some(over) => overflow(&pool.route.name, over),
                            None => local(status, reason, why),
                        };
                        Answer::Local {
                            resp: Box::new(resp),
                            tries,
                        }
                    }
                };
            };
            // An unread failed response: its connection is not reused.
            drop((resp, in_flight));
            _retrying = held;
            if failure.backs_off() {
                tokio::time::sleep(retry::backoff(tries)).await;
            }
            target = next;
            tries += 1;
        }
    }
}

/// The endpoint of the next retry, with its place in `maxRetries`, when
/// one is left and the breaker and the budget allow it; a `free` retry
/// (see [`Failure::retries_free`]) needs neither.
fn next_try<'p>(
    pool: &'p Pool,
    pick: &PickRequest,
    tried: &[SocketAddr],
    free: bool,
) -> Option<(&'p Arc<Endpoint>, Option<Held>)> {
    let next = pool.pick_excluding(pick, tried)?;
    if free {
        return Some((next, None));
    }
    let held = pool.state.breaker.retry().ok()?;
    let percent = pool.policy.retry.budget_percent();
    pool.state
        .budget
        .withdraw(percent)
        .then_some((next, Some(held)))
}

/// Turns an attempt's result into what retries, metrics and health see:
/// counts it in the endpoint's `sluice_upstream_requests_total` (code 0
/// when no response came) and records it for outlier detection (a refusal
/// by the pool's own circuit breaker says nothing of the endpoint), and
/// feeds its latency (`elapsed`, to the response head) to the endpoint's
/// peak EWMA, failures as a penalty.
fn outcome(
    target: &Arc<Endpoint>,
    result: Result<Result<Box<Response<ResponseBody>>, UpstreamError>, Duration>,
    elapsed: Duration,
) -> Attempt {
    let addr = target.addr;
    let e = match result {
        Ok(Ok(resp)) => {
            target.observe_latency(elapsed);
            let code = resp.status().as_u16();
            target.upstream.inc(code);
            target.record_status(code);
            if !retry::gateway_error(code) {
                return Attempt::Answered(resp);
            }
            return Attempt::Failed {
                failure: Failure::Gateway,
                status: resp.status(),
                resp: Some(resp),
                reason: "upstream-failed",
                why: format!("endpoint {addr} answered {code}\n"),
                overflow: None,
            };
        }
        Ok(Err(e)) => e,
        Err(limit) => {
            target.upstream.inc(0);
            target.record_failure();
            target.observe_failure(elapsed);
            return Attempt::Failed {
                failure: Failure::Timeout,
                resp: None,
                status: StatusCode::GATEWAY_TIMEOUT,
                reason: "timeout",
                why: format!("endpoint {addr} gave no response within perTryTimeout {limit:?}\n"),
                overflow: None,
            };
        }
    };
    if let UpstreamError::Overflow(over) = e {
        return Attempt::Failed {
            failure: Failure::Overflow,
            resp: None,
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "overflow",
            why: format!("{over}\n"),
            overflow: Some(over),
        };
    }
    if let UpstreamError::Send(h1::Error::Body(why)) = &e {
        // The client's body failed: nothing is said of the endpoint (no
        // code counted, no failure for outlier detection or PeakEwma), and
        // its connection was closed with the exchange.
        return Attempt::Failed {
            failure: Failure::Client,
            resp: None,
            status: StatusCode::BAD_REQUEST,
            reason: "bad-request-body",
            why: format!("the request body failed: {why}\n"),
            overflow: None,
        };
    }
    target.upstream.inc(0);
    if matches!(&e, UpstreamError::Connect(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
    {
        target.record_refused();
    } else {
        target.record_failure();
    }
    target.observe_failure(elapsed);
    let why = format!("endpoint {addr} failed: {}\n", describe(&e));
    let (failure, status, reason) = match e {
        UpstreamError::ConnectTimeout(_) => {
            (Failure::Connect, StatusCode::GATEWAY_TIMEOUT, "timeout")
        }
        _ if e.is_connect() => (Failure::Connect, StatusCode::BAD_GATEWAY, "upstream-failed"),
        UpstreamError::Send(h1::Error::Unanswered(_)) => {
            (Failure::Dropped, StatusCode::BAD_GATEWAY, "upstream-failed")
        }
        _ => (Failure::Reset, StatusCode::BAD_GATEWAY, "upstream-failed"),
    };
    Attempt::Failed {
        failure,
        resp: None,
        status,
        reason,
        why,
        overflow: None,
    }
}

/// A failure answer when nothing else is known (never expected).
fn failed_answer(pool: &Pool, target: &Endpoint, tries: u32) -> Answer {
    let body = format!(
        "pool {:?}: cannot retry on {}\n",
        pool.route.name, target.addr
    );
    let resp = local(StatusCode::BAD_GATEWAY, "upstream-failed", body);
    Answer::Local {
        resp: Box::new(resp),
        tries,
    }
}

/// 404 for a request no rule matches.
fn no_route(host: &str, path: &str) -> Response<ProxyBody> {
    let body = format!("no pool matches host {host:?} path {path:?}\n");
    local(StatusCode::NOT_FOUND, "no-route", body)
}

/// 429 for a request over the pool's rate limit.
fn rate_limited(pool: &str, retry_after: u64) -> Response<ProxyBody> {
    let body = format!("pool {pool:?} rate limit exceeded; retry after {retry_after}s\n");
    let mut resp = local(StatusCode::TOO_MANY_REQUESTS, "rate-limited", body);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// 503 for a request over one of the pool's circuit breaker limits.
fn overflow(pool: &str, over: Overflow) -> Response<ProxyBody> {
    let body = format!("pool {pool:?}: {over}\n");
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "overflow", body);
    resp.headers_mut()
        .insert(OVERFLOW_HEADER, HeaderValue::from_static(over.header()));
    resp
}

/// Why a request's authority is refused (400, and the connection closes).
#[derive(Debug, thiserror::Error)]
enum BadHost {
    #[error("request has no Host header\n")]
    Missing,
    #[error("request has more than one Host header\n")]
    Duplicate,
    #[error("request has an invalid Host header\n")]
    Invalid,
    #[error("request target has an invalid authority\n")]
    InvalidAuthority,
    #[error("request's Host header differs from its :authority\n")]
    Conflict,
}

impl BadHost {
    /// `x-sluice-error`.
    fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "no-host",
            Self::Duplicate => "duplicate-host",
            Self::Invalid | Self::InvalidAuthority => "invalid-host",
            Self::Conflict => "conflicting-host",
        }
    }
}

/// The one authority of a request, as text (to route on) and as the value
/// forwarded in `Host` and `X-Forwarded-Host`, so that the three always
/// agree. `:authority` (HTTP/2) or an HTTP/1.1 absolute-form target's
/// authority comes first: over HTTP/1.1 it replaces `Host` (RFC 9112
/// §3.2.2); over HTTP/2 a `Host` that names another authority makes the
/// request malformed (RFC 9113 §8.3.1). Otherwise the `Host` header. More
/// than one `Host`, or one that is not a valid `host[:port]`, is refused
/// (RFC 9112 §3.2): a backend reading the other one would see another
/// virtual host than Sluice routed for. The `Host` header's own value is
/// a shared clone, where a copy of the text would cost an allocation.
fn request_host(req: &Request<ClientBody>) -> Result<(&str, Option<RoutedHost>), BadHost> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadHost::Duplicate);
    }
    if host.is_some_and(|h| !valid_authority(h.as_bytes())) {
        return Err(BadHost::Invalid);
    }
    if let Some(authority) = req.uri().authority() {
        let text = authority.as_str();
        if !valid_authority(text.as_bytes()) {
            return Err(BadHost::InvalidAuthority);
        }
        if req.version() == http::Version::HTTP_2
            && host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(text.as_bytes()))
        {
            return Err(BadHost::Conflict);
        }
        let value = HeaderValue::from_str(text).ok().map(|value| RoutedHost {
            value,
            in_host_header: false,
        });
        return Ok((text, value));
    }
    let value = host.ok_or(BadHost::Missing)?;
    let text = value.to_str().map_err(|_| BadHost::Invalid)?;
    let routed = RoutedHost {
        value: value.clone(),
        in_host_header: true,
    };
    Ok((text, Some(routed)))
}

/// Whether `value` is a valid `uri-host [ ":" port ]` (RFC 3986 §3.2.2,
/// RFC 9110 §7.2): an IP literal in brackets, or a registered name or
/// IPv4 address of unreserved, percent-encoded and sub-delimiter
/// characters, then an optional port of digits. No userinfo (`@`), no
/// path, no spaces. Empty is valid (a `Host` for a target with no
/// authority). A byte scan: it runs on every request.
fn valid_authority(value: &[u8]) -> bool {
    if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
        return ok
            && match &rest[end + 1..] {
                [] => true,
                [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
                _ => false,
            };
    }
    // A registered name or IPv4 address, then `:port`: one pass from the
    // end over the port's digits ([`port_colon`]), then one over the
    // name's bytes by table (it runs on every request: the name by
    // `matches!` and `rposition` cost about twice as many instructions).
    // Digits are name bytes too: without a colon, there is no port.
    let name = port_colon(value).map_or(value, |colon| &value[..colon]);
    name.iter().all(|b| REG_NAME[usize::from(*b)])
}

/// The bytes of a registered name or IPv4 address in an authority (RFC
/// 3986 §3.2.2: unreserved, `%` of a percent-encoding, sub-delimiters).
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// 400 for a request Sluice cannot take as it is. Over HTTP/1 the
/// connection closes after it (`Connection: close`): what follows a
/// request that was misread cannot be trusted either.
fn bad_request(version: http::Version, reason: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::BAD_REQUEST, reason, body);
    if version < http::Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// An answer from Sluice itself: a status, a reason header, a short body.
pub fn local(status: StatusCode, reason: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(req: http::request::Builder) -> Result<String, &'static str> {
        let req = req.body(ClientBody::Empty).expect("request");
        request_host(&req)
            .map(|(text, routed)| {
                let routed = routed.map(|r| r.value.to_str().unwrap_or("").to_string());
                assert_eq!(routed.as_deref(), Some(text), "routed == forwarded");
                text.to_string()
            })
            .map_err(|e| e.reason())
    }

    #[test]
    fn one_request_has_one_authority() {
        let get = || Request::get("/");
        assert_eq!(
            host_of(get().header("host", "Shop.example:8080")),
            Ok("Shop.example:8080".into())
        );
        assert_eq!(
            host_of(get().header("host", "[::1]:80")),
            Ok("[::1]:80".into())
        );
        assert_eq!(host_of(get().header("host", "")), Ok(String::new()));
        for good in ["80", "a:", "10.0.0.1:8080", "x-y_z.~%21:1"] {
            assert_eq!(host_of(get().header("host", good)), Ok(good.into()));
        }
        assert_eq!(host_of(get()), Err("no-host"));
        assert_eq!(
            host_of(get().header("host", "a").header("host", "a")),
            Err("duplicate-host")
        );
        for bad in [
            "a b", "user@a", "a/b", "a:8x", "[::1", "[::1]x", "[]", "a\"b", "a:b", "a:1:2",
        ] {
            assert_eq!(
                host_of(get().header("host", bad)),
                Err("invalid-host"),
                "{bad}"
            );
        }
        // Absolute form: the target's authority wins over Host.
        let abs = || Request::get("http://a.example/x");
        assert_eq!(
            host_of(abs().header("host", "b.example")),
            Ok("a.example".into())
        );
        assert_eq!(
            host_of(Request::get("http://u@a.example/")),
            Err("invalid-host")
        );
        // HTTP/2: Host must name :authority.
        let h2 = || abs().version(http::Version::HTTP_2);
        assert_eq!(host_of(h2()), Ok("a.example".into()));
        assert_eq!(
            host_of(h2().header("host", "A.example")),
            Ok("a.example".into())
        );
        assert_eq!(
            host_of(h2().header("host", "b.example")),
            Err("conflicting-host")
        );
    }
}
