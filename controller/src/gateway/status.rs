//! What GatewayClass, Gateway and HTTPRoute status should be: pure
//! functions of the translation's verdicts, and the comparison with what
//! the API server holds. The writer that applies them is
//! [`crate::gateway_status`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use sluice_crds::gateway::gatewayclasses::GatewayClass;
use sluice_crds::gateway::gateways::Gateway;
use sluice_crds::gateway::httproutes::HttpRoute as HTTPRoute;

use super::{CONTROLLER_NAME, GatewayState, ParentState, SUPPORTED_FEATURES, Verdict};
use crate::conditions::condition;

/// Conditions with their times: kept from `previous` when the status did
/// not change.
pub fn conditions(
    previous: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|v| {
            condition(
                previous,
                v.type_,
                v.ok,
                v.reason,
                v.message.clone(),
                generation,
                now,
            )
        })
        .collect()
}

/// The status a GatewayClass of ours should have.
pub fn class_status(class: &GatewayClass, verdicts: &[Verdict], now: Timestamp) -> Value {
    let previous = current_conditions(class.status.as_ref());
    let generation = class.metadata.generation;
    json!({
        "conditions": conditions(&previous, verdicts, generation, now),
        "supportedFeatures": SUPPORTED_FEATURES.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
    })
}

/// The status a Gateway of ours should have; `dataplanes` is how many are
/// connected (none: not `Programmed`).
pub fn gateway_status(
    gw: &Gateway,
    state: &GatewayState,
    dataplanes: usize,
    now: Timestamp,
) -> Value {
    let current = serde_json::to_value(&gw.status).unwrap_or(Value::Null);
    let generation = gw.metadata.generation;
    let previous = current_conditions(gw.status.as_ref());
    let mut verdicts = state.conditions.clone();
    let accepted = verdicts.first().is_some_and(|v| v.ok);
    verdicts.push(match (accepted, dataplanes) {
        (false, _) => Verdict::new(
            "Programmed",
            false,
            "Invalid",
            "the Gateway is not accepted",
        ),
        (true, 0) => Verdict::new("Programmed", false, "Pending", "no dataplane is connected"),
        (true, n) => Verdict::new(
            "Programmed",
            true,
            "Programmed",
            format!("{n} dataplanes serve the Gateway"),
        ),
    });
    let listeners: Vec<Value> = state
        .listeners
        .iter()
        .map(|l| {
            let before: Vec<Condition> = current
                .get("listeners")
                .and_then(Value::as_array)
                .and_then(|ls| ls.iter().find(|x| x.get("name").and_then(Value::as_str) == Some(&l.name)))
                .and_then(|x| x.get("conditions").cloned())
                .and_then(|c| serde_json::from_value(c).ok())
                .unwrap_or_default();
            let mut verdicts = l.conditions.clone();
            if dataplanes == 0 {
                for v in verdicts.iter_mut().filter(|v| v.type_ == "Programmed" && v.ok) {
                    *v = Verdict::new("Programmed", false, "Pending", "no dataplane is connected");
                }
            }
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": l.supported_kinds.iter().map(|(g, k)| json!({"group": g, "kind": k})).collect::<Vec<_>>(),
                "conditions": conditions(&before, &verdicts, generation, now),
            })
        })
        .collect();
    let mut status = json!({
        "conditions": conditions(&previous, &verdicts, generation, now),
        "listeners": listeners,
    });
    if !state.addresses.is_empty() {
        status["addresses"] = state
            .addresses
            .iter()
            .map(|(t, v)| json!({"type": t, "value": v}))
            .collect();
    }
    status
}

/// The route's whole `status.parents`: other controllers' entries as they
/// are, then ours.
pub fn route_parents(route: &HTTPRoute, ours: &[ParentState], now: Timestamp) -> Vec<Value> {
    let current: Vec<Value> = serde_json::to_value(&route.status)
        .ok()
        .and_then(|s| s.get("parents").cloned())
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default();
    let is_ours =
        |p: &Value| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME);
    let mut parents: Vec<Value> = current.iter().filter(|p| !is_ours(p)).cloned().collect();
    for p in ours {
        let before: Vec<Condition> = current
            .iter()
            .filter(|c| is_ours(c))
            .find(|c| c.get("parentRef") == Some(&p.parent_ref))
            .and_then(|c| c.get("conditions").cloned())
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        parents.push(json!({
            "parentRef": p.parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions(&before, &p.conditions, route.metadata.generation, now),
        }));
    }
    parents
}

/// Whether the route's status holds an entry of ours.
pub(crate) fn has_ours(route: &HTTPRoute) -> bool {
    serde_json::to_value(&route.status)
        .ok()
        .and_then(|s| s.get("parents").cloned())
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|p| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME))
}

fn current_conditions<S: serde::Serialize>(status: Option<&S>) -> Vec<Condition> {
    status
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.get("conditions").cloned())
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default()
}

/// Whether `desired` differs from what `current` (a typed status) holds.
pub(crate) fn differs<S: serde::Serialize>(current: Option<&S>, desired: &Value) -> bool {
    let current = current
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    !subset(desired, &current)
}

/// Whether every field of `want` is in `have` with the same value
/// (arrays compared element by element).
fn subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|x| subset(v, x))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| subset(a, b))
        }
        _ => want == have,
    }
}

/// Conditions that are False in `desired` and were not (or not for the
/// same reason) in `current`: each becomes a Warning Event.
pub(crate) fn new_failures(current: &Value, desired: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    collect_failures(desired, &mut |type_, reason, message| {
        let mut seen = false;
        collect_failures(current, &mut |t, r, _| seen |= t == type_ && r == reason);
        if !seen {
            out.push((type_.to_string(), reason.to_string(), message.to_string()));
        }
    });
    out
}

