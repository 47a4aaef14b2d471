//! Standalone mode: the dataplane follows its YAML file, and a broken file
//! never takes down the table being served.

mod support;

use std::net::SocketAddr;

use sluice_dataplane::{Dataplane, Error, Source};
use support::*;

fn pools(addr: SocketAddr) -> String {
    format!("pools:\n  - name: web\n    endpoints:\n      - {{address: {addr}}}\n")
}

#[tokio::test]
async fn a_changed_file_is_followed_and_a_broken_one_keeps_the_old_table() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let path = temp_dir("file").join("sluice.yaml");
    std::fs::write(&path, pools(a.addr)).expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");
    assert_eq!(dp.route_version(), 1);

    // Replaced the way editors do it: a new file renamed over the old one.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pools(b.addr)).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    eventually("traffic to follow the file to b", async || {
        proxy_get(&http, &dp, "x", "/").await.backend == "b"
    })
    .await;
    assert_eq!(dp.route_version(), 2);

    std::fs::write(
        &path,
        "pools:\n  - name: web\n    endpoints:\n      - {address: not-an-address}\n",
    )
    .expect("write");
    let mut routes = serde_json::Value::Null;
    eventually("the error to show in /debug/routes", async || {
        let got = admin_get(&http, &dp, "/debug/routes").await;
        routes = serde_json::from_slice(&got.body).expect("json");
        routes["lastError"].is_string()
    })
    .await;
    let error = routes["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("sluice.yaml")
            && error.contains("line 4")
            && error.contains("not-an-address"),
        "the error names the file, line and value: {error}"
    );
    assert_eq!(routes["version"], 2);
    assert_eq!(
        proxy_get(&http, &dp, "x", "/").await.backend,
        "b",
        "the old table keeps serving"
    );
    assert_eq!(dp.route_version(), 2);

    // Fixed again: served as the next version, and the error is gone.
    std::fs::write(&path, pools(a.addr)).expect("write");
    eventually("traffic back on a", async || {
        proxy_get(&http, &dp, "x", "/").await.backend == "a"
    })
    .await;
    assert_eq!(dp.route_version(), 3);
    let routes: serde_json::Value =
        serde_json::from_slice(&admin_get(&http, &dp, "/debug/routes").await.body).expect("json");
    assert!(routes["lastError"].is_null(), "{routes}");
    dp.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_broken_file_fails_the_start_with_a_clear_message() {
    let dir = temp_dir("file-start");
    let missing = dir.join("nope.yaml");
    let err = Dataplane::start(options(Source::File(missing)))
        .await
        .expect_err("missing file");
    assert!(matches!(err, Error::File(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nope.yaml") && msg.contains("No such file"),
        "{msg}"
    );

    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "pools:\n  - name: web\n    pathPrefix: api\n").expect("write");
    let err = Dataplane::start(options(Source::File(broken)))
        .await
        .expect_err("broken file");
    let msg = err.to_string();
    assert!(
        msg.contains("broken.yaml")
            && msg.contains("line 3")
            && msg.contains("must start with '/'"),
        "{msg}"
    );
}
