//! Finding a trigger's target and its `/scale` subresource, for any kind.
//!
//! `scaleTargetRef` names an `apiVersion` and `kind`; the URL needs the
//! resource's plural and scope, which only discovery knows (a custom
//! resource's plural need not follow English rules). Results are cached per
//! kind: a hit for [`KNOWN_FOR`], a miss for [`UNKNOWN_FOR`] so that a
//! typo does not query discovery every second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use sluice_crds::CrossVersionObjectReference;

use crate::api_errors::Causes;

/// How long a resolved kind is trusted.
pub const KNOWN_FOR: Duration = Duration::from_secs(300);
/// How long an unresolvable kind is not asked about again.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(10);

/// The replica counts of a target's `/scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleCounts {
    /// `spec.replicas`: what was asked for.
    pub spec: i32,
    /// `status.replicas`: what exists.
    pub status: i32,
}

#[derive(Clone, Debug)]
struct Kind {
    resource: Result<(ApiResource, Scope), String>,
    at: Instant,
}

/// Resolves targets and reads and writes their scale.
#[derive(Clone)]
pub struct Targets {
    client: Client,
    kinds: HashMap<(String, String), Kind>,
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Targets")
            .field("kinds", &self.kinds.len())
            .finish()
    }
}

fn gvk(r: &CrossVersionObjectReference) -> GroupVersionKind {
    let (group, version) = r
        .api_version
        .split_once('/')
        .unwrap_or(("", &r.api_version));
    GroupVersionKind::gvk(group, version, &r.kind)
}

impl Targets {
    /// A resolver using `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            kinds: HashMap::new(),
        }
    }

    async fn resource(
        &mut self,
        r: &CrossVersionObjectReference,
    ) -> Result<(ApiResource, Scope), String> {
        let key = (r.api_version.clone(), r.kind.clone());
        if let Some(kind) = self.kinds.get(&key) {
            let ttl = if kind.resource.is_ok() {
                KNOWN_FOR
            } else {
                UNKNOWN_FOR
            };
            if kind.at.elapsed() < ttl {
                return kind.resource.clone();
            }
        }
        let resource = match kube::discovery::pinned_kind(&self.client, &gvk(r)).await {
            Ok((resource, caps)) => {
                if caps
                    .subresources
                    .iter()
                    .any(|(sub, _)| sub.plural == "scale")
                {
                    Ok((resource, caps.scope))
                } else {
                    Err(format!(
                        "{} {} has no scale subresource",
                        r.kind, r.api_version
                    ))
                }
            }
            Err(e) => Err(format!(
                "cannot find kind {} in {} through discovery: {}",
                r.kind,
                r.api_version,
                Causes(&e)
            )),
        };
        self.kinds.insert(
            key,
            Kind {
                resource: resource.clone(),
                at: Instant::now(),
            },
        );
        resource
    }

    async fn api(
        &mut self,
        namespace: &str,
        r: &CrossVersionObjectReference,
    ) -> Result<Api<DynamicObject>, String> {
        let (resource, scope) = self.resource(r).await?;
        Ok(match scope {
            Scope::Namespaced => Api::namespaced_with(self.client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
        })
    }

    /// Reads the target's `/scale`.
    pub async fn get(
        &mut self,
        namespace: &str,
        r: &CrossVersionObjectReference,
    ) -> Result<ScaleCounts, String> {
        let api = self.api(namespace, r).await?;
        let scale = api.get_scale(&r.name).await.map_err(|e| {
            format!(
                "cannot read the scale of {} {}: {}",
                r.kind,
                r.name,
                Causes(&e)
            )
        })?;
        Ok(ScaleCounts {
            spec: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            status: scale.status.map_or(0, |s| s.replicas),
        })
    }

    /// Sets the target's `spec.replicas` through `/scale`.
    pub async fn set(
        &mut self,
        namespace: &str,
        r: &CrossVersionObjectReference,
        replicas: i32,
    ) -> Result<(), String> {
        let api = self.api(namespace, r).await?;
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        api.patch_scale(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| Causes(&e).to_string())
    }
}
