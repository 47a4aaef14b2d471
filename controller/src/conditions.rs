//! What every status writer shares: the field manager of its server-side
//! applies, and conditions that keep their transition time while their
//! status holds. A leaf: the BackendPool, ScalingTrigger and Gateway API
//! status writers all use it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Field manager of the controller's status writes.
pub const FIELD_MANAGER: &str = "sluice-controller";

/// A condition of `type_`, keeping the transition time of the same
/// condition in `previous` when its status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = match previous.iter().find(|c| c.type_ == type_) {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation,
        last_transition_time,
    }
}
