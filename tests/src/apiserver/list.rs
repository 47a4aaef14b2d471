//! Lists: one page of the newest state, selected and paginated.

use std::ops::Bound;

use http::{Response, StatusCode};
use serde_json::json;

use super::Shared;
use super::response::{ApiError, Body, json_response};
use super::routes::{Query, Target, number};
use super::select::Filter;
use super::store::Key;

pub(super) fn list(
    shared: &Shared,
    target: &Target,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::new(target, query)?;
    let limit = number(query, "limit")?.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let state = shared.state();
    // A continue token is `{list rv}/{namespace}/{name}` of the last item
    // returned; later pages report the first page's version, so a watch
    // started from it replays whatever changed while paging.
    let (list_rv, after) = match query.get("continue").filter(|t| !t.is_empty()) {
        None => (state.rv, None),
        Some(token) => {
            let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
            let mut parts = token.splitn(3, '/');
            let (rv, ns, name) = (
                parts.next(),
                parts.next().ok_or_else(bad)?,
                parts.next().ok_or_else(bad)?,
            );
            let rv: u64 = rv.and_then(|r| r.parse().ok()).ok_or_else(bad)?;
            if rv < state.resumable_from {
                return Err(ApiError::expired(format!(
                    "the continue token for version {rv} has expired"
                )));
            }
            (rv, Some((ns.to_string(), name.to_string())))
        }
    };
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut items = Vec::new();
    let mut next = None;
    let mut last: Option<&Key> = None;
    for (key, obj) in state
        .objects
        .get(&target.collection)
        .into_iter()
        .flat_map(|m| m.range((lower.clone(), Bound::Unbounded)))
    {
        if !filter.matches(obj) {
            continue;
        }
        if let (Some(limit), Some((ns, name))) = (limit, last)
            && items.len() == limit
        {
            next = Some(format!("{list_rv}/{ns}/{name}"));
            break;
        }
        items.push(obj.clone());
        last = Some(key);
    }
    let kind = state
        .kind_of(&target.collection)
        .map_or_else(|| "List".to_string(), |k| format!("{k}List"));
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    let list = json!({"kind": kind, "apiVersion": target.collection.group_version, "metadata": metadata, "items": items});
    Ok(json_response(StatusCode::OK, &list))
}
