//! A rolling restart of the dataplane Deployment (what
//! `kubectl rollout restart` does: a new pod-template annotation) under
//! load on the real control plane, with the client going through the
//! dataplanes' Service as kube-proxy would send it: each request to a
//! ready, not terminating endpoint of the Service's real EndpointSlice.
//! The chart's preStop drain (`sluice-dataplane pre-stop --sleep=5s`, then
//! SIGTERM and a graceful stop) keeps every request answered while the
//! old dataplanes leave. See docs/testing.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::kube::service::{ServiceEndpoints, ServiceLoad};
use sluice_tests::kube::{Cluster, app, chart};
use sluice_tests::wait;

const DATAPLANES: &str = "app.kubernetes.io/component=dataplane";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_dataplanes_fails_no_request_through_their_service()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    chart::install(cp, &chart::values_for_1_28()).await?;
    app::deploy_echo_pool(cp, 3).await?;
    let client = cp.client().await?;
    let echo = app::echo_pods(&client).await?;
    let old: BTreeSet<SocketAddr> = app::dataplanes(&client)
        .await?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(old.len(), 2, "two dataplane pods: {old:?}");
    let http = HttpClient::new();
    for addr in &old {
        let (seen, other) = app::answering(&http, *addr, &echo, Duration::from_secs(60)).await;
        assert_eq!(seen, echo, "through {addr}; other answers: {other:?}");
    }
    let service = Arc::new(ServiceEndpoints::watch(
        &client,
        chart::NAMESPACE,
        "sluice-dataplane",
        "http",
    ));
    wait::until(
        Duration::from_secs(30),
        "both dataplanes ready in their Service's slice",
        || {
            let ok = service.ready() == old;
            async move { ok.then_some(()) }
        },
    )
    .await?;
    // New connections for every request: new clients, which the Service
    // sends to whichever endpoint it lists (keep-alive ones stay on their
    // dataplane, which finishes them on SIGTERM).
    let fresh = HttpClient::without_keep_alive();
    let load = ServiceLoad::paced(&fresh, Arc::clone(&service), app::HOST, 100.0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), chart::NAMESPACE);
    deployments
        .patch(
            "sluice-dataplane",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}})),
        )
        .await?;
    chart::wait_rolled_out(&deployments, "sluice-dataplane", Duration::from_secs(180)).await?;
    let hash = app::current_template_hash(&client, chart::NAMESPACE, "sluice-dataplane").await?;
    wait::until(
        Duration::from_secs(60),
        "the old dataplane pods gone",
        || {
            let (client, hash) = (client.clone(), hash.clone());
            async move {
                let pods = app::pods_with_template_hash(&client, chart::NAMESPACE, DATAPLANES)
                    .await
                    .ok()?;
                pods.iter().all(|(_, h)| *h == hash).then_some(())
            }
        },
    )
    .await?;
    let new: BTreeSet<SocketAddr> = app::dataplanes(&client)
        .await?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(new.len(), 2, "two new dataplane pods: {new:?}");
    assert!(new.is_disjoint(&old), "every dataplane replaced: {new:?}");
    // The Service's endpoints are the new dataplanes, and they serve.
    wait::until(
        Duration::from_secs(30),
        "the Service's ready endpoints are the new dataplanes",
        || {
            let ok = service.ready() == new;
            async move { ok.then_some(()) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (served, failed, errors) = load.finish().await?;
    eprintln!("served by endpoint: {served:?}; {failed} failed: {errors:?}");
    for addr in old.iter().chain(&new) {
        assert!(
            served.get(addr).copied().unwrap_or(0) > 0,
            "{addr} answered through the Service: {served:?}"
        );
    }
    let total: u64 = served.values().sum();
    assert_eq!(
        failed, 0,
        "requests failed through the dataplanes' Service during their rolling restart \
         ({total} served): {errors:?}"
    );
    Ok(())
}
