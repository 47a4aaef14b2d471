//! A pod deleted on the real control plane, as the node stand-in runs it:
//! marked terminating, its exec preStop run, then SIGTERM, then removed;
//! the real endpointslice controller publishes it as terminating and not
//! ready meanwhile, the ReplicaSet replaces it, and clients going through
//! the dataplanes see no failed request. See docs/testing.md.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use sluice_tests::client::HttpClient;
use sluice_tests::kube::{Cluster, app, chart};
use sluice_tests::load::Load;
use sluice_tests::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_drains_through_prestop_and_is_replaced_without_failed_requests()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    chart::install(cp, &chart::values_for_1_28()).await?;
    app::deploy_echo_pool(cp, 3).await?;
    let client = cp.client().await?;
    let echo = app::echo_pods(&client).await?;
    let dataplanes = app::dataplanes(&client).await?;
    let http = HttpClient::new();
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &echo, Duration::from_secs(60)).await;
        assert_eq!(seen, echo, "through {dp}; other answers: {other:?}");
    }
    let addrs: Vec<_> = dataplanes.iter().map(|(_, a)| *a).collect();
    let load = Load::paced(&http, &addrs, app::HOST, 100.0);

    let victim = echo.iter().next().cloned().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let victim_ip = pods
        .get(&victim)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .unwrap_or_default();
    let victim_addr: std::net::SocketAddr = format!("{victim_ip}:8080").parse()?;
    pods.delete(&victim, &DeleteParams::default()).await?;

    // While its preStop runs: terminating, not ready, still serving.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let conditions = wait::until(
        Duration::from_secs(20),
        "the victim published as terminating",
        || {
            let (slices, victim) = (slices.clone(), victim.clone());
            async move {
                let list = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                    .await
                    .ok()?;
                list.items
                    .into_iter()
                    .flat_map(|s| s.endpoints)
                    .filter(|e| {
                        e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(&victim)
                    })
                    .filter_map(|e| e.conditions)
                    .find(|c| c.terminating == Some(true))
            }
        },
    )
    .await?;
    assert_eq!(
        conditions.ready,
        Some(false),
        "a terminating endpoint is not ready"
    );
    assert_eq!(
        conditions.serving,
        Some(true),
        "it serves during its preStop: {conditions:?}"
    );
    // The preStop hook (10 s) holds SIGTERM back: a second after the pod
    // was published as terminating, it still answers (without the hook it
    // would have stopped at once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let direct = HttpClient::new()
        .get(victim_addr, app::HOST, "/")
        .await
        .map_err(|e| {
            e.context(
                "the terminating pod no longer answers: its preStop did not hold SIGTERM back",
            )
        })?;
    assert_eq!(
        direct.backend.as_deref(),
        Some(victim.as_str()),
        "the terminating pod answers directly"
    );

    wait::until(
        Duration::from_secs(30),
        "the victim removed from the API",
        || {
            let (pods, victim) = (pods.clone(), victim.clone());
            async move {
                pods.get_opt(&victim)
                    .await
                    .ok()
                    .and_then(|p| p.is_none().then_some(()))
            }
        },
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    chart::wait_available(&deployments, "web", Duration::from_secs(60)).await?;
    let after = app::echo_pods(&client).await?;
    assert_eq!(after.len(), 3, "replaced: {after:?}");
    assert!(!after.contains(&victim), "the victim is gone: {after:?}");
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &after, Duration::from_secs(60)).await;
        assert_eq!(
            seen, after,
            "after the replacement, through {dp}; other answers: {other:?}"
        );
    }
    let (served, failed) = load.finish().await?;
    eprintln!("served {served} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "requests failed while a pod was replaced ({served} served)"
    );
    Ok(())
}
