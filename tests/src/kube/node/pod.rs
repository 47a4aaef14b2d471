//! One pod on the node stand-in, from start to deletion, as the kubelet
//! runs it: network namespace, volumes, containers (restarted when they
//! exit or fail liveness), readiness, status; on deletion: preStop, SIGTERM,
//! SIGKILL after the grace period, final status, delete with grace 0.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Shared;
use super::container;
use super::network::Netns;
use super::probe::ProbeState;
use super::status::pod_status;
use super::volumes::{self, Mount};
use crate::kube::process::Proc;

/// The value of a downward-API field path for `pod`.
pub fn field_value(pod: &Pod, path: &str) -> anyhow::Result<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let label = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    let v = match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        _ => label(&m.labels, "metadata.labels['")
            .or_else(|| label(&m.annotations, "metadata.annotations['")),
    };
    v.with_context(|| format!("field path {path:?} is not supported by the node stand-in"))
}

/// Now, as the API's timestamps (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A container and its process.
pub struct Running {
    pub(super) spec: Container,
    env: BTreeMap<String, String>,
    prog: PathBuf,
    argv: Vec<String>,
    pub(super) proc: Option<Proc>,
    pub(super) restarts: i32,
    pub(super) started_at: Option<String>,
    started: Instant,
    next_start: Instant,
    pub(super) ready: bool,
    live: bool,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    pub(super) exit: Option<i32>,
}

