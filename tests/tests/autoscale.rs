//! The closed autoscaling loop, end to end on loopback: the API-server
//! fake, the controller, two dataplanes and a simulated cluster whose
//! replicas are real backends. Traffic through the dataplanes is reported
//! to the controller, which patches the Deployment's `/scale`; the cluster
//! starts or stops backends and publishes their EndpointSlices; the
//! dataplanes route to them. Assertions are what an operator sees: which
//! replica answered, the Deployment's replicas, the trigger's status and
//! Events. Every wait is bounded; margins around the stabilization windows
//! are generous and nothing asserts how fast anything was.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::apiserver::{Collection, FakeApiServer};
use sluice_tests::closed_loop::{HOST, Loop, NS, behavior, condition, get_held, trigger};
use sluice_tests::cluster::deployments;
use sluice_tests::load::Load;
use sluice_tests::rescales::{rescales, steps};
use sluice_tests::wait::until;

/// Per-replica RequestsPerSecond target of every trigger here.
const TARGET_RPS: f64 = 10.0;
/// The metrics window of every trigger here.
const WINDOW: Duration = Duration::from_secs(5);
/// How long the controller may take to take a new trigger up.
const TAKE_UP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_fold_step_scales_up_and_traffic_reaches_the_new_replicas() -> anyhow::Result<()> {
    let workload = Loop::workload().start_delay(Duration::from_millis(200));
    let env = Loop::start(workload).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    env.wait_for_ready_replicas().await?;
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"window": "5s", "behavior": behavior(30)}),
    ))?;
    // The controller has taken the trigger up, with the target at one replica.
    env.wait_for_trigger(1, TAKE_UP).await?;
    assert_eq!(env.spec_replicas(), 1, "idle at one replica stays there");

    let step = Instant::now();
    let load = Load::paced(&env.http, &env.addrs(), HOST, 10.0 * TARGET_RPS);
    let scaled = env
        .wait_for_replicas("a scale-up to at least 4", Duration::from_secs(40), |r| {
            r >= 4
        })
        .await?;
    assert!(scaled <= 10, "maxReplicas bounds it: {scaled}");
    env.cluster
        .wait_until(
            "the cluster to see the scale",
            Duration::from_secs(10),
            |r| i64::from(r.desired) >= scaled,
        )
        .await?;
    let (_, first) = env
        .cluster
        .timeline()
        .first_scale_after(step)
        .expect("the cluster saw the scale");
    assert!(first > 1, "the first change after the step grows: {first}");

    // The new replicas start, are published, and both dataplanes send
    // them traffic: at least four replicas answer through each.
    env.cluster
        .wait_until("4 ready replicas", Duration::from_secs(20), |r| {
            r.ready.len() >= 4
        })
        .await?;
    let answered = env
        .wait_for_answers(
            "traffic over 4 replicas",
            40,
            Duration::from_secs(20),
            |seen| seen.len() >= 4,
        )
        .await?;
    let known: BTreeSet<String> = env
        .cluster
        .timeline()
        .ready
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert!(answered.is_subset(&known), "{answered:?} ⊄ {known:?}");
    assert!(answered.iter().any(|n| n != "web-0"), "{answered:?}");

    // What an operator sees: status with the metric and the decision, and an Event.
    let status = env.trigger_status();
    assert!(
        status["desiredReplicas"].as_i64().is_some_and(|d| d >= 4),
        "{status}"
    );
    assert!(status["lastScaleTime"].is_string(), "{status}");
    assert_eq!(
        condition(&status, "AbleToScale").map(|c| c.0).as_deref(),
        Some("True"),
        "{status}"
    );
    assert_eq!(
        condition(&status, "ScalingActive").map(|c| c.0).as_deref(),
        Some("True"),
        "{status}"
    );
    let metric = &status["currentMetrics"][0];
    assert_eq!(metric["type"], "RequestsPerSecond", "{status}");
    let events = until(
        Duration::from_secs(10),
        "a SuccessfulRescale Event",
        || async {
            let e = env.events("SuccessfulRescale");
            (!e.is_empty()).then_some(e)
        },
    )
    .await?;
    let note = events[0]["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("New size: "), "{note}");
    assert!(note.contains("reason: "), "{note}");

    let (served, failed) = load.finish().await?;
    assert!(served > 0);
    assert_eq!(failed, 0, "scaling up fails no request");
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_at_the_target_makes_no_scale_changes() -> anyhow::Result<()> {
    let env = Loop::start(Loop::workload().replicas(2)).await?;
    env.cluster.wait_settled(2, Duration::from_secs(10)).await?;
    env.wait_for_ready_replicas().await?;
    // Exactly the target per replica, already flowing when the trigger
    // arrives (the controller keeps a pool's history only once a trigger
    // reads it, so the first look sees the newest report of each dataplane).
    let load = Load::paced(&env.http, &env.addrs(), HOST, 2.0 * TARGET_RPS);
    tokio::time::sleep(2 * WINDOW).await;
    let created = Instant::now();
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"window": "5s", "behavior": behavior(5)}),
    ))?;
    env.wait_for_trigger(2, TAKE_UP).await?;

    // Four windows of steady load: nothing moves.
    for _ in 0..4 {
        tokio::time::sleep(WINDOW).await;
        assert_eq!(env.spec_replicas(), 2, "status {}", env.trigger_status());
    }
    let changes: Vec<i32> = env
        .cluster
        .timeline()
        .replicas
        .iter()
        .filter(|(at, _)| *at > created)
        .map(|(_, r)| *r)
        .collect();
    assert!(changes.is_empty(), "no flapping: {changes:?}");
    let status = env.trigger_status();
    assert_eq!(status["desiredReplicas"], 2, "{status}");
    assert!(env.events("SuccessfulRescale").is_empty());
    let (_, failed) = load.finish().await?;
    assert_eq!(failed, 0);
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_removed_scales_down_only_after_the_stabilization_window() -> anyhow::Result<()> {
    const STABILIZATION: u32 = 15;
    let env = Loop::start(Loop::workload().replicas(4)).await?;
    env.cluster.wait_settled(4, Duration::from_secs(10)).await?;
    env.wait_for_ready_replicas().await?;
    let load = Load::paced(&env.http, &env.addrs(), HOST, 4.0 * TARGET_RPS);
    tokio::time::sleep(2 * WINDOW).await;
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"window": "5s", "behavior": behavior(STABILIZATION)}),
    ))?;
    env.wait_for_trigger(4, TAKE_UP).await?;
    tokio::time::sleep(WINDOW).await;
    assert_eq!(
        env.spec_replicas(),
        4,
        "loaded at the target, it holds: {}",
        env.trigger_status()
    );

    // The load goes. Within the stabilization window (here checked a
    // generous 7 s before it ends) nothing shrinks...
    let removed = Instant::now();
    let (_, failed) = load.finish().await?;
    assert_eq!(failed, 0);
    tokio::time::sleep(Duration::from_secs(u64::from(STABILIZATION) - 7)).await;
    assert_eq!(env.spec_replicas(), 4, "status {}", env.trigger_status());
    assert!(
        env.cluster.timeline().first_scale_after(removed).is_none(),
        "no scale-down inside the stabilization window"
    );
    assert_eq!(env.cluster.replicas().ready.len(), 4);

    // ...and after it, the target goes down to minReplicas.
    env.wait_for_replicas("a scale-down to 1", Duration::from_secs(40), |r| r == 1)
        .await?;
    let left = env.cluster.wait_settled(1, Duration::from_secs(20)).await?;
    env.wait_for_ready_replicas().await?;
    let status = env.trigger_status();
    assert_eq!(status["desiredReplicas"], 1, "{status}");
    let answered = env.answers(0, 3).await?;
    assert_eq!(
        answered.keys().collect::<Vec<_>>(),
        left.keys().collect::<Vec<_>>()
    );
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_target_goes_to_zero_and_a_held_request_brings_it_back() -> anyhow::Result<()> {
    let workload = Loop::workload().start_delay(Duration::from_millis(300));
    let env = Loop::start(workload).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    env.wait_for_ready_replicas().await?;
    let spec = json!({
        "window": "5s", "minReplicas": 0, "maxReplicas": 3, "idleAfter": "3s",
        "behavior": behavior(0),
    });
    env.api.apply(trigger(TARGET_RPS, spec))?;

    // Idle: the target goes to zero and its endpoints go away.
    env.wait_for_replicas("a scale to zero", Duration::from_secs(40), |r| r == 0)
        .await?;
    env.cluster.wait_settled(0, Duration::from_secs(10)).await?;

    // Every dataplane has the pool's route marked for activation.
    env.wait_for_activation(Duration::from_secs(10)).await?;

    // A request at zero is held, makes the controller scale up, and is
    // answered by the replica that started for it.
    let a = get_held(env.dataplanes[0].http_addr()).await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let replica = a.backend.expect("a replica answered");
    assert_ne!(replica, "web-0", "a new replica, not the one scaled away");
    assert!(env.spec_replicas() >= 1);
    let timeline = env.cluster.timeline();
    let replicas: Vec<i32> = timeline.replicas.iter().map(|(_, r)| *r).collect();
    assert!(
        replicas.windows(2).any(|w| w[0] == 0 && w[1] > 0),
        "from zero back up: {replicas:?}"
    );
    // Both dataplanes now reach it directly.
    env.wait_for_ready_replicas().await?;
    // What `kubectl describe st web` shows: down to zero, then back up to
    // the count the Deployment now has.
    let events = env.api.list(&Collection::of("events.k8s.io/v1", "Event"));
    let seen = steps(&rescales(&events, NS, "web")?);
    assert_eq!(
        seen.first().copied(),
        Some((1, 0)),
        "the scale to zero: {seen:?}"
    );
    assert_eq!(
        seen.last().copied(),
        Some((0, env.spec_replicas())),
        "the activation: {seen:?}"
    );
    env.stop().await;
    Ok(())
}

