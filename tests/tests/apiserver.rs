//! The API-server fake, driven by kube-rs's unchanged client, `Api` and
//! watcher. Every wait is bounded.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent,
};
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::watcher::{self, Event};
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_tests::apiserver::{Collection, FakeApiServer, Resource};

const WAIT: Duration = Duration::from_secs(5);

/// A tiny custom resource with a status subresource (the fake's default
/// outside core `v1`). No schema: the fake validates nothing.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "example.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    schema = "disabled"
)]
struct WidgetSpec {
    size: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
struct WidgetStatus {
    ready: bool,
}

fn config_map(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "data": {"k": data},
    }))
    .expect("a valid ConfigMap")
}

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {WAIT:?} waiting for {what}"))
}

/// The next watcher event that is not an error, skipping at most 20 errors.
async fn next_event<K>(
    stream: &mut (impl Stream<Item = watcher::Result<Event<K>>> + Unpin),
) -> anyhow::Result<Event<K>> {
    for _ in 0..20 {
        match bounded("a watcher event", stream.next()).await? {
            Some(Ok(event)) => return Ok(event),
            Some(Err(e)) => eprintln!("watcher error (it retries): {e}"),
            None => anyhow::bail!("the watcher stream ended"),
        }
    }
    anyhow::bail!("too many watcher errors")
}

/// Skips the initial list (Init, InitApply*, InitDone), returning the names listed.
async fn initial_list<K: ResourceExt>(
    stream: &mut (impl Stream<Item = watcher::Result<Event<K>>> + Unpin),
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for _ in 0..100 {
        match next_event(stream).await? {
            Event::Init => names.clear(),
            Event::InitApply(obj) => names.push(obj.name_any()),
            Event::InitDone => return Ok(names),
            other => anyhow::bail!(
                "unexpected event during the initial list: {}",
                describe(&other)
            ),
        }
    }
    anyhow::bail!("the initial list did not finish")
}

fn describe<K: ResourceExt>(event: &Event<K>) -> String {
    match event {
        Event::Apply(o) => format!("apply {} {:?}", o.name_any(), o.resource_version()),
        Event::Delete(o) => format!("delete {}", o.name_any()),
        Event::Init => "init".into(),
        Event::InitApply(o) => format!("init-apply {}", o.name_any()),
        Event::InitDone => "init-done".into(),
    }
}

