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

/// Polls `/debug/routes` until `lastError` holds `needle`; returns the error.
async fn last_error_containing(http: &HttpClient, dp: &Dataplane, needle: &str) -> String {
    let mut error = String::new();
    eventually(&format!("lastError to say {needle:?}"), async || {
        let got = admin_get(http, dp, "/debug/routes").await;
        let routes: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
        error = routes["lastError"].as_str().unwrap_or_default().to_string();
        error.contains(needle)
    })
    .await;
    error
}

#[tokio::test]
async fn an_empty_file_or_list_does_not_replace_the_table_in_service_unless_meant() {
    let a = Backend::start("a").await;
    let path = temp_dir("file-empty").join("sluice.yaml");
    std::fs::write(&path, pools(a.addr)).expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");

    // Truncated, as a save caught half-way leaves it.
    std::fs::write(&path, "").expect("write");
    let error = last_error_containing(&http, &dp, "the file is empty").await;
    assert!(
        error.contains("sluice.yaml") && error.contains("pools: []"),
        "names the file and what to write: {error}"
    );
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");
    assert_eq!(dp.route_version(), 1);

    std::fs::write(&path, "pools: []\n").expect("write");
    let error = last_error_containing(&http, &dp, "lists no pools").await;
    assert!(
        error.contains("sluice.yaml")
            && error.contains("stop serving the 1 pool(s)")
            && error.contains("allowEmpty: true"),
        "{error}"
    );
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");
    assert_eq!(dp.route_version(), 1);

    // Said in the file: served.
    std::fs::write(&path, "allowEmpty: true\npools: []\n").expect("write");
    eventually("the empty table to be served", async || {
        proxy_get(&http, &dp, "x", "/").await.error == "no-route"
    })
    .await;
    assert_eq!(dp.route_version(), 2);
    dp.shutdown().await;
}

#[tokio::test]
async fn an_explicit_empty_list_is_a_valid_start_and_an_empty_file_is_not() {
    let dir = temp_dir("file-empty-start");
    let blank = dir.join("blank.yaml");
    std::fs::write(&blank, "# to be written\n").expect("write");
    let err = Dataplane::start(options(Source::File(blank)))
        .await
        .expect_err("an empty file");
    let msg = err.to_string();
    assert!(
        msg.contains("blank.yaml: the file is empty") && msg.contains("pools: []"),
        "{msg}"
    );

    let a = Backend::start("a").await;
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, "pools: []\n").expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.error, "no-route");
    std::fs::write(&path, pools(a.addr)).expect("write");
    eventually("traffic to reach a", async || {
        proxy_get(&http, &dp, "x", "/").await.backend == "a"
    })
    .await;
    dp.shutdown().await;
}

/// Log lines written while a test runs, for counting.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[tokio::test]
async fn a_bad_value_is_explained_in_plain_words_and_logged_once() {
    // The test's runtime runs on this thread, and so does the file watcher.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let a = Backend::start("a").await;
    let path = temp_dir("file-words").join("sluice.yaml");
    std::fs::write(&path, pools(a.addr)).expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();

    let zero = pools(a.addr).replace('}', ", weight: 0}");
    std::fs::write(&path, &zero).expect("write");
    let error = last_error_containing(&http, &dp, "positive whole number").await;
    assert!(
        error.contains("sluice.yaml: line 4")
            && error.contains("weight: 0")
            && !error.contains("u32"),
        "{error}"
    );
    assert_eq!(error.matches("positive whole number").count(), 1, "{error}");
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");

    let named = pools(a.addr).replace(&a.addr.ip().to_string(), "localhost");
    std::fs::write(&path, &named).expect("write");
    let error = last_error_containing(&http, &dp, "IP:port").await;
    assert!(
        error.contains("localhost:") && error.contains("host names are not resolved"),
        "{error}"
    );
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");
    assert_eq!(dp.route_version(), 1);

    // Several polls of the unchanged file: still one line per change.
    tokio::time::sleep(sluice_dataplane::control::file::POLL * 4).await;
    let text = logs.text();
    assert_eq!(
        text.matches("config file rejected").count(),
        2,
        "one log line per rejected version of the file:\n{text}"
    );
    dp.shutdown().await;
}
