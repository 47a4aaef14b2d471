//! The Sluice controller: watches BackendPools, Gateway API objects,
//! Services and EndpointSlices, computes the routes, streams the table to
//! dataplanes over SSE, and writes what it did into status.
//!
//! Layout: [`route`] (pure route computation), [`index`] (watch events →
//! routes, incremental), [`store`] (versioned table, deltas), [`stream`]
//! (SSE + reports), [`dataplanes`] (acks), [`status`] (status + Events),
//! [`recorder`] (Events, one per distinct message), [`gateway`] (Gateway
//! API objects → routes and their status, optional),
//! [`autoscale`] (pure scaling decisions),
//! [`leader`] (Lease election), [`admin`], [`metrics`]. [`Controller::start`]
//! wires them.
//!
//! With leader election every replica watches and indexes (warm caches make
//! a takeover fast), but only the leader serves streams and reports, writes
//! status and reports ready, so the Service sends dataplanes to it alone.

pub mod admin;
pub mod api_errors;
pub mod auth;
pub mod autoscale;
pub mod cli;
pub mod conditions;
pub mod dataplanes;
pub mod gateway;
pub mod gateway_status;
pub mod gateway_watch;
pub mod index;
pub mod key;
pub mod kind_watch;
pub mod leader;
pub mod metrics;
pub mod pool_versions;
pub mod recorder;
pub mod route;
pub mod scaler;
pub mod server;
pub mod status;
pub mod store;
pub mod stream;
pub mod tls;
pub mod traffic;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use sluice_crds::{BackendPool, ScalingTrigger};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

pub use auth::Auth;
pub use leader::LeaseConfig;
pub use tls::TlsFiles;

use crate::admin::Synced;
use crate::dataplanes::Dataplanes;
use crate::index::{Change, Index};
use crate::kind_watch::watch_kind;
use crate::metrics::{KindLabel, Metrics};
use crate::recorder::Recorder;
use crate::scaler::Scaler;
use crate::status::StatusWriter;
use crate::store::RouteStore;
use crate::stream::StreamContext;
use crate::traffic::Traffic;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stream and reports listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Dataplane authentication.
    pub auth: Auth,
    /// How long an accepted dataplane token is trusted before the API
    /// server (or the token file) is asked again; open streams re-check at
    /// this interval, so it bounds how long a revoked token keeps access.
    /// Must not be zero.
    pub token_recheck: Duration,
    /// Interval of SSE keepalive comments.
    pub keepalive: Duration,
    /// How long changes are gathered into one published version.
    pub coalesce: Duration,
    /// How often status is re-examined without a change (dataplane acks).
    pub status_interval: Duration,
    /// How long a dataplane may take to acknowledge a route change before
    /// the pool stops counting as `Programmed` (see [`status`]); at most
    /// [`pool_versions::KEEP`].
    pub ack_deadline: Duration,
    /// This instance's name, for Events.
    pub instance: String,
    /// Serve the stream over TLS with this pair (reloaded on change).
    pub tls: Option<TlsFiles>,
    /// Leader election; `None` (one replica, tests) always leads.
    pub lease: Option<LeaseConfig>,
    /// How long a new leader waits before its first status write, so that
    /// the dataplanes that followed its predecessor have reconnected and
    /// reported (their reconnect backoff is at most 5 s) and status does not
    /// flap to `NoDataplanes` at every failover.
    pub takeover_settle: Duration,
    /// Time between two autoscaler passes (held requests also wake it).
    pub scale_interval: Duration,
    /// Gateway API: the fleet's ports and Service.
    pub gateway: gateway::Config,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8090)),
            admin: SocketAddr::from(([0, 0, 0, 0], 9902)),
            auth: Auth::None,
            token_recheck: auth::DEFAULT_RECHECK,
            keepalive: Duration::from_secs(10),
            coalesce: Duration::from_millis(5),
            status_interval: Duration::from_secs(1),
            ack_deadline: status::DEFAULT_ACK_DEADLINE,
            instance: "sluice-controller".into(),
            tls: None,
            lease: None,
            takeover_settle: Duration::from_secs(5),
            scale_interval: Duration::from_secs(1),
            gateway: gateway::Config::default(),
        }
    }
}

