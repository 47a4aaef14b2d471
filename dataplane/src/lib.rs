//! The Sluice dataplane: an L7 proxy fed by the controller's route stream or
//! by a file. It knows nothing of Kubernetes; `sluice-protocol` is the only
//! thing it shares with the controller.
//!
//! Layout (`docs/architecture.md` has the whole house and which way its
//! imports run): [`proxy`] (the request path: routing, forwarding, retries,
//! upgrades, the access log), [`table`] (pools, their selectors and routing,
//! swapped whole), [`rules`] (matches, filters and weighted backends between
//! host and pool), [`balance`] (endpoint selection), [`endpoint`] (state
//! kept across tables, outlier decisions), [`health`] (verdicts),
//! [`checker`] (the active health checks), [`activation`] (holding requests
//! for a pool scaled to zero), [`policy`] (circuit breaker, rate limits,
//! retries), [`upstream`] (connections to endpoints), [`http1`] (the
//! HTTP/1.1 codec by direction), [`http2`] (HTTP/2 from clients),
//! [`client_body`] (a request's body from either), [`front`] (listeners
//! with limits and graceful drain, TLS by SNI, workers), [`control`] (the
//! controller's stream, reports, the standalone file, `--state-dir`),
//! [`heap`] (memory a burst freed given back), [`hop_by_hop`] (fields of
//! one connection), [`observed`] (a response body watched to its end),
//! [`worker`], [`admin`], [`metrics`], [`state`], [`demo`], [`cli`],
//! [`trace`](mod@trace) (W3C trace context and OTLP spans).

pub mod activation;
pub mod admin;
pub mod balance;
pub mod checker;
pub mod cli;
pub mod client_body;
pub mod control;
pub mod demo;
pub mod endpoint;
pub mod front;
pub mod health;
pub mod heap;
pub mod hop_by_hop;
pub mod http1;
pub mod http2;
pub mod metrics;
pub mod observed;
pub mod own_headers;
pub mod policy;
pub mod proxy;
pub mod rules;
pub mod send_timeout;
pub mod state;
pub mod table;
pub mod trace;
pub mod upstream;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::RouteTable;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::control::stream::ControllerConn;
use crate::control::{file, persist, report, stream};
use crate::front::listener::{ClientConn, Limits};
use crate::front::{listener, tls, workers};
use crate::proxy::{Proxy, access};
use crate::state::State;

/// How long the background tasks (file watcher, stream, reporter, state
/// writer, admin server) get to finish after the proxy drained.
const TASKS_GRACE: Duration = Duration::from_secs(2);

/// Where the routing table comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Cluster mode: follow a controller's route stream and report to it.
    Controller {
        /// Base URL, e.g. `http://sluice-controller:8090`.
        url: String,
        /// Bearer token file, re-read on every connect because projected
        /// ServiceAccount tokens rotate.
        token_file: Option<PathBuf>,
        /// CA bundle that signed the controller's certificate (`https://`).
        ca_file: Option<PathBuf>,
    },
    /// Standalone mode: a YAML `{pools: [PoolRoute]}` file, reloaded when it
    /// changes; it must be valid at start.
    File(PathBuf),
    /// A fixed table, for the demo and for tests.
    Static(RouteTable),
}

/// How the dataplane runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Table source.
    pub source: Source,
    /// Name reported to the controller (the pod name in a cluster).
    pub name: String,
    /// HTTP listener (HTTP/1.1 and h2c).
    pub http: SocketAddr,
    /// HTTPS listener, terminating TLS for the pools that have `tls`;
    /// `None`: no HTTPS listener.
    pub https: Option<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Where every applied table is persisted; in cluster mode the table
    /// found there is served at start, before the controller answers.
    pub state_dir: Option<PathBuf>,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace_period: Duration,
    /// How long, on shutdown, readiness is already failing while new
    /// connections are still served, so that load balancers and
    /// kube-proxy stop sending traffic before the listeners close.
    pub drain_delay: Duration,
    /// Limits on what clients may send.
    pub limits: Limits,
    /// Whether every request is written to the access log.
    pub access_log: bool,
    /// How often the controller gets a report (cluster mode); new demand
    /// for a pool scaled to zero is reported at once regardless.
    pub report_interval: Duration,
    /// Threads serving traffic (at least 1): the calling runtime and
    /// `workers - 1` threads of their own ([`workers`]).
    pub workers: usize,
    /// Trace context propagation and span export; `None`: off, and
    /// `traceparent` passes through like any other header.
    pub tracing: Option<trace::Settings>,
    /// Connections each listener (HTTP, HTTPS, admin) lets the kernel
    /// queue before they are accepted; see [`listener::LISTEN_BACKLOG`].
    pub listen_backlog: u32,
}

