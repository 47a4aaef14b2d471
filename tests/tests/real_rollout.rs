//! Rolling updates of a 20-pod backend Deployment on the real control
//! plane, under steady load through both dataplanes: the real deployment
//! controller replaces every pod (first with the default surge, then with
//! `maxSurge: 0`), the real endpointslice controller publishes old pods as
//! terminating while their preStop keeps them serving, and no request
//! fails. At the end only the new ReplicaSet's pods answer. See
//! docs/testing.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_tests::client::HttpClient;
use sluice_tests::kube::{Cluster, app, chart};
use sluice_tests::load::Load;
use sluice_tests::wait;

/// Backend pods: the figure. Each is one light process (the echo
/// program) in a namespace of its own.
const PODS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_updates_of_twenty_pods_fail_no_request() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    chart::install(cp, &chart::values_for_1_28()).await?;
    app::deploy_echo_pool(cp, PODS as u32).await?;
    let client = cp.client().await?;
    let echo = app::echo_pods(&client).await?;
    assert_eq!(echo.len(), PODS, "{echo:?}");
    let dataplanes = app::dataplanes(&client).await?;
    assert_eq!(dataplanes.len(), 2, "two dataplane pods: {dataplanes:?}");
    let http = HttpClient::new();
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &echo, Duration::from_secs(90)).await;
        assert_eq!(seen, echo, "through {dp}; other answers: {other:?}");
    }

    let surge = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
    let before = echo;
    let first = rollout(&client, &http, &dataplanes, &surge, "1", &before).await?;
    let no_surge = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 2}});
    rollout(&client, &http, &dataplanes, &no_surge, "2", &first).await?;
    Ok(())
}

/// Sets `strategy` and changes the pod template (an annotation) of
/// Deployment `web` under load through `dataplanes`, waits until the
/// update is rolled out and the old pods are gone, and checks: no request
/// failed meanwhile, every pod is new, and the dataplanes' answers come
/// from exactly the new ReplicaSet's pods. Returns the new pods' names.
async fn rollout(
    client: &kube::Client,
    http: &HttpClient,
    dataplanes: &[(String, SocketAddr)],
    strategy: &Value,
    revision: &str,
    old: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    let start = std::time::Instant::now();
    let addrs: Vec<_> = dataplanes.iter().map(|(_, a)| *a).collect();
    let load = Load::paced(http, &addrs, app::HOST, 100.0);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "strategy": strategy,
                "template": {"metadata": {"annotations": {"sluice.test/rollout": revision}}},
            }})),
        )
        .await?;
    chart::wait_rolled_out(&deployments, "web", Duration::from_secs(240)).await?;
    let hash = app::current_template_hash(client, "default", "web").await?;
    // The old pods leave after their preStop (10 s) and SIGTERM.
    wait::until(
        Duration::from_secs(60),
        "only the new ReplicaSet's pods left",
        || {
            let (client, hash) = (client.clone(), hash.clone());
            async move {
                let pods = app::pods_with_template_hash(&client, "default", "app=web")
                    .await
                    .ok()?;
                pods.iter().all(|(_, h)| *h == hash).then_some(())
            }
        },
    )
    .await?;
    eprintln!(
        "rollout {revision} ({strategy}): done in {:.1?}",
        start.elapsed()
    );
    let (served, failed) = load.finish().await?;
    eprintln!("rollout {revision}: served {served} requests, {failed} failed");
    assert!(served > 0, "nothing was served during rollout {revision}");
    assert_eq!(
        failed, 0,
        "requests failed during rollout {revision} ({strategy}; {served} served)"
    );

    let new = app::echo_pods(client).await?;
    assert_eq!(new.len(), PODS, "after rollout {revision}: {new:?}");
    assert!(
        new.is_disjoint(old),
        "rollout {revision} replaced every pod: {new:?}"
    );
    for (dp, addr) in dataplanes {
        let (seen, other) = app::answering(http, *addr, &new, Duration::from_secs(60)).await;
        assert_eq!(
            seen, new,
            "after rollout {revision}, through {dp}, exactly the new ReplicaSet's \
             pods ({hash}) answer; other answers: {other:?}"
        );
    }
    Ok(new)
}
