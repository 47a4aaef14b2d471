//! Sluice's custom resources: [`BackendPool`] and [`ScalingTrigger`]; and
//! the Gateway API types the controller reads ([`gateway`]).
//!
//! The Rust types are the source of truth; `crds/*.yaml` (and the Helm chart's
//! copy) are generated from them by [`crd_yaml`], and a test fails when the
//! committed YAML is stale. The schema rejects what it can (ranges, enums, CEL
//! rules) so a bad resource is refused by `kubectl apply`, before the
//! controller ever sees it.

mod backend_pool;
pub mod gateway;
pub mod policy;
mod scaling_trigger;

pub use backend_pool::{
    Algorithm, Backend, BackendPool, BackendPoolSpec, BackendPoolStatus, DataplaneCounts,
    EndpointCounts, TlsRef,
};
pub use scaling_trigger::{
    Behavior, CrossVersionObjectReference, MetricSpec, MetricStatus, MetricType, PoolRef,
    ScalingPolicy, ScalingPolicyType, ScalingRules, ScalingTrigger, ScalingTriggerSpec,
    ScalingTriggerStatus, Schedule, SelectPolicy,
};

use kube::CustomResourceExt;

/// Pattern of duration strings (`500ms`, `30s`, `5m`, `1h30m`), shared with
/// the protocol's parser.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// The CRDs as `(file name, YAML)`, in the order `kubectl apply` wants them.
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    vec![
        ("backendpools.yaml", to_yaml(&BackendPool::crd())),
        ("scalingtriggers.yaml", to_yaml(&ScalingTrigger::crd())),
    ]
}

fn to_yaml<T: serde::Serialize>(value: &T) -> String {
    // A CRD is plain data (strings, numbers, maps); serializing it cannot fail.
    serde_saphyr::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The committed YAML must match the types. Regenerate with
    /// `SLUICE_UPDATE_CRDS=1 cargo test -p sluice-crds`.
    #[test]
    fn committed_crd_yaml_is_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let chart = root.join("../charts/sluice/crds");
        let update = std::env::var_os("SLUICE_UPDATE_CRDS").is_some();
        for (file, yaml) in crd_yaml() {
            for dir in [root.to_path_buf(), chart.clone()] {
                let path = dir.join(file);
                if update {
                    std::fs::create_dir_all(&dir).expect("create crd dir");
                    std::fs::write(&path, &yaml).expect("write crd");
                }
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    committed == yaml,
                    "{} is stale; regenerate with SLUICE_UPDATE_CRDS=1 cargo test -p sluice-crds",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn generated_yaml_parses_back_to_the_crd() {
        for (file, yaml) in crd_yaml() {
            let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
                serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(crd.spec.group, "sluice.io");
        }
    }
}