/// Seven decisions on one trigger, driven by its bounds so that each is
/// certain: minReplicas 5 and 6 raise the target, maxReplicas 5 down to 1
/// lower it. Only the API-server fake and the controller take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rescale_is_an_event_of_its_own_with_from_and_to() -> anyhow::Result<()> {
    let api = FakeApiServer::start().await?;
    api.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"replicas": 1},
    }))?;
    let controller = sluice_controller::Controller::start(api.client()?, Loop::options()).await?;
    let bounds = [(5, 10), (6, 10), (1, 5), (1, 4), (1, 3), (1, 2), (1, 1)];
    for (min, max) in bounds {
        let want = if min > 1 { min } else { max };
        api.apply(trigger(
            TARGET_RPS,
            json!({"minReplicas": min, "maxReplicas": max}),
        ))?;
        api.wait_for(
            &deployments(),
            NS,
            "web",
            |d| d["spec"]["replicas"] == want,
            TAKE_UP,
        )
        .await?;
    }
    let events = Collection::of("events.k8s.io/v1", "Event");
    let seen = until(Duration::from_secs(10), "seven rescale Events", || async {
        let r = rescales(&api.list(&events), NS, "web").ok()?;
        (r.len() >= 7).then_some(r)
    })
    .await
    .map_err(|e| {
        let notes: Vec<String> = api
            .list(&events)
            .iter()
            .map(|e| e["note"].to_string())
            .collect();
        anyhow::anyhow!("{e}; Events: {notes:?}")
    })?;
    assert_eq!(
        steps(&seen),
        [(1, 5), (5, 6), (6, 5), (5, 4), (4, 3), (3, 2), (2, 1)]
    );
    assert!(seen.iter().all(|r| r.count == 1), "{seen:?}");
    assert!(seen[0].why.contains("below minReplicas"), "{seen:?}");
    assert!(seen[2].why.contains("above maxReplicas"), "{seen:?}");
    controller.shutdown().await;
    api.shutdown().await;
    Ok(())
}
