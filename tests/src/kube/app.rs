//! What the real-cluster scenarios deploy and check: an echo Deployment
//! behind a Service with a BackendPool over it, and the pods a test reads
//! back from the API server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::chart;
use super::controlplane::ControlPlane;
use crate::client::Answer;

/// The pool's host name.
pub const HOST: &str = "web.example.com";

/// `replicas` echo pods (`sluice.test/echo`, answering with their pod
/// name in `x-backend`) as Deployment `web` in `default`, Service `web` and BackendPool
/// `web` for [`HOST`] over it. A deleted pod keeps serving for 10 s in its
/// preStop hook (while the endpointslice controller marks it terminating),
/// then stops on SIGTERM.
pub fn echo_pool_yaml(replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: sluice.test/echo
          args: ["--name=$(POD_NAME)", "--listen=0.0.0.0:8080"]
          env:
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
          lifecycle:
            preStop: {{exec: {{command: ["echo", "sleep", "10"]}}}}
      terminationGracePeriodSeconds: 20
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: sluice.io/v1alpha1
kind: BackendPool
metadata: {{name: web, namespace: default}}
spec:
  hosts: ["{HOST}"]
  pathPrefix: /
  backends:
    - {{service: web, port: http}}
  algorithm: RoundRobin
"#
    )
}

/// Applies [`echo_pool_yaml`] and waits until the Deployment is available.
pub async fn deploy_echo_pool(cp: &ControlPlane, replicas: u32) -> anyhow::Result<()> {
    let file = cp.dir().join("app.yaml");
    std::fs::write(&file, echo_pool_yaml(replicas))?;
    cp.kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()])?;
    let start = std::time::Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(cp.client().await?, "default");
    chart::wait_available(&deployments, "web", Duration::from_secs(90)).await?;
    eprintln!(
        "real cluster: {replicas} echo pods available in {:.1?}",
        start.elapsed()
    );
    Ok(())
}

/// Running (not terminating) pods matching `selector` in `ns`: name and
/// address.
pub async fn pods(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
        .collect())
}

/// Names of the echo pods.
pub async fn echo_pods(client: &kube::Client) -> anyhow::Result<BTreeSet<String>> {
    Ok(pods(client, "default", "app=web")
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// The dataplane pods' HTTP listeners (`<pod IP>:8080`).
pub async fn dataplanes(client: &kube::Client) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    pods(
        client,
        chart::NAMESPACE,
        "app.kubernetes.io/component=dataplane",
    )
    .await?
    .into_iter()
    .map(|(n, ip)| {
        let addr = format!("{ip}:8080").parse().context("pod IP")?;
        Ok((n, addr))
    })
    .collect()
}

/// Sends requests for [`HOST`] through the dataplane at `addr` until every
/// pod in `want` has answered (at most `limit` and 5000 requests); the
/// pods that answered, and up to five other answers (status or error).
pub async fn answering(
    http: &crate::client::HttpClient,
    addr: SocketAddr,
    want: &BTreeSet<String>,
    limit: Duration,
) -> (BTreeSet<String>, Vec<String>) {
    let mut seen = BTreeSet::new();
    let mut other = Vec::new();
    let start = std::time::Instant::now();
    for _ in 0..5000 {
        if want.is_subset(&seen) || start.elapsed() > limit {
            break;
        }
        match http.get(addr, HOST, "/").await {
            Ok(Answer {
                status: 200,
                backend: Some(pod),
                ..
            }) => {
                seen.insert(pod);
            }
            Ok(a) if other.len() < 5 => other.push(a.status.to_string()),
            Err(e) if other.len() < 5 => other.push(e.to_string()),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (seen, other)
}

/// The pod-template hash of Deployment `name`'s current ReplicaSet in `ns`:
/// the one whose revision is the Deployment's (the
/// `deployment.kubernetes.io/revision` annotation both carry), as
/// `kubectl rollout status` reads it.
pub async fn current_template_hash(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<String> {
    const REVISION: &str = "deployment.kubernetes.io/revision";
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deployments.get(name).await?;
    let revision = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .with_context(|| format!("Deployment {name} has no revision yet"))?
        .clone();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let uid = d.metadata.uid.unwrap_or_default();
    sets.list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .filter(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                == Some(&revision)
        })
        .find_map(|rs| rs.metadata.labels?.remove("pod-template-hash"))
        .with_context(|| format!("no ReplicaSet of {name} at revision {revision}"))
}

/// Every pod matching `selector` in `ns`, terminating ones included: name
/// and `pod-template-hash` label (empty when it has none).
pub async fn pods_with_template_hash(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let hash = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"))
                .cloned()
                .unwrap_or_default();
            Some((p.metadata.name?, hash))
        })
        .collect())
}