fn collect_failures(v: &Value, f: &mut dyn FnMut(&str, &str, &str)) {
    match v {
        Value::Object(o) => {
            if let Some(cs) = o.get("conditions").and_then(Value::as_array) {
                for c in cs {
                    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
                    // Conflicted=True is the failure of that condition.
                    let failed = if s("type") == "Conflicted" {
                        s("status") == "True"
                    } else {
                        s("status") == "False"
                    };
                    if failed {
                        f(s("type"), s("reason"), s("message"));
                    }
                }
            }
            o.iter()
                .filter(|(k, _)| *k != "conditions")
                .for_each(|(_, v)| collect_failures(v, f));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_failures(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::ListenerState;

    fn route_with_status(parents: Value) -> HTTPRoute {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "ns", "generation": 3},
            "spec": {},
            "status": {"parents": parents},
        }))
        .expect("route")
    }

    #[test]
    fn route_status_keeps_other_controllers_entries_and_is_stable() {
        let theirs = json!({"parentRef": {"name": "other"}, "controllerName": "example.com/x",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]});
        let route = route_with_status(json!([theirs]));
        let ours = [ParentState {
            parent_ref: json!({"name": "gw"}),
            conditions: vec![Verdict::new(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener named c",
            )],
        }];
        let now = Timestamp::now();
        let parents = route_parents(&route, &ours, now);
        assert_eq!(parents.len(), 2);
        assert_eq!(
            parents[0], theirs,
            "another controller's entry is left as it is"
        );
        assert_eq!(parents[1]["controllerName"], CONTROLLER_NAME);
        assert_eq!(parents[1]["conditions"][0]["reason"], "NoMatchingParent");
        assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 3);
        let desired = json!({"parents": parents});
        assert!(differs(route.status.as_ref(), &desired));
        assert_eq!(
            new_failures(
                &serde_json::to_value(&route.status).unwrap_or_default(),
                &desired
            )
            .len(),
            1
        );

        // Written and read back: the same state later changes nothing and
        // raises no second Event.
        let written = route_with_status(desired["parents"].clone());
        let later = json!({"parents": route_parents(&written, &ours, Timestamp::now())});
        assert!(!differs(written.status.as_ref(), &later), "{later:#}");
        assert!(
            new_failures(
                &serde_json::to_value(&written.status).unwrap_or_default(),
                &later
            )
            .is_empty()
        );
    }

    #[test]
    fn a_route_that_left_our_gateways_loses_only_our_entries() {
        let theirs = json!({"parentRef": {"name": "other"}, "controllerName": "example.com/x", "conditions": []});
        let ours = json!({"parentRef": {"name": "gw"}, "controllerName": CONTROLLER_NAME, "conditions": []});
        let route = route_with_status(json!([theirs, ours]));
        assert!(has_ours(&route));
        let parents = route_parents(&route, &[], Timestamp::now());
        assert_eq!(parents, std::slice::from_ref(&theirs));
        assert!(!has_ours(&route_with_status(json!([theirs]))));
    }

    #[test]
    fn gateway_status_has_addresses_listeners_and_programmed_follows_dataplanes() {
        let gw: Gateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns", "generation": 5},
            "spec": {"gatewayClassName": "sluice", "listeners": [{"name": "web", "protocol": "HTTP", "port": 80}]},
        }))
        .expect("gateway");
        let state = GatewayState {
            conditions: vec![Verdict::new("Accepted", true, "Accepted", "ok")],
            listeners: vec![ListenerState {
                name: "web".into(),
                protocol: "HTTP".into(),
                hostname: None,
                usable: true,
                supported_kinds: vec![("gateway.networking.k8s.io".into(), "HTTPRoute".into())],
                attached_routes: 2,
                conditions: vec![Verdict::new("Programmed", true, "Programmed", "served")],
                certificate: None,
            }],
            addresses: vec![("IPAddress".into(), "10.96.0.10".into())],
        };
        let now = Timestamp::now();
        let none = gateway_status(&gw, &state, 0, now);
        let programmed = |s: &Value| {
            s["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
                .map(|c| c["reason"].clone())
        };
        assert_eq!(programmed(&none), Some(json!("Pending")));
        assert_eq!(none["listeners"][0]["conditions"][0]["status"], "False");
        let two = gateway_status(&gw, &state, 2, now);
        assert_eq!(programmed(&two), Some(json!("Programmed")));
        assert_eq!(
            two["addresses"],
            json!([{"type": "IPAddress", "value": "10.96.0.10"}])
        );
        assert_eq!(two["listeners"][0]["attachedRoutes"], 2);
        assert_eq!(
            two["listeners"][0]["supportedKinds"][0]["kind"],
            "HTTPRoute"
        );
        assert_eq!(two["conditions"][0]["observedGeneration"], 5);
        // The typed status reads it back whole.
        let typed: sluice_crds::gateway::gateways::GatewayStatus =
            serde_json::from_value(two.clone()).expect("fits the CRD");
        assert!(!differs(Some(&typed), &two));
    }

    #[test]
    fn class_status_lists_the_supported_features() {
        let class: GatewayClass = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "sluice", "generation": 1},
            "spec": {"controllerName": CONTROLLER_NAME},
        }))
        .expect("class");
        let s = class_status(
            &class,
            &[Verdict::new("Accepted", true, "Accepted", "ok")],
            Timestamp::now(),
        );
        let names: Vec<&str> = s["supportedFeatures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(names, SUPPORTED_FEATURES);
        let typed: sluice_crds::gateway::gatewayclasses::GatewayClassStatus =
            serde_json::from_value(s.clone()).expect("fits the CRD");
        assert!(!differs(Some(&typed), &s));
    }
}
