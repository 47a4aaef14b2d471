//! A real Kubernetes control plane as a test harness (kube-apiserver and
//! kube-controller-manager v1.28.7 with etcd, on loopback), a node
//! stand-in that runs pods as processes in network namespaces of their
//! own, and the Helm chart installed on it as users install it. The
//! real-cluster tests (`tests/tests/real_*.rs`) build on this; see
//! `docs/testing.md`.

pub mod app;
pub mod chart;
pub mod controlplane;
pub mod gateway;
pub mod host;
pub mod node;
pub mod pki;
pub mod process;
pub mod service;

use anyhow::Context;

/// A control plane with a node stand-in: what the real-cluster scenarios
/// run on. Drop order: the node (its pods, namespaces, bridge) first, then
/// the control plane.
#[derive(Debug)]
pub struct Cluster {
    /// The node stand-in.
    pub node: node::Node,
    /// etcd, kube-apiserver, kube-controller-manager.
    pub cp: controlplane::ControlPlane,
}

impl Cluster {
    /// Prepares the programs, creates the run's bridge, starts the control
    /// plane and the node. Fails with what is missing when the machine
    /// cannot run it; `Ok(None)` only when that is so and
    /// `SLUICE_SKIP_REAL_CLUSTER=1` asks to skip.
    pub async fn start() -> anyhow::Result<Option<Cluster>> {
        if !host::check(true)? {
            return Ok(None);
        }
        let start = std::time::Instant::now();
        let programs = host::programs()?;
        eprintln!("real cluster: programs ready in {:.1?}", start.elapsed());
        let net = node::network::Network::create().context("cannot create the test bridge")?;
        let gw = net.gateway().to_string();
        let cp = controlplane::ControlPlane::start(programs, &[gw]).await?;
        let node = node::Node::start(&cp, net, "sluice-test-node")?;
        eprintln!(
            "real cluster: control plane and node up in {:.1?} ({})",
            start.elapsed(),
            cp.dir().display()
        );
        Ok(Some(Cluster { node, cp }))
    }
}
