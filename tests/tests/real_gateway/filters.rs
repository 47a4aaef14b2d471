//! What a rule does to a request on its way: header modifiers both ways,
//! redirects, rewrites, a mirror, timeouts, and weights between backends
//! (upstream: httproute-request-header-modifier,
//! httproute-response-header-modifier, httproute-redirect-*,
//! httproute-rewrite-host, httproute-rewrite-path, httproute-request-mirror,
//! httproute-request-timeout, httproute-backend-request-timeout,
//! httproute-weight).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use sluice_tests::kube::{app, gateway};

use crate::{Env, backend_of, by};

const BACKENDS: [&str; 3] = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"];

/// An HTTPRoute `name` in `ns` for `host` on Gateway `gw` with `rules`
/// (YAML list items, indented four spaces).
fn route(ns: &str, name: &str, host: &str, rules: &str) -> String {
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
}

/// The values of header `name` the echo saw.
fn seen_header(seen: &Value, name: &str) -> Vec<String> {
    seen["headers"][name]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn header_modifiers_change_request_and_response(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-headers";
    gateway::namespace_with_echo(env.cp(), ns, &[], &BACKENDS[..1]).await?;
    let v1 = BACKENDS[0];
    let host = "headers.example.com";
    let rules = format!(
        r#"    - matches: [{{path: {{type: PathPrefix, value: /request}}}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{{name: X-Header-Set, value: set-overwrites}}]
            add: [{{name: X-Header-Add, value: add-appends}}]
            remove: [X-Header-Remove]
      backendRefs: [{{name: {v1}, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /response}}}}]
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{{name: X-Resp-Set, value: set-overwrites}}]
            add: [{{name: X-Resp-Add, value: add-appends}}]
            remove: [X-Resp-Remove]
      backendRefs: [{{name: {v1}, port: 8080}}]
"#
    );
    // Filters on a backendRef are not supported: that route is refused
    // as a whole, saying so, rather than served without them.
    let per_backend = format!(
        r#"    - backendRefs:
        - name: {v1}
          port: 8080
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {{set: [{{name: X-Backend-Filter, value: on-the-backend}}]}}
"#
    );
    env.apply(
        "gw-headers.yaml",
        &(crate::http_gateway(ns, "gw")
            + &route(ns, "headers", host, &rules)
            + &route(
                ns,
                "per-backend",
                "per-backend.headers.example.com",
                &per_backend,
            )),
    )?;

    let sent = [
        ("x-header-set", "original"),
        ("x-header-add", "original"),
        ("x-header-remove", "gone"),
        ("x-header-kept", "kept"),
    ];
    let a = env
        .until(host, "/request", &sent, |a| by(a, ns, v1))
        .await?;
    let seen = gateway::echoed(&a)?;
    assert_eq!(
        seen_header(&seen, "x-header-set"),
        ["set-overwrites"],
        "{seen}"
    );
    let mut added = seen_header(&seen, "x-header-add");
    added.sort();
    assert_eq!(added, ["add-appends", "original"], "{seen}");
    assert!(seen_header(&seen, "x-header-remove").is_empty(), "{seen}");
    assert_eq!(seen_header(&seen, "x-header-kept"), ["kept"], "{seen}");
    // Without the headers: set and add both add.
    let a = env.send("GET", host, "/request", &[]).await?;
    let seen = gateway::echoed(&a)?;
    assert_eq!(
        seen_header(&seen, "x-header-set"),
        ["set-overwrites"],
        "{seen}"
    );
    assert_eq!(
        seen_header(&seen, "x-header-add"),
        ["add-appends"],
        "{seen}"
    );

    // The echo sets response headers as asked; the route changes them.
    let asked = [
        ("x-echo-set-header", "X-Resp-Set: original"),
        ("x-echo-set-header", "X-Resp-Add: original"),
        ("x-echo-set-header", "X-Resp-Remove: gone"),
        ("x-echo-set-header", "X-Resp-Kept: kept"),
    ];
    let a = env
        .until(host, "/response", &asked, |a| by(a, ns, v1))
        .await?;
    let values = |name: &str| -> Vec<String> {
        let mut v: Vec<String> = a
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(values("x-resp-set"), ["set-overwrites"], "{:?}", a.headers);
    assert_eq!(
        values("x-resp-add"),
        ["add-appends", "original"],
        "{:?}",
        a.headers
    );
    assert!(values("x-resp-remove").is_empty(), "{:?}", a.headers);
    assert_eq!(values("x-resp-kept"), ["kept"], "{:?}", a.headers);
    // The request path's rule does not touch responses, nor the other way.
    let a = env.send("GET", host, "/request", &asked).await?;
    assert!(a.headers.get("x-resp-remove").is_some(), "{:?}", a.headers);

    env.status("HTTPRoute", ns, "per-backend", "UnsupportedValue", |r| {
        gateway::route_condition(r, "gw", "Accepted", "False", "UnsupportedValue")
    })
    .await?;
    let a = env
        .send("GET", "per-backend.headers.example.com", "/", &[])
        .await?;
    assert_eq!(a.status, 404, "the refused route is not served: {}", a.body);
    Ok(())
}

