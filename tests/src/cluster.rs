//! A simulated cluster behind the API-server fake: it plays the Deployment
//! controller, the kubelet and the EndpointSlice controller for one
//! Deployment, so the autoscaling loop (controller → `/scale` → endpoints →
//! dataplanes → reports → controller) runs for real on loopback.
//!
//! It follows the Deployment's `spec.replicas`, whoever changes it (a
//! `/scale` patch, a test): each new replica is a loopback [`Backend`]
//! named after it that starts after a configurable delay (the backend's
//! start time) and is then published as a ready endpoint, one
//! EndpointSlice per replica since every replica is `127.0.0.1` with its
//! own port. On scale-down the endpoints go first and the backend stops
//! after a drain delay, as a pod with a `preStop` sleep would. The
//! Deployment's status tracks it all, and a [`Timeline`] records when
//! each change was observed, for benchmarks.
//!
//! Why in-process instead of a watch over HTTP: the simulated controllers
//! are not under test, and waking on the fake's own change signal makes
//! the timeline's "replicas changed" the moment the patch was stored.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::apiserver::{Collection, FakeApiServer};
use crate::backend::Backend;

/// The most replicas the cluster runs, whatever `spec.replicas` says.
pub const MAX_REPLICAS: usize = 64;
/// The most entries kept in each list of the [`Timeline`]; older ones go.
const MAX_TIMELINE: usize = 10_000;
/// Attempts to bind a replica's loopback port before giving it up.
const START_ATTEMPTS: usize = 3;

/// What to run: one Deployment and the Service in front of it.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Namespace of the Deployment, the Service and the slices.
    pub namespace: String,
    /// The Deployment's name; replicas are named `{deployment}-{n}`.
    pub deployment: String,
    /// The Service's name, which the slices carry as `kubernetes.io/service-name`.
    pub service: String,
    /// The Service's port name, which the slices' port carries.
    pub port_name: String,
    /// `spec.replicas` the Deployment is created with.
    pub replicas: i32,
    /// How long a new replica takes to start listening and become ready.
    pub start_delay: Duration,
    /// How long a removed replica keeps serving after its endpoint is gone.
    pub drain_delay: Duration,
}

impl Workload {
    /// One replica, starting at once, draining for 200 ms.
    pub fn new(namespace: &str, deployment: &str, service: &str, port_name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            service: service.to_string(),
            port_name: port_name.to_string(),
            replicas: 1,
            start_delay: Duration::ZERO,
            drain_delay: Duration::from_millis(200),
        }
    }

    /// The same, created with `replicas`.
    pub fn replicas(mut self, replicas: i32) -> Self {
        self.replicas = replicas;
        self
    }

    /// The same, with replicas taking `delay` to start.
    pub fn start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// The same, with removed replicas serving on for `delay`.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }
}

/// Where the cluster stands now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// The Deployment's `spec.replicas` as last observed (capped at [`MAX_REPLICAS`]).
    pub desired: i32,
    /// Ready replicas, published as endpoints: name → address.
    pub ready: BTreeMap<String, SocketAddr>,
    /// Replicas still starting.
    pub starting: usize,
    /// Replicas whose endpoint is gone but which still drain.
    pub stopping: usize,
}

impl Replicas {
    /// Exactly `n` replicas ready, and nothing starting or stopping.
    pub fn settled_at(&self, n: usize) -> bool {
        usize::try_from(self.desired) == Ok(n)
            && self.ready.len() == n
            && self.starting == 0
            && self.stopping == 0
    }
}

/// When things happened, as the cluster observed them; each list keeps
/// its newest 10 000 entries.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// Every observed value of `spec.replicas`, the first being the one the
    /// Deployment was created with.
    pub replicas: Vec<(Instant, i32)>,
    /// Every replica published as a ready endpoint.
    pub ready: Vec<(Instant, String)>,
    /// Every replica whose endpoint was removed.
    pub removed: Vec<(Instant, String)>,
}

impl Timeline {
    /// The first change of `spec.replicas` observed after `t`.
    pub fn first_scale_after(&self, t: Instant) -> Option<(Instant, i32)> {
        self.replicas.iter().find(|(at, _)| *at > t).cloned()
    }

    /// The first replica that became ready after `t`.
    pub fn first_ready_after(&self, t: Instant) -> Option<(Instant, String)> {
        self.ready.iter().find(|(at, _)| *at > t).cloned()
    }
}

#[derive(Default)]
struct Recorded {
    replicas: VecDeque<(Instant, i32)>,
    ready: VecDeque<(Instant, String)>,
    removed: VecDeque<(Instant, String)>,
}

fn push<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() == MAX_TIMELINE {
        list.pop_front();
    }
    list.push_back(item);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulated cluster; it stops on [`shutdown`](Self::shutdown) or drop.
