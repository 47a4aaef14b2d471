//! The ScalingTrigger closed loop through the real deployment controller,
//! on a real control plane with the chart installed: a 10× load step
//! through both dataplanes scales Deployment `web` up (the replicaset
//! controller creates the pods, the node stand-in runs them, the
//! endpointslice controller publishes them) and traffic reaches the new
//! pods; load at the target changes nothing; idle, it goes to zero pods; a request held at zero brings one
//! back and is answered by it. What `kubectl describe st web` shows is
//! read from the Events the API server holds: each rescale with its
//! numbers. See docs/testing.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use sluice_tests::client::HttpClient;
use sluice_tests::closed_loop::get_held;
use sluice_tests::kube::{Cluster, app, chart, controlplane::ControlPlane};
use sluice_tests::load::Load;
use sluice_tests::rescales::{rescales, steps};
use sluice_tests::wait;

/// Requests per second one replica is meant to take.
const TARGET_RPS: f64 = 4.0;
/// The most replicas the trigger may set.
const MAX_REPLICAS: i64 = 4;

/// ScalingTrigger `web` on Deployment `web`, driven by pool `web`, with a
/// short window and no scale-up stabilization; `min` and `idle_after` as
/// given (`idleAfter` only with `min` 0).
fn trigger_yaml(min: i64, idle_after: Option<&str>) -> String {
    let idle = idle_after
        .map(|d| format!("\n  idleAfter: {d}"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: sluice.io/v1alpha1
kind: ScalingTrigger
metadata: {{name: web, namespace: default}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}
  poolRef: {{name: web}}
  minReplicas: {min}
  maxReplicas: {MAX_REPLICAS}
  window: 5s{idle}
  metrics: [{{type: RequestsPerSecond, averageValue: {TARGET_RPS}}}]
  behavior:
    scaleUp: {{stabilizationWindowSeconds: 0}}
    scaleDown:
      stabilizationWindowSeconds: 0
      policies: [{{type: Percent, value: 100, periodSeconds: 5}}]
"#
    )
}

fn apply(cp: &ControlPlane, name: &str, yaml: &str) -> anyhow::Result<()> {
    let file = cp.dir().join(name);
    std::fs::write(&file, yaml)?;
    cp.kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()])?;
    Ok(())
}

