//! The GatewayClass, Gateways and their listeners: what status the API
//! server holds for them, which listeners take which routes, and hostname
//! intersection between listeners and routes (upstream: gatewayclass-*,
//! gateway-*, httproute-simple-same-namespace,
//! httproute-hostname-intersection, httproute-listener-hostname-matching).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use serde_json::Value;
use sluice_tests::kube::{chart, gateway};

use crate::{Env, by, http_gateway};

/// The GatewayClass features the scenarios of this binary exercise: the
/// class may claim only these (a claimed feature nothing here checks would
/// be an untested promise), and must claim the core ones.
const COVERED_FEATURES: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "ReferenceGrant",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
];

/// The core features every GATEWAY-HTTP implementation claims.
const CORE_FEATURES: &[&str] = &["Gateway", "HTTPRoute", "ReferenceGrant"];

pub async fn the_gateway_class_is_accepted_with_the_features_that_work(
    env: Arc<Env>,
) -> anyhow::Result<()> {
    let class = env
        .status("GatewayClass", "", gateway::CLASS, "Accepted", |c| {
            gateway::condition(&c["status"]["conditions"], "Accepted")
                == Some(("True".into(), "Accepted".into()))
        })
        .await?;
    assert_eq!(class["spec"]["controllerName"], gateway::CONTROLLER_NAME);
    assert!(
        gateway::observed(
            &class["status"]["conditions"],
            &class["metadata"]["generation"]
        ),
        "conditions carry the generation: {}",
        class["status"]
    );
    let features: Vec<String> = class["status"]["supportedFeatures"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut sorted = features.clone();
    sorted.sort();
    assert_eq!(
        features, sorted,
        "supportedFeatures sorted by name, as the spec says"
    );
    for core in CORE_FEATURES {
        assert!(
            features.iter().any(|f| f == core),
            "core feature {core} claimed: {features:?}"
        );
    }
    // A change to the class is observed: its conditions carry the new
    // generation.
    env.cp().kubectl(&[
        "patch",
        "gatewayclass",
        gateway::CLASS,
        "--type=merge",
        "-p",
        r#"{"spec":{"description":"observed by the real_gateway test"}}"#,
    ])?;
    env.status(
        "GatewayClass",
        "",
        gateway::CLASS,
        "the new generation observed",
        |c| {
            c["metadata"]["generation"] != class["metadata"]["generation"]
                && gateway::observed(&c["status"]["conditions"], &c["metadata"]["generation"])
        },
    )
    .await?;
    let untested: Vec<&String> = features
        .iter()
        .filter(|f| !COVERED_FEATURES.contains(&f.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "claimed features that no scenario checks: {untested:?}"
    );
    Ok(())
}

pub async fn a_route_in_the_gateways_namespace_reaches_its_backend(
    env: Arc<Env>,
) -> anyhow::Result<()> {
    let ns = "gw-simple";
    gateway::namespace_with_echo(env.cp(), ns, &[], &["infra-backend-v1"]).await?;
    let route = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: simple, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [simple.example.com]
  rules:
    - backendRefs: [{{name: infra-backend-v1, port: 8080}}]
"#
    );
    env.apply("gw-simple.yaml", &(http_gateway(ns, "gw") + "---" + &route))?;

    // Through each dataplane, the request as sent reaches the pod.
    for dp in &env.dataplanes {
        let a = gateway::until_answer(
            "the simple route",
            crate::SETTLE,
            || env.send_via(*dp, "GET", "simple.example.com", "/hello?x=1", &[]),
            |a| by(a, ns, "infra-backend-v1"),
        )
        .await?;
        let seen = gateway::echoed(&a)?;
        assert_eq!(seen["method"], "GET");
        assert_eq!(seen["path"], "/hello");
        assert_eq!(seen["query"], "x=1");
        assert_eq!(seen["host"], "simple.example.com");
    }
    let other = env.send("GET", "unrouted.example.com", "/", &[]).await?;
    assert_eq!(other.status, 404, "a host no route names: {}", other.body);

    // The route's status for its parent.
    let r = env
        .status(
            "HTTPRoute",
            ns,
            "simple",
            "Accepted and ResolvedRefs",
            |r| {
                gateway::route_condition(r, "gw", "Accepted", "True", "Accepted")
                    && gateway::route_condition(r, "gw", "ResolvedRefs", "True", "ResolvedRefs")
            },
        )
        .await?;
    let parent = gateway::route_parent(&r, "gw").cloned().unwrap_or_default();
    assert!(
        gateway::observed(&parent["conditions"], &r["metadata"]["generation"]),
        "route conditions carry its generation: {parent}"
    );

    // The Gateway's: accepted, programmed, the dataplane Service's address,
    // one route on its listener.
    let gw = env
        .status(
            "Gateway",
            ns,
            "gw",
            "Programmed with one attached route",
            |g| {
                gateway::condition(&g["status"]["conditions"], "Programmed")
                    == Some(("True".into(), "Programmed".into()))
                    && g["status"]["listeners"][0]["attachedRoutes"] == 1
            },
        )
        .await?;
    let st = &gw["status"];
    assert_eq!(
        gateway::condition(&st["conditions"], "Accepted"),
        Some(("True".into(), "Accepted".into())),
        "{}",
        st
    );
    assert!(
        gateway::observed(&st["conditions"], &gw["metadata"]["generation"]),
        "Gateway conditions carry its generation: {st}"
    );
    let services: Api<Service> = Api::namespaced(env.client.clone(), chart::NAMESPACE);
    let svc = services.get("sluice-dataplane").await?;
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let addresses: Vec<&Value> = st["addresses"].as_array().into_iter().flatten().collect();
    assert!(
        addresses
            .iter()
            .any(|a| a["value"] == cluster_ip.as_str() && a["type"] == "IPAddress"),
        "status.addresses holds the dataplane Service's {cluster_ip}: {addresses:?}"
    );
    let listener = &st["listeners"][0];
    assert_eq!(listener["name"], "http");
    for (type_, status, reason) in [
        ("Accepted", "True", "Accepted"),
        ("Programmed", "True", "Programmed"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Conflicted", "False", "NoConflicts"),
    ] {
        assert_eq!(
            gateway::condition(&listener["conditions"], type_),
            Some((status.into(), reason.into())),
            "listener {type_}: {}",
            listener
        );
    }
    assert!(
        listener["supportedKinds"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["kind"] == "HTTPRoute")),
        "the listener takes HTTPRoutes: {listener}"
    );

    // A second route on the same listener counts, and is served.
    let second = route
        .replace("name: simple", "name: simple-two")
        .replace("simple.example.com", "two.simple.example.com");
    env.apply("gw-simple-two.yaml", &second)?;
    env.answered_by("two.simple.example.com", "/", ns, "infra-backend-v1")
        .await?;
    env.status("Gateway", ns, "gw", "two attached routes", |g| {
        g["status"]["listeners"][0]["attachedRoutes"] == 2
    })
    .await?;

    // A changed route (a rule to a headless Service added) is served and
    // its status carries the new generation.
    let headless = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: headless, namespace: {ns}}}\nspec:\n  clusterIP: None\n  selector: {{app: infra-backend-v1}}\n  ports: [{{name: http, port: 8080, targetPort: http}}]\n"
    );
    let changed = route.replace(
        "  rules:\n",
        "  rules:\n    - matches: [{path: {type: PathPrefix, value: /headless}}]\n      backendRefs: [{name: headless, port: 8080}]\n",
    );
    env.apply("gw-simple-changed.yaml", &(headless + "---" + &changed))?;
    let seen = env
        .answered_by("simple.example.com", "/headless/a", ns, "infra-backend-v1")
        .await?;
    assert_eq!(seen["path"], "/headless/a", "{seen}");
    env.status(
        "HTTPRoute",
        ns,
        "simple",
        "the new generation observed",
        |r| {
            let parent = gateway::route_parent(r, "gw").cloned().unwrap_or_default();
            r["metadata"]["generation"] == 2
                && gateway::observed(&parent["conditions"], &r["metadata"]["generation"])
                && gateway::route_condition(r, "gw", "ResolvedRefs", "True", "ResolvedRefs")
        },
    )
    .await?;

    // A Service without a selector, its EndpointSlice written by hand (as
    // for endpoints outside the cluster): the slice's address answers.
    let (_, ip) = sluice_tests::kube::app::pods(&env.client, ns, "app=infra-backend-v1")
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no infra-backend-v1 pod"))?;
    let manual = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: manual, namespace: {ns}}}
