//! A node stand-in, like kwok but with real processes: it registers a Ready
//! Node, binds pending pods to itself (there is no scheduler), and runs each
//! pod's containers as processes in a network namespace of the pod's own
//! with a 10.213.x address on the test run's bridge (`network`), with the
//! pod's volumes mounted at their mountPaths (`volumes`, `container`),
//! probes, status and graceful deletion (`pod`). Pods reach the API server
//! through a forwarder on the bridge and Services by name (`hosts`).
//!
//! It runs on a thread of its own with its own runtime, so a test's runtime
//! ending (or panicking) does not leave pods half-managed; dropping the
//! [`Node`] stops every pod's processes and removes namespaces, bridge and
//! files.

mod container;
mod hosts;
pub mod network;
mod pod;
mod probe;
mod status;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::watch;

use super::controlplane::{ControlPlane, TempDir};
use super::host::Programs;
use network::Network;

/// What every pod task shares.
struct Shared {
    client: kube::Client,
    programs: Programs,
    net: Network,
    /// Where pods reach the API server (the forwarder on the bridge).
    api: SocketAddr,
    /// Per-pod directories.
    root: PathBuf,
    hosts: hosts::Hosts,
    stopping: watch::Receiver<bool>,
}

/// The running node stand-in.
#[derive(Debug)]
pub struct Node {
    /// Its Node object's name.
    pub name: String,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Registers a Ready Node named `name` and starts running pods, on
    /// `net` (made before the control plane: its gateway address is in the
    /// API server's certificate).
    pub fn start(cp: &ControlPlane, net: Network, name: &str) -> anyhow::Result<Node> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let kubeconfig = std::fs::read_to_string(&cp.kubeconfig)?;
        let programs = cp.programs.clone();
        let api_addr = cp.addr;
        let root = TempDir::new("node")?;
        let root_path = root.path().to_path_buf();
        let node_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("node {name}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let setup = async {
                        let config = kube::Config::from_custom_kubeconfig(
                            Kubeconfig::from_yaml(&kubeconfig)?,
                            &KubeConfigOptions::default(),
                        )
                        .await?;
                        let client = kube::Client::try_from(config)?;
                        let gw = net.gateway();
                        let listener =
                            tokio::net::TcpListener::bind(SocketAddrV4::new(gw, 0)).await?;
                        let api = listener.local_addr()?;
                        tokio::spawn(forward(listener, api_addr));
                        register(&client, &node_name, gw).await?;
                        anyhow::Ok(Arc::new(Shared {
                            client,
                            programs,
                            net,
                            api,
                            root: root_path,
                            hosts: hosts::Hosts::default(),
                            stopping: stop_rx,
                        }))
                    };
                    let shared = match setup.await {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    run(Arc::clone(&shared), node_name).await;
                    drop(shared);
                });
                // The runtime drops here: pod tasks still left are dropped,
                // their processes killed; then the network and files go.
                drop(rt);
                drop(root);
            })?;
        let node = Node {
            name: name.to_string(),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the node stand-in did not start")??;
        Ok(node)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn register(client: &kube::Client, name: &str, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let node: NodeObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .context("cannot register the Node")?;
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "node stand-in",
                        "lastHeartbeatTime": pod::now(), "lastTransitionTime": pod::now()}],
        "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "16", "memory": "32Gi", "pods": "250"},
        "allocatable": {"cpu": "16", "memory": "32Gi", "pods": "250"},
        "nodeInfo": {"kubeletVersion": "v1.28.7", "kubeProxyVersion": "v1.28.7", "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "sluice-node://0", "kernelVersion": "", "osImage": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("cannot set the Node's status")?;
    Ok(())
}

/// Pods reach the API server (on 127.0.0.1, which a network namespace
/// cannot reach) through this: bytes copied both ways.
async fn forward(listener: tokio::net::TcpListener, to: SocketAddr) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
            }
        });
    }
}

/// Watches pods and slices until the node stops.
async fn run(shared: Arc<Shared>, node: String) {
    let mut stopping = shared.stopping.clone();
    let slices: Api<EndpointSlice> = Api::all(shared.client.clone());
    let hosts_shared = Arc::clone(&shared);
    let slice_task = tokio::spawn(async move {
        let mut stream = watcher::watcher(slices, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(s) | Event::InitApply(s)) => hosts_shared.hosts.slice(&s, false),
                Ok(Event::Delete(s)) => hosts_shared.hosts.slice(&s, true),
                _ => {}
            }
        }
    });
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();
    let mut running: BTreeMap<String, watch::Sender<Option<Pod>>> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = stopping.changed() => break,
        };
        let Some(ev) = ev else { break };
        match ev {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let bound_to = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                match bound_to {
                    None if pod.metadata.deletion_timestamp.is_none() => {
                        if let Err(e) = bind(&shared.client, &pod, &node).await {
                            eprintln!("node stand-in: {e:#}");
                        }
                    }
                    Some(n) if n == node && !done.contains(&uid) => {
                        if let Some(tx) = running.get(&uid) {
                            let _ = tx.send(Some(pod));
                        } else {
                            let (tx, rx) = watch::channel(Some(pod));
                            running.insert(uid.clone(), tx);
                            tasks.spawn(pod::run(Arc::clone(&shared), rx));
                        }
                    }
                    _ => {}
                }
            }
            Ok(Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(tx) = running.remove(&uid) {
                    let _ = tx.send(None);
                }
                done.insert(uid);
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        while tasks.try_join_next().is_some() {}
    }
    // Stopping: pod tasks see it and return; their sandboxes kill and clean.
    for tx in running.values() {
        let _ = tx.send(None);
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    slice_task.abort();
}

/// Binds a pending pod to this node (the `binding` subresource, as the
/// scheduler does).
async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> anyhow::Result<()> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let _: serde_json::Value = api
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await
        .with_context(|| format!("cannot bind pod {ns}/{name}"))?;
    Ok(())
}
