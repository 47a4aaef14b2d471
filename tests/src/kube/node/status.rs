//! A pod's status as the kubelet reports it: phase, addresses, the
//! Ready and ContainersReady conditions, container states and restarts.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::Shared;
use super::pod::Running;

/// The status patch for a pod with `containers`; `done`: all stopped for good.
pub fn pod_status(
    containers: &[Running],
    ip: &Ipv4Addr,
    shared: &Shared,
    start_time: &str,
    ready: bool,
    ready_since: &str,
    done: bool,
) -> Value {
    let flag = |b: bool| if b { "True" } else { "False" };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|r| {
            let state = match (&r.proc, r.exit) {
                (Some(_), _) => json!({"running": {"startedAt": r.started_at}}),
                (None, Some(code)) => json!({"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"}}}),
                (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            json!({"name": r.spec.name, "image": r.spec.image, "imageID": "", "containerID": format!("sluice-node://{}", r.spec.name),
                   "ready": r.ready && r.proc.is_some(), "started": r.proc.is_some(), "restartCount": r.restarts, "state": state})
        })
        .collect();
    json!({"status": {
        "phase": if done { "Succeeded" } else { "Running" },
        "hostIP": shared.net.gateway().to_string(),
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": start_time,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": start_time},
            {"type": "Initialized", "status": "True", "lastTransitionTime": start_time},
            {"type": "ContainersReady", "status": flag(ready), "lastTransitionTime": ready_since},
            {"type": "Ready", "status": flag(ready), "lastTransitionTime": ready_since},
        ],
        "containerStatuses": statuses,
    }})
}