pub async fn redirects_and_rewrites(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-redirect";
    gateway::namespace_with_echo(env.cp(), ns, &[], &BACKENDS[..1]).await?;
    let v1 = BACKENDS[0];
    let host = "redirect.example.com";
    let redirect = |prefix: &str, body: &str| {
        format!(
            "    - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n      filters: [{{type: RequestRedirect, requestRedirect: {body}}}]\n"
        )
    };
    let rewrite = |prefix: &str, body: &str| {
        format!(
            "    - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n      filters: [{{type: URLRewrite, urlRewrite: {body}}}]\n      backendRefs: [{{name: {v1}, port: 8080}}]\n"
        )
    };
    let rules = [
        redirect("/scheme", "{scheme: https, statusCode: 301}"),
        redirect("/hostname", "{hostname: moved.example.com}"),
        redirect("/port", "{port: 8083, statusCode: 303}"),
        redirect(
            "/full",
            "{path: {type: ReplaceFullPath, replaceFullPath: /new-full}, statusCode: 307}",
        ),
        redirect(
            "/prefix",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /moved}, statusCode: 308}",
        ),
        redirect(
            "/all",
            "{scheme: https, hostname: all.example.com, port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /x}}",
        ),
        rewrite("/rw-host", "{hostname: rewritten.example.com}"),
        rewrite(
            "/rw-full",
            "{path: {type: ReplaceFullPath, replaceFullPath: /full-path}}",
        ),
        rewrite(
            "/rw-prefix",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}",
        ),
        rewrite(
            "/rw-root",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}",
        ),
        rewrite(
            "/rw-both",
            "{hostname: both.example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}",
        ),
    ]
    .concat();
    env.apply(
        "gw-redirect.yaml",
        &(crate::http_gateway(ns, "gw") + &route(ns, "redirects", host, &rules)),
    )?;

    let location = |a: &sluice_tests::client::Answer| -> String {
        a.headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let first = env
        .until(host, "/scheme/a", &[], |a| a.status == 301)
        .await?;
    let cases = [
        ("/scheme/a", 301, "https://redirect.example.com/scheme/a"),
        ("/hostname/a", 302, "http://moved.example.com/hostname/a"),
        ("/port/a", 303, "http://redirect.example.com:8083/port/a"),
        ("/full/a/b", 307, "http://redirect.example.com/new-full"),
        ("/prefix/a/b", 308, "http://redirect.example.com/moved/a/b"),
        ("/prefix", 308, "http://redirect.example.com/moved"),
        ("/all/z", 302, "https://all.example.com:8443/x"),
    ];
    assert_eq!(location(&first), cases[0].2, "{:?}", first.headers);
    for (path, status, want) in cases {
        let a = env.send("GET", host, path, &[]).await?;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert_eq!(location(&a), want, "{path}: {:?}", a.headers);
        assert!(a.backend.is_none(), "a redirect reaches no backend: {a:?}");
    }

    // Rewrites: what the backend saw.
    let rewritten = [
        (
            "/rw-host/a?q=1",
            "rewritten.example.com",
            "/rw-host/a",
            "q=1",
        ),
        ("/rw-full/a/b", host, "/full-path", ""),
        ("/rw-prefix/a/b?q=2", host, "/prefix/a/b", "q=2"),
        ("/rw-prefix", host, "/prefix", ""),
        ("/rw-root/a", host, "/a", ""),
        ("/rw-root", host, "/", ""),
        ("/rw-both/c", "both.example.com", "/b/c", ""),
    ];
    for (path, want_host, want_path, want_query) in rewritten {
        let a = env.until(host, path, &[], |a| by(a, ns, v1)).await?;
        let seen = gateway::echoed(&a)?;
        assert_eq!(seen["host"], want_host, "{path}: {seen}");
        assert_eq!(seen["path"], want_path, "{path}: {seen}");
        assert_eq!(seen["query"], want_query, "{path}: {seen}");
    }
    for feature in ["Accepted", "ResolvedRefs"] {
        env.status("HTTPRoute", ns, "redirects", feature, |r| {
            gateway::route_condition(r, "gw", feature, "True", feature)
        })
        .await?;
    }
    Ok(())
}