#[tokio::test]
async fn crud_through_kube_api() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client()?);
    let pp = PostParams::default();

    let created = api.create(&pp, &config_map("web", "1")).await?;
    assert!(created.uid().is_some() && created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let got = api.get("web").await?;
    assert_eq!(
        got.data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("1")
    );

    let dup = api.create(&pp, &config_map("web", "1")).await;
    assert!(
        matches!(dup, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists")
    );

    // generateName
    let mut generated = config_map("", "2");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api.create(&pp, &generated).await?;
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() == 9);
    assert_eq!(api.list(&ListParams::default()).await?.items.len(), 2);

    // Replace: current version wins, a stale one conflicts.
    let mut fresh = got.clone();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = api.replace("web", &pp, &fresh).await?;
    assert_ne!(replaced.resource_version(), got.resource_version());
    let stale = api.replace("web", &pp, &fresh).await;
    assert!(matches!(stale, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict"));

    api.delete("web", &DeleteParams::default()).await?;
    let gone = api.get("web").await;
    assert!(matches!(gone, Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound"));
    assert!(
        fake.get(&Collection::new("v1", "configmaps"), "default", "web")
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn selectors_pages_namespaces_and_cluster_scope() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let client = fake.client()?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}}))?,
        )
        .await?;
    assert_eq!(namespaces.get("shop").await?.name_any(), "shop");

    for (ns, name, tier) in [
        ("default", "a", "front"),
        ("default", "b", "back"),
        ("shop", "c", "front"),
    ] {
        fake.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": {"tier": tier}},
        }))?;
    }
    let default: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let all: Api<ConfigMap> = Api::all(client);
    let names = |list: kube::core::ObjectList<ConfigMap>| {
        list.items.iter().map(|o| o.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(all.list(&ListParams::default()).await?),
        ["a", "b", "c"]
    );
    assert_eq!(
        names(default.list(&ListParams::default()).await?),
        ["a", "b"]
    );
    for (selector, want) in [
        ("tier=front", vec!["a", "c"]),
        ("tier!=front", vec!["b"]),
        ("tier in (back, middle)", vec!["b"]),
        ("tier notin (back)", vec!["a", "c"]),
        ("tier", vec!["a", "b", "c"]),
        ("!tier", vec![]),
    ] {
        assert_eq!(
            names(all.list(&ListParams::default().labels(selector)).await?),
            want,
            "{selector}"
        );
    }
    let by_field = ListParams::default().fields("metadata.namespace=shop,metadata.name!=x");
    assert_eq!(names(all.list(&by_field).await?), ["c"]);

    // Pages of one, followed through continue tokens, all at one version.
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(1);
    for _ in 0..10 {
        let page = all.list(&lp).await?;
        assert_eq!(page.items.len(), 1);
        seen.extend(names(page.clone()));
        match page.metadata.continue_ {
            Some(token) => lp = ListParams::default().limit(1).continue_token(&token),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c"]);
    Ok(())
}

#[tokio::test]
async fn watcher_sees_creates_updates_and_deletes_in_order() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client()?);
    api.create(&PostParams::default(), &config_map("before", "0"))
        .await?;
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(initial_list(&mut events).await?, ["before"]);

    api.create(&PostParams::default(), &config_map("web", "1"))
        .await?;
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await?;
    api.delete("web", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut events).await?;
        if let Event::Apply(cm) = &event {
            seen.push(format!(
                "apply {}",
                cm.data.as_ref().map_or("", |d| d["k"].as_str())
            ));
        } else {
            seen.push(describe(&event));
        }
    }
    assert_eq!(seen, ["apply 1", "apply 2", "delete web"]);
    Ok(())
}

#[tokio::test]
async fn a_label_selected_watch_sees_objects_move_in_and_out() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client()?);
    let config = watcher::Config::default().labels("app=web");
    let mut events = watcher::watcher(api.clone(), config).boxed();
    assert!(initial_list(&mut events).await?.is_empty());

    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    api.create(&PostParams::default(), &config_map("x", "1"))
        .await?;
    api.patch("x", &PatchParams::default(), &relabel("other"))
        .await?;
    api.patch("x", &PatchParams::default(), &relabel("web"))
        .await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut events).await?;
        seen.push(
            describe(&event)
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    assert_eq!(seen, ["apply x", "delete x", "apply x"]);
    Ok(())
}

#[tokio::test]
async fn patches_status_and_generation_on_a_custom_resource() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<Widget> = Api::namespaced(fake.client()?, "shop");
    let mut widget = Widget::new("w", WidgetSpec { size: 1 });
    widget.status = Some(WidgetStatus { ready: true });
    let created = api.create(&PostParams::default(), &widget).await?;
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.status, None, "status is the server's on create");

    // Merge patch on spec: generation moves.
    let merged = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await?;
    assert_eq!((merged.spec.size, merged.metadata.generation), (2, Some(2)));

    // Status patch: status changes, generation does not.
    let status = Patch::Merge(json!({"status": {"ready": true}}));
    let patched = api
        .patch_status("w", &PatchParams::default(), &status)
        .await?;
    assert_eq!(patched.status, Some(WidgetStatus { ready: true }));
    assert_eq!(patched.metadata.generation, Some(2));
    assert_ne!(patched.resource_version(), merged.resource_version());

    // Server-side apply with force on the main resource: spec moves, status stays.
    let apply = Patch::Apply(json!({
        "apiVersion": "example.io/v1", "kind": "Widget",
        "spec": {"size": 3}, "status": {"ready": false},
    }));
    let applied = api
        .patch("w", &PatchParams::apply("mgr").force(), &apply)
        .await?;
    assert_eq!(
        (applied.spec.size, applied.metadata.generation),
        (3, Some(3))
    );
    assert_eq!(
        applied.status,
        Some(WidgetStatus { ready: true }),
        "object writes ignore status"
    );

    // Apply on the status subresource, as our controller does.
    let apply_status = Patch::Apply(json!({
        "apiVersion": "example.io/v1", "kind": "Widget", "status": {"ready": false}, "spec": {"size": 99},
    }));
    api.patch_status("w", &PatchParams::apply("mgr").force(), &apply_status)
        .await?;
    let got = api.get("w").await?;
    assert_eq!(got.status, Some(WidgetStatus { ready: false }));
    assert_eq!(
        (got.spec.size, got.metadata.generation),
        (3, Some(3)),
        "status writes ignore spec"
    );

    // A write that changes nothing is no change: same resourceVersion.
    let again = api
        .patch_status("w", &PatchParams::apply("mgr").force(), &apply_status)
        .await?;
    assert_eq!(again.resource_version(), got.resource_version());

    // Apply creates what is missing.
    let created = api.patch("new", &PatchParams::apply("mgr"), &Patch::Apply(json!({
        "apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "new"}, "spec": {"size": 7},
    }))).await?;
    assert_eq!(
        (created.spec.size, created.metadata.generation),
        (7, Some(1))
    );

    let log = fake.request_log();
    assert!(log.iter().any(|r| r.method == "PATCH"
        && r.path.contains("/namespaces/shop/widgets/w/status?")
        && r.path.contains("fieldManager=mgr")
        && r.path.contains("force=true")
        && r.content_type.as_deref() == Some("application/apply-patch+yaml")));
    Ok(())
}

