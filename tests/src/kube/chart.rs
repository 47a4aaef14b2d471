//! The Helm chart installed on the real control plane as a user installs
//! it: the CRDs from `charts/sluice/crds/`, then the chart rendered by
//! Helm (`charts/lint.sh render`: helm-sdkpy's `helm install`, the path the
//! chart checks use) and applied with `kubectl apply --server-side`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::{Value, json};
use std::io::Write;

use super::controlplane::ControlPlane;
use super::host::repo_root;
use crate::wait;

/// The namespace the chart is installed into.
pub const NAMESPACE: &str = "sluice-system";

/// The Kubernetes version of the harness's binaries, which the chart is
/// rendered for.
pub const KUBE_VERSION: &str = "1.28.7";

/// The values the chart is installed with on the v1.28 API server: its
/// defaults, as a user installs it (the dataplane's drain is an `exec`
/// preStop running `sluice-dataplane pre-stop`, which 1.28 has). The
/// images keep their default names; the node stand-in maps them to the
/// checkout's binaries.
pub fn values_for_1_28() -> Value {
    json!({})
}

/// The chart's objects as `helm install` renders them with `values` for
/// namespace `ns`.
pub fn render(values: &Value, ns: &str) -> anyhow::Result<Vec<Value>> {
    let root = repo_root();
    let mut child = Command::new("bash")
        .arg(root.join("charts/lint.sh"))
        .arg("render")
        .arg(ns)
        .arg(KUBE_VERSION)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run charts/lint.sh render")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(values.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "helm render failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("the render is not a JSON list")
}

/// Applies the CRDs and waits until they are established.
pub fn install_crds(cp: &ControlPlane) -> anyhow::Result<()> {
    let crds = repo_root().join("charts/sluice/crds");
    cp.kubectl(&["apply", "--server-side", "-f", &crds.to_string_lossy()])?;
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/backendpools.sluice.io",
        "crd/scalingtriggers.sluice.io",
    ])?;
    Ok(())
}

/// Installs the chart with `values` into [`NAMESPACE`]: CRDs, namespace,
/// the rendered objects; then waits until both Deployments are available
/// (the controller leads and is ready, the dataplanes have a table).
pub async fn install(cp: &ControlPlane, values: &Value) -> anyhow::Result<Vec<Value>> {
    let start = std::time::Instant::now();
    let objects = apply(cp, values)?;
    let deployments: Api<Deployment> = Api::namespaced(cp.client().await?, NAMESPACE);
    for name in ["sluice-controller", "sluice-dataplane"] {
        wait_available(&deployments, name, Duration::from_secs(120)).await?;
    }
    eprintln!(
        "real cluster: chart installed and available in {:.1?}",
        start.elapsed()
    );
    Ok(objects)
}

/// Applies the chart with `values` into [`NAMESPACE`] (CRDs, namespace,
/// the rendered objects) without waiting for its pods: for installs whose
/// Deployments are never fully Ready, such as two controller replicas of
/// which only the leader is.
pub fn apply(cp: &ControlPlane, values: &Value) -> anyhow::Result<Vec<Value>> {
    let start = std::time::Instant::now();
    install_crds(cp)?;
    cp.kubectl(&["create", "namespace", NAMESPACE])?;
    let objects = render(values, NAMESPACE)?;
    eprintln!(
        "real cluster: CRDs applied and chart rendered in {:.1?}",
        start.elapsed()
    );
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let file = cp.dir().join("chart.json");
    std::fs::write(&file, list.to_string())?;
    cp.kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()])?;
    Ok(objects)
}

/// Waits until Deployment `name` has all its replicas updated and ready.
pub async fn wait_available(
    api: &Api<Deployment>,
    name: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    wait::until(limit, &format!("Deployment {name} available"), || {
        let api = api.clone();
        async move {
            let d = api.get(name).await.ok()?;
            let want = d.spec.as_ref()?.replicas.unwrap_or(1);
            let st = d.status?;
            let ok = st.ready_replicas.unwrap_or(0) == want
                && st.updated_replicas.unwrap_or(0) == want
                && st.replicas.unwrap_or(0) == want;
            ok.then_some(())
        }
    })
    .await
}

/// Waits until the Deployment `name` has rolled out its current template:
/// the deployment controller has seen the latest spec (`observedGeneration`)
/// and every replica is updated and ready, with no old one left counted.
/// Unlike [`wait_available`], it does not pass on the status from before a
/// change the controller has not looked at yet.
pub async fn wait_rolled_out(
    api: &Api<Deployment>,
    name: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    wait::until(limit, &format!("Deployment {name} rolled out"), || {
        let api = api.clone();
        async move {
            let d = api.get(name).await.ok()?;
            let generation = d.metadata.generation?;
            let want = d.spec.as_ref()?.replicas.unwrap_or(1);
            let st = d.status?;
            let ok = st.observed_generation.unwrap_or(0) >= generation
                && st.ready_replicas.unwrap_or(0) == want
                && st.updated_replicas.unwrap_or(0) == want
                && st.available_replicas.unwrap_or(0) == want
                && st.replicas.unwrap_or(0) == want;
            ok.then_some(())
        }
    })
    .await
}
