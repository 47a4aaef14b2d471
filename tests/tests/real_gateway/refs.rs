//! References across namespaces and to things that do not exist: routes
//! attach from the namespaces a listener allows, backends in another
//! namespace need a ReferenceGrant, invalid backends and parents are
//! reported and answered 500 (upstream: httproute-cross-namespace,
//! httproute-reference-grant, httproute-invalid-cross-namespace-backend-ref,
//! httproute-invalid-cross-namespace-parent-ref,
//! httproute-invalid-backendref-nonexistent,
//! httproute-invalid-backendref-unknown-kind,
//! httproute-invalid-parentref-not-matching-section-name).

use std::sync::Arc;

use sluice_tests::kube::gateway;

use crate::{Env, by};

pub async fn routes_attach_from_the_namespaces_a_listener_allows(
    env: Arc<Env>,
) -> anyhow::Result<()> {
    let (gw_ns, a, b) = ("gw-shared", "gw-shared-a", "gw-shared-b");
    gateway::namespace_with_echo(env.cp(), gw_ns, &[], &[]).await?;
    gateway::namespace_with_echo(
        env.cp(),
        a,
        &[("shared-gateway-access", "\"true\"")],
        &["web"],
    )
    .await?;
    gateway::namespace_with_echo(env.cp(), b, &[], &["web"]).await?;
    let route = |ns: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw, namespace: {gw_ns}}}]
  hostnames: [{ns}.shared.example.com]
  rules:
    - backendRefs: [{{name: web, port: 8080}}]
"#
        )
    };
    let yaml = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {gw_ns}}}
spec:
  gatewayClassName: {class}
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      hostname: "*.shared.example.com"
      allowedRoutes:
        namespaces:
          from: Selector
          selector: {{matchLabels: {{shared-gateway-access: "true"}}}}
{ra}{rb}"#,
        class = gateway::CLASS,
        ra = route(a),
        rb = route(b),
    );
    env.apply("gw-shared.yaml", &yaml)?;

    // The labelled namespace's route is served by its own pods.
    env.answered_by(&format!("{a}.shared.example.com"), "/", a, "web")
        .await?;
    env.status("HTTPRoute", a, "web", "Accepted", |r| {
        gateway::route_condition(r, "gw", "Accepted", "True", "Accepted")
    })
    .await?;
    // The other one is not allowed, and not served.
    env.status("HTTPRoute", b, "web", "NotAllowedByListeners", |r| {
        gateway::route_condition(r, "gw", "Accepted", "False", "NotAllowedByListeners")
    })
    .await?;
    let host_b = format!("{b}.shared.example.com");
    let refused = env.send("GET", &host_b, "/", &[]).await?;
    assert_eq!(refused.status, 404, "{host_b}: {}", refused.body);
    env.status("Gateway", gw_ns, "gw", "one attached route", |g| {
        g["status"]["listeners"][0]["attachedRoutes"] == 1
    })
    .await?;

    // Labelled too, it attaches.
    env.cp()
        .kubectl(&["label", "namespace", b, "shared-gateway-access=true"])?;
    env.answered_by(&host_b, "/", b, "web").await?;
    env.status("HTTPRoute", b, "web", "Accepted once labelled", |r| {
        gateway::route_condition(r, "gw", "Accepted", "True", "Accepted")
    })
    .await?;
    env.status("Gateway", gw_ns, "gw", "two attached routes", |g| {
        g["status"]["listeners"][0]["attachedRoutes"] == 2
    })
    .await?;
    Ok(())
}

pub async fn a_backend_in_another_namespace_needs_a_reference_grant(
    env: Arc<Env>,
) -> anyhow::Result<()> {
    let (ns, other) = ("gw-grant", "gw-grant-backend");
    gateway::namespace_with_echo(env.cp(), ns, &[], &["local"]).await?;
    gateway::namespace_with_echo(env.cp(), other, &[], &["infra-backend-v1"]).await?;
    let host = "grant.example.com";
    let yaml = crate::http_gateway(ns, "gw")
        + &format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: across, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /local}}}}]
      backendRefs: [{{name: local, port: 8080}}]
    - backendRefs: [{{name: infra-backend-v1, namespace: {other}, port: 8080}}]
"#
        );
    env.apply("gw-grant.yaml", &yaml)?;

    // Without a grant: refused, answered 500; the rule beside it works.
    env.status("HTTPRoute", ns, "across", "RefNotPermitted", |r| {
        gateway::route_condition(r, "gw", "ResolvedRefs", "False", "RefNotPermitted")
            && gateway::route_condition(r, "gw", "Accepted", "True", "Accepted")
    })
    .await?;
    env.answered_by(host, "/local", ns, "local").await?;
    let denied = env.until(host, "/", &[], |a| a.status == 500).await?;
    assert!(denied.backend.is_none(), "no backend answered: {denied:?}");

    // A grant in the backend's namespace for routes of this one.
    let grant = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: from-gw-grant, namespace: {other}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {ns}}}]
  to: [{{group: "", kind: Service}}]