/// Why the controller could not start.
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
    /// `--auth none` on a non-loopback address.
    #[error(
        "--auth none is only allowed on a loopback --listen address (got {0}); use --auth static:<file> or tokenreview:<namespace>/<serviceaccount>"
    )]
    UnauthenticatedNonLoopback(SocketAddr),
    /// The leader-election settings do not hold together.
    #[error("leader election: {0}")]
    Lease(String),
    /// The ack deadline is zero or longer than publication times are kept.
    #[error("--ack-deadline must be between 1ms and {}s", pool_versions::KEEP.as_secs())]
    AckDeadline,
    /// A zero token recheck interval would review tokens without pause.
    #[error("--token-recheck must be longer than zero")]
    ZeroTokenRecheck,
    /// The stream's certificate did not load.
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Microseconds since the epoch, where route versions start.
fn clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    stream_addr: SocketAddr,
    admin_addr: SocketAddr,
    store: Arc<RouteStore>,
    leader: watch::Receiver<bool>,
    /// Kept so that leadership receivers never see a closed channel (which
    /// the stream takes as the end of leadership).
    _leader_tx: Arc<watch::Sender<bool>>,
    stop: watch::Sender<bool>,
    /// The elector, apart from `tasks` so that shutdown can wait for it to
    /// release the lease before everything else is aborted.
    elector: Option<tokio::task::JoinHandle<()>>,
    tasks: JoinSet<()>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Controller {
    /// Binds the listeners, starts the watchers, the stream and the status
    /// writer in the current runtime.
    pub async fn start(client: Client, opts: Options) -> Result<Self, Error> {
        if opts.auth == Auth::None && !opts.listen.ip().is_loopback() {
            return Err(Error::UnauthenticatedNonLoopback(opts.listen));
        }
        if opts.ack_deadline.is_zero() || opts.ack_deadline > pool_versions::KEEP {
            return Err(Error::AckDeadline);
        }
        if opts.token_recheck.is_zero() {
            return Err(Error::ZeroTokenRecheck);
        }
        if let Some(lease) = &opts.lease {
            lease.validate().map_err(Error::Lease)?;
        }
        let stream_listener = bind(opts.listen).await?;
        let admin_listener = bind(opts.admin).await?;
        let stream_addr = stream_listener.local_addr().map_err(|source| Error::Bind {
            addr: opts.listen,
            source,
        })?;
        let admin_addr = admin_listener.local_addr().map_err(|source| Error::Bind {
            addr: opts.admin,
            source,
        })?;

        // Versions start from the clock so a restarted controller never hands
        // out a version its predecessor used (resumes from those get snapshots).
        let first = clock_micros();
        let store = Arc::new(RouteStore::new(first));
        let dataplanes = Arc::new(Dataplanes::default());
        let index = Arc::new(Mutex::new(Index::with_gateway_config(opts.gateway.clone())));
        let metrics = Arc::new(Metrics::new());
        let synced = Arc::new(Synced::default());
        let wake = Arc::new(Notify::new());
        let gateway_wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        // Without election this replica always leads. The sender lives as
        // long as the controller, so receivers never see it closed.
        let (leader_tx, leader) = watch::channel(opts.lease.is_none());
        let leader_tx = Arc::new(leader_tx);
        let elector = opts.lease.clone().map(|config| {
            let store = Arc::clone(&store);
            tokio::spawn(leader::run(
                Api::namespaced(client.clone(), &config.namespace),
                config,
                Arc::clone(&leader_tx),
                move || store.lead(clock_micros()),
                stop_rx.clone(),
            ))
        });

        let (tx, rx) = mpsc::channel::<(&'static str, Change)>(1024);
        tasks.spawn(watch_kind::<BackendPool>(
            Api::all(client.clone()),
            "BackendPool",
            watcher::Config::default(),
            tx.clone(),
            |p| Change::Pool(Box::new(p)),
            Change::PoolDeleted,
            Change::AllPools,
            Arc::clone(&synced),
            |s| &s.pools,
        ));
        tasks.spawn(watch_kind::<Service>(
            Api::all(client.clone()),
            "Service",
            watcher::Config::default(),
            tx.clone(),
            |s| Change::Service(Box::new(s)),
            Change::ServiceDeleted,
            Change::AllServices,
            Arc::clone(&synced),
            |s| &s.services,
        ));
        // Only TLS Secrets: the filter runs in the API server, so the
        // controller neither receives nor keeps any other Secret.
        tasks.spawn(watch_kind::<Secret>(
            Api::all(client.clone()),
            "Secret",
            watcher::Config::default().fields("type=kubernetes.io/tls"),
            tx.clone(),
            |s| Change::Secret(Box::new(s)),
            Change::SecretDeleted,
            Change::AllSecrets,
            Arc::clone(&synced),
            |s| &s.secrets,
        ));
        tasks.spawn(watch_kind::<ScalingTrigger>(
            Api::all(client.clone()),
            "ScalingTrigger",
            watcher::Config::default(),
            tx.clone(),
            |t| Change::Trigger(Box::new(t)),
            Change::TriggerDeleted,
            Change::AllTriggers,
            Arc::clone(&synced),
            |s| &s.triggers,
        ));
        tasks.spawn(gateway_watch::run(
            client.clone(),
            tx.clone(),
            Arc::clone(&synced),
        ));
        tasks.spawn(watch_kind::<EndpointSlice>(
            Api::all(client.clone()),
            "EndpointSlice",
            watcher::Config::default(),
            tx,
            |s| Change::Slice(Box::new(s)),
            Change::SliceDeleted,
            Change::AllSlices,
            Arc::clone(&synced),
            |s| &s.slices,
        ));
        tasks.spawn(run_index(
            rx,
            Arc::clone(&index),
            Arc::clone(&store),
            Arc::clone(&metrics),
            [Arc::clone(&wake), Arc::clone(&gateway_wake)],
            opts.coalesce,
        ));

        let traffic = Arc::new(Traffic::default());
        let demand = Arc::new(Notify::new());
        let recorder = Recorder::new(client.clone(), "sluice-controller", &opts.instance);
        let scaler = Scaler {
            client: client.clone(),
            index: Arc::clone(&index),
            traffic: Arc::clone(&traffic),
            recorder: recorder.clone(),
            metrics: Arc::clone(&metrics),
            leader: leader.clone(),
            demand: Arc::clone(&demand),
            interval: opts.scale_interval,
        };
        tasks.spawn(scaler.run(stop_rx.clone()));

        tasks.spawn(
            gateway_status::GatewayStatusWriter {
                client: client.clone(),
                index: Arc::clone(&index),
                dataplanes: Arc::clone(&dataplanes),
                recorder: recorder.clone(),
                wake: gateway_wake,
                interval: opts.status_interval,
                leader: leader.clone(),
            }
            .run(stop_rx.clone()),
        );
        let writer = StatusWriter {
            client: client.clone(),
            index,
            dataplanes: Arc::clone(&dataplanes),
            recorder,
            wake,
            interval: opts.status_interval,
            ack_deadline: opts.ack_deadline,
            leader: leader.clone(),
            takeover_settle: opts.takeover_settle,
        };
        tasks.spawn(writer.run(stop_rx.clone()));

        let ctx = Arc::new(StreamContext {
            store: Arc::clone(&store),
            dataplanes: Arc::clone(&dataplanes),
            auth: Arc::new(auth::Authenticator::new(
                opts.auth.clone(),
                client.clone(),
                opts.token_recheck,
            )),
            keepalive: opts.keepalive,
            leader: leader.clone(),
            synced: Arc::clone(&synced),
            traffic,
            demand,
        });
        let acceptor = match &opts.tls {
            None => None,
            Some(files) => {
                let (config, resolver) = tls::server_config(files)?;
                tasks.spawn(tls::watch_files(
                    files.clone(),
                    resolver,
                    tls::RELOAD_INTERVAL,
                    stop_rx.clone(),
                ));
                Some(tokio_rustls::TlsAcceptor::from(config))
            }
        };
        tasks.spawn(server::serve(
            stream_listener,
            acceptor,
            move |req, peer| stream::handle(Arc::clone(&ctx), req, peer),
            stop_rx.clone(),
        ));

        let admin_metrics = Arc::clone(&metrics);
        let admin_synced = Arc::clone(&synced);
        let admin_leader = leader.clone();
        tasks.spawn(server::serve(
            admin_listener,
            None,
            move |req, _| {
                admin::handle(
                    req,
                    Arc::clone(&admin_synced),
                    admin_leader.clone(),
                    Arc::clone(&admin_metrics),
                )
            },
            stop_rx,
        ));

        let leader_gauge = metrics.leader.clone();
        let mut leading = leader.clone();
        tasks.spawn(async move {
            loop {
                leader_gauge.set(i64::from(*leading.borrow_and_update()));
                if leading.changed().await.is_err() {
                    return;
                }
            }
        });

        let gauge_store = Arc::clone(&store);
        tasks.spawn(async move {
            loop {
                metrics
                    .route_version
                    .set(i64::try_from(gauge_store.version()).unwrap_or(i64::MAX));
                metrics
                    .dataplanes_connected
                    .set(dataplanes.present().len() as i64);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });

        tracing::info!(%stream_addr, %admin_addr, "controller started");
        Ok(Self {
            stream_addr,
            admin_addr,
            store,
            leader,
            _leader_tx: leader_tx,
            stop,
            elector,
            tasks,
        })
    }

    /// Address of the stream listener.
    pub fn stream_addr(&self) -> SocketAddr {
        self.stream_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Current route-table version.
    pub fn route_version(&self) -> u64 {
        self.store.version()
    }

    /// Whether this replica leads (always, without election).
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Stops serving, releases the lease when it holds it (so a follower
    /// takes over at its next attempt, not after the lease expires) and
    /// ends all tasks. Aborting a server task drops its connection set,
    /// which closes every open route stream, so dataplanes notice at once
    /// and reconnect (to this controller's successor).
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(elector) = self.elector.take() {
            // Bounded inside by the renew deadline.
            let _ = elector.await;
        }
        self.tasks.shutdown().await;
    }

    /// Stops at once without releasing the lease, as a killed or partitioned
    /// replica would: followers take over only when the lease expires.
    pub async fn kill(mut self) {
        if let Some(elector) = self.elector.take() {
            elector.abort();
            let _ = elector.await;
        }
        self.tasks.shutdown().await;
    }
}

/// Applies changes to the index in coalesced batches and publishes routes.
async fn run_index(
    mut rx: mpsc::Receiver<(&'static str, Change)>,
    index: Arc<Mutex<Index>>,
    store: Arc<RouteStore>,
    metrics: Arc<Metrics>,
    wake: [Arc<Notify>; 2],
    coalesce: Duration,
) {
    while let Some((kind, change)) = rx.recv().await {
        let started = Instant::now();
        let mut kinds = vec![kind];
        let apply = |change| {
            index
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply(change)
        };
        apply(change);
        let deadline = tokio::time::sleep(coalesce);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some((kind, change)) => {
                        if !kinds.contains(&kind) {
                            kinds.push(kind);
                        }
                        apply(change);
                    }
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        {
            let mut ix = index.lock().unwrap_or_else(|p| p.into_inner());
            let batch = ix.recompute();
            let version = store.publish_with_routes(
                batch.upserts,
                batch.removes,
                batch.route_upserts,
                batch.route_removes,
            );
            ix.set_route_versions(
                &batch.touched,
                |name| store.pool_version(name),
                Instant::now(),
            );
            tracing::debug!(version, touched = batch.touched.len(), "routes published");
        }
        let elapsed = started.elapsed().as_secs_f64();
        for kind in kinds {
            metrics
                .reconcile_duration
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .observe(elapsed);
        }
        wake.iter().for_each(|w| w.notify_one());
    }
}
