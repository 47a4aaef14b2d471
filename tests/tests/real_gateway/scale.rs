//! Sluice's own policies behind a route: an HTTPRoute whose backendRef is
//! a BackendPool (`group: sluice.io, kind: BackendPool`) with a
//! ScalingTrigger on that pool, at zero replicas; a request through the
//! route is held while the trigger brings a pod up, and is answered by it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use sluice_tests::closed_loop::HELD_REQUEST_LIMIT;
use sluice_tests::kube::gateway;
use sluice_tests::wait;

use crate::{Env, by};

pub async fn a_backend_pool_on_a_route_scales_from_zero(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-scale";
    let host = "scale.example.com";
    gateway::namespace_with_echo(env.cp(), ns, &[], &[]).await?;
    // The route first: a pool without hosts is then never published as a
    // catch-all for every host, even for a moment.
    let route = crate::http_gateway(ns, "gw")
        + &format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: scaled, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
    - backendRefs: [{{group: sluice.io, kind: BackendPool, name: web}}]
"#
        );
    env.apply("gw-scale-route.yaml", &route)?;
    env.status("HTTPRoute", ns, "scaled", "the pool not found yet", |r| {
        gateway::route_condition(r, "gw", "ResolvedRefs", "False", "BackendNotFound")
    })
    .await?;

    let workload = gateway::echo_yaml(ns, "web", 0)
        + &format!(
            r#"
---
apiVersion: sluice.io/v1alpha1
kind: BackendPool
metadata: {{name: web, namespace: {ns}}}
spec:
  backends: [{{service: web, port: http}}]
  algorithm: LeastRequest
---
apiVersion: sluice.io/v1alpha1
kind: ScalingTrigger
metadata: {{name: web, namespace: {ns}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}
  poolRef: {{name: web}}
  minReplicas: 0
  maxReplicas: 2
  window: 5s
  idleAfter: 5m
  metrics: [{{type: RequestsPerSecond, averageValue: 10}}]
"#
        );
    env.apply("gw-scale-pool.yaml", &workload)?;
    env.status("HTTPRoute", ns, "scaled", "the pool resolved", |r| {
        gateway::route_condition(r, "gw", "ResolvedRefs", "True", "ResolvedRefs")
            && gateway::route_condition(r, "gw", "Accepted", "True", "Accepted")
    })
    .await?;

    // Every dataplane holds the pool waiting for activation.
    let pool = format!("{ns}/web");
    for addr in &env.dataplanes {
        let admin = SocketAddr::new(addr.ip(), 9901);
        wait::until(
            Duration::from_secs(60),
            &format!("activation on {pool} in {admin}"),
            || {
                let (http, pool) = (env.http.clone(), pool.clone());
                async move {
                    let a = http.get(admin, "localhost", "/debug/routes").await.ok()?;
                    let routes: serde_json::Value = serde_json::from_str(&a.body).ok()?;
                    routes["pools"]
                        .as_array()?
                        .iter()
                        .find(|p| p["name"] == pool.as_str())
                        .filter(|p| p["activation"].is_object())
                        .map(|_| ())
                }
            },
        )
        .await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    let replicas = |d: Deployment| d.spec.and_then(|s| s.replicas).unwrap_or(-1);
    assert_eq!(replicas(deployments.get("web").await?), 0, "at zero");

    // Through the route, a request is held until a pod started for it
    // answers.
    let req = http::Request::get(format!("http://{}/held?x=1", env.dataplanes[0]))
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::new())?;
    let answer = env.http.send_within(req, HELD_REQUEST_LIMIT).await?;
    assert!(
        by(&answer, ns, "web"),
        "the held request: {} {}",
        answer.status,
        answer.body
    );
    let seen = gateway::echoed(&answer)?;
    assert_eq!(seen["path"], "/held", "{seen}");
    assert_eq!(seen["host"], host, "{seen}");
    assert_eq!(
        replicas(deployments.get("web").await?),
        1,
        "one pod brought up"
    );

    // Reached only through the route: the pool without hosts catches no
    // other host.
    let a = env
        .send("GET", "not-the-pool.example.com", "/", &[])
        .await?;
    assert_eq!(a.status, 404, "{}", a.body);
    Ok(())
}
