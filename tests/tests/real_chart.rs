//! The chart installed on a real control plane (kube-apiserver and
//! kube-controller-manager v1.28.7, etcd) with pods run by the node
//! stand-in: the controller and two dataplanes from the rendered manifests,
//! under the chart's ServiceAccounts and RBAC, over its TLS stream and
//! TokenReview auth. See docs/testing.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use sluice_tests::client::HttpClient;
use sluice_tests::kube::{Cluster, chart};

/// Three echo pods behind a Service, and a BackendPool over it.
const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: sluice.test/echo
          args: ["--name=$(POD_NAME)", "--listen=0.0.0.0:8080"]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: sluice.io/v1alpha1
kind: BackendPool
metadata: {name: web, namespace: default}
spec:
  hosts: ["web.example.com"]
  pathPrefix: /
  backends:
    - {service: web, port: http}
  algorithm: RoundRobin
"#;

/// Names of the running pods matching `selector` in `ns`, with their addresses.
async fn pods(client: &kube::Client, ns: &str, selector: &str) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_three_echo_pods_is_served_by_both_dataplanes() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    chart::install(cp, &chart::values_for_1_28()).await?;
    let file = cp.dir().join("app.yaml");
    std::fs::write(&file, APP)?;
    cp.kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()])?;
    let client = cp.client().await?;
    let deployments = Api::namespaced(client.clone(), "default");
    chart::wait_available(&deployments, "web", Duration::from_secs(60)).await?;

    let echo: BTreeSet<String> = pods(&client, "default", "app=web").await?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(echo.len(), 3, "three echo pods: {echo:?}");
    let dataplanes = pods(&client, chart::NAMESPACE, "app.kubernetes.io/component=dataplane").await?;
    assert_eq!(dataplanes.len(), 2, "two dataplane pods: {dataplanes:?}");

    let http = HttpClient::new();
    for (dp, ip) in &dataplanes {
        let addr: SocketAddr = format!("{ip}:8080").parse()?;
        let mut seen = BTreeSet::new();
        let mut statuses = Vec::new();
        let start = Instant::now();
        // Bounded: until all three answered, at most 60 s and 3000 requests.
        for _ in 0..3000 {
            if seen == echo || start.elapsed() > Duration::from_secs(60) {
                break;
            }
            match http.get(addr, "web.example.com", "/").await {
                Ok(a) if a.status == 200 => {
                    seen.insert(a.body.trim().to_string());
                }
                Ok(a) => statuses.push(a.status.to_string()),
                Err(e) => statuses.push(e.to_string()),
            }
            if seen != echo {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        statuses.truncate(5);
        assert_eq!(seen, echo, "pods that answered through dataplane {dp} ({addr}); other answers: {statuses:?}");
    }
    Ok(())
}
