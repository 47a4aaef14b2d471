//! The objects the benchmark writes, and what every dataplane must end up
//! holding after a write ([`Expect`]).
//!
//! Pool `i` is a BackendPool `bench/p{i}` with its own host, fed by Service
//! `p{i}` and one EndpointSlice `p{i}` of [`ENDPOINTS`] endpoints. A change
//! replaces the slice's first endpoint with an address never used before, so
//! a subscriber knows it has the change by looking for that address.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

/// Namespace of every object.
pub const NS: &str = "bench";
/// Endpoints per pool.
pub const ENDPOINTS: usize = 10;
/// Port every endpoint listens on (the slice's `http` port).
pub const PORT: u16 = 8080;

/// The address of endpoint `j` of pool `i` before any change.
pub fn initial_address(i: usize, j: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(10, (i >> 8) as u8, (i & 0xff) as u8, j as u8 + 1);
    SocketAddr::from((ip, PORT))
}

/// The address change number `c` puts into a slice; unique per `c`.
pub fn changed_address(c: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(
        172,
        16 + (c >> 16) as u8,
        ((c >> 8) & 0xff) as u8,
        (c & 0xff) as u8,
    );
    SocketAddr::from((ip, PORT))
}

/// The pool name as routes carry it.
pub fn pool_name(i: usize) -> String {
    format!("{NS}/p{i}")
}

/// Service `p{i}` with one named port.
pub fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("p{i}"), "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": PORT}]},
    })
}

/// BackendPool `p{i}` with its own host, routing to Service `p{i}`.
pub fn pool(i: usize) -> Value {
    json!({
        "apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool",
        "metadata": {"name": format!("p{i}"), "namespace": NS},
        "spec": {
            "hosts": [format!("p{i}.bench.example.com")],
            "pathPrefix": "/",
            "backends": [{"service": format!("p{i}"), "port": "http"}],
        },
    })
}

/// EndpointSlice `p{i}` holding `addresses`, all ready.
pub fn slice(i: usize, addresses: &[SocketAddr]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("p{i}"), "namespace": NS,
            "labels": {"kubernetes.io/service-name": format!("p{i}")},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// What every subscriber must hold: for each named pool, an endpoint with
/// that address. `seq` tells one expectation from the next.
#[derive(Debug, Default)]
pub struct Expect {
    /// Bumped for every new expectation.
    pub seq: u64,
    /// Pool name → address it must contain.
    pub targets: HashMap<String, SocketAddr>,
}

/// The current expectation, shared by the driver (writer) and the
/// subscribers and the watch probe (readers).
#[derive(Debug, Default)]
pub struct ExpectCell(RwLock<Arc<Expect>>);

impl ExpectCell {
    /// The expectation now in force.
    pub fn current(&self) -> Arc<Expect> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the expectation; returns its `seq`.
    pub fn set(&self, targets: HashMap<String, SocketAddr>) -> u64 {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        let seq = slot.seq + 1;
        *slot = Arc::new(Expect { seq, targets });
        seq
    }
}

/// Tracks, for one observer, which targets of the current expectation it
/// has seen, so that a delta costs work proportional to its size.
#[derive(Debug, Default)]
pub struct Progress {
    seq: u64,
    met: std::collections::HashSet<String>,
}

impl Progress {
    /// Re-examines the pools in `changed` (every target when `None`, or
    /// when the expectation is new) with `holds(pool, address)`; returns the
    /// expectation's `seq` when all its targets are met.
    pub fn update(
        &mut self,
        expect: &Expect,
        changed: Option<&[String]>,
        holds: impl Fn(&str, SocketAddr) -> bool,
    ) -> Option<u64> {
        if expect.seq == 0 {
            return None;
        }
        match changed {
            _ if expect.seq != self.seq => {
                self.seq = expect.seq;
                self.met.clear();
                self.recheck_all(expect, &holds);
            }
            None => self.recheck_all(expect, &holds),
            Some(names) => {
                for name in names {
                    if let Some(addr) = expect.targets.get(name)
                        && !self.met.contains(name)
                        && holds(name, *addr)
                    {
                        self.met.insert(name.clone());
                    }
                }
            }
        }
        (self.met.len() == expect.targets.len()).then_some(expect.seq)
    }

    /// Examines every target (after a snapshot).
    fn recheck_all(&mut self, expect: &Expect, holds: &impl Fn(&str, SocketAddr) -> bool) {
        for (name, addr) in &expect.targets {
            if !self.met.contains(name) && holds(name, *addr) {
                self.met.insert(name.clone());
            }
        }
    }
}