spec:
  ports: [{{name: http, port: 8080, targetPort: 3000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  namespace: {ns}
  labels: {{kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{{name: http, port: 3000, protocol: TCP}}]
endpoints: [{{addresses: ["{ip}"], conditions: {{ready: true}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: manual, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [manual.simple.example.com]
  rules:
    - backendRefs: [{{name: manual, port: 8080}}]
"#
    );
    env.apply("gw-simple-manual.yaml", &manual)?;
    env.answered_by("manual.simple.example.com", "/", ns, "infra-backend-v1")
        .await?;
    Ok(())
}

pub async fn listeners_sluice_cannot_serve_say_why(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-listeners";
    gateway::namespace_with_echo(env.cp(), ns, &[], &["infra-backend-v1"]).await?;
    let yaml = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {ns}}}
spec:
  gatewayClassName: {class}
  listeners:
    - {{name: ok, port: 80, protocol: HTTP, hostname: ok.listeners.example.com}}
    - {{name: odd-port, port: 8081, protocol: HTTP, hostname: odd.listeners.example.com}}
    - name: bad-kind
      port: 80
      protocol: HTTP
      hostname: kind.listeners.example.com
      allowedRoutes: {{kinds: [{{kind: FooRoute}}]}}
    - name: mixed-kinds
      port: 80
      protocol: HTTP
      hostname: mixed.listeners.example.com
      allowedRoutes: {{kinds: [{{kind: HTTPRoute}}, {{kind: FooRoute}}]}}
    - {{name: tcp, port: 80, protocol: TCP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
    - backendRefs: [{{name: infra-backend-v1, port: 8080}}]
"#,
        class = gateway::CLASS
    );
    env.apply("gw-listeners.yaml", &yaml)?;
    let listener = |g: &Value, name: &str| -> Value {
        g["status"]["listeners"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == name).cloned())
            .unwrap_or_default()
    };
    let has = |l: &Value, type_: &str, status: &str, reason: &str| {
        gateway::condition(&l["conditions"], type_) == Some((status.into(), reason.into()))
    };
    let gw = env
        .status("Gateway", ns, "gw", "the listeners' verdicts", |g| {
            has(&listener(g, "ok"), "Programmed", "True", "Programmed")
                && listener(g, "ok")["attachedRoutes"] == 1
                && has(
                    &listener(g, "odd-port"),
                    "Accepted",
                    "False",
                    "PortUnavailable",
                )
                && has(
                    &listener(g, "bad-kind"),
                    "ResolvedRefs",
                    "False",
                    "InvalidRouteKinds",
                )
                && has(
                    &listener(g, "tcp"),
                    "Accepted",
                    "False",
                    "UnsupportedProtocol",
                )
                && has(
                    &listener(g, "mixed-kinds"),
                    "ResolvedRefs",
                    "False",
                    "InvalidRouteKinds",
                )
                && listener(g, "mixed-kinds")["attachedRoutes"] == 1
        })
        .await?;
    let ok = listener(&gw, "ok");
    assert_eq!(
        ok["attachedRoutes"], 1,
        "the route on the valid listener: {ok}"
    );
    for name in ["odd-port", "tcp"] {
        let l = listener(&gw, name);
        assert_eq!(
            gateway::condition(&l["conditions"], "Programmed").map(|c| c.0),
            Some("False".to_string()),
            "listener {name} is not programmed: {l}"
        );
    }
    let kinds = listener(&gw, "bad-kind");
    assert_eq!(
        kinds["supportedKinds"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0),
        0,
        "no kind it can take: {kinds}"
    );

    // Partly invalid kinds: the valid one is supported and served.
    let mixed = listener(&gw, "mixed-kinds");
    let kinds: Vec<&Value> = mixed["supportedKinds"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    assert!(
        kinds.len() == 1 && kinds[0]["kind"] == "HTTPRoute",
        "only HTTPRoute supported: {mixed}"
    );

    // The valid listeners serve; the others do not.
    env.answered_by("ok.listeners.example.com", "/", ns, "infra-backend-v1")
        .await?;
    env.answered_by("mixed.listeners.example.com", "/", ns, "infra-backend-v1")
        .await?;
    for host in ["odd.listeners.example.com", "kind.listeners.example.com"] {
        let a = env.send("GET", host, "/", &[]).await?;
        assert_eq!(
            a.status, 404,
            "{host} is served by no valid listener: {}",
            a.body
        );
    }

    // Listeners changed: the port one gone, a new one added and serving,
    // the status of the new generation.
    let changed = yaml.replace(
        "    - {name: odd-port, port: 8081, protocol: HTTP, hostname: odd.listeners.example.com}\n",
        "    - {name: added, port: 80, protocol: HTTP, hostname: added.listeners.example.com}\n",
    );
    assert_ne!(changed, yaml, "the listener to replace is in the Gateway");
    env.apply("gw-listeners.yaml", &changed)?;
    env.answered_by("added.listeners.example.com", "/", ns, "infra-backend-v1")
        .await?;
    env.status("Gateway", ns, "gw", "the changed listeners observed", |g| {
        g["metadata"]["generation"] == 2
            && gateway::observed(&g["status"]["conditions"], &g["metadata"]["generation"])
            && listener(g, "odd-port").is_null()
            && listener(g, "added")["attachedRoutes"] == 1
            && gateway::observed(
                &listener(g, "added")["conditions"],
                &g["metadata"]["generation"],
            )
    })
    .await?;
    Ok(())
}

pub async fn hostnames_intersect_with_the_listeners(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-hosts";
    let backends = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"];
    gateway::namespace_with_echo(env.cp(), ns, &[], &backends).await?;
    let route = |name: &str, parent: &str, hostnames: &str, backend: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{parent}]
  hostnames: {hostnames}
  rules:
    - backendRefs: [{{name: {backend}, port: 8080}}]
"#
        )
    };
    let mut yaml = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {ns}}}
spec:
  gatewayClassName: {class}
  listeners:
    - {{name: bar, port: 80, protocol: HTTP, hostname: bar.hosts.example.com}}
    - {{name: wild, port: 80, protocol: HTTP, hostname: "*.wild.hosts.example.com"}}
    - {{name: deep, port: 80, protocol: HTTP, hostname: "*.deep.wild.hosts.example.com"}}
"#,
        class = gateway::CLASS
    );
    // No hostnames: the listener's.
    yaml += &route("to-bar", "{name: gw, sectionName: bar}", "[]", backends[0]);
    // Only the hostname inside the wildcard listener is served.
    yaml += &route(
        "to-wild",
        "{name: gw, sectionName: wild}",
        "[a.wild.hosts.example.com, other.example.net]",
        backends[1],
    );
    // No sectionName: attaches where the hostnames intersect (wild only).
    yaml += &route(
        "any",
        "{name: gw}",
        "[x.wild.hosts.example.com]",
        backends[2],
    );
    // A route on each wildcard listener, one inside the other.
    yaml += &route(
        "wild-all",
        "{name: gw, sectionName: wild}",
        "[]",
        backends[0],
    )
    .replace(
        "    - backendRefs",
        "    - matches: [{path: {type: PathPrefix, value: /wild-all}}]\n      backendRefs",
    );
    yaml += &route("deep", "{name: gw, sectionName: deep}", "[]", backends[2]).replace(
        "    - backendRefs",
        "    - matches: [{path: {type: PathPrefix, value: /deep}}]\n      backendRefs",
    );
    // Intersects with no listener.
    yaml += &route(
        "nowhere",
        "{name: gw}",
        "[nomatch.example.org]",
        backends[0],
    );
    env.apply("gw-hosts.yaml", &yaml)?;

    env.answered_by("bar.hosts.example.com", "/", ns, backends[0])
        .await?;
    env.answered_by("a.wild.hosts.example.com", "/", ns, backends[1])
        .await?;
    env.answered_by("x.wild.hosts.example.com", "/", ns, backends[2])
        .await?;
    env.answered_by("z.wild.hosts.example.com", "/wild-all", ns, backends[0])
        .await?;
    env.answered_by("a.deep.wild.hosts.example.com", "/deep", ns, backends[2])
        .await?;
    // Every route processed (the one that attaches nowhere too) before
    // what must not be served is checked.
    env.status(
        "HTTPRoute",
        ns,
        "nowhere",
        "NoMatchingListenerHostname",
        |r| gateway::route_condition(r, "gw", "Accepted", "False", "NoMatchingListenerHostname"),
    )
    .await?;

    for host in [
        "other.example.net",
        "nomatch.example.org",
        "y.wild.hosts.example.com",
        "wild.hosts.example.com",
        "x.bar.hosts.example.com",
    ] {
        let a = env.send("GET", host, "/", &[]).await?;
        assert_eq!(a.status, 404, "{host} is not served: {}", a.body);
    }
    for name in ["to-bar", "to-wild", "any", "wild-all", "deep"] {
        env.status("HTTPRoute", ns, name, "Accepted", |r| {
            gateway::route_condition(r, "gw", "Accepted", "True", "Accepted")
        })
        .await?;
    }
    env.status("Gateway", ns, "gw", "routes counted per listener", |g| {
        let counts: BTreeSet<(String, i64)> = g["status"]["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                (
                    l["name"].as_str().unwrap_or_default().to_string(),
                    l["attachedRoutes"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        counts
            == BTreeSet::from([
                ("bar".to_string(), 1),
                ("wild".to_string(), 3),
                ("deep".to_string(), 1),
            ])
    })
    .await?;
    Ok(())
}
