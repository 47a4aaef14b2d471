//! A real Kubernetes control plane as a test harness (kube-apiserver and
//! kube-controller-manager v1.28.7 with etcd, on loopback), a node
//! stand-in that runs pods as processes in network namespaces of their
//! own, and the Helm chart installed on it as users install it. The
//! real-cluster tests (`tests/tests/real_*.rs`) build on this; see
//! `docs/testing.md`.

pub mod controlplane;
pub mod host;
pub mod pki;
pub mod process;
