//! The API server stopped and restarted under load, on a real control
//! plane with the chart installed: the dataplanes keep serving while it is
//! away (zero failed requests), and changes made after it is back reach
//! them (a new pod is answered through both). See docs/testing.md.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::kube::{Cluster, app, chart};
use sluice_tests::load::Load;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplanes_serve_through_an_api_server_restart_and_changes_resume() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::start().await? else {
        return Ok(());
    };
    chart::install(&cluster.cp, &chart::values_for_1_28()).await?;
    app::deploy_echo_pool(&cluster.cp, 2).await?;
    let client = cluster.cp.client().await?;
    let echo = app::echo_pods(&client).await?;
    let dataplanes = app::dataplanes(&client).await?;
    assert_eq!(dataplanes.len(), 2, "two dataplane pods: {dataplanes:?}");
    let http = HttpClient::new();
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &echo, Duration::from_secs(60)).await;
        assert_eq!(
            seen, echo,
            "before the restart, through {dp}; other answers: {other:?}"
        );
    }
    let addrs: Vec<_> = dataplanes.iter().map(|(_, a)| *a).collect();
    let load = Load::paced(&http, &addrs, app::HOST, 100.0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.cp.stop_apiserver();
    let before = load.served();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = load.served() - before;
    cluster.cp.start_apiserver().await?;
    assert!(
        during > 0,
        "nothing was served while the API server was away"
    );

    // A change after the restart: one more echo pod, answered through both.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    chart::wait_available(&deployments, "web", Duration::from_secs(90)).await?;
    let after = app::echo_pods(&client).await?;
    assert_eq!(after.len(), 3, "three echo pods after scaling: {after:?}");
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &after, Duration::from_secs(90)).await;
        assert_eq!(
            seen, after,
            "after the restart, through {dp}; other answers: {other:?}"
        );
    }
    let (served, failed) = load.finish().await?;
    eprintln!("served {served} requests ({during} while the API server was away), {failed} failed");
    assert_eq!(failed, 0, "requests failed ({served} served)");
    Ok(())
}
