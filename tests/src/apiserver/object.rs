//! Reads and writes of one object through one of its views: the object
//! itself, its `status` subresource or its `scale` subresource.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::patch::{PatchType, json_patch, merge_patch};
use super::response::{ApiError, Body, json_response};
use super::routes::{Query, Target, parse_json};
use super::store::metadata_mut;
use super::{Collection, Shared};

/// Which face of an object a request reads or writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum View {
    Object,
    Status,
    Scale,
}

/// The status in a create or object write is the server's to keep when the
/// collection has a status subresource.
pub(super) fn drop_status(shared: &Shared, c: &Collection, mut obj: Value) -> Value {
    if shared.config.has_status(c) {
        set_field(&mut obj, "status", None);
    }
    obj
}

pub(super) fn render(obj: &Value, view: View) -> Value {
    if view != View::Scale {
        return obj.clone();
    }
    let meta = &obj["metadata"];
    // Workloads (Deployment, StatefulSet, ...) report their `spec.selector`
    // as a selector string; custom resources point `labelSelectorPath` at
    // a string, conventionally `status.selector`.
    let selector = match &obj["spec"]["selector"] {
        s @ Value::Object(_) => Some(selector_string(s)),
        _ => obj["status"]["selector"].as_str().map(str::to_owned),
    };
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        // Workload controllers default `replicas` to 1.
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// A `metav1.LabelSelector` in the string form `kubectl get -l` takes, as
/// the real server writes it in a Scale: requirements sorted by key, values
/// sorted within `in`/`notin`.
fn selector_string(selector: &Value) -> String {
    let mut terms: Vec<(String, String)> = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        for (k, v) in labels {
            terms.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())));
        }
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default().to_string();
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let term = match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.clone(),
        };
        terms.push((key, term));
    }
    terms.sort();
    let terms: Vec<String> = terms.into_iter().map(|(_, t)| t).collect();
    terms.join(",")
}

/// The object after writing `incoming` (a whole object, or a Scale) through `view`.
fn merge_back(shared: &Shared, c: &Collection, old: &Value, incoming: Value, view: View) -> Value {
    match view {
        View::Object if shared.config.has_status(c) => {
            let mut new = incoming;
            set_field(&mut new, "status", old.get("status").cloned());
            new
        }
        View::Object => incoming,
        View::Status => {
            let mut new = old.clone();
            set_field(&mut new, "status", incoming.get("status").cloned());
            new
        }
        View::Scale => {
            let mut new = old.clone();
            if let Some(replicas) = incoming["spec"]["replicas"].as_i64() {
                let mut spec = old.get("spec").cloned().unwrap_or_else(|| json!({}));
                set_field(&mut spec, "replicas", Some(json!(replicas)));
                set_field(&mut new, "spec", Some(spec));
            }
            new
        }
    }
}

/// Sets (`Some`) or removes (`None`) a field of an object; a no-op on non-objects.
fn set_field(obj: &mut Value, key: &str, value: Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match value {
            Some(v) => o.insert(key.to_string(), v),
            None => o.remove(key),
        };
    }
}

/// PUT (`patch` is `None`) or PATCH through one of the object's views.
pub(super) fn write(
    shared: &Shared,
    target: &Target,
    name: &str,
    view: View,
    patch: Option<PatchType>,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    if patch == Some(PatchType::Apply) && query.get("fieldManager").is_none_or(String::is_empty) {
        return Err(ApiError::bad_request(
            "fieldManager is required for apply patch",
        ));
    }
    let (c, ns) = (
        &target.collection,
        target.namespace.as_deref().unwrap_or_default(),
    );
    let input = parse_json(body)?;
    let mut state = shared.state();
    let Some(old) = state.get(c, ns, name).cloned() else {
        if patch == Some(PatchType::Apply) && view == View::Object {
            let mut obj = drop_status(shared, c, input);
            metadata_mut(&mut obj)?.insert("name".into(), json!(name));
            let created = state.create(c, ns, obj)?;
            return Ok(json_response(StatusCode::CREATED, &created));
        }
        return Err(ApiError::not_found(c, name));
    };
    let current = render(&old, view);
    let incoming = match patch {
        None => input,
        Some(PatchType::Merge | PatchType::Apply) => {
            let mut v = current.clone();
            merge_patch(&mut v, &input);
            v
        }
        Some(PatchType::Json) => json_patch(current.clone(), &input)?,
    };
    let wanted_rv = incoming["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty());
    if wanted_rv.is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str()) {
        return Err(ApiError::conflict(c, name));
    }
    if incoming["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let new = merge_back(shared, c, &old, incoming, view);
    let stored = state.update(c, ns, name, new)?;
    Ok(json_response(StatusCode::OK, &render(&stored, view)))
}

pub(super) fn delete(
    shared: &Shared,
    c: &Collection,
    ns: &str,
    name: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(body)?
    };
    let mut state = shared.state();
    let current = state
        .get(c, ns, name)
        .ok_or_else(|| ApiError::not_found(c, name))?;
    for field in ["resourceVersion", "uid"] {
        if let Some(want) = options["preconditions"][field].as_str()
            && current["metadata"][field].as_str() != Some(want)
        {
            return Err(ApiError::conflict(c, name));
        }
    }
    let gone = state
        .remove(c, ns, name)
        .ok_or_else(|| ApiError::not_found(c, name))?;
    Ok(json_response(StatusCode::OK, &gone))
}