#[tokio::test]
async fn json_patches_and_protocol_errors() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let client = fake.client()?;
    fake.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j", "namespace": "default"}, "data": {"a": "1"}}))?;
    let url = "/api/v1/namespaces/default/configmaps/j";
    let request = |method: &str, url: &str, ctype: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", ctype)
            .body(body.as_bytes().to_vec())
    };

    let ops = r#"[{"op":"test","path":"/data/a","value":"1"},{"op":"add","path":"/data/b","value":"2"},
        {"op":"replace","path":"/data/a","value":"3"},{"op":"add","path":"/metadata/labels","value":{"x":"y"}}]"#;
    let patched: Value = client
        .request(request("PATCH", url, "application/json-patch+json", ops)?)
        .await?;
    assert_eq!(patched["data"], json!({"a": "3", "b": "2"}));
    assert_eq!(patched["metadata"]["labels"]["x"], "y");
    let failed_test = r#"[{"op":"test","path":"/data/a","value":"nope"}]"#;
    let err = client
        .request::<Value>(request(
            "PATCH",
            url,
            "application/json-patch+json",
            failed_test,
        )?)
        .await;
    assert!(matches!(err, Err(kube::Error::Api(s)) if s.code == 422));

    let api_error = |r: Result<Value, kube::Error>| match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        other => (0, format!("{other:?}")),
    };
    let wrong_type = client
        .request(request("PATCH", url, "text/plain", "{}")?)
        .await;
    assert_eq!(
        api_error(wrong_type),
        (415, "UnsupportedMediaType".to_string())
    );
    let malformed = client
        .request(request(
            "PATCH",
            url,
            "application/merge-patch+json",
            "{not json",
        )?)
        .await;
    assert_eq!(api_error(malformed), (400, "BadRequest".to_string()));
    let unknown = client
        .request(request("GET", "/nothing/here", "application/json", "")?)
        .await;
    assert_eq!(api_error(unknown), (404, "NotFound".to_string()));
    let missing = client
        .request(request(
            "GET",
            "/apis/example.io/v1/namespaces/x/widgets/none",
            "application/json",
            "",
        )?)
        .await;
    assert_eq!(api_error(missing), (404, "NotFound".to_string()));
    // Core v1 has no status subresource unless the builder says so.
    let status = client
        .request(request(
            "GET",
            &format!("{url}/status"),
            "application/json",
            "",
        )?)
        .await;
    assert_eq!(api_error(status), (404, "NotFound".to_string()));
    Ok(())
}

