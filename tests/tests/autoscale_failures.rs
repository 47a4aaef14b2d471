//! The autoscaler when things are not as they should be, end to end on
//! loopback (the closed loop of `autoscale.rs`): a target that does not
//! exist, a kind without `/scale`, a custom resource found only through
//! discovery, a controller that is not the leader, a spec the schema cannot
//! check. What is asserted is what an operator sees: the target as the API
//! server holds it, the trigger's conditions, Events and the controller's
//! metrics. Every wait is bounded; the "nothing happens" checks watch for a
//! few seconds, several autoscaler passes, and then look.

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use sluice_controller::{LeaseConfig, Options};
use sluice_tests::apiserver::{Collection, FakeApiServer, Resource};
use sluice_tests::closed_loop::{HOST, Loop, NS, behavior, condition, trigger};
use sluice_tests::cluster::{Cluster, Workload, deployments};
use sluice_tests::load::Load;
use sluice_tests::wait::until;

/// Per-replica RequestsPerSecond target of every trigger here.
const TARGET_RPS: f64 = 10.0;
/// How long the controller may take to take a new trigger up.
const TAKE_UP: Duration = Duration::from_secs(20);
/// How long a "nothing happens" check watches: several one-second passes.
const QUIET: Duration = Duration::from_secs(5);

/// A condition of the trigger's status with its message:
/// `(status, reason, message)`.
fn condition_message(status: &Value, type_: &str) -> Option<(String, String, String)> {
    let (s, reason) = condition(status, type_)?;
    let message = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Some((s, reason, message))
}

/// Waits until the trigger's `type_` condition has `status` and `reason`;
/// returns its message.
async fn wait_for_condition(
    env: &Loop,
    type_: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let what = format!("{type_}={status} ({reason}) on the trigger");
    until(TAKE_UP, &what, || async {
        condition_message(&env.trigger_status(), type_)
            .filter(|(s, r, _)| s == status && r == reason)
            .map(|(_, _, m)| m)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; status {}", env.trigger_status()))
}

/// Waits for a Warning Event about the trigger with `reason`; returns its note.
async fn wait_for_warning(env: &Loop, reason: &str) -> anyhow::Result<String> {
    let what = format!("a Warning Event {reason}");
    until(Duration::from_secs(10), &what, || async {
        env.events(reason)
            .into_iter()
            .find(|e| e["type"] == "Warning")
            .map(|e| e["note"].as_str().unwrap_or_default().to_string())
    })
    .await
}

/// Changes of the Deployment's `spec.replicas` the cluster saw after `t`.
fn scales_after(env: &Loop, t: Instant) -> Vec<i32> {
    env.cluster
        .timeline()
        .replicas
        .iter()
        .filter(|(at, _)| *at > t)
        .map(|(_, r)| *r)
        .collect()
}

/// A sample of the controller's `/metrics`, by its name and labels as
/// written (`name{label="value",...}`).
async fn controller_metric(env: &Loop, series: &str) -> anyhow::Result<Option<f64>> {
    let a = env
        .http
        .get(env.controller.admin_addr(), "localhost", "/metrics")
        .await?;
    anyhow::ensure!(a.status == 200, "/metrics: {} {}", a.status, a.body);
    Ok(a.body.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }))
}

