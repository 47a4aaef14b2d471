//! Gateway API on the real control plane: the upstream v1.5.1 standard
//! CRDs, the chart with its GatewayClass, echo backends that say which pod
//! and namespace answered and what request they saw, and reading back the
//! status the API server holds. The scenarios are in
//! `tests/tests/real_gateway/`; see docs/gateway-conformance.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::chart;
use super::controlplane::ControlPlane;
use super::host::repo_root;
use crate::client::Answer;
use crate::wait;

/// The Gateway API release whose CRDs are installed.
pub const GATEWAY_API_VERSION: &str = "v1.5.1";
/// The GatewayClass the chart creates.
pub const CLASS: &str = "sluice";
/// The controller name Sluice answers for.
pub const CONTROLLER_NAME: &str = "sluice.io/gateway-controller";
/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// The standard-channel CRD files installed on the v1.28 API server. Left
/// out, as they need Kubernetes 1.30 or later: `tlsroutes` (its hostname
/// rule calls CEL's `isIP()`, which the 1.28 API server does not know, so
/// it refuses the CRD) and `vap_safeupgrades` (a
/// ValidatingAdmissionPolicy, `admissionregistration.k8s.io/v1`, served
/// from 1.30). Sluice serves no TLSRoute, and the policy only guards
/// upgrades of the CRDs themselves.
const CRD_FILES: &[&str] = &[
    "gatewayclasses",
    "gateways",
    "httproutes",
    "grpcroutes",
    "referencegrants",
    "backendtlspolicies",
    "listenersets",
];

/// The directory of the upstream CRDs: `shared/gateway-api/<version>` in
/// the nearest ancestor of the checkout that has one (as the Kubernetes
/// binaries are found).
pub fn crd_dir() -> anyhow::Result<PathBuf> {
    repo_root()
        .ancestors()
        .skip(1)
        .map(|a| a.join("shared/gateway-api").join(GATEWAY_API_VERSION))
        .find(|d| d.is_dir())
        .with_context(|| {
            format!(
                "no shared/gateway-api/{GATEWAY_API_VERSION} beside the checkout (the upstream CRDs)"
            )
        })
}

/// Applies the standard CRDs (see [`CRD_FILES`]) and waits until the API
/// server serves them.
pub fn install_crds(cp: &ControlPlane) -> anyhow::Result<()> {
    let dir = crd_dir()?;
    let mut names = Vec::new();
    for f in CRD_FILES {
        let path = dir.join(format!("{GROUP}_{f}.yaml"));
        cp.kubectl(&["apply", "--server-side", "-f", &path.to_string_lossy()])?;
        names.push(format!("crd/{f}.{GROUP}"));
    }
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    args.extend(names.iter().map(String::as_str));
    cp.kubectl(&args)?;
    Ok(())
}

/// The chart's values with the GatewayClass on (everything else the
/// defaults of [`chart::values_for_1_28`]).
pub fn chart_values() -> Value {
    let mut v = chart::values_for_1_28();
    v["gatewayClass"] = json!({"create": true});
    v
}

/// Installs the Gateway API CRDs, then the chart with its GatewayClass, and
/// waits until the controller and the dataplanes are available.
pub async fn install(cp: &ControlPlane) -> anyhow::Result<()> {
    install_crds(cp)?;
    chart::install(cp, &chart_values()).await?;
    Ok(())
}

/// Applies `yaml` (one or more documents) with `kubectl apply
/// --server-side`; `name` names the file kept in the run's directory.
pub fn apply(cp: &ControlPlane, name: &str, yaml: &str) -> anyhow::Result<()> {
    let file = cp.dir().join(name);
    std::fs::write(&file, yaml)?;
    cp.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &file.to_string_lossy(),
    ])?;
    Ok(())
}

/// Echo backend `name` in namespace `ns`: a Deployment of `replicas` echo
/// pods (told their pod name and namespace by the downward API) and a
/// Service `name` on port 8080, as upstream's infra-backend-v1..v3.
pub fn echo_yaml(ns: &str, name: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: echo
          image: sluice.test/echo
          args: ["--name=$(POD_NAME)", "--namespace=$(POD_NAMESPACE)", "--listen=0.0.0.0:3000"]
          env:
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
            - name: POD_NAMESPACE
              valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
          ports: [{{name: http, containerPort: 3000}}]
          readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
      terminationGracePeriodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"#
    )
}

