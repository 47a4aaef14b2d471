//! An HTTPS listener terminating TLS with the certificate of its
//! certificateRef Secret, chosen by SNI, next to an HTTP listener whose
//! route redirects to it; certificate references across namespaces need a
//! ReferenceGrant, and a missing Secret is reported (upstream:
//! gateway-secret-invalid-reference-grant,
//! gateway-secret-missing-reference-grant,
//! gateway-secret-reference-grant-specific,
//! gateway-secret-reference-grant-all-in-namespace,
//! gateway-invalid-tls-configuration, httproute-https-listener,
//! httproute-redirect-scheme; listener isolation).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use sluice_tests::kube::gateway;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{Env, by};

/// A CA for the scenario and certificates it issues.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A `kubernetes.io/tls` Secret `ns/name` for `host`.
    fn secret(&self, ns: &str, name: &str, host: &str) -> anyhow::Result<Value> {
        let params = CertificateParams::new(vec![host.to_string()])?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
        }))
    }
}

/// `GET /` over TLS to `addr` naming `sni` (and `Host: sni`), trusting
/// only `ca`: the status and body.
async fn get_tls(addr: SocketAddr, sni: &str, ca: &Ca) -> anyhow::Result<(u16, String)> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes())?)?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string())?;
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header(http::header::HOST, sni)
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow::anyhow!("no answer over TLS within 5 s"))?
}

/// Retries [`get_tls`] until it answers 200 from echo `backend` in `ns`.
async fn until_tls(
    addr: SocketAddr,
    sni: &str,
    ca: &Ca,
    ns: &str,
    backend: &str,
) -> anyhow::Result<Value> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    for _ in 0..600 {
        match get_tls(addr, sni, ca).await {
            Ok((200, body)) => {
                let seen: Value = serde_json::from_str(body.trim())?;
                let pod = seen["pod"].as_str().unwrap_or_default();
                if seen["namespace"] == ns && pod.starts_with(&format!("{backend}-")) {
                    return Ok(seen);
                }
                last = format!("answered by {pod}");
            }
            Ok((status, body)) => last = format!("status {status}: {body}"),
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > crate::SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("HTTPS {sni} via {addr}: not answered by {ns}/{backend}; last: {last}")
}

pub async fn an_https_listener_serves_its_certificate_by_sni(env: Arc<Env>) -> anyhow::Result<()> {
    let (ns, certs) = ("gw-tls", "gw-tls-certs");
    gateway::namespace_with_echo(env.cp(), ns, &[], &["infra-backend-v1"]).await?;
    gateway::namespace_with_echo(env.cp(), certs, &[], &[]).await?;
    let ca = Ca::new()?;
    let (secure, other) = ("secure.tls.example.com", "other.tls.example.com");
    let secrets = json!({"apiVersion": "v1", "kind": "List", "items": [
        ca.secret(ns, "secure-cert", secure)?,
        ca.secret(certs, "other-cert", other)?,
    ]});
    env.apply("gw-tls-secrets.json", &secrets.to_string())?;
    let yaml = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {ns}}}
spec:
  gatewayClassName: {class}
  listeners:
    - {{name: http, port: 80, protocol: HTTP, hostname: {secure}}}
    - name: https
      port: 443
      protocol: HTTPS
      hostname: {secure}
      tls: {{mode: Terminate, certificateRefs: [{{name: secure-cert}}]}}
    - name: other
      port: 443
      protocol: HTTPS
      hostname: {other}
      tls: {{mode: Terminate, certificateRefs: [{{name: other-cert, namespace: {certs}}}]}}
    - name: missing
      port: 443
      protocol: HTTPS
      hostname: missing.tls.example.com
      tls: {{mode: Terminate, certificateRefs: [{{name: no-such-secret}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: {ns}}}
spec:
  parentRefs:
    - {{name: gw, sectionName: https}}
    - {{name: gw, sectionName: other}}
  rules:
    - backendRefs: [{{name: infra-backend-v1, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-https, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  rules:
    - filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, statusCode: 301}}}}]
"#,
        class = gateway::CLASS
    );
    env.apply("gw-tls.yaml", &yaml)?;

    let listener = |g: &Value, name: &str| -> Value {
        g["status"]["listeners"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == name).cloned())
            .unwrap_or_default()
    };
    let refs = |g: &Value, name: &str| {
        gateway::condition(&listener(g, name)["conditions"], "ResolvedRefs")
    };
    let pair = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
    let gw = env
        .status(
            "Gateway",
            ns,
            "gw",
            "the certificate references resolved or refused",
            |g| {
                refs(g, "https") == pair("True", "ResolvedRefs")
                    && listener(g, "https")["attachedRoutes"] == 1
                    && refs(g, "other") == pair("False", "RefNotPermitted")
                    && refs(g, "missing") == pair("False", "InvalidCertificateRef")
            },
        )
        .await?;
    let https = listener(&gw, "https");
    assert_eq!(https["attachedRoutes"], 1, "{https}");
    assert_eq!(
        gateway::condition(&https["conditions"], "Programmed"),
        pair("True", "Programmed"),
        "{https}"
    );

    // Each dataplane serves the Secret's certificate for the name, and the
    // route behind it.
    let listeners = gateway::https_listeners(&env.client).await?;
    for addr in &listeners {
        let seen = until_tls(*addr, secure, &ca, ns, "infra-backend-v1").await?;
        assert_eq!(seen["host"], secure, "{seen}");
    }
    // Plain HTTP for the same name is the other listener's: the redirect,
    // not the HTTPS route.
    let a = env.until(secure, "/", &[], |a| a.status == 301).await?;
    assert_eq!(
        a.headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some(format!("https://{secure}/").as_str()),
        "{:?}",
        a.headers
    );
    assert!(!by(&a, ns, "infra-backend-v1"));

    // The certificate in another namespace: refused until granted.
    assert!(
        get_tls(listeners[0], other, &ca).await.is_err(),
        "no certificate for {other} without a grant"
    );
    let regrant = |to: &str| {
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: gateways-of-gw-tls, namespace: {certs}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {ns}}}]
  to: [{to}]
"#
        )
    };
    env.apply(
        "gw-tls-grant.yaml",
        &regrant(r#"{group: "", kind: Secret, name: other-cert}"#),
    )?;
    env.status(
        "Gateway",
        ns,
        "gw",
        "the granted certificate resolved",
        |g| refs(g, "other") == pair("True", "ResolvedRefs"),
    )
    .await?;
    let seen = until_tls(listeners[0], other, &ca, ns, "infra-backend-v1").await?;
    assert_eq!(seen["host"], other, "{seen}");

    // The grant naming another Secret: refused again (the change is seen);
    // then the grant without a name, for every Secret of the namespace
    // (upstream: gateway-secret-reference-grant-all-in-namespace).
    env.apply(
        "gw-tls-grant.yaml",
        &regrant(r#"{group: "", kind: Secret, name: not-other-cert}"#),
    )?;
    env.status(
        "Gateway",
        ns,
        "gw",
        "a grant for another Secret refused",
        |g| refs(g, "other") == pair("False", "RefNotPermitted"),
    )
    .await?;
    env.apply(
        "gw-tls-grant.yaml",
        &regrant(r#"{group: "", kind: Secret}"#),
    )?;
    env.status(
        "Gateway",
        ns,
        "gw",
        "a grant for every Secret of the namespace resolved",
        |g| refs(g, "other") == pair("True", "ResolvedRefs"),
    )
    .await?;
    let seen = until_tls(listeners[0], other, &ca, ns, "infra-backend-v1").await?;
    assert_eq!(seen["host"], other, "{seen}");
    Ok(())
}
