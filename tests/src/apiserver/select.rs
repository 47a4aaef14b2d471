//! Which objects a list or watch selects: namespace, label selector and
//! field selector.

use serde_json::Value;

use super::response::ApiError;
use super::routes::{Query, Target};

/// A label selector requirement.
enum Label {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// Namespace, label and field selection of a list or watch.
pub(super) struct Filter {
    namespace: Option<String>,
    labels: Vec<Label>,
    /// (dotted path, value, negated)
    fields: Vec<(String, String, bool)>,
}

impl Filter {
    pub(super) fn new(target: &Target, query: &Query) -> Result<Self, ApiError> {
        let labels = query
            .get("labelSelector")
            .map(|s| parse_labels(s))
            .transpose()?
            .unwrap_or_default();
        let mut fields = Vec::new();
        for term in query
            .get("fieldSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
            .filter(|t| !t.trim().is_empty())
        {
            let (path, value, negated) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            };
            fields.push((path.trim().to_string(), value.trim().to_string(), negated));
        }
        Ok(Self {
            namespace: target.namespace.clone(),
            labels,
            fields,
        })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str().unwrap_or_default() != ns
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|req| match req {
            Label::Eq(k, v) => label(k) == Some(v),
            Label::Ne(k, v) => label(k) != Some(v),
            Label::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Label::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Label::Exists(k) => label(k).is_some(),
            Label::Absent(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(path, value, negated)| {
                let found = path.split('.').try_fold(obj, |v, seg| v.get(seg));
                let found = match found {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (found == *value) != *negated
            })
    }
}

/// `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated.
fn parse_labels(selector: &str) -> Result<Vec<Label>, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid label selector {selector:?}"));
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, ch) in selector.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    let mut out = Vec::new();
    for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let key = |k: &str| -> Result<String, ApiError> {
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                Err(bad())
            } else {
                Ok(k.to_string())
            }
        };
        let req = if let Some((head, values)) = term.split_once('(') {
            let values = values.strip_suffix(')').ok_or_else(bad)?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [k, "in"] => Label::In(key(k)?, values),
                [k, "notin"] => Label::NotIn(key(k)?, values),
                _ => return Err(bad()),
            }
        } else if let Some((k, v)) = term.split_once("!=") {
            Label::Ne(key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Label::Eq(key(k)?, v.trim().to_string())
        } else if let Some(k) = term.strip_prefix('!') {
            Label::Absent(key(k)?)
        } else {
            Label::Exists(key(term)?)
        };
        out.push(req);
    }
    Ok(out)
}
