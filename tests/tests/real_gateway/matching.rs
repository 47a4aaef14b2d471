//! Which rule a request takes: path (Exact, PathPrefix by segment,
//! RegularExpression), headers (Exact, RegularExpression), query
//! parameters and method, with the spec's precedence between rules of a
//! route and across routes (upstream: httproute-matching,
//! httproute-exact-path-matching, httproute-header-matching,
//! httproute-query-param-matching, httproute-method-matching,
//! httproute-path-match-order, httproute-matching-across-routes).

use std::sync::Arc;

use sluice_tests::kube::gateway;

use crate::{Env, backend_of};

const BACKENDS: [&str; 3] = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"];

/// A request (method, host, path, headers) and who must answer it.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// Sends each `(method, host, path, headers)` and checks it is answered by
/// the backend named, or with the status given as `status <n>`.
async fn expect(env: &Env, cases: &[Case<'_>]) -> anyhow::Result<()> {
    // Each host here is one route, published on its own: the first case
    // of each host (one a backend answers) waits for its route to arrive;
    // the rest are checked once each, on the same table.
    let mut last_host = "";
    for (method, host, path, headers, want) in cases {
        let what = format!("{method} {host}{path} {headers:?} answered by {want}");
        let a = if *host != last_host {
            last_host = host;
            gateway::until_answer(
                &what,
                crate::SETTLE,
                || env.send(method, host, path, headers),
                |a| backend_of(a) == *want,
            )
            .await?
        } else {
            env.send(method, host, path, headers).await?
        };
        assert_eq!(backend_of(&a), *want, "{what}: {} {}", a.status, a.body);
    }
    Ok(())
}

pub async fn paths_headers_queries_and_methods_pick_the_rule(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-match";
    gateway::namespace_with_echo(env.cp(), ns, &[], &BACKENDS).await?;
    let [v1, v2, v3] = BACKENDS;
    let yaml = crate::http_gateway(ns, "gw")
        + &format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: exact, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [exact.match.example.com]
  rules:
    - matches: [{{path: {{type: Exact, value: /one}}}}]
      backendRefs: [{{name: {v1}, port: 8080}}]
    - matches: [{{path: {{type: Exact, value: /two}}}}]
      backendRefs: [{{name: {v2}, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: matching, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [match.example.com]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /}}}}]
      backendRefs: [{{name: {v1}, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]
      backendRefs: [{{name: {v2}, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /v2/deeper}}}}]
      backendRefs: [{{name: {v3}, port: 8080}}]
    - matches: [{{path: {{type: Exact, value: /v2/exact}}}}]
      backendRefs: [{{name: {v1}, port: 8080}}]
    - matches: [{{headers: [{{name: version, value: two}}]}}]
      backendRefs: [{{name: {v2}, port: 8080}}]
    - matches: [{{headers: [{{name: version, value: two}}, {{name: color, value: blue}}]}}]
      backendRefs: [{{name: {v3}, port: 8080}}]
    - matches: [{{queryParams: [{{name: animal, value: whale}}]}}]
      backendRefs: [{{name: {v3}, port: 8080}}]
    - matches: [{{method: POST}}]
      backendRefs: [{{name: {v2}, port: 8080}}]
    - matches:
        - {{path: {{type: PathPrefix, value: /either}}, headers: [{{name: x-a, value: "1"}}]}}
        - {{path: {{type: PathPrefix, value: /either}}, queryParams: [{{name: b, value: "1"}}]}}
      backendRefs: [{{name: {v3}, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: regex, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [re.match.example.com]
  rules:
    - matches: [{{path: {{type: RegularExpression, value: "/re/[0-9]+"}}}}]
      backendRefs: [{{name: {v3}, port: 8080}}]
    - matches:
        - path: {{type: PathPrefix, value: /team}}
          headers: [{{type: RegularExpression, name: x-team, value: "^(blue|green)$"}}]
      backendRefs: [{{name: {v2}, port: 8080}}]
"#
        );
    env.apply("gw-match.yaml", &yaml)?;

    let none: &[(&str, &str)] = &[];
    let s404 = "status 404";
    let exact = "exact.match.example.com";
    let host = "match.example.com";
    let re = "re.match.example.com";
    expect(
        &env,
        &[
            // Exact paths only, no prefix: a longer path is not matched.
            ("GET", exact, "/one", none, v1),
            ("GET", exact, "/two", none, v2),
            ("GET", exact, "/one/example", none, s404),
            ("GET", exact, "/one/", none, s404),
            ("GET", exact, "/", none, s404),
            ("GET", exact, "/two?x=1", none, v2),
            // Prefixes match whole segments; the longest wins; Exact over
            // any prefix.
            ("GET", host, "/", none, v1),
            ("GET", host, "/v2", none, v2),
            ("GET", host, "/v2/", none, v2),
            ("GET", host, "/v2/example", none, v2),
            ("GET", host, "/v2example", none, v1),
            ("GET", host, "/v2/deeper/x", none, v3),
            ("GET", host, "/v2/exact", none, v1),
            // Headers (names case-insensitive); more headers win.
            ("GET", host, "/", &[("version", "two")], v2),
            ("GET", host, "/", &[("Version", "two")], v2),
            ("GET", host, "/", &[("version", "Two")], v1),
            (
                "GET",
                host,
                "/",
                &[("version", "two"), ("color", "blue")],
                v3,
            ),
            // A longer path beats any number of headers.
            (
                "GET",
                host,
                "/v2",
                &[("version", "two"), ("color", "blue")],
                v2,
            ),
            // Query parameters.
            ("GET", host, "/?animal=whale", none, v3),
            ("GET", host, "/?animal=dolphin", none, v1),
            // Method; it ranks above headers and query parameters.
            ("POST", host, "/", none, v2),
            (
                "POST",
                host,
                "/",
                &[("version", "two"), ("color", "blue")],
                v2,
            ),
            ("POST", host, "/?animal=whale", none, v2),
            // Matches of one rule are ORed, fields of one match ANDed.
            ("GET", host, "/either", &[("x-a", "1")], v3),
            ("GET", host, "/either?b=1", none, v3),
            ("GET", host, "/either", none, v1),
            // Regular expressions on the path (whole path) and headers.
            ("GET", re, "/re/123", none, v3),
            ("GET", re, "/re/abc", none, s404),
            ("GET", re, "/re/123/more", none, s404),
            ("GET", re, "/team", &[("x-team", "green")], v2),
            ("GET", re, "/team", &[("x-team", "red")], s404),
            ("GET", re, "/team", none, s404),
        ],
    )
    .await?;
    for name in ["exact", "matching", "regex"] {
        env.status("HTTPRoute", ns, name, "Accepted", |r| {
            gateway::route_condition(r, "gw", "Accepted", "True", "Accepted")
                && gateway::route_condition(r, "gw", "ResolvedRefs", "True", "ResolvedRefs")
        })
        .await?;
    }
    Ok(())
}

pub async fn across_routes_the_more_specific_match_wins(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-across";
    gateway::namespace_with_echo(env.cp(), ns, &[], &BACKENDS[..2]).await?;
    let [v1, v2, _] = BACKENDS;
    let host = "across.example.com";
    let route = |name: &str, rules: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
{rules}"#
        )
    };
    // Route a: the catch-all and a tie; route b: more specific matches and
    // the same tie, which the older route (or, created in the same second,
    // the first by name) keeps.
    let a = route(
        "across-a",
        &format!(
            "    - backendRefs: [{{name: {v1}, port: 8080}}]\n    - matches: [{{path: {{type: PathPrefix, value: /tie}}}}]\n      backendRefs: [{{name: {v1}, port: 8080}}]\n"
        ),
    );
    let b = route(
        "across-b",
        &format!(
            "    - matches: [{{path: {{type: Exact, value: /b}}}}]\n      backendRefs: [{{name: {v2}, port: 8080}}]\n    - matches: [{{headers: [{{name: x-b, value: \"yes\"}}]}}]\n      backendRefs: [{{name: {v2}, port: 8080}}]\n    - matches: [{{path: {{type: PathPrefix, value: /tie}}}}]\n      backendRefs: [{{name: {v2}, port: 8080}}]\n"
        ),
    );
    env.apply("gw-across.yaml", &(crate::http_gateway(ns, "gw") + &a))?;
    env.answered_by(host, "/", ns, v1).await?;
    env.apply("gw-across-b.yaml", &b)?;
    let none: &[(&str, &str)] = &[];
    expect(
        &env,
        &[
            ("GET", host, "/b", none, v2),
            ("GET", host, "/", none, v1),
            ("GET", host, "/c", none, v1),
            ("GET", host, "/", &[("x-b", "yes")], v2),
            ("GET", host, "/tie", none, v1),
            ("GET", host, "/tie/x", none, v1),
        ],
    )
    .await?;
    env.status("Gateway", ns, "gw", "two attached routes", |g| {
        g["status"]["listeners"][0]["attachedRoutes"] == 2
    })
    .await?;
    Ok(())
}