/// Why the dataplane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The standalone file is missing or invalid.
    #[error(transparent)]
    File(#[from] file::FileError),
    /// The controller URL is unusable.
    #[error(transparent)]
    Controller(#[from] stream::UrlError),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {0}")]
    Worker(#[source] std::io::Error),
    /// The span exporter could not start.
    #[error(transparent)]
    Tracing(#[from] trace::export::Error),
}

/// The task that keeps the table current, once the listeners are bound.
enum Background {
    File { path: PathBuf, text: String },
    Controller(ControllerConn),
}

/// A running dataplane. Dropping it without [`Dataplane::shutdown`] stops
/// it too, without waiting for the drain.
#[derive(Debug)]
pub struct Dataplane {
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    state: Arc<State>,
    drain_delay: Duration,
    stop: watch::Sender<bool>,
    proxy_tasks: Vec<tokio::task::JoinHandle<()>>,
    tasks: JoinSet<()>,
    /// The span exporter's end, awaited on shutdown so that the last spans
    /// go out.
    spans_exported: Option<trace::export::Finished>,
}

fn bind(addr: SocketAddr, backlog: u32) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = listener::bind(addr, backlog).map_err(|error| Error::Bind { addr, error })?;
    let local = listener
        .local_addr()
        .map_err(|error| Error::Bind { addr, error })?;
    Ok((listener, local))
}

impl Dataplane {
    /// Binds the listeners (port 0 allowed) and starts serving in the
    /// current tokio runtime. A missing or invalid file, an unusable
    /// controller URL or a port in use fails here, before anything runs.
    pub async fn start(opts: Options) -> Result<Dataplane, Error> {
        let worker_count = opts.workers.max(1);
        worker::reserve(worker_count);
        let state = State::new();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let source = match opts.source {
            Source::Static(routes) => {
                state.install(routes);
                None
            }
            Source::File(path) => {
                let (routes, text) = file::load(&path, 1)?;
                state.install(routes);
                Some(Background::File { path, text })
            }
            Source::Controller {
                url,
                token_file,
                ca_file,
            } => {
                let conn =
                    ControllerConn::new(&url, token_file, ca_file.as_deref(), opts.name.clone())?;
                if let Some(routes) = opts.state_dir.as_deref().and_then(persist::load) {
                    tracing::info!(
                        version = routes.version,
                        "serving the persisted table until the controller answers"
                    );
                    state.install(routes);
                }
                Some(Background::Controller(conn))
            }
        };
        let backlog = opts.listen_backlog;
        let (http, http_addr) = bind(opts.http, backlog)?;
        let https = match opts.https {
            Some(addr) => Some(bind(addr, backlog)?),
            None => None,
        };
        let https_addr = https.as_ref().map(|(_, addr)| *addr);
        let (admin, admin_addr) = bind(opts.admin, backlog)?;
        let (tracer, spans_exported) = match &opts.tracing {
            Some(settings) => {
                let (queue, finished) = match &settings.otlp_endpoint {
                    Some(url) => {
                        let (queue, finished) = trace::export::start(url, &opts.name)?;
                        (Some(queue), Some(finished))
                    }
                    None => (None, None),
                };
                let tracer = trace::Tracer::new(settings.sample_ratio, queue);
                (Some(Arc::new(tracer)), finished)
            }
            None => (None, None),
        };

        match source {
            None => {}
            Some(Background::File { path, text }) => {
                tasks.spawn(file::watch(path, Arc::clone(&state), text, stop_rx.clone()));
            }
            Some(Background::Controller(conn)) => {
                let stream = stream::follow(conn.clone(), Arc::clone(&state), stop_rx.clone());
                tasks.spawn(stream);
                let reports = report::run(
                    conn,
                    Arc::clone(&state),
                    opts.report_interval,
                    stop_rx.clone(),
                );
                tasks.spawn(reports);
            }
        }
        if let Some(dir) = opts.state_dir {
            tasks.spawn(persist::run(dir, Arc::clone(&state), stop_rx.clone()));
        }
        tasks.spawn(checker::run(Arc::clone(&state), stop_rx.clone()));
        tasks.spawn(state::reap_idle(Arc::clone(&state), stop_rx.clone()));
        tasks.spawn(heap::run(stop_rx.clone()));
        let proxy = Arc::new(Proxy::new(Arc::clone(&state)));
        // The access log's table handle; nothing extra per request when off.
        let log_state = opts.access_log.then(|| Arc::clone(&state));
        // Likewise the tracer's: when off, `None`s all the way down.
        let trace_state = tracer.map(|tracer| (tracer, Arc::clone(&state)));
        let handler = move |req: hyper::Request<client_body::ClientBody>, conn: &ClientConn| {
            let (proxy, conn) = (Arc::clone(&proxy), conn.clone());
            let mut log = (log_state.as_ref())
                .map(|state| (Arc::clone(state), access::Entry::start(&req, conn.peer)));
            let trace = (trace_state.as_ref()).map(|(tracer, state)| {
                let begun = tracer.begin(&req, conn.peer);
                if let Some((_, entry)) = &mut log {
                    entry.set_trace_id(begun.outgoing.trace_id);
                }
                (begun, Arc::clone(state))
            });
            let req = Box::new(req);
            async move {
                let outgoing = trace.as_ref().map(|(begun, _)| begun.outgoing);
                // Not boxed here: the front end builds it in its box
                // (`http1::server::serve`), hyper's path boxes it (see
                // `listener`); the allocator keeps the block for the next
                // request (`heap::Recycling`).
                let resp = proxy
                    .handle(req, conn.peer, conn.site.as_deref(), outgoing)
                    .await;
                let entry = log.map(|(state, mut entry)| {
                    let (status, endpoint) = (resp.status().as_u16(), resp.body().endpoint());
                    entry.respond(status, endpoint, &state.table.load());
                    entry
                });
                let span = trace.and_then(|(begun, state)| {
                    let mut span = begun.span?;
                    span.set_https(conn.site.is_some());
                    span.respond(&resp, resp.body().endpoint(), &state.table.load());
                    Some(span)
                });
                // Boxed: the front end hands it on through a few layers
                // before taking it apart, a pointer rather than its bytes
                // (measured: 320 instructions a request).
                Box::new(trace::Traced::wrap(access::Logged::wrap(resp, entry), span))
            }
        };
        let sites = https.as_ref().map(|_| {
            let sites = Arc::new(tls::Sites::default());
            sites.update(&state.routes());
            tasks.spawn(follow_certificates(
                Arc::clone(&sites),
                Arc::clone(&state),
                stop_rx.clone(),
            ));
            sites
        });
        let mut proxy_tasks = Vec::with_capacity(worker_count + 1);
        if worker_count > 1 {
            let mut serving = vec![workers::Serving {
                listener: &http,
                tls: None,
                limits: opts.limits,
                handler: handler.clone(),
            }];
            if let (Some((https, _)), Some(sites)) = (&https, &sites) {
                serving.push(workers::Serving {
                    listener: https,
                    tls: Some(Arc::clone(sites)),
                    limits: opts.limits,
                    handler: handler.clone(),
                });
            }
            for index in 1..worker_count {
                let worker = workers::spawn(index, &serving, stop_rx.clone(), opts.grace_period);
                proxy_tasks.push(worker.map_err(Error::Worker)?);
            }
        }
        proxy_tasks.push(tokio::spawn(listener::serve(
            http,
            None,
            opts.limits,
            handler.clone(),
            stop_rx.clone(),
            opts.grace_period,
        )));
        if let Some((https, _)) = https {
            proxy_tasks.push(tokio::spawn(listener::serve(
                https,
                sites,
                opts.limits,
                handler,
                stop_rx.clone(),
                opts.grace_period,
            )));
        }
        let admin_state = Arc::clone(&state);
        tasks.spawn(listener::serve(
            admin,
            None,
            Limits::default(),
            move |req, _: &ClientConn| {
                let answer = admin::handle(Arc::clone(&admin_state), req);
                async move { Box::new(answer.await) }
            },
            stop_rx,
            Duration::from_millis(100),
        ));
        state.set_listening();
        let https = https_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        tracing::info!(%http_addr, https_addr = %https, %admin_addr, version = state.version(), "dataplane started");
        Ok(Dataplane {
            http_addr,
            https_addr,
            admin_addr,
            state,
            drain_delay: opts.drain_delay,
            stop,
            proxy_tasks,
            tasks,
            spans_exported,
        })
    }

    /// Address of the HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the HTTPS listener, if there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Version of the table being served (0 before any).
    pub fn route_version(&self) -> u64 {
        self.state.version()
    }

    /// Graceful stop: readiness fails at once; for the drain delay new
    /// connections are still served; then the listeners stop accepting,
    /// in-flight requests finish within the grace period (idle keep-alive
    /// connections close at once; requests held for activation are
    /// answered 503 at once), then the background tasks end (the state
    /// writer persisting the last table first).
    pub async fn shutdown(mut self) {
        self.state.start_draining();
        if !self.drain_delay.is_zero() {
            tracing::info!(delay = ?self.drain_delay, "not ready; still serving new connections for the drain delay");
            tokio::time::sleep(self.drain_delay).await;
        }
        self.stop.send_replace(true);
        // No table arrives after the stop: held requests get their 503 now
        // rather than at the end of the grace period.
        self.state.activation.shut_down();
        for task in &mut self.proxy_tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "proxy task failed");
            }
        }
        let joined = tokio::time::timeout(TASKS_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!("background tasks did not stop in time; aborting them");
        }
        self.tasks.shutdown().await;
        // Every request has ended, and with it every handle on the span
        // queue: the exporter sends what is left, then stops.
        if let Some(exported) = self.spans_exported.take()
            && tokio::time::timeout(TASKS_GRACE, exported.flush())
                .await
                .is_err()
        {
            tracing::warn!("the span exporter did not finish in time; its last spans may be lost");
        }
    }
}

/// Rebuilds the HTTPS listener's certificates whenever a table is
/// installed, and re-reads certificate files every [`tls::FILE_POLL`].
async fn follow_certificates(
    sites: Arc<tls::Sites>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied = state.subscribe();
    sites.update(&state.routes());
    let mut poll = tokio::time::interval(tls::FILE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = listener::stopped(&mut stop) => return,
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                sites.update(&state.routes());
            }
            _ = poll.tick() => {
                if sites.has_files() {
                    sites.update(&state.routes());
                }
            }
        }
    }
}
