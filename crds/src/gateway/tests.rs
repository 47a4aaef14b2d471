//! The generated types hold every field of the vendored CRDs: an object
//! with every property of the schema set survives a round trip through
//! them unchanged.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::gatewayclasses::GatewayClass;
use super::gateways::Gateway;
use super::httproutes::HttpRoute as HTTPRoute;
use super::referencegrants::ReferenceGrant;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway-api/v1.5.1");

/// The `openAPIV3Schema` of `version` in the vendored CRD `file`.
fn schema(file: &str, version: &str) -> Value {
    let path = format!("{DIR}/gateway.networking.k8s.io_{file}.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let crd: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == version))
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .unwrap_or_else(|| panic!("{path}: no version {version}"))
}

/// A value with every property of `schema` set (the first enum value
/// where there is a list).
fn fill(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    if schema["x-kubernetes-int-or-string"] == true {
        return json!(1);
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = Map::new();
            for (k, v) in schema["properties"].as_object().into_iter().flatten() {
                out.insert(k.clone(), fill(v));
            }
            if schema["additionalProperties"].is_object() {
                out.insert("key".into(), fill(&schema["additionalProperties"]));
            }
            Value::Object(out)
        }
        Some("array") => json!([fill(&schema["items"])]),
        Some("integer") => json!(1),
        Some("boolean") => json!(true),
        Some("string") if schema["format"] == "date-time" => json!("2026-01-01T00:00:00Z"),
        Some("string") => json!("x"),
        other => panic!("schema type {other:?} not handled"),
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(file: &str, version: &str, kind: &str) {
    let schema = schema(file, version);
    let mut obj = fill(&schema);
    obj["apiVersion"] = json!(format!("gateway.networking.k8s.io/{version}"));
    obj["kind"] = json!(kind);
    obj["metadata"] = json!({"name": "x", "namespace": "x"});
    let typed: T = serde_json::from_value(obj.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    for part in ["spec", "status"] {
        assert_eq!(
            back[part], obj[part],
            "{kind}.{part} lost or changed a field"
        );
    }
    assert!(!obj["spec"].as_object().expect("spec").is_empty());
}

#[test]
fn generated_types_keep_every_field() {
    round_trip::<GatewayClass>("gatewayclasses", "v1", "GatewayClass");
    round_trip::<Gateway>("gateways", "v1", "Gateway");
    round_trip::<HTTPRoute>("httproutes", "v1", "HTTPRoute");
    round_trip::<ReferenceGrant>("referencegrants", "v1beta1", "ReferenceGrant");
}