/// A pod's resources on the node; removed on drop.
struct Sandbox {
    shared: Arc<Shared>,
    netns: Option<Netns>,
    dir: PathBuf,
    uid: String,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shared.hosts.unregister(&self.uid);
        if let Some(ns) = self.netns.take() {
            self.shared.net.remove_netns(ns);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the pod whose latest object `rx` carries (`None`: gone from the
/// API) until it is deleted or the node stops.
pub async fn run(shared: Arc<Shared>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return;
    };
    let name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    if let Err(e) = lifecycle(&shared, pod, &mut rx).await {
        eprintln!("node stand-in: pod {name}: {e:#}");
    }
}

async fn lifecycle(
    shared: &Arc<Shared>,
    mut pod: Pod,
    rx: &mut watch::Receiver<Option<Pod>>,
) -> anyhow::Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let spec = pod.spec.clone().context("pod without spec")?;
    if let Err(e) = supported(&pod) {
        let status = json!({"status": {"phase": "Failed", "reason": "Unsupported", "message": e.to_string()}});
        let _ = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
        return Err(e);
    }
    let netns = shared.net.add_netns()?;
    let ip = netns.addr;
    let mut sandbox = Sandbox {
        shared: Arc::clone(shared),
        netns: None,
        dir: shared.root.join(&uid),
        uid: uid.clone(),
    };
    let netns_name = netns.name.clone();
    sandbox.netns = Some(netns);
    std::fs::create_dir_all(&sandbox.dir)?;
    pod.status.get_or_insert_with(Default::default).pod_ip = Some(ip.to_string());
    pod.status.get_or_insert_with(Default::default).host_ip =
        Some(shared.net.gateway().to_string());
    let start_time = now();

    // Volumes: retried while a Secret or ConfigMap is missing (the kubelet's
    // ContainerCreating), until the pod goes away.
    let vol_dirs = loop {
        match volumes::materialize(&shared.client, &pod, &sandbox.dir.join("volumes")).await {
            Ok(v) => break v,
            Err(e) => {
                let status = json!({"status": {"phase": "Pending", "hostIP": shared.net.gateway().to_string(),
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": spec.containers.iter().map(|c| json!({"name": c.name, "image": c.image, "imageID": "",
                        "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating", "message": format!("{e:#}")}}})).collect::<Vec<_>>()}});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
                if wait_change(rx, shared, Duration::from_secs(1))
                    .await
                    .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                {
                    return Ok(());
                }
            }
        }
    };
    let hosts = sandbox.dir.join("hosts");
    shared.hosts.register(&uid, &hosts, &ns, &name, ip)?;
    let sec = spec.security_context.clone().unwrap_or_default();
    let mut containers = Vec::new();
    for c in &spec.containers {
        let env = container::environment(&shared.client, &pod, c, shared.api).await?;
        let (prog, argv) = container::argv(&shared.programs, c, &env)?;
        containers.push(Running {
            spec: c.clone(),
            env,
            prog,
            argv,
            proc: None,
            restarts: 0,
            started_at: None,
            started: Instant::now(),
            next_start: Instant::now(),
            ready: false,
            live: true,
            readiness: None,
            liveness: None,
            exit: None,
        });
    }
    let mounts_of = |c: &Container| -> anyhow::Result<Vec<Mount>> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let dir = vol_dirs
                    .get(&m.name)
                    .with_context(|| format!("no volume {:?}", m.name))?;
                let source = match &m.sub_path {
                    Some(sub) if !sub.is_empty() => dir.join(sub),
                    _ => dir.clone(),
                };
                Ok(Mount {
                    source,
                    target: m.mount_path.clone(),
                    read_only: m.read_only == Some(true),
                })
            })
            .collect()
    };
    let user_of = |c: &Container| -> Option<(u32, u32, Option<u32>)> {
        let csec = c.security_context.clone().unwrap_or_default();
        let uid = csec.run_as_user.or(sec.run_as_user)?;
        let gid = csec.run_as_group.or(sec.run_as_group).unwrap_or(uid);
        Some((uid as u32, gid as u32, sec.fs_group.map(|g| g as u32)))
    };
    let start = |r: &mut Running| -> anyhow::Result<()> {
        let mut cmd = container::command(
            &netns_name,
            &mounts_of(&r.spec)?,
            &hosts,
            user_of(&r.spec),
            &r.env,
            &r.prog,
            &r.argv,
        )?;
        let log = sandbox.dir.join(format!("{}.log", r.spec.name));
        r.proc = Some(Proc::spawn(&r.spec.name, &mut cmd, &log)?);
        r.started = Instant::now();
        r.started_at = Some(now());
        r.ready = false;
        r.live = true;
        r.exit = None;
        r.readiness = ProbeState::new(&r.spec.readiness_probe, r.started);
        r.liveness = ProbeState::new(&r.spec.liveness_probe, r.started);
        Ok(())
    };
    let restart_always = spec.restart_policy.as_deref().unwrap_or("Always") == "Always";
    let mut last_status = Value::Null;
    let mut ready_since = now();
    let mut was_ready = false;
    let mut terminating: Option<Terminating> = None;

    loop {
        // What the API says.
        let latest = rx.borrow_and_update().clone();
        let Some(latest) = latest else {
            return Ok(()); // gone (forced deletion): the sandbox's drop kills all
        };
        if *shared.stopping.borrow() {
            return Ok(());
        }
        if latest.metadata.deletion_timestamp.is_some() && terminating.is_none() {
            let grace = latest
                .metadata
                .deletion_grace_period_seconds
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64;
            let deadline = Instant::now() + Duration::from_secs(grace);
            let handlers: Vec<_> = containers
                .iter()
                .filter(|r| r.proc.is_some())
                .filter_map(|r| {
                    r.spec
                        .lifecycle
                        .as_ref()?
                        .pre_stop
                        .clone()
                        .map(|h| (r.spec.clone(), r.env.clone(), h))
                })
                .collect();
            let mut prestop = Vec::new();
            for (c, env, h) in handlers {
                let cmd = match &h.exec {
                    Some(exec) => {
                        let argv = exec.command.clone().unwrap_or_default();
                        let (first, rest) =
                            argv.split_first().context("preStop exec without command")?;
                        let prog = container::program(&shared.programs, first)?;
                        Some(container::command(
                            &netns_name,
                            &mounts_of(&c)?,
                            &hosts,
                            user_of(&c),
                            &env,
                            &prog,
                            rest,
                        )?)
                    }
                    None => None,
                };
                let log = sandbox.dir.join(format!("{}.prestop.log", c.name));
                prestop.push(tokio::spawn(pre_stop(c, h, cmd, log, ip, deadline)));
            }
            terminating = Some(Terminating {
                deadline,
                prestop,
                termed: false,
            });
        }

        // Processes: exits, restarts, probes.
        for r in containers.iter_mut() {
            if let Some(p) = r.proc.as_mut()
                && let Some(status) = p.exited()
            {
                r.exit = Some(status.code().unwrap_or(137));
                r.proc = None;
                r.ready = false;
                let backoff = 1u64 << r.restarts.clamp(0, 3);
                r.next_start = Instant::now() + Duration::from_secs(backoff);
            }
            let may_start = terminating.is_none() && (r.started_at.is_none() || restart_always);
            if r.proc.is_none() && may_start && Instant::now() >= r.next_start {
                if r.started_at.is_some() {
                    r.restarts += 1;
                }
                start(r)?;
            }
            if r.proc.is_some() {
                if let Some(p) = r.liveness.as_mut()
                    && let Some(alive) = p.run(ip, &r.spec, r.live).await
                {
                    r.live = alive;
                    if !alive && terminating.is_none() {
                        // Failed liveness: restarted like an exit.
                        if let Some(mut p) = r.proc.take() {
                            p.stop(Duration::from_secs(2));
                        }
                        r.exit = Some(137);
                        r.next_start = Instant::now();
                        continue;
                    }
                }
                match r.readiness.as_mut() {
                    Some(p) => {
                        if let Some(ready) = p.run(ip, &r.spec, r.ready).await {
                            r.ready = ready;
                        }
                    }
                    None => r.ready = true,
                }
            }
        }

        // Termination: preStop, then SIGTERM, SIGKILL at the deadline.
        if let Some(t) = terminating.as_mut() {
            let prestop_done = t.prestop.iter().all(|h| h.is_finished());
            if !t.termed && (prestop_done || Instant::now() >= t.deadline) {
                for r in containers.iter_mut() {
                    if let Some(p) = r.proc.as_mut() {
                        p.signal("TERM");
                    }
                }
                t.termed = true;
            }
            let all_exited = containers
                .iter_mut()
                .all(|r| r.proc.as_mut().is_none_or(|p| p.exited().is_some()));
            if t.termed && (all_exited || Instant::now() >= t.deadline) {
                for r in containers.iter_mut() {
                    if let Some(mut p) = r.proc.take() {
                        let code = p.exited().and_then(|s| s.code()).unwrap_or(137);
                        p.kill();
                        r.exit = Some(code);
                    }
                    r.ready = false;
                }
                let status = pod_status(&containers, &ip, shared, &start_time, false, &now(), true);
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = pods.delete(&name, &dp).await;
                return Ok(());
            }
        }

        // Status, when it changed.
        let ready = containers.iter().all(|r| r.ready && r.proc.is_some());
        if ready != was_ready {
            was_ready = ready;
            ready_since = now();
        }
        let status = pod_status(
            &containers,
            &ip,
            shared,
            &start_time,
            ready,
            &ready_since,
            false,
        );
        if status != last_status
            && pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .is_ok()
        {
            last_status = status;
        }
        let _ = wait_change(rx, shared, Duration::from_millis(200)).await;
    }
}

