//! The API-server fake, driven by kube-rs's unchanged client and watcher.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use sluice_crds::BackendPool;
use sluice_tests::apiserver::FakeApiServer;

fn service(name: &str, port: i32) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }))
    .expect("service")
}

#[tokio::test]
async fn crud_through_kube_api() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<Service> = Api::default_namespaced(fake.client()?);
    api.create(&PostParams::default(), &service("web", 80))
        .await?;
    let got = api.get("web").await?;
    assert_eq!(got.spec.and_then(|s| s.ports).map(|p| p[0].port), Some(80));
    assert!(got.metadata.uid.is_some() && got.metadata.resource_version.is_some());
    let dup = api
        .create(&PostParams::default(), &service("web", 80))
        .await;
    assert!(matches!(dup, Err(kube::Error::Api(s)) if s.code == 409));
    assert_eq!(api.list(&Default::default()).await?.items.len(), 1);
    api.delete("web", &DeleteParams::default()).await?;
    let gone = api.get("web").await;
    assert!(matches!(gone, Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound"));
    Ok(())
}

#[tokio::test]
async fn status_patches_leave_generation_alone_and_spec_patches_bump_it() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    let api: Api<BackendPool> = Api::namespaced(fake.client()?, "shop");
    let pool: BackendPool = serde_json::from_value(json!({
        "apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"backends": [{"address": "192.0.2.1:80"}]},
    }))?;
    api.create(&PostParams::default(), &pool).await?;
    let status = json!({"apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool", "status": {"routeVersion": 7}});
    api.patch_status(
        "web",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&status),
    )
    .await?;
    let got = api.get("web").await?;
    assert_eq!(got.metadata.generation, Some(1));
    assert_eq!(got.status.and_then(|s| s.route_version), Some(7));

    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"pathPrefix": "/api"}})),
    )
    .await?;
    let got = api.get("web").await?;
    assert_eq!(got.metadata.generation, Some(2));
    assert_eq!(got.spec.path_prefix, "/api");
    // A spec write does not clobber the status subresource.
    assert_eq!(got.status.and_then(|s| s.route_version), Some(7));
    Ok(())
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Result<Service, watcher::Error>>;

/// The next applied Service as (name, first port), within 10 s. Watch
/// errors (the 410 the watcher recovers from) are skipped.
async fn next_port(events: &mut Events) -> anyhow::Result<(String, Option<i32>)> {
    let svc = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await? {
            Some(Ok(svc)) => break svc,
            Some(Err(_)) => continue,
            None => anyhow::bail!("watch ended"),
        }
    };
    Ok((
        svc.metadata.name.unwrap_or_default(),
        svc.spec.and_then(|s| s.ports).map(|p| p[0].port),
    ))
}

#[tokio::test]
async fn watcher_sees_changes_in_order_and_recovers_from_410() -> anyhow::Result<()> {
    let fake = FakeApiServer::start_with(Duration::from_millis(200)).await?;
    let api: Api<Service> = Api::default_namespaced(fake.client()?);
    api.create(&PostParams::default(), &service("a", 80))
        .await?;
    // A short server-side timeout makes the watcher re-watch from its last
    // resourceVersion every second, which is where 410 Gone can happen.
    let cfg = watcher::Config::default().timeout(1);
    // The watcher only makes progress while polled: drive it from a task.
    let mut stream = watcher(api.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let (tx, mut events): (_, Events) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    assert_eq!(next_port(&mut events).await?, ("a".into(), Some(80)));
    api.replace("a", &PostParams::default(), &{
        let mut s = api.get("a").await?;
        if let Some(ports) = s.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            ports[0].port = 81;
        }
        s
    })
    .await?;
    assert_eq!(next_port(&mut events).await?, ("a".into(), Some(81)));

    // History compacted: the next re-watch (within a second) gets 410 and
    // the watcher relists; changes after that still arrive.
    let lists = |fake: &FakeApiServer| {
        fake.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET /api/v1/namespaces/default/services?") && !r.contains("watch=")
            })
            .count()
    };
    assert_eq!(lists(&fake), 1);
    fake.expire_history();
    sluice_tests::wait::until(Duration::from_secs(10), "a relist after 410", || {
        let n = lists(&fake);
        async move { (n >= 2).then_some(()) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; requests: {:#?}", fake.requests()))?;
    api.create(&PostParams::default(), &service("b", 90))
        .await?;
    let mut seen_b = false;
    for _ in 0..10 {
        if next_port(&mut events).await? == ("b".into(), Some(90)) {
            seen_b = true;
            break;
        }
    }
    assert!(seen_b, "watcher never saw b after the relist");
    driver.abort();
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{requests:?}"
    );
    Ok(())
}

#[tokio::test]
async fn resuming_from_an_expired_version_gets_a_410_error_event() -> anyhow::Result<()> {
    let fake = FakeApiServer::start().await?;
    fake.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "default"}}))?;
    fake.expire_history();
    let http = sluice_tests::client::HttpClient::new();
    let addr = fake.url().trim_start_matches("http://").parse()?;
    let answer = http
        .get(
            addr,
            "x",
            "/api/v1/namespaces/default/services?watch=true&resourceVersion=1",
        )
        .await?;
    assert!(
        answer.body.contains(r#""type":"ERROR""#) && answer.body.contains("\"code\":410"),
        "{}",
        answer.body
    );
    Ok(())
}