/// The requests that wrote (anything but `GET`) under `path_part`.
fn writes_to(api: &FakeApiServer, path_part: &str) -> Vec<String> {
    api.request_log()
        .into_iter()
        .filter(|r| r.method != "GET" && r.path.contains(path_part))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_is_a_condition_and_an_event_until_it_is_created() -> anyhow::Result<()> {
    let env = Loop::start(Loop::workload()).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    // minReplicas 2: once the target is there, the controller scales it
    // at once, whatever the traffic.
    let spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "canary"},
        "minReplicas": 2, "maxReplicas": 4, "window": "5s",
    });
    env.api.apply(trigger(TARGET_RPS, spec))?;

    let message = wait_for_condition(&env, "AbleToScale", "False", "FailedGetScale").await?;
    assert!(message.contains("canary"), "{message}");
    let note = wait_for_warning(&env, "FailedGetScale").await?;
    assert!(note.contains("canary"), "{note}");
    // Nothing was created in its place, and the status claims no replicas.
    assert!(env.api.get(&deployments(), NS, "canary").is_none());
    assert!(env.trigger_status()["currentReplicas"].is_null());
    assert!(env.events("SuccessfulRescale").is_empty());

    // The Deployment appears (with its own simulated replicas): the
    // controller finds it and scales it to minReplicas.
    let canary = Cluster::start(&env.api, Workload::new(NS, "canary", "canary", "http")).await?;
    until(TAKE_UP, "currentReplicas in status", || async {
        env.trigger_status()["currentReplicas"]
            .as_i64()
            .filter(|r| *r >= 1)
    })
    .await?;
    let d = env
        .api
        .wait_for(
            &deployments(),
            NS,
            "canary",
            |d| d["spec"]["replicas"] == 2,
            TAKE_UP,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}; status {}", env.trigger_status()))?;
    assert_eq!(d["spec"]["replicas"], 2);
    canary
        .wait_until("2 canary replicas", Duration::from_secs(10), |r| {
            r.ready.len() == 2
        })
        .await?;
    let (s, _) = until(TAKE_UP, "AbleToScale=True", || async {
        condition(&env.trigger_status(), "AbleToScale").filter(|(s, _)| s == "True")
    })
    .await?;
    assert_eq!(s, "True");
    until(TAKE_UP, "desiredReplicas 2 in status", || async {
        (env.trigger_status()["desiredReplicas"] == 2).then_some(())
    })
    .await?;
    assert!(!env.events("SuccessfulRescale").is_empty());
    // The trigger's own Deployment was never touched.
    assert_eq!(env.spec_replicas(), 1);
    canary.shutdown().await;
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_a_scale_subresource_is_reported_and_never_modified() -> anyhow::Result<()>
{
    let api = FakeApiServer::builder()
        .resource(Resource::namespaced("example.com/v1", "Gadget"))
        .start()
        .await?;
    let gadgets = Collection::new("example.com/v1", "gadgets");
    let gadget = api.apply(json!({
        "apiVersion": "example.com/v1", "kind": "Gadget",
        "metadata": {"name": "widget", "namespace": NS},
        "spec": {"replicas": 1, "colour": "blue"},
    }))?;
    let env = Loop::start_on(api, Loop::workload(), Loop::options()).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    let spec = json!({
        "scaleTargetRef": {"apiVersion": "example.com/v1", "kind": "Gadget", "name": "widget"},
        "minReplicas": 2, "maxReplicas": 4, "window": "5s",
    });
    env.api.apply(trigger(TARGET_RPS, spec))?;

    let message = wait_for_condition(&env, "AbleToScale", "False", "FailedGetScale").await?;
    assert!(message.contains("has no scale subresource"), "{message}");
    assert!(message.contains("Gadget"), "{message}");
    let note = wait_for_warning(&env, "FailedGetScale").await?;
    assert!(note.contains("has no scale subresource"), "{note}");

    // Several passes later the object is exactly as it was created: no
    // write reached it, neither through `/scale` nor to its spec.
    tokio::time::sleep(QUIET).await;
    assert_eq!(env.api.get(&gadgets, NS, "widget"), Some(gadget));
    assert_eq!(writes_to(&env.api, "/gadgets"), Vec::<String>::new());
    let status = env.trigger_status();
    assert_eq!(
        condition(&status, "AbleToScale"),
        Some(("False".into(), "FailedGetScale".into())),
        "{status}"
    );
    assert!(status["currentReplicas"].is_null(), "{status}");
    assert_eq!(env.spec_replicas(), 1);
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_resource_with_a_scale_subresource_is_scaled_through_it() -> anyhow::Result<()> {
    // A plural no English rule makes from the kind: only discovery knows it.
    let api = FakeApiServer::builder()
        .resource(
            Resource::namespaced("example.com/v1", "Worker")
                .plural("workerpool")
                .with_status()
                .with_scale(),
        )
        .start()
        .await?;
    let workers = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Worker".into(),
        plural: "workerpool".into(),
    };
    let created: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Worker",
        "metadata": {"name": "crunch", "namespace": NS},
        "spec": {"replicas": 1, "image": "crunch:1"},
    }))?;
    Api::<DynamicObject>::namespaced_with(api.client()?, NS, &workers)
        .create(&PostParams::default(), &created)
        .await?;
    let collection = Collection::new("example.com/v1", "workerpool");
    let env = Loop::start_on(api, Loop::workload(), Loop::options()).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    env.wait_for_ready_replicas().await?;
    let spec = json!({
        "scaleTargetRef": {"apiVersion": "example.com/v1", "kind": "Worker", "name": "crunch"},
        "maxReplicas": 6, "window": "5s", "behavior": behavior(30),
    });
    env.api.apply(trigger(TARGET_RPS, spec))?;
    env.wait_for_trigger(1, TAKE_UP).await?;
    assert_eq!(
        condition(&env.trigger_status(), "AbleToScale").map(|c| c.0),
        Some("True".into())
    );

    // Load of five times the target: the Worker's `spec.replicas` (what
    // its `/scale` maps to) goes up.
    let load = Load::paced(&env.http, &env.addrs(), HOST, 5.0 * TARGET_RPS);
    let worker = env
        .api
        .wait_for(
            &collection,
            NS,
            "crunch",
            |w| w["spec"]["replicas"].as_i64().is_some_and(|r| r >= 2),
            Duration::from_secs(40),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}; status {}", env.trigger_status()))?;
    let replicas = worker["spec"]["replicas"].as_i64().unwrap_or_default();
    assert!((2..=6).contains(&replicas), "{worker}");
    assert_eq!(
        worker["spec"]["image"], "crunch:1",
        "the rest of the spec stays"
    );
    let (_, failed) = load.finish().await?;
    assert_eq!(failed, 0);

    // Every write went to `/scale` under the discovered plural.
    let writes = writes_to(&env.api, "/workerpool/");
    assert!(!writes.is_empty());
    for w in &writes {
        let path = w.split('?').next().unwrap_or_default();
        assert!(path.ends_with("/workerpool/crunch/scale"), "{writes:?}");
    }
    let status = until(TAKE_UP, "desiredReplicas ≥ 2 in status", || async {
        let s = env.trigger_status();
        s["desiredReplicas"]
            .as_i64()
            .is_some_and(|d| d >= 2)
            .then_some(s)
    })
    .await?;
    assert!(status["lastScaleTime"].is_string(), "{status}");
    assert!(!env.events("SuccessfulRescale").is_empty());
    // The pool's own Deployment is not the target and was left alone.
    assert_eq!(env.spec_replicas(), 1);
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_scales() -> anyhow::Result<()> {
    const LEASE_NS: &str = "sluice-system";
    const LEASE_NAME: &str = "sluice-controller";
    let leases = Collection::new("coordination.k8s.io/v1", "leases");
    let api = FakeApiServer::start().await?;
    // Someone else holds the lease for an hour.
    api.apply(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE_NAME, "namespace": LEASE_NS},
        "spec": {
            "holderIdentity": "ctl-other", "leaseDurationSeconds": 3600,
            "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 0,
        },
    }))?;
    let options = Options {
        instance: "ctl-0".into(),
        lease: Some(LeaseConfig {
            lease_duration: Duration::from_secs(60),
            renew_deadline: Duration::from_secs(40),
            retry_period: Duration::from_millis(200),
            ..LeaseConfig::new(LEASE_NS, LEASE_NAME, "ctl-0")
        }),
        takeover_settle: Duration::from_millis(300),
        ..Loop::options()
    };
    let env = Loop::start_on(api, Loop::workload(), options).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    // The controller is up, its caches synced, and it follows.
    until(TAKE_UP, "the controller to follow", || async {
        let a = env
            .http
            .get(env.controller.admin_addr(), "localhost", "/readyz")
            .await
            .ok()?;
        (a.status == 503 && a.body == "not leader\n").then_some(())
    })
    .await?;
    assert!(!env.controller.is_leader());

    // A trigger whose minReplicas alone would scale the target at the
    // first pass, and load at five times the target.
    let created = Instant::now();
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"minReplicas": 2, "window": "5s", "behavior": behavior(30)}),
    ))?;
    let load = Load::paced(&env.http, &env.addrs(), HOST, 5.0 * TARGET_RPS);
    tokio::time::sleep(QUIET).await;
    assert_eq!(env.spec_replicas(), 1, "a follower does not scale");
    assert_eq!(scales_after(&env, created), Vec::<i32>::new());
    assert_eq!(env.trigger_status(), Value::Null, "nor writes status");
    assert!(env.events("SuccessfulRescale").is_empty());
    assert_eq!(
        controller_metric(&env, "sluice_desired_replicas{trigger=\"shop/web\"}").await?,
        None
    );
    let lease = env.api.get(&leases, LEASE_NS, LEASE_NAME);
    assert_eq!(
        lease.map(|l| l["spec"]["holderIdentity"].clone()),
        Some(json!("ctl-other"))
    );

    // The holder releases the lease as client-go does: this controller
    // takes over and scales.
    env.api.apply(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE_NAME, "namespace": LEASE_NS},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1},
    }))?;
    until(TAKE_UP, "the controller to lead", || async {
        env.controller.is_leader().then_some(())
    })
    .await?;
    let replicas = env
        .wait_for_replicas("a scale-up by the new leader", TAKE_UP, |r| r >= 2)
        .await?;
    assert!(replicas <= 10, "{replicas}");
    let status = until(TAKE_UP, "status from the new leader", || async {
        let s = env.trigger_status();
        s["desiredReplicas"]
            .as_i64()
            .is_some_and(|d| d >= 2)
            .then_some(s)
    })
    .await?;
    assert_eq!(
        condition(&status, "AbleToScale").map(|c| c.0),
        Some("True".into()),
        "{status}"
    );
    let lease = env.api.get(&leases, LEASE_NS, LEASE_NAME);
    assert_eq!(
        lease.map(|l| l["spec"]["holderIdentity"].clone()),
        Some(json!("ctl-0"))
    );
    load.finish().await?;
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_decisions_show_in_the_controller_metrics() -> anyhow::Result<()> {
    let env = Loop::start(Loop::workload()).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    env.wait_for_ready_replicas().await?;
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"window": "5s", "behavior": behavior(30)}),
    ))?;
    env.wait_for_trigger(1, TAKE_UP).await?;
    assert_eq!(
        controller_metric(&env, "sluice_desired_replicas{trigger=\"shop/web\"}").await?,
        Some(1.0)
    );

    let load = Load::paced(&env.http, &env.addrs(), HOST, 5.0 * TARGET_RPS);
    env.wait_for_replicas("a scale-up", Duration::from_secs(40), |r| r >= 2)
        .await?;
    let up = "sluice_scale_decisions_total{trigger=\"shop/web\",direction=\"up\"}";
    // The counter moves once the patch has been answered, a moment after
    // the API server stored it.
    let decisions = until(Duration::from_secs(10), "a counted decision", || async {
        controller_metric(&env, up)
            .await
            .ok()?
            .filter(|n| *n >= 1.0)
    })
    .await?;
    assert!(decisions >= 1.0, "{decisions}");
    // The gauge is the count last decided, which the Deployment carries
    // (read together until they agree: the count may still be moving).
    let (gauge, replicas) = until(Duration::from_secs(20), "the gauge to match", || async {
        let gauge = controller_metric(&env, "sluice_desired_replicas{trigger=\"shop/web\"}")
            .await
            .ok()??;
        let replicas = env.spec_replicas();
        (gauge == replicas as f64).then_some((gauge, replicas))
    })
    .await?;
    assert!(replicas >= 2, "{gauge} {replicas}");
    let (_, failed) = load.finish().await?;
    assert_eq!(failed, 0);
    env.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_timezone_is_a_condition_and_an_event_and_nothing_scales() -> anyhow::Result<()>
{
    let env = Loop::start(Loop::workload()).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    // Valid, minReplicas 2 would scale the target at the first pass.
    let schedule = |timezone: &str| json!([{"name": "office", "cron": "0 9 * * *", "timezone": timezone, "duration": "1h", "minReplicas": 3}]);
    let created = Instant::now();
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"minReplicas": 2, "window": "5s", "schedules": schedule("Mars/Olympus")}),
    ))?;

    let message = wait_for_condition(&env, "ScalingActive", "False", "InvalidSpec").await?;
    assert!(message.contains("spec.schedules[0].timezone"), "{message}");
    assert!(message.contains("Mars/Olympus"), "{message}");
    let note = wait_for_warning(&env, "InvalidSpec").await?;
    assert!(note.contains("spec.schedules[0].timezone"), "{note}");
    tokio::time::sleep(QUIET).await;
    assert_eq!(env.spec_replicas(), 1, "an invalid spec scales nothing");
    assert_eq!(scales_after(&env, created), Vec::<i32>::new());
    assert!(env.events("SuccessfulRescale").is_empty());

    // Corrected, the trigger works.
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"minReplicas": 2, "window": "5s", "schedules": schedule("Europe/Madrid")}),
    ))?;
    env.wait_for_replicas("a scale to at least 2", TAKE_UP, |r| r >= 2)
        .await?;
    until(TAKE_UP, "ScalingActive no longer InvalidSpec", || async {
        condition(&env.trigger_status(), "ScalingActive").filter(|(_, r)| r != "InvalidSpec")
    })
    .await?;
    env.stop().await;
    Ok(())
}

