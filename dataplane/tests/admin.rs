//! The admin port shows the table without its secrets.

mod support;

use sluice_dataplane::Source;
use support::{admin_get, client, start, table};

#[tokio::test]
async fn debug_routes_never_shows_a_private_key() {
    let dp = start(Source::Static(table(
        r#"
pools:
  - name: shop
    hosts: [shop.example.com]
    endpoints: [{address: 127.0.0.1:1}]
    tls:
      certificate: "-----BEGIN CERTIFICATE-----\nCERT-MATERIAL\n-----END CERTIFICATE-----\n"
      privateKey: "-----BEGIN PRIVATE KEY-----\nKEY-MATERIAL\n-----END PRIVATE KEY-----\n"
"#,
    )))
    .await;
    let got = admin_get(&client(), &dp, "/debug/routes").await;
    assert_eq!(got.status, 200);
    let body = got.text();
    assert!(body.contains("shop.example.com"), "{body}");
    assert!(
        body.contains("CERT-MATERIAL"),
        "the certificate is public: {body}"
    );
    assert!(!body.contains("KEY-MATERIAL"), "{body}");
    assert!(body.contains("<redacted>"), "{body}");
}