/// Creates namespace `ns` (labelled `gateway-scenario: <ns>` and any
/// `labels`) and the echo backends `names` in it (one pod each), and waits
/// until they are available.
pub async fn namespace_with_echo(
    cp: &ControlPlane,
    ns: &str,
    labels: &[(&str, &str)],
    names: &[&str],
) -> anyhow::Result<()> {
    let mut extra = String::new();
    for (k, v) in labels {
        extra.push_str(&format!(", {k}: {v}"));
    }
    let mut yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{gateway-scenario: {ns}{extra}}}}}\n"
    );
    for n in names {
        yaml.push_str("---\n");
        yaml.push_str(&echo_yaml(ns, n, 1));
    }
    apply(cp, &format!("{ns}-echo.yaml"), &yaml)?;
    let deployments: Api<Deployment> = Api::namespaced(cp.client().await?, ns);
    for n in names {
        chart::wait_available(&deployments, n, Duration::from_secs(90)).await?;
    }
    Ok(())
}

/// The Gateway API resource of `kind` (v1, or v1beta1 for ReferenceGrant).
fn resource(kind: &str) -> ApiResource {
    let version = if kind == "ReferenceGrant" {
        "v1beta1"
    } else {
        "v1"
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, version, kind))
}

/// Object `kind` `ns/name` as the API server holds it (`ns` empty for a
/// cluster-scoped one), as JSON; `None` when it does not exist.
pub async fn get(
    client: &kube::Client,
    kind: &str,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<Value>> {
    let ar = resource(kind);
    let api: Api<DynamicObject> = if ns.is_empty() {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), ns, &ar)
    };
    let obj = api.get_opt(name).await?;
    obj.map(|o| serde_json::to_value(o).context("object to JSON"))
        .transpose()
}

/// Condition `type_` in `conditions` (a JSON list): its status and reason.
pub fn condition(conditions: &Value, type_: &str) -> Option<(String, String)> {
    conditions.as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// The conditions as `type=status/reason` strings, for messages.
pub fn show(conditions: &Value) -> Vec<String> {
    conditions
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| format!("{}={}/{}", c["type"], c["status"], c["reason"]))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every condition in `conditions` carries `observedGeneration`
/// equal to `generation`.
pub fn observed(conditions: &Value, generation: &Value) -> bool {
    conditions
        .as_array()
        .is_some_and(|l| !l.is_empty() && l.iter().all(|c| &c["observedGeneration"] == generation))
}

/// Waits until `check` holds for object `kind` `ns/name`; the object.
/// Fails after `limit` with the last status seen.
pub async fn wait_for(
    client: &kube::Client,
    kind: &str,
    ns: &str,
    name: &str,
    what: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let got = wait::until(limit, &format!("{kind} {ns}/{name}: {what}"), || {
        let found = get(client, kind, ns, name);
        let (last, check) = (&last, &check);
        async move {
            let obj = found.await.ok()??;
            let ok = check(&obj);
            if let Ok(mut l) = last.lock() {
                *l = obj.clone();
            }
            ok.then_some(obj)
        }
    })
    .await;
    got.map_err(|e| {
        let seen = last
            .lock()
            .map(|l| l["status"].to_string())
            .unwrap_or_default();
        e.context(format!("status last seen: {seen}"))
    })
}

/// The route's status entry for a parent `gateway` of our controller.
pub fn route_parent<'a>(route: &'a Value, gateway: &str) -> Option<&'a Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME && p["parentRef"]["name"] == gateway)
}

/// Whether the route's status for parent `gateway` has condition `type_`
/// with `status` and `reason`.
pub fn route_condition(
    route: &Value,
    gateway: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> bool {
    route_parent(route, gateway)
        .and_then(|p| condition(&p["conditions"], type_))
        .is_some_and(|(s, r)| s == status && r == reason)
}

/// What the echo backend saw, from its JSON answer.
pub fn echoed(answer: &Answer) -> anyhow::Result<Value> {
    serde_json::from_str(answer.body.trim()).with_context(|| {
        format!(
            "not an echo answer (status {}): {:?}",
            answer.status, answer.body
        )
    })
}

/// Sends requests through `addr` until one is answered as `ok` says (a
/// route change takes a moment to reach the dataplanes), at most `limit`
/// and 2000 requests; the answer, or the last one seen in the error.
pub async fn until_answer<F>(
    what: &str,
    limit: Duration,
    mut send: impl FnMut() -> F,
    ok: impl Fn(&Answer) -> bool,
) -> anyhow::Result<Answer>
where
    F: Future<Output = anyhow::Result<Answer>>,
{
    let start = std::time::Instant::now();
    let mut last = String::from("nothing sent");
    for _ in 0..2000 {
        match send().await {
            Ok(a) if ok(&a) => return Ok(a),
            Ok(a) => last = format!("status {} body {:?}", a.status, a.body),
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{what}: no such answer within {limit:?}; last: {last}")
}

/// The dataplane pods' HTTPS listeners (`<pod IP>:8443`).
pub async fn https_listeners(client: &kube::Client) -> anyhow::Result<Vec<SocketAddr>> {
    super::app::dataplanes(client)
        .await?
        .into_iter()
        .map(|(_, a)| Ok(SocketAddr::new(a.ip(), 8443)))
        .collect()
}