/// A trigger pinned at `maxReplicas` under load says so twice: in its
/// `ScalingLimited` condition and in `sluice_scaling_limited`, the series
/// an alert can read (1 for `TooManyReplicas`, 0 for the other reasons).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_held_at_max_replicas_is_limited_in_status_and_metrics() -> anyhow::Result<()> {
    let env = Loop::start(Loop::workload()).await?;
    env.cluster.wait_settled(1, Duration::from_secs(10)).await?;
    env.wait_for_ready_replicas().await?;
    env.api.apply(trigger(
        TARGET_RPS,
        json!({"maxReplicas": 2, "window": "5s", "behavior": behavior(30)}),
    ))?;
    env.wait_for_trigger(1, TAKE_UP).await?;
    let series = |reason: &str| {
        format!("sluice_scaling_limited{{trigger=\"{NS}/web\",reason=\"{reason}\"}}")
    };
    assert_eq!(
        controller_metric(&env, &series("TooManyReplicas")).await?,
        Some(0.0),
        "not limited while idle at one replica"
    );
    // Ten times the target wants about ten replicas; two are allowed.
    let load = Load::paced(&env.http, &env.addrs(), HOST, 10.0 * TARGET_RPS);
    wait_for_condition(&env, "ScalingLimited", "True", "TooManyReplicas").await?;
    until(
        TAKE_UP,
        "sluice_scaling_limited to say TooManyReplicas",
        || async {
            let limited = controller_metric(&env, &series("TooManyReplicas"))
                .await
                .ok()??;
            let mut others = Vec::new();
            for reason in ["TooFewReplicas", "ScaleUpLimit", "ScaleDownLimit"] {
                others.push(controller_metric(&env, &series(reason)).await.ok()??);
            }
            (limited == 1.0 && others.iter().all(|v| *v == 0.0)).then_some(())
        },
    )
    .await?;
    assert_eq!(env.spec_replicas(), 2, "maxReplicas holds");
    let (_, failed) = load.finish().await?;
    assert_eq!(failed, 0);
    env.stop().await;
    Ok(())
}