/// Waits until Deployment `web`'s `spec.replicas` satisfies `ok`; the count.
async fn wait_for_replicas(
    deployments: &Api<Deployment>,
    what: &str,
    limit: Duration,
    ok: impl Fn(i32) -> bool,
) -> anyhow::Result<i32> {
    wait::until(limit, what, || {
        let deployments = deployments.clone();
        let ok = &ok;
        async move {
            let d = deployments.get("web").await.ok()?;
            let r = d.spec?.replicas.unwrap_or(1);
            ok(r).then_some(r)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_step_scales_up_idle_goes_to_zero_and_a_held_request_brings_a_pod_back()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    chart::install(cp, &chart::values_for_1_28()).await?;
    app::deploy_echo_pool(cp, 1).await?;
    let client = cp.client().await?;
    let first = app::echo_pods(&client).await?;
    let dataplanes = app::dataplanes(&client).await?;
    assert_eq!(dataplanes.len(), 2, "two dataplane pods: {dataplanes:?}");
    let http = HttpClient::new();
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &first, Duration::from_secs(60)).await;
        assert_eq!(seen, first, "through {dp}; other answers: {other:?}");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    // The trigger at one replica; a load of ten times its target.
    apply(cp, "trigger.yaml", &trigger_yaml(1, None))?;
    let addrs: Vec<_> = dataplanes.iter().map(|(_, a)| *a).collect();
    let load = Load::paced(&http, &addrs, app::HOST, 10.0 * TARGET_RPS);
    let scaled = wait_for_replicas(
        &deployments,
        "a scale-up to at least 3 replicas",
        Duration::from_secs(60),
        |r| r >= 3,
    )
    .await?;
    eprintln!("scaled up to {scaled} replicas");
    chart::wait_available(&deployments, "web", Duration::from_secs(90)).await?;
    let grown = app::echo_pods(&client).await?;
    assert!(
        grown.len() >= 3,
        "the replicaset controller made the pods: {grown:?}"
    );
    let new: BTreeSet<String> = grown.difference(&first).cloned().collect();
    assert!(!new.is_empty(), "new pods: {grown:?}");
    for (dp, addr) in &dataplanes {
        let (seen, other) = app::answering(&http, *addr, &new, Duration::from_secs(60)).await;
        assert_eq!(
            seen.intersection(&new).cloned().collect::<BTreeSet<_>>(),
            new,
            "the new pods answered through {dp}; other answers: {other:?}"
        );
    }
    // Ten times the target wants ten replicas: maxReplicas holds it at four.
    wait_for_replicas(
        &deployments,
        "maxReplicas under the load step",
        Duration::from_secs(60),
        |r| i64::from(r) == MAX_REPLICAS,
    )
    .await?;
    let (served, failed) = load.finish().await?;
    eprintln!("load step: served {served}, {failed} failed");
    assert_eq!(failed, 0, "scaling up fails no request ({served} served)");

    // Load at the target (four replicas of TARGET_RPS each) changes nothing:
    // once two windows hold only that load, the replica count stays put.
    let at_target = Load::paced(&http, &addrs, app::HOST, TARGET_RPS * MAX_REPLICAS as f64);
    tokio::time::sleep(Duration::from_secs(10)).await;
    for _ in 0..10 {
        let d = deployments.get("web").await?;
        let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(1);
        assert_eq!(
            i64::from(replicas),
            MAX_REPLICAS,
            "load at the target changes no replica count"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (served, failed) = at_target.finish().await?;
    assert_eq!(failed, 0, "at the target: {failed} of {served} failed");

    // Idle, with scale to zero allowed: no pods left.
    apply(cp, "trigger.yaml", &trigger_yaml(0, Some("3s")))?;
    wait_for_replicas(
        &deployments,
        "a scale to zero",
        Duration::from_secs(60),
        |r| r == 0,
    )
    .await?;
    // Gone from the API, not only terminating (a terminating pod still
    // serves during its preStop, and would answer the next request).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait::until(Duration::from_secs(60), "every echo pod gone", || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            list.items.is_empty().then_some(())
        }
    })
    .await?;

    // Every dataplane has the pool's route waiting for activation, with no
    // endpoint left: the endpointslice controller has published the slices
    // empty. (A pod gone from the API can still be in a slice for a moment,
    // as a terminating endpoint that serves while nothing else is ready; a
    // request sent then goes to its address, where nothing answers any
    // more, and fails after the connect timeout.)
    for (dp, addr) in &dataplanes {
        let admin = SocketAddr::new(addr.ip(), 9901);
        wait::until(
            Duration::from_secs(30),
            &format!("activation on the pool's route, with no endpoint, in {dp}"),
            || {
                let http = http.clone();
                async move {
                    let a = http.get(admin, "localhost", "/debug/routes").await.ok()?;
                    let routes: serde_json::Value = serde_json::from_str(&a.body).ok()?;
                    routes["pools"]
                        .as_array()?
                        .iter()
                        .find(|p| p["name"] == "default/web")
                        .filter(|p| p["activation"].is_object())
                        .filter(|p| p["endpoints"].as_array().is_none_or(Vec::is_empty))
                        .map(|_| ())
                }
            },
        )
        .await?;
    }

    // A request at zero is held until a pod started for it answers.
    let answer = get_held(dataplanes[0].1).await?;
    assert_eq!(answer.status, 200, "the held request: {}", answer.body);
    let by = answer.backend.clone().unwrap_or_default();
    let now = app::echo_pods(&client).await?;
    assert!(
        now.contains(&by) && !grown.contains(&by),
        "answered by a new pod, {by:?}; pods now: {now:?}, before: {grown:?}"
    );
    let replicas = deployments
        .get("web")
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or_default();
    assert_eq!(replicas, 1, "one pod brought up");

    // What `kubectl describe st web` shows: each rescale with its numbers.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let seen = wait::until(
        Duration::from_secs(20),
        "the activation's rescale Event",
        || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await.ok()?;
                let json: Vec<serde_json::Value> = list
                    .items
                    .iter()
                    .filter_map(|e| serde_json::to_value(e).ok())
                    .collect();
                let r = rescales(&json, "default", "web").ok()?;
                (steps(&r).last() == Some(&(0, 1))).then_some(r)
            }
        },
    )
    .await
    .map_err(|e| {
        let notes = cp
            .kubectl(&["describe", "scalingtrigger", "web", "-n", "default"])
            .unwrap_or_else(|e| e.to_string());
        anyhow::anyhow!("{e}; `kubectl describe st web`:\n{notes}")
    })?;
    let steps = steps(&seen);
    eprintln!("rescales: {seen:?}");
    assert_eq!(
        steps.first().map(|s| s.0),
        Some(1),
        "the first rescale starts at one replica: {steps:?}"
    );
    assert!(
        steps.first().is_some_and(|s| s.1 >= 2),
        "the first rescale grows: {steps:?}"
    );
    assert!(
        steps.windows(2).all(|w| w[0].1 == w[1].0),
        "each rescale starts where the last ended: {steps:?}"
    );
    assert!(
        steps.iter().any(|&(_, to)| to == i64::from(scaled)),
        "the scale-up to {scaled}: {steps:?}"
    );
    assert!(
        steps.iter().any(|&(from, to)| to == 0 && from > 0),
        "the scale to zero: {steps:?}"
    );
    assert_eq!(steps.last(), Some(&(0, 1)), "the activation: {steps:?}");
    assert!(
        seen.iter().all(|r| !r.why.is_empty()),
        "each says why: {seen:?}"
    );
    let described = cp.kubectl(&["describe", "scalingtrigger", "web", "-n", "default"])?;
    for (from, to) in &steps {
        let line = format!("from {from} to {to} because");
        assert!(
            described.contains(&line),
            "`kubectl describe st web` shows {line:?}:\n{described}"
        );
    }
    Ok(())
}
