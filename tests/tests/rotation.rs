//! A pool's certificate renewed in its Secret reaches the dataplane's HTTPS
//! listener while traffic flows, and no request fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use sluice_controller::{Controller, Options};
use sluice_dataplane::{Dataplane, Options as DpOptions, Source};
use sluice_tests::apiserver::FakeApiServer;
use sluice_tests::backend::Backend;
use sluice_tests::dataplane::loopback;
use sluice_tests::wait::until;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const NS: &str = "shop";
const HOST: &str = "shop.example.com";
const CA: &str = include_str!("../testdata/rotation/ca.crt");
const CRT_1: &str = include_str!("../testdata/rotation/shop1.crt");
const KEY_1: &str = include_str!("../testdata/rotation/shop1.key");
const CRT_2: &str = include_str!("../testdata/rotation/shop2.crt");
const KEY_2: &str = include_str!("../testdata/rotation/shop2.key");

fn secret(crt: &str, key: &str) -> anyhow::Result<Value> {
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("shop-tls".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), k8s_openapi::ByteString(crt.into())),
                ("tls.key".to_string(), k8s_openapi::ByteString(key.into())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let mut v = serde_json::to_value(secret)?;
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    Ok(v)
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

/// One HTTPS request on a new connection: the status and the leaf
/// certificate the dataplane presented.
async fn get(addr: SocketAddr, tls: &TlsConnector) -> anyhow::Result<(u16, Vec<u8>)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let stream = tls.connect(ServerName::try_from(HOST)?, tcp).await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header(http::header::HOST, HOST)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        anyhow::Ok((resp.status().as_u16(), leaf))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_with_no_failed_request() -> anyhow::Result<()> {
    let api = FakeApiServer::start().await?;
    let backend = Backend::start("backend-1").await?;
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))?;
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
    }))?;
    api.apply(secret(CRT_1, KEY_1)?)?;
    api.apply(json!({
        "apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool",
        "metadata": {"name": "shop", "namespace": NS},
        "spec": {
            "hosts": [HOST],
            "backends": [{"service": "web", "port": "http"}],
            "tls": {"secretName": "shop-tls"},
        },
    }))?;
    let controller = Controller::start(
        api.client()?,
        Options {
            listen: "127.0.0.1:0".parse()?,
            admin: "127.0.0.1:0".parse()?,
            ..Options::default()
        },
    )
    .await?;
    let dp = Dataplane::start(DpOptions {
        https: Some("127.0.0.1:0".parse()?),
        ..loopback(
            Source::Controller {
                url: format!("http://{}", controller.stream_addr()),
                token_file: None,
                ca_file: None,
            },
            "dp-0",
        )
    })
    .await?;
    let addr = dp
        .https_addr()
        .ok_or_else(|| anyhow::anyhow!("no HTTPS listener"))?;

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));

    let (first, second) = (der(CRT_1), der(CRT_2));
    until(
        Duration::from_secs(10),
        "the first certificate served",
        || async {
            let (status, leaf) = get(addr, &tls).await.ok()?;
            (status == 200 && leaf == first).then_some(())
        },
    )
    .await?;

    // Requests on fresh connections all along; the Secret is renewed in
    // the middle. Bounded: 2,000 requests at most.
    let load = {
        let tls = tls.clone();
        let second = second.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut after) = (0u32, Vec::new(), 0u32);
            for _ in 0..2_000 {
                match get(addr, &tls).await {
                    Ok((200, leaf)) => {
                        ok += 1;
                        if leaf == second {
                            after += 1;
                        }
                    }
                    other => failed.push(format!("{other:?}")),
                }
                // Enough requests on the new certificate: done.
                if after >= 50 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed, after)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.apply(secret(CRT_2, KEY_2)?)?;
    let (ok, failed, after) = load.await?;
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        after >= 50,
        "the renewed certificate was served {after} times of {ok}"
    );
    dp.shutdown().await;
    controller.shutdown().await;
    Ok(())
}
