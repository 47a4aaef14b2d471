//! The simulated cluster on its own, without the controller: whoever
//! patches a Deployment's `/scale`, real loopback backends start or stop
//! and the API server's EndpointSlices follow. Every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_tests::apiserver::{Collection, FakeApiServer};
use sluice_tests::client::HttpClient;
use sluice_tests::cluster::{Cluster, Workload, deployments};
use sluice_tests::wait::until;
use tokio::net::TcpStream;

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(10);

fn slices() -> Collection {
    Collection::of("discovery.k8s.io/v1", "EndpointSlice")
}

/// What the API server publishes for Service `web`: ready endpoint address → port name.
fn published(api: &FakeApiServer) -> BTreeMap<SocketAddr, String> {
    let mut out = BTreeMap::new();
    for s in api.list(&slices()) {
        if s["metadata"]["labels"]["kubernetes.io/service-name"] != "web" {
            continue;
        }
        let port = &s["ports"][0];
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] != true {
                continue;
            }
            let ip = e["addresses"][0].as_str().unwrap_or_default();
            if let Ok(addr) = format!("{ip}:{}", port["port"]).parse() {
                out.insert(addr, port["name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

async fn scale(api: &FakeApiServer, replicas: i32) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(api.client()?, NS);
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let scale = deployments
        .patch_scale("web", &PatchParams::default(), &patch)
        .await?;
    anyhow::ensure!(scale.spec.and_then(|s| s.replicas) == Some(replicas));
    Ok(())
}

/// Each ready replica answers on its own port with its own name.
async fn assert_answers(ready: &BTreeMap<String, SocketAddr>) -> anyhow::Result<()> {
    let http = HttpClient::new();
    for (name, addr) in ready {
        let a = http.get(*addr, "web", "/").await?;
        assert_eq!(
            (a.status, a.backend.as_deref(), a.body.trim()),
            (200, Some(name.as_str()), name.as_str())
        );
    }
    Ok(())
}

async fn wait_published(
    api: &FakeApiServer,
    ready: &BTreeMap<String, SocketAddr>,
) -> anyhow::Result<()> {
    let want: BTreeSet<SocketAddr> = ready.values().copied().collect();
    until(WAIT, &format!("slices for {want:?}"), || async {
        let got: BTreeSet<SocketAddr> = published(api).into_keys().collect();
        (got == want).then_some(())
    })
    .await
}

async fn wait_closed(addr: SocketAddr) -> anyhow::Result<()> {
    until(WAIT, &format!("{addr} to refuse connections"), || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await
}

fn deployment_status(api: &FakeApiServer) -> Value {
    api.get(&deployments(), NS, "web")
        .map(|d| d["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn scale_patches_start_backends_and_publish_their_endpoints() -> anyhow::Result<()> {
    let api = FakeApiServer::start().await?;
    let cluster = Cluster::start(&api, Workload::new(NS, "web", "web", "http")).await?;
    let one = cluster.wait_settled(1, WAIT).await?;
    assert_eq!(one.keys().collect::<Vec<_>>(), ["web-0"]);
    wait_published(&api, &one).await?;
    assert!(published(&api).values().all(|port| port == "http"));
    let service = api
        .get(&Collection::of("v1", "Service"), NS, "web")
        .expect("the Service was created");
    assert_eq!(service["spec"]["ports"][0]["name"], "http");

    scale(&api, 3).await?;
    let three = cluster.wait_settled(3, WAIT).await?;
    assert_eq!(
        three.keys().collect::<Vec<_>>(),
        ["web-0", "web-1", "web-2"]
    );
    wait_published(&api, &three).await?;
    assert_answers(&three).await?;
    let status = api
        .wait_for(
            &deployments(),
            NS,
            "web",
            |d| d["status"]["readyReplicas"] == 3,
            WAIT,
        )
        .await?;
    assert_eq!(status["status"]["replicas"], 3);

    // Scale down: the newest replicas go, endpoints first, then their ports.
    scale(&api, 1).await?;
    let left = cluster.wait_settled(1, WAIT).await?;
    assert_eq!(left.keys().collect::<Vec<_>>(), ["web-0"]);
    wait_published(&api, &left).await?;
    for gone in ["web-1", "web-2"] {
        wait_closed(three[gone]).await?;
    }
    assert_answers(&left).await?;
    assert_eq!(deployment_status(&api)["readyReplicas"], 1);

    let timeline = cluster.timeline();
    let replicas: Vec<i32> = timeline.replicas.iter().map(|(_, r)| *r).collect();
    assert_eq!(replicas, [1, 3, 1]);
    let ready: Vec<&str> = timeline.ready.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(ready.len(), 3);
    let mut removed: Vec<&str> = timeline.removed.iter().map(|(_, n)| n.as_str()).collect();
    removed.sort_unstable();
    assert_eq!(removed, ["web-1", "web-2"]);
    let (scaled_up_at, _) = timeline.replicas[1];
    assert!(timeline.first_ready_after(scaled_up_at).is_some());

    cluster.shutdown().await;
    wait_closed(left["web-0"]).await?;
    Ok(())
}

#[tokio::test]
async fn replicas_become_ready_after_the_start_delay_and_scale_to_zero() -> anyhow::Result<()> {
    let api = FakeApiServer::start().await?;
    let delay = Duration::from_millis(300);
    let workload = Workload::new(NS, "web", "web", "http")
        .replicas(0)
        .start_delay(delay);
    let cluster = Cluster::start(&api, workload).await?;
    cluster.wait_settled(0, WAIT).await?;
    assert!(published(&api).is_empty());

    scale(&api, 2).await?;
    let two = cluster.wait_settled(2, WAIT).await?;
    wait_published(&api, &two).await?;
    assert_answers(&two).await?;
    let timeline = cluster.timeline();
    let (scaled_at, replicas) = timeline.replicas[1];
    assert_eq!(replicas, 2);
    for (ready_at, name) in &timeline.ready {
        assert!(
            ready_at.duration_since(scaled_at) >= delay,
            "{name} was published before its start delay"
        );
    }

    scale(&api, 0).await?;
    cluster.wait_settled(0, WAIT).await?;
    wait_published(&api, &BTreeMap::new()).await?;
    for addr in two.values() {
        wait_closed(*addr).await?;
    }
    assert_eq!(deployment_status(&api)["replicas"], 0);
    Ok(())
}

#[tokio::test]
async fn a_scale_down_while_replicas_start_cancels_the_newest() -> anyhow::Result<()> {
    let api = FakeApiServer::start().await?;
    let workload = Workload::new(NS, "web", "web", "http").start_delay(Duration::from_millis(500));
    let cluster = Cluster::start(&api, workload).await?;
    let one = cluster.wait_settled(1, WAIT).await?;

    scale(&api, 4).await?;
    cluster
        .wait_until("replicas starting", WAIT, |r| r.starting == 3)
        .await?;
    scale(&api, 2).await?;
    let two = cluster.wait_settled(2, WAIT).await?;
    assert!(
        two.contains_key("web-0"),
        "the ready replica stays: {two:?}"
    );
    assert_eq!(two["web-0"], one["web-0"]);
    wait_published(&api, &two).await?;
    assert_answers(&two).await?;
    // Nothing cancelled turns up later.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cluster.replicas().ready, two);
    assert_eq!(cluster.timeline().ready.len(), 2);
    Ok(())
}

#[tokio::test]
async fn dropping_the_cluster_stops_its_backends() -> anyhow::Result<()> {
    let api = FakeApiServer::start().await?;
    let cluster = Cluster::start(&api, Workload::new(NS, "web", "web", "http").replicas(2)).await?;
    let two = cluster.wait_settled(2, WAIT).await?;
    assert_answers(&two).await?;
    drop(cluster);
    for addr in two.values() {
        wait_closed(*addr).await?;
    }
    Ok(())
}
