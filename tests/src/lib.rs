//! End-to-end test support: an API-server fake that speaks the real
//! Kubernetes HTTP protocol, loopback backends, a simulated cluster that
//! makes a Deployment's replicas real, the closed autoscaling loop
//! built on it, a Service stand-in, a small HTTP
//! client and bounded waits; and (`kube`) a real control plane with a node
//! stand-in running pods as processes, on which the chart is installed.
//! The tests themselves live in `tests/tests/`.

pub mod apiserver;
pub mod backend;
pub mod client;
pub mod closed_loop;
pub mod cluster;
pub mod dataplane;
pub mod kube;
pub mod load;
pub mod rescales;
pub mod service;
pub mod status_log;
pub mod wait;