#[tokio::test]
async fn the_scale_subresource_drives_spec_replicas() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<Deployment> = Api::namespaced(fake.client()?, "shop");
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
        },
    }))?;
    api.create(&PostParams::default(), &deployment).await?;
    // Tests play the Deployment controller by writing status directly.
    let apps = Collection::of("apps/v1", "Deployment");
    fake.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"}, "status": {"replicas": 2}}))?;

    let scale = api.get_scale("web").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let status = scale.status.expect("scale status");
    assert_eq!(
        (status.replicas, status.selector.as_deref()),
        (2, Some("app=web"))
    );

    let patched = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    assert_eq!(patched.spec.and_then(|s| s.replicas), Some(5));
    let stored = fake
        .wait_for(&apps, "shop", "web", |d| d["spec"]["replicas"] == 5, WAIT)
        .await?;
    assert_eq!(stored["metadata"]["generation"], 2);
    assert_eq!(
        stored["status"]["replicas"], 2,
        "scale writes leave status alone"
    );
    Ok(())
}

#[tokio::test]
async fn expired_history_makes_a_resumed_watcher_relist_and_carry_on() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client()?);
    api.create(&PostParams::default(), &config_map("a", "1"))
        .await?;
    // One-second server-side watch timeout: the watcher keeps re-watching
    // from its last resourceVersion, as it would after a dropped connection.
    let mut events = watcher::watcher(api.clone(), watcher::Config::default().timeout(1)).boxed();
    assert_eq!(initial_list(&mut events).await?, ["a"]);
    let lists = |fake: &FakeApiServer| {
        fake.request_log()
            .iter()
            .filter(|r| r.method == "GET" && !r.path.contains("watch=true"))
            .count()
    };
    assert_eq!(lists(&fake), 1);

    // Make sure the watch is running before the history goes.
    api.create(&PostParams::default(), &config_map("b", "2"))
        .await?;
    assert!(matches!(next_event(&mut events).await?, Event::Apply(cm) if cm.name_any() == "b"));
    let watches = |fake: &FakeApiServer| {
        fake.request_log()
            .iter()
            .filter(|r| r.path.contains("watch=true"))
            .count()
    };
    let watches_before = watches(&fake);

    fake.expire_history();
    // Within a second the watch times out, the resume gets ERROR 410, and
    // the watcher starts over with a list.
    assert_eq!(initial_list(&mut events).await?, ["a", "b"]);
    assert_eq!(lists(&fake), 2);
    assert!(
        watches(&fake) > watches_before,
        "the watcher resumed before relisting"
    );

    api.create(&PostParams::default(), &config_map("c", "3"))
        .await?;
    for _ in 0..5 {
        if let Event::Apply(cm) = next_event(&mut events).await? {
            assert_eq!(cm.name_any(), "c");
            return Ok(());
        }
    }
    anyhow::bail!("the watcher did not deliver the change after relisting")
}

#[tokio::test]
async fn streaming_lists_work_with_the_watcher() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client()?);
    api.create(&PostParams::default(), &config_map("a", "1"))
        .await?;
    let mut events =
        watcher::watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert_eq!(initial_list(&mut events).await?, ["a"]);
    api.create(&PostParams::default(), &config_map("b", "1"))
        .await?;
    assert!(matches!(next_event(&mut events).await?, Event::Apply(cm) if cm.name_any() == "b"));
    assert!(
        fake.request_log()
            .iter()
            .any(|r| r.path.contains("sendInitialEvents=true"))
    );
    let log = fake.request_log();
    assert!(
        !log.iter()
            .any(|r| r.method == "GET" && !r.path.contains("watch=true")),
        "no list call"
    );
    Ok(())
}

