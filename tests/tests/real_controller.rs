//! What the controller promises its operators, on a real control plane
//! with the chart installed (the controller run with `--token-recheck=2s`
//! through the chart's `controller.extraArgs`):
//!
//! - `Programmed` does not flap on ordinary route updates: under endpoint
//!   churn every BackendPool status the API server stores says Programmed
//!   True with both dataplanes synced;
//! - a revoked ServiceAccount token loses access within the recheck
//!   interval: a token bound to a dataplane pod, as the kubelet mints it,
//!   is refused (401) and its open route stream ends soon after the pod is
//!   gone from the API server.
//!
//! One control plane for both, in this order (the second deletes a
//! dataplane pod). The rescale Events are checked by `real_autoscale`. See
//! docs/testing.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::kube::{Cluster, app, chart};
use sluice_tests::status_log::StatusLog;
use sluice_tests::wait;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The controller's `--token-recheck` here.
const RECHECK: Duration = Duration::from_secs(2);
/// How the API server's own token cache keeps accepting a token after its
/// pod is gone (kube-apiserver caches successful token authentications for
/// 10 s): TokenReview says `authenticated` for up to this long.
const APISERVER_TOKEN_CACHE: Duration = Duration::from_secs(10);
/// How soon after the pod is gone its token must be refused: the API
/// server's cache, then the recheck interval, plus room for one TokenReview
/// on a busy machine. The verdict cache before the fix kept an accepted
/// token for ten minutes.
const REVOKED_WITHIN: Duration =
    Duration::from_secs(APISERVER_TOKEN_CACHE.as_secs() + RECHECK.as_secs() + 3);
