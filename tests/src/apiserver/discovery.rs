//! Discovery: the registered kinds, and the `/api`, `/api/v1`, `/apis` and
//! `/apis/{group}/{version}` documents that describe them, so that
//! `kube::discovery::pinned_kind` (which reads one `APIResourceList`) and
//! `kube::Discovery` (which reads the group lists first) resolve a kind and
//! its subresources against the fake as they would against a real server.

use std::collections::BTreeMap;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::Collection;
use super::response::{ApiError, Body, json_response};

/// A kind the server announces in discovery, with the subresources it
/// serves. Registering a kind is what makes its `/scale` answer 404 when
/// it has none; a collection nobody registered keeps the fake's permissive
/// defaults (a `status` subresource outside core `v1`, `scale` everywhere)
/// but is not listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `v1` for the core group, else `group/version`.
    pub api_version: String,
    /// The kind, e.g. `Deployment`.
    pub kind: String,
    /// The lower-case plural used in URLs, e.g. `deployments`.
    pub plural: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether it has a `status` subresource.
    pub status: bool,
    /// Whether it has a `scale` subresource (an `autoscaling/v1` Scale).
    pub scale: bool,
}

impl Resource {
    /// A namespaced kind without subresources, its plural made by the rules
    /// of [`Collection::of`].
    pub fn namespaced(api_version: &str, kind: &str) -> Self {
        Self {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            plural: Collection::of(api_version, kind).plural,
            namespaced: true,
            status: false,
            scale: false,
        }
    }

    /// A cluster-scoped kind without subresources.
    pub fn cluster(api_version: &str, kind: &str) -> Self {
        Self {
            namespaced: false,
            ..Self::namespaced(api_version, kind)
        }
    }

    /// The same kind under an irregular plural.
    pub fn plural(mut self, plural: &str) -> Self {
        self.plural = plural.to_string();
        self
    }

    /// The same kind with a `status` subresource.
    pub fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    /// The same kind with a `scale` subresource.
    pub fn with_scale(mut self) -> Self {
        self.scale = true;
        self
    }

    /// The collection its objects are stored in.
    pub fn collection(&self) -> Collection {
        Collection::new(self.api_version.clone(), self.plural.clone())
    }

    /// The built-in registrations: what the controller and the end-to-end
    /// tests read and write, with the subresources the real server gives them.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::cluster("v1", "Namespace"),
            Self::namespaced("v1", "Pod"),
            Self::namespaced("v1", "Service"),
            Self::namespaced("v1", "Secret"),
            Self::namespaced("v1", "ConfigMap"),
            Self::namespaced("v1", "Event"),
            Self::namespaced("discovery.k8s.io/v1", "EndpointSlice"),
            Self::namespaced("coordination.k8s.io/v1", "Lease"),
            Self::namespaced("events.k8s.io/v1", "Event"),
            Self::namespaced("apps/v1", "Deployment")
                .with_status()
                .with_scale(),
            Self::namespaced("apps/v1", "StatefulSet")
                .with_status()
                .with_scale(),
            Self::namespaced("sluice.io/v1alpha1", "BackendPool").with_status(),
            Self::namespaced("sluice.io/v1alpha1", "ScalingTrigger").with_status(),
        ]
    }
}

/// What the server announces, by collection.
pub(super) type Registry = BTreeMap<Collection, Resource>;

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

/// Answers a discovery path, or `None` when `path` is not one.
pub(super) fn discovery(
    registry: &Registry,
    path: &str,
) -> Option<Result<Response<Body>, ApiError>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let doc = match segs.as_slice() {
        ["api"] => Ok(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["apis"] => Ok(group_list(registry)),
        ["api", "v1"] => resource_list(registry, "v1"),
        ["apis", group] => group_list(registry)["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == *group).cloned())
            .map(|mut g| {
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                g
            })
            .ok_or_else(|| unknown(path)),
        ["apis", group, version] => resource_list(registry, &format!("{group}/{version}")),
        _ => return None,
    };
    Some(doc.map(|d| json_response(StatusCode::OK, &d)))
}

fn unknown(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

/// Every named group with its versions; the first version registered is
/// the preferred one.
fn group_list(registry: &Registry) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in registry.keys() {
        if let Some((group, version)) = c.group_version.split_once('/') {
            let versions = groups.entry(group).or_default();
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
            json!({
                "name": group,
                "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
                "preferredVersion": gv(versions[0]),
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The `APIResourceList` of one group version: each kind, then its
/// subresources as `plural/status` and `plural/scale` entries.
fn resource_list(registry: &Registry, group_version: &str) -> Result<Value, ApiError> {
    let mut resources = Vec::new();
    for r in registry.values().filter(|r| r.api_version == group_version) {
        resources.push(json!({
            "name": r.plural, "singularName": r.kind.to_ascii_lowercase(),
            "namespaced": r.namespaced, "kind": r.kind, "verbs": VERBS,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "",
                "namespaced": r.namespaced, "kind": r.kind, "verbs": SUBRESOURCE_VERBS,
            }));
        }
        if r.scale {
            resources.push(json!({
                "name": format!("{}/scale", r.plural), "singularName": "",
                "namespaced": r.namespaced, "group": "autoscaling", "version": "v1",
                "kind": "Scale", "verbs": SUBRESOURCE_VERBS,
            }));
        }
    }
    if resources.is_empty() {
        return Err(unknown(&format!("/apis/{group_version}")));
    }
    Ok(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": resources,
    }))
}
