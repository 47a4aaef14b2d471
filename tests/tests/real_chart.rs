//! The chart installed on a real control plane (kube-apiserver and
//! kube-controller-manager v1.28.7, etcd) with pods run by the node
//! stand-in: the controller and two dataplanes from the rendered manifests,
//! under the chart's ServiceAccounts and RBAC, over its TLS stream and
//! TokenReview auth. See docs/testing.md.

use std::time::Duration;

use sluice_tests::client::HttpClient;
use sluice_tests::kube::{Cluster, app, chart};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_three_echo_pods_is_served_by_both_dataplanes() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    chart::install(cp, &chart::values_for_1_28()).await?;
    app::deploy_echo_pool(cp, 3).await?;
    let client = cp.client().await?;
    let echo = app::echo_pods(&client).await?;
    assert_eq!(echo.len(), 3, "three echo pods: {echo:?}");
    let dataplanes = app::dataplanes(&client).await?;
    assert_eq!(dataplanes.len(), 2, "two dataplane pods: {dataplanes:?}");

    let http = HttpClient::new();
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &echo, Duration::from_secs(60)).await;
        assert_eq!(
            seen, echo,
            "pods that answered through dataplane {dp} ({addr}); other answers: {other:?}"
        );
    }
    Ok(())
}
