//! A second watcher of EndpointSlices, in the benchmark's process, with the
//! same kube-rs watcher the controller uses. The time from a write to this
//! watcher seeing it is the API server's (here: the fake's) share of the
//! propagation latency, which a real cluster would replace with its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::subscriber::{Seen, Shared};
use crate::world::{NS, PORT, Progress};

/// Watches slices and records in `seen` when the current expectation's
/// addresses have all been delivered.
pub async fn watch_slices(client: kube::Client, shared: Arc<Shared>, seen: Arc<Seen>) {
    let api: Api<EndpointSlice> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut progress = Progress::default();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(slice)) = event else {
            continue;
        };
        let pool = format!("{NS}/{}", slice.name_any());
        let holds = |name: &str, addr: std::net::SocketAddr| {
            name == pool
                && addr.port() == PORT
                && slice.endpoints.iter().any(|e| {
                    e.addresses
                        .iter()
                        .any(|a| a.parse::<std::net::IpAddr>().ok() == Some(addr.ip()))
                })
        };
        let expect = shared.expect.current();
        if let Some(seq) = progress.update(&expect, Some(std::slice::from_ref(&pool)), holds)
            && seen.seq.load(Ordering::Acquire) < seq
        {
            let at = shared.epoch.elapsed().as_nanos() as u64;
            seen.at_nanos.store(at, Ordering::Release);
            seen.seq.store(seq, Ordering::Release);
        }
    }
}
