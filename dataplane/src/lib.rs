//! The Sluice dataplane: an L7 proxy fed by the controller's route stream or
//! by a file. It knows nothing of Kubernetes; `sluice-protocol` is the only
//! thing it shares with the controller.
//!
//! Layout: [`table`] (host + prefix routing, swapped whole), [`balance`]
//! (endpoint selection), [`proxy`] (the request path), [`listener`]
//! (serving with graceful drain), [`stream`] and [`report`] (cluster mode),
//! [`file`] (standalone mode), [`admin`], [`metrics`], [`state`], [`demo`].

pub mod admin;
pub mod balance;
pub mod demo;
pub mod file;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod state;
pub mod stream;
pub mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::RouteTable;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::proxy::Proxy;
use crate::state::State;
use crate::stream::ControllerConn;

/// Where the routing table comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Follow a controller's stream.
    Controller {
        /// Base URL, e.g. `http://sluice-controller:8090`.
        url: String,
        /// Bearer token file.
        token_file: Option<PathBuf>,
    },
    /// A YAML file, reloaded on change.
    File(PathBuf),
    /// A fixed table (the demo, tests).
    Static(RouteTable),
}

/// How the dataplane runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Table source.
    pub source: Source,
    /// Name reported to the controller.
    pub name: String,
    /// HTTP listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Where the last applied table is persisted.
    pub state_dir: Option<PathBuf>,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace_period: Duration,
}

/// Why the dataplane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration (file or controller URL) is unusable.
    #[error("{0}")]
    Config(String),
}

/// A running dataplane.
#[derive(Debug)]
pub struct Dataplane {
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    proxy_task: tokio::task::JoinHandle<()>,
    tasks: JoinSet<()>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    Ok((listener, local))
}

impl Dataplane {
    /// Binds the listeners (port 0 allowed) and starts serving in the
    /// current tokio runtime.
    pub async fn start(opts: Options) -> Result<Dataplane, Error> {
        let state = State::new(opts.state_dir.clone());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        match opts.source {
            Source::Static(routes) => state.install(routes),
            Source::File(path) => {
                let (routes, text) = file::load(&path, 1).map_err(Error::Config)?;
                state.install(routes);
                tasks.spawn(file::watch(path, Arc::clone(&state), text, stop_rx.clone()));
            }
            Source::Controller { url, token_file } => {
                let conn = ControllerConn::new(&url, token_file, opts.name.clone())
                    .map_err(Error::Config)?;
                state.restore();
                tasks.spawn(stream::follow(
                    conn.clone(),
                    Arc::clone(&state),
                    stop_rx.clone(),
                ));
                tasks.spawn(report::run(
                    conn,
                    Arc::clone(&state),
                    Duration::from_secs(1),
                    stop_rx.clone(),
                ));
            }
        }

        let (http, http_addr) = bind(opts.http).await?;
        let (admin, admin_addr) = bind(opts.admin).await?;
        let proxy = Proxy::new(Arc::clone(&state));
        let proxy_task = tokio::spawn(listener::serve(
            http,
            move |req, peer| {
                let proxy = proxy.clone();
                async move { proxy.handle(req, peer).await }
            },
            stop_rx.clone(),
            opts.grace_period,
        ));
        let admin_state = Arc::clone(&state);
        tasks.spawn(listener::serve(
            admin,
            move |req, _| admin::handle(Arc::clone(&admin_state), req),
            stop_rx,
            Duration::from_millis(100),
        ));
        state.set_listening();
        tracing::info!(%http_addr, %admin_addr, "dataplane started");
        Ok(Dataplane {
            http_addr,
            admin_addr,
            state,
            stop,
            proxy_task,
            tasks,
        })
    }

    /// Address of the HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Version of the table being served (0 before any).
    pub fn route_version(&self) -> u64 {
        self.state.version()
    }

    /// Graceful stop: readiness fails, listeners close, in-flight requests
    /// finish within the grace period, then every task ends.
    pub async fn shutdown(mut self) {
        self.state.start_draining();
        self.stop.send_replace(true);
        let _ = (&mut self.proxy_task).await;
        self.tasks.shutdown().await;
    }
}