pub async fn a_mirror_gets_a_copy_and_timeouts_answer_504(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-mirror";
    gateway::namespace_with_echo(env.cp(), ns, &[], &BACKENDS[..2]).await?;
    let [v1, v2, _] = BACKENDS;
    let host = "mirror.example.com";
    let rules = format!(
        r#"    - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]
      filters:
        - type: RequestMirror
          requestMirror: {{backendRef: {{name: {v2}, port: 8080}}}}
      backendRefs: [{{name: {v1}, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /request-timeout}}}}]
      timeouts: {{request: 1s}}
      backendRefs: [{{name: {v1}, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /backend-timeout}}}}]
      timeouts: {{request: 10s, backendRequest: 1s}}
      backendRefs: [{{name: {v1}, port: 8080}}]
"#
    );
    env.apply(
        "gw-mirror.yaml",
        &(crate::http_gateway(ns, "gw") + &route(ns, "mirror", host, &rules)),
    )?;

    // The answer is the primary's; the mirror saw the same request.
    let path = "/mirror/copy-1?q=mirrored";
    env.until(host, path, &[("x-mirror-test", "1")], |a| by(a, ns, v1))
        .await?;
    let mirror_pod = app::pods(&env.client, ns, &format!("app={v2}"))
        .await?
        .into_iter()
        .next()
        .map(|(_, ip)| ip)
        .ok_or_else(|| anyhow::anyhow!("no {v2} pod"))?;
    let mirror: SocketAddr = format!("{mirror_pod}:3000").parse()?;
    let copy = gateway::until_answer(
        "the mirror's log",
        crate::SETTLE,
        || env.http.get(mirror, "localhost", "/.echo/requests"),
        |a| a.body.contains("/mirror/copy-1"),
    )
    .await?;
    let log: Vec<Value> = serde_json::from_str(&copy.body)?;
    let seen = log
        .iter()
        .find(|r| r["path"] == "/mirror/copy-1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(seen["query"], "q=mirrored", "{seen}");
    assert_eq!(seen["method"], "GET", "{seen}");
    assert_eq!(seen["headers"]["x-mirror-test"][0], "1", "{seen}");
    assert!(
        seen["host"].as_str().is_some_and(|h| h.starts_with(host)),
        "the copy names the route's host (a shadow suffix is allowed): {seen}"
    );
    // Unmirrored paths do not reach it.
    env.until(host, "/request-timeout/plain", &[], |a| by(a, ns, v1))
        .await?;
    let log = env.http.get(mirror, "localhost", "/.echo/requests").await?;
    assert!(
        !log.body.contains("/request-timeout/plain"),
        "only mirrored paths reach the mirror: {}",
        log.body
    );

    // Timeouts: a backend slower than the rule allows is answered 504.
    for path in ["/request-timeout", "/backend-timeout"] {
        let fast = env.send("GET", host, path, &[]).await?;
        assert!(by(&fast, ns, v1), "{path} fast: {}", fast.status);
        let slow = env
            .send("GET", host, path, &[("x-echo-delay-ms", "3000")])
            .await?;
        assert_eq!(slow.status, 504, "{path} slow: {}", slow.body);
        assert!(slow.backend.is_none(), "{path}: {slow:?}");
    }
    Ok(())
}

pub async fn weights_split_requests_between_backends(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = "gw-weight";
    gateway::namespace_with_echo(env.cp(), ns, &[], &BACKENDS).await?;
    let [v1, v2, v3] = BACKENDS;
    let host = "weight.example.com";
    let rules = format!(
        "    - backendRefs:\n        - {{name: {v1}, port: 8080, weight: 70}}\n        - {{name: {v2}, port: 8080, weight: 30}}\n        - {{name: {v3}, port: 8080, weight: 0}}\n"
    );
    env.apply(
        "gw-weight.yaml",
        &(crate::http_gateway(ns, "gw") + &route(ns, "weights", host, &rules)),
    )?;
    env.answered_by(host, "/", ns, v1).await?;
    env.answered_by(host, "/", ns, v2).await?;

    // 400 requests across both dataplanes: each share within 10 points of
    // its weight (the binomial spread of 400 requests at 30 % is 2.3
    // points), none to weight 0.
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let dataplanes: Vec<SocketAddr> = env.dataplanes.clone();
    for i in 0..400 {
        let dp = dataplanes[i % dataplanes.len()];
        let a = env.send_via(dp, "GET", host, "/", &[]).await?;
        *tally.entry(backend_of(&a)).or_default() += 1;
    }
    let share = |b: &str| tally.get(b).copied().unwrap_or(0) as f64 / 400.0;
    assert_eq!(tally.get(v3), None, "weight 0 gets nothing: {tally:?}");
    assert!((share(v1) - 0.7).abs() <= 0.10, "{v1} ~70 %: {tally:?}");
    assert!((share(v2) - 0.3).abs() <= 0.10, "{v2} ~30 %: {tally:?}");
    assert_eq!(
        tally.values().sum::<usize>(),
        tally.get(v1).unwrap_or(&0) + tally.get(v2).unwrap_or(&0),
        "every request answered by v1 or v2: {tally:?}"
    );
    Ok(())
}