pub struct Cluster {
    workload: Workload,
    state: watch::Receiver<Replicas>,
    timeline: Arc<Mutex<Recorded>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("workload", &self.workload)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// The Deployments collection.
pub fn deployments() -> Collection {
    Collection::of("apps/v1", "Deployment")
}

impl Cluster {
    /// Creates (or updates) the Deployment and the Service on `api` and
    /// starts following the Deployment's `spec.replicas`.
    pub async fn start(api: &FakeApiServer, workload: Workload) -> anyhow::Result<Self> {
        let labels = json!({"app": workload.deployment});
        api.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": workload.service, "namespace": workload.namespace},
            "spec": {"selector": labels, "ports": [{"name": workload.port_name, "port": 80, "protocol": "TCP"}]},
        }))?;
        api.apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": workload.deployment, "namespace": workload.namespace},
            "spec": {
                "replicas": workload.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "backend", "image": "sluice-tests/backend"}]},
                },
            },
        }))?;
        let (stop, stopped) = watch::channel(false);
        let (publish, state) = watch::channel(Replicas::default());
        let timeline = Arc::new(Mutex::new(Recorded::default()));
        let sim = Sim {
            api: api.clone(),
            workload: workload.clone(),
            timeline: timeline.clone(),
            publish,
            running: BTreeMap::new(),
            starting: BTreeMap::new(),
            next: 0,
            desired: 0,
            generation: 0,
        };
        let task = tokio::spawn(sim.run(stopped));
        Ok(Self {
            workload,
            state,
            timeline,
            stop,
            task: Some(task),
        })
    }

    /// What it runs.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Where the cluster stands now.
    pub fn replicas(&self) -> Replicas {
        self.state.borrow().clone()
    }

    /// When things happened so far.
    pub fn timeline(&self) -> Timeline {
        let t = lock(&self.timeline);
        Timeline {
            replicas: t.replicas.iter().cloned().collect(),
            ready: t.ready.iter().cloned().collect(),
            removed: t.removed.iter().cloned().collect(),
        }
    }

    /// Waits until `done` holds for the cluster's state, woken by each
    /// change; fails after `timeout` saying what it waited for and what it saw.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Replicas) -> bool,
    ) -> anyhow::Result<Replicas> {
        let mut state = self.state.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = state.borrow_and_update().clone();
            if done(&now) {
                return Ok(now);
            }
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => anyhow::bail!("the simulated cluster stopped; last seen {now:?}"),
                Err(_) => {
                    anyhow::bail!(
                        "timed out after {timeout:?} waiting for {what}; last seen {now:?}"
                    )
                }
            }
        }
    }

    /// Waits until exactly `n` replicas are ready and nothing is starting
    /// or stopping; returns them by name.
    pub async fn wait_settled(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<String, SocketAddr>> {
        let what = format!("{n} settled replicas");
        Ok(self
            .wait_until(&what, timeout, |r| r.settled_at(n))
            .await?
            .ready)
    }

    /// Stops following the Deployment and stops every backend; what the
    /// API server holds is left as it is.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The simulated controllers' state, owned by their one task.
struct Sim {
    api: FakeApiServer,
    workload: Workload,
    timeline: Arc<Mutex<Recorded>>,
    publish: watch::Sender<Replicas>,
    /// Ready replicas by number (newest last), with their backends.
    running: BTreeMap<u64, Backend>,
    /// Replicas still starting, by number.
    starting: BTreeMap<u64, AbortHandle>,
    /// The number the next replica gets.
    next: u64,
    desired: i32,
    /// The Deployment's generation last observed, for `status.observedGeneration`.
    generation: i64,
}

impl Sim {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let deployments = deployments();
        let mut starts: JoinSet<(u64, Option<Backend>)> = JoinSet::new();
        let mut stopping: JoinSet<()> = JoinSet::new();
        let mut seen: Option<i64> = None;
        loop {
            let (ns, name) = (&self.workload.namespace, &self.workload.deployment);
            let changed = self.api.wait_for(
                &deployments,
                ns,
                name,
                |d| Some(spec_replicas(d)) != seen,
                Duration::from_secs(3600),
            );
            tokio::select! {
                _ = stopped.changed() => break,
                d = changed => {
                    let Ok(d) = d else { continue };
                    let replicas = spec_replicas(&d);
                    seen = Some(replicas);
                    self.generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
                    let replicas = i32::try_from(replicas.clamp(0, MAX_REPLICAS as i64)).unwrap_or(0);
                    push(&mut lock(&self.timeline).replicas, (Instant::now(), replicas));
                    self.desired = replicas;
                    self.reconcile(&mut starts, &mut stopping);
                }
                Some(started) = starts.join_next(), if !starts.is_empty() => {
                    match started {
                        Ok((n, Some(backend))) if self.starting.remove(&n).is_some() => {
                            self.ready(n, backend);
                        }
                        // Gave up binding: try again with a new replica.
                        Ok((n, None)) => {
                            self.starting.remove(&n);
                            self.reconcile(&mut starts, &mut stopping);
                        }
                        // Cancelled by a scale-down, or finished just as it was.
                        _ => {}
                    }
                }
                Some(_) = stopping.join_next(), if !stopping.is_empty() => {}
            }
            self.report(stopping.len());
        }
        starts.shutdown().await;
        stopping.shutdown().await;
        self.running.clear();
    }

    /// Starts or removes replicas until running + starting is the desired count.
    fn reconcile(
        &mut self,
        starts: &mut JoinSet<(u64, Option<Backend>)>,
        stopping: &mut JoinSet<()>,
    ) {
        let want = usize::try_from(self.desired).unwrap_or(0);
        while self.running.len() + self.starting.len() < want {
            let n = self.next;
            self.next += 1;
            let name = self.replica_name(n);
            let delay = self.workload.start_delay;
            let handle = starts.spawn(async move {
                tokio::time::sleep(delay).await;
                for _ in 0..START_ATTEMPTS {
                    match Backend::start(&name).await {
                        Ok(b) => return (n, Some(b)),
                        Err(e) => tracing::warn!("simulated replica {name} failed to start: {e}"),
                    }
                }
                (n, None)
            });
            self.starting.insert(n, handle);
        }
        // Like a ReplicaSet: not-ready replicas go first, then the newest.
        while self.running.len() + self.starting.len() > want {
            if let Some((_, handle)) = self.starting.pop_last() {
                handle.abort();
                continue;
            }
            let Some((n, backend)) = self.running.pop_last() else {
                break;
            };
            let name = self.replica_name(n);
            let slices = Collection::of("discovery.k8s.io/v1", "EndpointSlice");
            self.api
                .delete(&slices, &self.workload.namespace, &self.slice_name(&name));
            push(&mut lock(&self.timeline).removed, (Instant::now(), name));
            let drain = self.workload.drain_delay;
            stopping.spawn(async move {
                tokio::time::sleep(drain).await;
                drop(backend);
            });
        }
    }

    /// Publishes a started replica as a ready endpoint.
    fn ready(&mut self, n: u64, backend: Backend) {
        let name = self.replica_name(n);
        let w = &self.workload;
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": self.slice_name(&name), "namespace": w.namespace,
                "labels": {"kubernetes.io/service-name": w.service, "endpointslice.kubernetes.io/managed-by": "sluice-tests"},
            },
            "addressType": "IPv4",
            "ports": [{"name": w.port_name, "port": backend.addr.port(), "protocol": "TCP"}],
            "endpoints": [{
                "addresses": [backend.addr.ip().to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": w.namespace, "name": name},
            }],
        });
        if let Err(e) = self.api.apply(slice) {
            tracing::warn!("simulated cluster: publishing {name}: {e}");
        }
        push(&mut lock(&self.timeline).ready, (Instant::now(), name));
        self.running.insert(n, backend);
    }

    /// Updates the Deployment's status and the cluster's published state.
    fn report(&self, stopping: usize) {
        let ready: BTreeMap<String, SocketAddr> = self
            .running
            .iter()
            .map(|(n, b)| (self.replica_name(*n), b.addr))
            .collect();
        let state = Replicas {
            desired: self.desired,
            ready,
            starting: self.starting.len(),
            stopping,
        };
        let w = &self.workload;
        let (total, ready) = (self.running.len() + self.starting.len(), self.running.len());
        let status = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": w.deployment, "namespace": w.namespace},
            "status": {
                "observedGeneration": self.generation,
                "replicas": total, "updatedReplicas": total,
                "readyReplicas": ready, "availableReplicas": ready,
            },
        });
        if self
            .api
            .get(&deployments(), &w.namespace, &w.deployment)
            .is_some()
            && let Err(e) = self.api.apply(status)
        {
            tracing::warn!("simulated cluster: Deployment status: {e}");
        }
        self.publish.send_if_modified(|old| {
            let changed = *old != state;
            *old = state;
            changed
        });
    }

    fn replica_name(&self, n: u64) -> String {
        format!("{}-{n}", self.workload.deployment)
    }

    fn slice_name(&self, replica: &str) -> String {
        format!("{}-{replica}", self.workload.service)
    }
}

/// `spec.replicas`, which workload controllers default to 1.
fn spec_replicas(d: &Value) -> i64 {
    d["spec"]["replicas"].as_i64().unwrap_or(1)
}
