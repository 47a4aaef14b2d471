//! The patch languages: JSON merge patch (also standing in for strategic
//! merge and server-side apply) and JSON patch.

use serde_json::{Value, json};

use super::response::{ApiError, unsupported};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchType {
    /// RFC 7386; strategic merge patches are treated as this too.
    Merge,
    /// Server-side apply, approximated as a merge of the applied fields.
    Apply,
    /// RFC 6902.
    Json,
}

impl PatchType {
    pub(super) fn parse(ctype: Option<&str>) -> Result<Self, ApiError> {
        match ctype {
            Some("application/merge-patch+json" | "application/strategic-merge-patch+json") => {
                Ok(Self::Merge)
            }
            Some("application/apply-patch+yaml") => Ok(Self::Apply),
            Some("application/json-patch+json") => Ok(Self::Json),
            other => Err(unsupported(other.unwrap_or("no Content-Type"))),
        }
    }
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace and test (move and copy are
/// not used by controllers).
pub(super) fn json_patch(mut doc: Value, ops: &Value) -> Result<Value, ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array"))?;
    for op in ops {
        let str_field = |f: &str| {
            op[f].as_str().ok_or_else(|| {
                ApiError::bad_request(format!("JSON patch operation without {f}: {op}"))
            })
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("no value in {op}")))
        };
        let path = str_field("path")?;
        match str_field("op")? {
            "add" => pointer_add(&mut doc, path, value()?)?,
            "remove" => drop(pointer_remove(&mut doc, path)?),
            "replace" => {
                pointer_remove(&mut doc, path)?;
                pointer_add(&mut doc, path, value()?)?;
            }
            "test" if doc.pointer(path) == Some(&value()?) => {}
            "test" => {
                return Err(ApiError::invalid(format!(
                    "JSON patch test failed at {path}"
                )));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

/// The container a JSON pointer's last token lives in, and that token.
fn pointer_parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), ApiError> {
    let missing = || ApiError::invalid(format!("no such path in the object: {path}"));
    let (parent, last) = path.rsplit_once('/').ok_or_else(missing)?;
    let token = last.replace("~1", "/").replace("~0", "~");
    Ok((doc.pointer_mut(parent).ok_or_else(missing)?, token))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = pointer_parent(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(token, value);
        }
        Value::Array(a) if token == "-" => a.push(value),
        Value::Array(a) => match token.parse::<usize>() {
            Ok(i) if i <= a.len() => a.insert(i, value),
            _ => return Err(ApiError::invalid(format!("bad array index in {path}"))),
        },
        _ => {
            return Err(ApiError::invalid(format!(
                "cannot add below a scalar at {path}"
            )));
        }
    }
    Ok(())
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let missing = || ApiError::invalid(format!("no such path in the object: {path}"));
    let (parent, token) = pointer_parent(doc, path)?;
    match parent {
        Value::Object(m) => m.remove(&token).ok_or_else(missing),
        Value::Array(a) => match token.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}