/// Waits up to `limit` for a new pod object; the latest either way
/// (`None`: gone, or the node stops).
async fn wait_change(
    rx: &mut watch::Receiver<Option<Pod>>,
    shared: &Shared,
    limit: Duration,
) -> Option<Pod> {
    let _ = tokio::time::timeout(limit, rx.changed()).await;
    if *shared.stopping.borrow() {
        return None;
    }
    rx.borrow().clone()
}

struct Terminating {
    deadline: Instant,
    prestop: Vec<tokio::task::JoinHandle<()>>,
    termed: bool,
}

/// Runs one container's preStop handler, bounded by the grace period.
async fn pre_stop(
    c: Container,
    h: LifecycleHandler,
    cmd: Option<std::process::Command>,
    log: PathBuf,
    ip: Ipv4Addr,
    deadline: Instant,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    if let Some(mut cmd) = cmd {
        let Ok(mut p) = Proc::spawn(&format!("{} preStop", c.name), &mut cmd, &log) else {
            return;
        };
        let until = Instant::now() + left;
        while p.exited().is_none() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p.kill();
    } else if let Some(sleep) = &h.sleep {
        let secs = Duration::from_secs(sleep.seconds.max(0) as u64);
        tokio::time::sleep(secs.min(left)).await;
    } else if let Some(get) = &h.http_get {
        let _ = container::http_get(ip, &c, get, left).await;
    }
}

/// What the node stand-in cannot run, as an error.
fn supported(pod: &Pod) -> anyhow::Result<()> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    if spec.init_containers.as_ref().is_some_and(|i| !i.is_empty()) {
        bail!("init containers are not supported by the node stand-in");
    }
    for c in &spec.containers {
        if c.startup_probe.is_some() {
            bail!(
                "container {}: startupProbe is not supported by the node stand-in",
                c.name
            );
        }
        for p in [&c.readiness_probe, &c.liveness_probe]
            .into_iter()
            .flatten()
        {
            if p.http_get.is_none() {
                bail!(
                    "container {}: only httpGet probes are supported by the node stand-in",
                    c.name
                );
            }
        }
    }
    Ok(())
}