"#
    );
    env.apply("gw-grant-grant.yaml", &grant)?;
    let seen = env
        .answered_by(host, "/", other, "infra-backend-v1")
        .await?;
    assert_eq!(seen["namespace"], other, "{seen}");
    env.status("HTTPRoute", ns, "across", "ResolvedRefs", |r| {
        gateway::route_condition(r, "gw", "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await?;

    // Grants that do not match do not do: the right one replaced by one
    // for another Service name, and others wrong in one field each (its
    // own namespace instead of the backend's, the from group, kind or
    // namespace, the to kind).
    let wrong = |name: &str, in_ns: &str, from: &str, to: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {in_ns}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n"
        )
    };
    let from = format!("{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {ns}}}");
    let to = "{group: \"\", kind: Service}";
    let wrongs = [
        wrong(
            "from-gw-grant",
            other,
            &from,
            "{group: \"\", kind: Service, name: someone-else}",
        ),
        wrong("wrong-namespace", ns, &from, to),
        wrong(
            "wrong-from-group",
            other,
            &from.replace("gateway.networking.k8s.io", "example.com"),
            to,
        ),
        wrong(
            "wrong-from-kind",
            other,
            &from.replace("HTTPRoute", "Gateway"),
            to,
        ),
        wrong(
            "wrong-from-namespace",
            other,
            &from.replace(&format!("namespace: {ns}"), "namespace: default"),
            to,
        ),
        wrong("wrong-to-kind", other, &from, "{group: \"\", kind: Secret}"),
    ]
    .concat();
    env.apply("gw-grant-grant.yaml", &wrongs)?;
    env.until(host, "/", &[], |a| a.status == 500).await?;
    env.status("HTTPRoute", ns, "across", "RefNotPermitted again", |r| {
        gateway::route_condition(r, "gw", "ResolvedRefs", "False", "RefNotPermitted")
    })
    .await?;

    // Deleted: back to refused.
    env.apply("gw-grant-grant.yaml", &grant)?;
    env.answered_by(host, "/", other, "infra-backend-v1")
        .await?;
    env.cp()
        .kubectl(&["delete", "referencegrant", "from-gw-grant", "-n", other])?;
    env.until(host, "/", &[], |a| a.status == 500).await?;
    Ok(())
}

pub async fn invalid_backends_and_parents_are_reported_and_answered_500(
    env: Arc<Env>,
) -> anyhow::Result<()> {
    let ns = "gw-invalid";
    gateway::namespace_with_echo(env.cp(), ns, &[], &["infra-backend-v1"]).await?;
    let route = |name: &str, parent: &str, backend: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{parent}]
  hostnames: [{name}.invalid.example.com]
  rules:
    - backendRefs: [{backend}]
"#
        )
    };
    let mut yaml = crate::http_gateway(ns, "gw");
    yaml += &route(
        "missing",
        "{name: gw}",
        "{name: does-not-exist, port: 8080}",
    );
    yaml += &route(
        "kind",
        "{name: gw}",
        "{group: unknown.example.com, kind: Widget, name: infra-backend-v1}",
    );
    yaml += &route(
        "half",
        "{name: gw}",
        "{name: infra-backend-v1, port: 8080, weight: 1}, {name: does-not-exist, port: 8080, weight: 1}",
    );
    yaml += &route(
        "section",
        "{name: gw, sectionName: no-such-listener}",
        "{name: infra-backend-v1, port: 8080}",
    );
    // parentRefs by port: the listener's port attaches, another does not.
    yaml += &route(
        "port",
        "{name: gw, port: 80}",
        "{name: infra-backend-v1, port: 8080}",
    );
    yaml += &route(
        "other-port",
        "{name: gw, port: 8080}",
        "{name: infra-backend-v1, port: 8080}",
    );
    env.apply("gw-invalid.yaml", &yaml)?;

    env.status("HTTPRoute", ns, "missing", "BackendNotFound", |r| {
        gateway::route_condition(r, "gw", "ResolvedRefs", "False", "BackendNotFound")
    })
    .await?;
    env.until("missing.invalid.example.com", "/", &[], |a| a.status == 500)
        .await?;
    env.status("HTTPRoute", ns, "kind", "InvalidKind", |r| {
        gateway::route_condition(r, "gw", "ResolvedRefs", "False", "InvalidKind")
    })
    .await?;
    env.until("kind.invalid.example.com", "/", &[], |a| a.status == 500)
        .await?;
    env.status("HTTPRoute", ns, "section", "NoMatchingParent", |r| {
        gateway::route_condition(r, "gw", "Accepted", "False", "NoMatchingParent")
    })
    .await?;
    let a = env
        .send("GET", "section.invalid.example.com", "/", &[])
        .await?;
    assert_eq!(
        a.status, 404,
        "a route on no listener is not served: {}",
        a.body
    );
    env.answered_by("port.invalid.example.com", "/", ns, "infra-backend-v1")
        .await?;
    env.status("HTTPRoute", ns, "other-port", "NoMatchingParent", |r| {
        gateway::route_condition(r, "gw", "Accepted", "False", "NoMatchingParent")
    })
    .await?;
    let a = env
        .send("GET", "other-port.invalid.example.com", "/", &[])
        .await?;
    assert_eq!(a.status, 404, "a route on no listener's port: {}", a.body);
    // Routes with unresolved backends still count as attached; those on
    // no listener do not.
    env.status("Gateway", ns, "gw", "four attached routes", |g| {
        g["status"]["listeners"][0]["attachedRoutes"] == 4
    })
    .await?;

    // Half the weight on a missing Service: about half the requests 500,
    // the rest answered by the pod (200 requests; each share within 60).
    env.answered_by("half.invalid.example.com", "/", ns, "infra-backend-v1")
        .await?;
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..200 {
        let a = env
            .send("GET", "half.invalid.example.com", "/", &[])
            .await?;
        match a.status {
            200 if by(&a, ns, "infra-backend-v1") => ok += 1,
            500 => failed += 1,
            other => anyhow::bail!("unexpected answer {other}: {}", a.body),
        }
    }
    assert!(
        (40..=160).contains(&ok) && ok + failed == 200,
        "half of 200 requests answered 500: {ok} ok, {failed} 500"
    );
    Ok(())
}