/// The name the chart's stream certificate is for.
const CONTROLLER_NAME: &str = "sluice-controller.sluice-system.svc";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_holds_under_churn_and_a_revoked_token_loses_access() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let cp = &cluster.cp;
    let values =
        json!({"controller": {"extraArgs": [format!("--token-recheck={}s", RECHECK.as_secs())]}});
    chart::install(cp, &values).await?;
    app::deploy_echo_pool(cp, 2).await?;
    let client = cp.client().await?;
    let dataplanes = app::dataplanes(&client).await?;
    assert_eq!(dataplanes.len(), 2, "two dataplane pods: {dataplanes:?}");

    // --- Programmed under endpoint churn.
    let log = StatusLog::start(client.clone(), "default", "web");
    wait::until(
        Duration::from_secs(60),
        "Programmed True with 2 dataplanes synced",
        || {
            let seen = log.seen();
            async move {
                let last = seen.last()?;
                (last.condition("Programmed")?.0 == "True"
                    && last.status["dataplanes"]["synced"] == 2)
                    .then_some(())
            }
        },
    )
    .await?;
    let settled = log.seen().len() - 1;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for replicas in [4, 1, 3] {
        deployments
            .patch_scale(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        chart::wait_available(&deployments, "web", Duration::from_secs(90)).await?;
        wait_for_pods(&pods, replicas).await?;
    }
    let victim = app::echo_pods(&client)
        .await?
        .into_iter()
        .next()
        .context("no echo pod")?;
    pods.delete(&victim, &DeleteParams::default()).await?;
    wait::until(Duration::from_secs(60), "the deleted pod replaced", || {
        let (pods, victim) = (pods.clone(), victim.clone());
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let names: Vec<_> = list
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            (!names.contains(&victim)).then_some(())
        }
    })
    .await?;
    chart::wait_available(&deployments, "web", Duration::from_secs(60)).await?;
    // The last change reaches the status, which then has its endpoints.
    wait::until(
        Duration::from_secs(20),
        "status with 3 ready endpoints",
        || {
            let seen = log.seen();
            async move {
                let last = seen.last()?;
                (last.status["endpoints"]["ready"] == 3).then_some(())
            }
        },
    )
    .await?;
    let seen = log.seen();
    let stored = &seen[settled..];
    let versions: std::collections::BTreeSet<_> = stored
        .iter()
        .filter_map(|s| s.status["routeVersion"].as_u64())
        .collect();
    eprintln!(
        "{} statuses stored over {} route versions",
        stored.len(),
        versions.len()
    );
    assert!(
        versions.len() >= 5,
        "the churn changed the route: versions {versions:?}"
    );
    for s in stored {
        assert_eq!(
            s.condition("Programmed").map(|c| c.0).as_deref(),
            Some("True"),
            "Programmed at resourceVersion {}: {}",
            s.resource_version,
            s.status
        );
        assert_eq!(
            s.status["dataplanes"]["synced"], 2,
            "synced dataplanes at resourceVersion {}: {}",
            s.resource_version, s.status
        );
    }
    drop(log);

    // --- A revoked token.
    let (victim, victim_uid) = {
        let dps: Api<Pod> = Api::namespaced(client.clone(), chart::NAMESPACE);
        let list = dps
            .list(&ListParams::default().labels("app.kubernetes.io/component=dataplane"))
            .await?;
        let pod = list.items.into_iter().next().context("no dataplane pod")?;
        (
            pod.metadata.name.context("pod name")?,
            pod.metadata.uid.context("pod uid")?,
        )
    };
    // The token the kubelet mounts for the dataplane: its ServiceAccount,
    // audience `sluice`, bound to the pod.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), chart::NAMESPACE);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["sluice".into()],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(victim.clone()),
                uid: Some(victim_uid),
            }),
        },
        ..Default::default()
    };
    let token: TokenRequest = sas
        .create_subresource("token", "sluice-dataplane", &PostParams::default(), &req)
        .await?;
    let token = token
        .status
        .context("TokenRequest answered without a token")?
        .token;

    let controller = app::pods(
        &client,
        chart::NAMESPACE,
        "app.kubernetes.io/component=controller",
    )
    .await?
    .into_iter()
    .next()
    .context("no controller pod")?;
    let stream_addr: SocketAddr = format!("{}:8090", controller.1).parse()?;
    let tls = connector(&client).await?;
    let (status, _) = open_stream(stream_addr, &tls, &token).await?;
    assert_eq!(status, 200, "the pod's token opens a route stream");
    // An open stream, read until it ends.
    let (status, mut body) = open_stream(stream_addr, &tls, &token).await?;
    assert_eq!(status, 200);
    let first = body.frame().await.context("the stream ended at once")??;
    assert!(first.is_data(), "a route event first");
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        // Bounded: the stream ends or the test stops waiting for it.
        while let Some(Ok(_)) = body.frame().await {}
        let _ = ended_tx.send(());
    });

    let dps: Api<Pod> = Api::namespaced(client.clone(), chart::NAMESPACE);
    dps.delete(&victim, &DeleteParams::default()).await?;
    wait::until(Duration::from_secs(60), "the dataplane pod gone", || {
        let (dps, victim) = (dps.clone(), victim.clone());
        async move { dps.get_opt(&victim).await.ok()?.is_none().then_some(()) }
    })
    .await?;
    let gone = std::time::Instant::now();
    let refused = wait::until(REVOKED_WITHIN, "the revoked token refused", || {
        let (tls, token) = (tls.clone(), token.clone());
        async move {
            let (status, _) = open_stream(stream_addr, &tls, &token).await.ok()?;
            (status == 401).then_some(status)
        }
    })
    .await?;
    eprintln!(
        "refused ({refused}) {:.1?} after the pod was gone",
        gone.elapsed()
    );
    let left = REVOKED_WITHIN.saturating_sub(gone.elapsed()) + RECHECK;
    tokio::time::timeout(left, ended_rx)
        .await
        .context("the stream opened with the revoked token is still open")??;
    reader.await?;
    eprintln!(
        "the open stream ended {:.1?} after the pod was gone",
        gone.elapsed()
    );

    // The dataplanes (the replacement with a token of its own) still serve.
    chart::wait_available(
        &Api::namespaced(client.clone(), chart::NAMESPACE),
        "sluice-dataplane",
        Duration::from_secs(90),
    )
    .await?;
    let echo = app::echo_pods(&client).await?;
    let http = HttpClient::new();
    for (dp, addr) in app::dataplanes(&client).await? {
        let (seen, other) = app::answering(&http, addr, &echo, Duration::from_secs(60)).await;
        assert_eq!(seen, echo, "through {dp}; other answers: {other:?}");
    }
    Ok(())
}

/// Waits until exactly `n` echo pods exist (none terminating).
async fn wait_for_pods(pods: &Api<Pod>, n: usize) -> anyhow::Result<()> {
    wait::until(Duration::from_secs(60), &format!("{n} echo pods"), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            (list.items.len() == n).then_some(())
        }
    })
    .await
}

/// A TLS connector trusting the CA of the chart's stream certificate (its
/// Secret's `ca.crt`).
async fn connector(client: &kube::Client) -> anyhow::Result<TlsConnector> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), chart::NAMESPACE);
    let ca = secrets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some("kubernetes.io/tls"))
        .find_map(|s| s.data?.get("ca.crt").cloned())
        .context("no stream TLS Secret with ca.crt")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca.0) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `GET /v1/routes` on the controller with `token`: the status and the
/// body (the stream, when accepted).
async fn open_stream(
    addr: SocketAddr,
    tls: &TlsConnector,
    token: &str,
) -> anyhow::Result<(u16, hyper::body::Incoming)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let stream = tls
            .connect(ServerName::try_from(CONTROLLER_NAME)?, tcp)
            .await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(format!(
            "{}?dataplane=revocation-probe",
            sluice_protocol::ROUTES_PATH
        ))
        .header(http::header::HOST, CONTROLLER_NAME)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        anyhow::Ok((resp.status().as_u16(), resp.into_body()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await?
}