#[tokio::test]
async fn raw_watches_get_bookmarks_410_and_end_when_the_client_leaves() -> anyhow::Result<()> {
    let fake = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start()
        .await?;
    let client = fake.client()?;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &config_map("a", "1"))
        .await?;
    let from = fake.resource_version();
    let watch = |query: String| {
        let uri = format!("/api/v1/namespaces/default/configmaps?watch=true&{query}");
        http::Request::get(uri).body(Vec::new())
    };

    // Bookmarks: one at once, then periodic ones around the changes.
    let stream = client
        .request_events::<ConfigMap>(watch(format!(
            "allowWatchBookmarks=true&resourceVersion={from}"
        ))?)
        .await?;
    let mut stream = Box::pin(stream);
    let first = bounded("a bookmark", stream.next()).await?;
    assert!(
        matches!(first, Some(Ok(WatchEvent::Bookmark(ref b))) if b.metadata.resource_version == from.to_string())
    );
    api.create(&PostParams::default(), &config_map("b", "1"))
        .await?;
    let (mut added, mut bookmarks) = (false, 0);
    for _ in 0..50 {
        match bounded("watch events", stream.next()).await? {
            Some(Ok(WatchEvent::Added(cm))) => added = cm.name_any() == "b",
            Some(Ok(WatchEvent::Bookmark(b))) if added => {
                assert_eq!(
                    b.metadata.resource_version,
                    fake.resource_version().to_string()
                );
                assert_eq!(b.types.kind, "ConfigMap");
                bookmarks += 1;
                if bookmarks == 2 {
                    break;
                }
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert!(added && bookmarks == 2);
    assert_eq!(fake.active_watches(), 1);
    drop(stream);
    let deadline = tokio::time::Instant::now() + WAIT;
    while fake.active_watches() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.active_watches(), 0, "the watch ended with its client");

    // Without allowWatchBookmarks: replay only, no bookmark.
    let stream = client
        .request_events::<ConfigMap>(watch(format!("resourceVersion={from}&timeoutSeconds=1"))?)
        .await?;
    let got: Vec<_> = bounded("a one-second watch", stream.collect::<Vec<_>>()).await?;
    assert_eq!(got.len(), 1);
    assert!(matches!(&got[0], Ok(WatchEvent::Added(cm)) if cm.name_any() == "b"));

    // Expired: ERROR 410 and the end of the stream.
    fake.expire_history();
    let stream = client
        .request_events::<ConfigMap>(watch(format!("resourceVersion={from}"))?)
        .await?;
    let got: Vec<_> = bounded("an expired watch", stream.collect::<Vec<_>>()).await?;
    assert!(
        matches!(got.as_slice(), [Ok(WatchEvent::Error(s))] if s.code == 410 && s.reason == "Expired")
    );

    fake.shutdown().await;
    assert!(
        api.get("a").await.is_err(),
        "the server is gone after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn test_controls_and_the_status_subresource_builder() -> anyhow::Result<()> {
    let fake = FakeApiServer::builder()
        .status_subresource("v1", "services")
        .start()
        .await?;
    let services = Collection::of("v1", "Service");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}, "status": {"loadBalancer": {}}});
    let put = fake.put(svc.clone())?;
    assert_eq!(put["metadata"]["generation"], 1);
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::default_namespaced(fake.client()?);
    let status =
        Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}));
    api.patch_status("s", &PatchParams::default(), &status)
        .await?;
    let got = fake
        .wait_for(
            &services,
            "default",
            "s",
            |s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.0.2.1",
            WAIT,
        )
        .await?;
    assert_eq!(got["metadata"]["generation"], 1);

    // `apply` merges, keeping the status; `delete` removes.
    let applied = fake.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s", "namespace": "default", "labels": {"a": "b"}}}))?;
    assert_eq!(applied["metadata"]["labels"]["a"], "b");
    assert_eq!(applied["status"], got["status"]);
    assert_eq!(fake.list(&services).len(), 1);
    assert!(fake.delete(&services, "default", "s").is_some());
    assert!(fake.get(&services, "default", "s").is_none());
    let waited = fake
        .wait_for(
            &services,
            "default",
            "s",
            |_| true,
            Duration::from_millis(200),
        )
        .await;
    assert!(waited.is_err());
    assert_eq!(
        Collection::of("discovery.k8s.io/v1", "EndpointSlice").plural,
        "endpointslices"
    );
    assert_eq!(
        Collection::of("networking.k8s.io/v1", "Ingress").plural,
        "ingresses"
    );
    assert_eq!(
        Collection::of("networking.k8s.io/v1", "NetworkPolicy").plural,
        "networkpolicies"
    );
    assert_eq!(Collection::of("v1", "Endpoints").plural, "endpoints");
    Ok(())
}

