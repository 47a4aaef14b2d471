//! Two controller replicas from the chart (`controller.replicas: 2`, with
//! the leader election the chart always turns on) on the real control
//! plane: the leader's pod is deleted under load through both dataplanes;
//! another replica takes the Lease, no request fails, and a change made
//! after the takeover (the backend scaled up) reaches both dataplanes
//! through the new leader. See docs/testing.md.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::kube::{Cluster, app, chart};
use sluice_tests::load::Load;
use sluice_tests::wait;

const CONTROLLER: &str = "sluice-controller";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_pod_deleted_the_other_replica_takes_over_without_failed_requests()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    chart::apply(cp, &json!({"controller": {"replicas": 2}}))?;
    let client = cp.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), chart::NAMESPACE);
    chart::wait_available(&deployments, "sluice-dataplane", Duration::from_secs(120)).await?;
    // Only the leader is Ready: two replicas, one ready.
    wait::until(
        Duration::from_secs(60),
        "two controller pods, the leader ready",
        || {
            let deployments = deployments.clone();
            async move {
                let st = deployments.get(CONTROLLER).await.ok()?.status?;
                (st.replicas == Some(2) && st.ready_replicas == Some(1)).then_some(())
            }
        },
    )
    .await?;
    let controllers: Vec<String> = app::pods(
        &client,
        chart::NAMESPACE,
        "app.kubernetes.io/component=controller",
    )
    .await?
    .into_iter()
    .map(|(n, _)| n)
    .collect();
    assert_eq!(controllers.len(), 2, "{controllers:?}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), chart::NAMESPACE);
    let holder = |leases: Api<Lease>| async move {
        leases
            .get(CONTROLLER)
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    };
    let leader = wait::until(Duration::from_secs(30), "a Lease holder", || {
        holder(leases.clone())
    })
    .await?;
    assert!(
        controllers.contains(&leader),
        "the Lease is held by a controller pod: {leader} of {controllers:?}"
    );

    app::deploy_echo_pool(cp, 2).await?;
    let echo = app::echo_pods(&client).await?;
    let dataplanes = app::dataplanes(&client).await?;
    assert_eq!(dataplanes.len(), 2, "two dataplane pods: {dataplanes:?}");
    let http = HttpClient::new();
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &echo, Duration::from_secs(60)).await;
        assert_eq!(seen, echo, "through {dp}; other answers: {other:?}");
    }
    let addrs: Vec<_> = dataplanes.iter().map(|(_, a)| *a).collect();
    let load = Load::paced(&http, &addrs, app::HOST, 100.0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), chart::NAMESPACE);
    let start = std::time::Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await?;
    let new_leader = wait::until(
        Duration::from_secs(60),
        "another controller holding the Lease",
        || {
            let (leases, leader) = (leases.clone(), leader.clone());
            async move { holder(leases).await.filter(|h| *h != leader) }
        },
    )
    .await?;
    eprintln!(
        "leader {leader} deleted; {new_leader} took over after {:.1?}",
        start.elapsed()
    );
    // The standby retries every 2 s (plus jitter) while the replacement pod
    // tries as it starts, so either may win: what counts is that a live
    // controller pod other than the deleted one now leads.
    let live = app::pods(
        &client,
        chart::NAMESPACE,
        "app.kubernetes.io/component=controller",
    )
    .await?;
    assert!(
        live.iter().any(|(n, _)| *n == new_leader),
        "the new leader {new_leader} is a running controller pod: {live:?}"
    );

    // A change after the takeover reaches both dataplanes.
    let web: Api<Deployment> = Api::namespaced(client.clone(), "default");
    web.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    chart::wait_available(&web, "web", Duration::from_secs(90)).await?;
    let after = app::echo_pods(&client).await?;
    assert_eq!(after.len(), 3, "three echo pods after scaling: {after:?}");
    eprintln!("scaled up {:.1?} after the deletion", start.elapsed());
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &after, Duration::from_secs(90)).await;
        assert_eq!(
            seen, after,
            "after the takeover, through {dp}; other answers: {other:?}"
        );
        eprintln!(
            "{dp} reaches all three {:.1?} after the deletion",
            start.elapsed()
        );
    }
    let (served, failed) = load.finish().await?;
    eprintln!("served {served} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "requests failed while the leader was replaced ({served} served)"
    );
    Ok(())
}
