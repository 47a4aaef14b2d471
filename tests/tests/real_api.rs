//! The CRDs on a real kube-apiserver v1.28.7: what its schema and CEL
//! validation refuse, with the CRDs' own messages, and that a refused
//! object is not stored. Needs etcd and the Kubernetes binaries, not root.
//! See docs/testing.md.

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use sluice_tests::kube::controlplane::ControlPlane;
use sluice_tests::kube::{chart, host};

fn pool(spec: Value) -> Value {
    json!({"apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool",
           "metadata": {"name": "p", "namespace": "default"}, "spec": spec})
}

fn trigger(spec: Value) -> Value {
    json!({"apiVersion": "sluice.io/v1alpha1", "kind": "ScalingTrigger",
           "metadata": {"name": "t", "namespace": "default"}, "spec": spec})
}

fn trigger_spec(min: i64, max: i64, metric: Value) -> Value {
    json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
           "poolRef": {"name": "web"}, "minReplicas": min, "maxReplicas": max, "metrics": [metric]})
}

fn api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sluice.io", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pools_and_triggers_are_refused_with_the_crds_messages() -> anyhow::Result<()> {
    if !host::check(false)? {
        return Ok(());
    }
    let cp = ControlPlane::start(host::programs()?, &[]).await?;
    chart::install_crds(&cp)?;
    let client = cp.client().await?;
    let svc = json!({"service": "web", "port": "http"});
    let refused = [
        (
            pool(json!({"backends": [{"service": "web", "port": 80, "address": "10.0.0.1:80"}]})),
            "a backend sets exactly one of service or address",
        ),
        (
            pool(json!({"backends": [{"service": "web"}]})),
            "a service backend needs a port",
        ),
        (
            pool(json!({"backends": [{"address": "10.0.0.1:80", "port": 80}]})),
            "an address backend carries its port in the address",
        ),
        (
            pool(
                json!({"backends": [svc], "algorithm": "RoundRobin", "hashKey": {"header": "x-user"}}),
            ),
            "hashKey is only used by RingHash and Maglev",
        ),
        (
            pool(json!({"backends": [svc], "tls": {"secretName": "cert"}})),
            "tls needs hosts (the certificate is chosen by SNI), and not '*'",
        ),
        (
            pool(json!({"backends": []})),
            "should have at least 1 items",
        ),
        (
            pool(json!({"backends": [{"address": "not-an-address"}]})),
            "should match",
        ),
        (
            trigger(trigger_spec(
                5,
                2,
                json!({"type": "RequestsPerSecond", "averageValue": 50}),
            )),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            trigger(trigger_spec(
                0,
                2,
                json!({"type": "LatencyP99", "averageValue": 50}),
            )),
            "LatencyP99 takes value (a duration); per-replica metrics take averageValue",
        ),
    ];
    for (obj, message) in &refused {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let api = api(&client, kind);
        let dyn_obj: DynamicObject = serde_json::from_value(obj.clone())?;
        match api.create(&PostParams::default(), &dyn_obj).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{kind} {obj}: {status:?}");
                assert!(
                    status.message.contains(message),
                    "{kind} {obj}: expected {message:?} in {:?}",
                    status.message
                );
            }
            other => panic!("{kind} {obj} was not refused: {other:?}"),
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            api.get_opt(name).await?.is_none(),
            "a refused {kind} was stored"
        );
    }
    // The same kinds, valid, are accepted: the refusals above are the rules'.
    for obj in [
        pool(json!({"hosts": ["web.example.com"], "backends": [svc]})),
        trigger(trigger_spec(
            0,
            2,
            json!({"type": "RequestsPerSecond", "averageValue": 50}),
        )),
    ] {
        let kind = obj["kind"].as_str().unwrap_or_default();
        api(&client, kind)
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj.clone())?,
            )
            .await?;
    }
    // RBAC is on: a ServiceAccount with no role may not read them.
    let sa = cp.client_for("default", "default").await?;
    match api(&sa, "BackendPool").list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("a ServiceAccount without a role listed BackendPools: {other:?}"),
    }
    Ok(())
}