/// The scale-target path of the autoscaler: resolve `{apiVersion, kind}`
/// with kube's discovery, then read and patch `/scale` through a dynamic
/// `Api`, never touching the Deployment's spec directly.
#[tokio::test]
async fn pinned_kind_resolves_a_deployment_and_its_scale_subresource() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let client = fake.client()?;
    fake.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}],
            },
            "template": {"metadata": {"labels": {"app": "web", "tier": "a"}}},
        },
        "status": {"replicas": 2, "readyReplicas": 2},
    }))?;

    let gvk = GroupVersionKind::gvk("apps", "v1", "Deployment");
    let (ar, caps) = bounded("discovery", pinned_kind(&client, &gvk)).await??;
    assert_eq!(
        (ar.api_version.as_str(), ar.plural.as_str()),
        ("apps/v1", "deployments")
    );
    assert_eq!(caps.scope, Scope::Namespaced);
    let mut subresources: Vec<&str> = caps
        .subresources
        .iter()
        .map(|(r, _)| r.plural.as_str())
        .collect();
    subresources.sort_unstable();
    assert_eq!(subresources, ["scale", "status"]);

    let api: Api<DynamicObject> = Api::namespaced_with(client, "shop", &ar);
    let scale = api.get_scale("web").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let status = scale.status.expect("scale status");
    assert_eq!(
        (status.replicas, status.selector.as_deref()),
        (2, Some("app=web,tier in (a,b)")),
        "the selector is the Deployment's spec.selector as a string"
    );

    let patched = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await?;
    assert_eq!(patched.spec.and_then(|s| s.replicas), Some(7));
    let apps = Collection::of("apps/v1", "Deployment");
    let stored = fake
        .wait_for(&apps, "shop", "web", |d| d["spec"]["replicas"] == 7, WAIT)
        .await?;
    assert_eq!(
        stored["status"]["replicas"], 2,
        "status is the workload controller's"
    );

    // The same through the core group (`/api/v1`) and a custom resource group.
    let (svc, caps) =
        pinned_kind(&fake.client()?, &GroupVersionKind::gvk("", "v1", "Service")).await?;
    assert_eq!(
        (svc.plural.as_str(), caps.subresources.len()),
        ("services", 0)
    );
    let st = GroupVersionKind::gvk("sluice.io", "v1alpha1", "ScalingTrigger");
    let (st, caps) = pinned_kind(&fake.client()?, &st).await?;
    assert_eq!(st.plural, "scalingtriggers");
    let names: Vec<&str> = caps
        .subresources
        .iter()
        .map(|(r, _)| r.plural.as_str())
        .collect();
    assert_eq!(names, ["status"]);
    Ok(())
}

/// A target that cannot be scaled: discovery does not list `x/scale`, its
/// `/scale` answers 404 NotFound as on a real server, and an unknown kind
/// is a discovery error, not a hang.
#[tokio::test]
async fn a_kind_without_scale_answers_404_and_discovery_omits_it() -> anyhow::Result<()> {
    let fake = FakeApiServer::builder()
        .without_scale_subresource("apps/v1", "statefulsets")
        .resource(Resource::namespaced("example.io/v1", "Widget").with_status())
        .resource(
            Resource::namespaced("example.io/v1", "Gadget")
                .with_status()
                .with_scale(),
        )
        .start()
        .await?;
    let client = fake.client()?;
    for (api_version, kind) in [("apps/v1", "StatefulSet"), ("example.io/v1", "Widget")] {
        fake.put(json!({"apiVersion": api_version, "kind": kind,
            "metadata": {"name": "w", "namespace": "default"}, "spec": {"replicas": 1}}))?;
        let (group, version) = api_version.split_once('/').expect("a group version");
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = pinned_kind(&client, &gvk).await?;
        assert!(
            caps.subresources.iter().all(|(r, _)| r.plural != "scale"),
            "{kind} lists no scale subresource"
        );
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        match api.get_scale("w").await {
            Err(kube::Error::Api(status)) => assert!(status.is_not_found(), "{kind}: {status:?}"),
            other => anyhow::bail!("{kind}/scale should be 404 NotFound, got {other:?}"),
        }
        let patch = Patch::Merge(json!({"spec": {"replicas": 3}}));
        let patched = api.patch_scale("w", &PatchParams::default(), &patch).await;
        assert!(
            matches!(patched, Err(kube::Error::Api(ref s)) if s.is_not_found()),
            "{kind}: {patched:?}"
        );
    }

    // A custom resource registered with scale: its selector is `status.selector`.
    fake.put(json!({"apiVersion": "example.io/v1", "kind": "Gadget",
        "metadata": {"name": "g", "namespace": "default"}, "spec": {"replicas": 4},
        "status": {"replicas": 3, "selector": "app=gadget"}}))?;
    let (ar, _) = pinned_kind(
        &client,
        &GroupVersionKind::gvk("example.io", "v1", "Gadget"),
    )
    .await?;
    let scale = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &ar)
        .get_scale("g")
        .await?;
    let status = scale.status.expect("scale status");
    assert_eq!(
        (status.replicas, status.selector.as_deref()),
        (3, Some("app=gadget"))
    );

    let missing = pinned_kind(&client, &GroupVersionKind::gvk("apps", "v1", "Nope")).await;
    assert!(
        matches!(missing, Err(kube::Error::Discovery(_))),
        "{missing:?}"
    );
    let unknown_group = pinned_kind(&client, &GroupVersionKind::gvk("nope.io", "v1", "Nope")).await;
    assert!(
        matches!(unknown_group, Err(kube::Error::Api(ref s)) if s.is_not_found()),
        "{unknown_group:?}"
    );
    // The group lists kube's full discovery starts from.
    let groups = client.list_api_groups().await?;
    assert!(groups.groups.iter().any(|g| g.name == "apps"));
    assert!(groups.groups.iter().any(|g| g.name == "example.io"));
    let core = client.list_core_api_versions().await?;
    assert_eq!(core.versions, ["v1"]);
    Ok(())
}

#[tokio::test]
async fn events_are_checked_as_the_real_server_checks_them() -> anyhow::Result<()> {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    let fake = FakeApiServer::start().await?;
    let api: Api<K8sEvent> = Api::default_namespaced(fake.client()?);
    let pp = PostParams::default();
    let event = |note: &str| -> anyhow::Result<K8sEvent> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "web.1", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "action": "Scale", "reason": "SuccessfulRescale", "type": "Normal",
            "reportingController": "sluice-controller", "reportingInstance": "ctl-0",
            "regarding": {"kind": "ScalingTrigger", "namespace": "default", "name": "web"},
            "note": note,
        }))?)
    };
    let invalid = |r: &Result<K8sEvent, kube::Error>, field: &str| matches!(r, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field));

    let long = api.create(&pp, &event(&"x".repeat(1025))?).await;
    assert!(invalid(&long, "note: Too long"), "{long:?}");
    let mut bare = event("n")?;
    bare.action = None;
    let bare = api.create(&pp, &bare).await;
    assert!(invalid(&bare, "action: Required"), "{bare:?}");

    api.create(&pp, &event("New size: 5")?).await?;
    // The series may move...
    let series = json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}});
    api.patch("web.1", &PatchParams::default(), &Patch::Merge(&series))
        .await?;
    // ...what the Event says may not.
    let rewrite = json!({"note": "New size: 6"});
    let rewritten = api
        .patch("web.1", &PatchParams::default(), &Patch::Merge(&rewrite))
        .await;
    assert!(
        invalid(&rewritten, "note: Invalid value: field is immutable"),
        "{rewritten:?}"
    );
    let one = json!({"series": {"count": 1, "lastObservedTime": "2026-01-01T00:00:02.000000Z"}});
    let one = api
        .patch("web.1", &PatchParams::default(), &Patch::Merge(&one))
        .await;
    assert!(invalid(&one, "series.count"), "{one:?}");
    let stored = api.get("web.1").await?;
    assert_eq!(stored.note.as_deref(), Some("New size: 5"));
    assert_eq!(stored.series.map(|s| s.count), Some(2));
    Ok(())
}
