//! A Service as a client on the host reaches it, standing in for
//! kube-proxy: a watch on the Service's real EndpointSlices, and each
//! request sent to the next ready endpoint (round robin), never to one
//! that is terminating or not ready. With it, tests load "the Service"
//! (for example the dataplanes' one) through rolling restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

use crate::client::HttpClient;

/// Most requests one load sends, whatever happens.
const MAX_REQUESTS: usize = 40_000;

/// Ready endpoints by slice name.
type Endpoints = BTreeMap<String, Vec<SocketAddr>>;

/// The ready endpoints of one Service port, kept current by a watch.
#[derive(Debug)]
pub struct ServiceEndpoints {
    endpoints: Arc<Mutex<Endpoints>>,
    next: AtomicUsize,
    task: JoinHandle<()>,
}

impl ServiceEndpoints {
    /// Watches the EndpointSlices of Service `service` in `ns` and keeps
    /// the ready, not terminating endpoints of its port named `port`.
    pub fn watch(client: &kube::Client, ns: &str, service: &str, port: &str) -> Self {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let endpoints = Arc::new(Mutex::new(Endpoints::new()));
        let (shared, port) = (Arc::clone(&endpoints), port.to_string());
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(api, config).boxed();
            while let Some(ev) = stream.next().await {
                let mut map = shared.lock().unwrap_or_else(|p| p.into_inner());
                match ev {
                    Ok(Event::Apply(s) | Event::InitApply(s)) => {
                        let name = s.metadata.name.clone().unwrap_or_default();
                        map.insert(name, ready(&s, &port));
                    }
                    Ok(Event::Delete(s)) => {
                        map.remove(&s.metadata.name.unwrap_or_default());
                    }
                    _ => {}
                }
            }
        });
        Self {
            endpoints,
            next: AtomicUsize::new(0),
            task,
        }
    }

    /// The ready endpoints now.
    pub fn ready(&self) -> BTreeSet<SocketAddr> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.values().flatten().copied().collect()
    }

    /// The next ready endpoint in turn; `None` when there is none.
    pub fn pick(&self) -> Option<SocketAddr> {
        let all: Vec<_> = self.ready().into_iter().collect();
        if all.is_empty() {
            return None;
        }
        Some(all[self.next.fetch_add(1, Ordering::Relaxed) % all.len()])
    }
}

impl Drop for ServiceEndpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A slice's ready, not terminating endpoints on port `port`.
fn ready(slice: &EndpointSlice, port: &str) -> Vec<SocketAddr> {
    let Some(number) = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
    else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready) == Some(true) && c.and_then(|c| c.terminating) != Some(true)
        })
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, number))
        .collect()
}

/// Steady, bounded load on a Service: `GET /` with a host, each request
/// to the endpoint [`ServiceEndpoints::pick`] gives, counting answers by
/// endpoint and failures (no endpoint counts as a failure: the Service
/// had nowhere to send it).
#[derive(Debug)]
pub struct ServiceLoad {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<BTreeMap<SocketAddr, u64>>>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl ServiceLoad {
    /// Starts one loader at `per_second` requests per second (it skips
    /// ticks rather than bursting when it falls behind).
    pub fn paced(
        http: &HttpClient,
        service: Arc<ServiceEndpoints>,
        host: &'static str,
        per_second: f64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let every = Duration::from_secs_f64(1.0 / per_second.max(0.01));
        let http = http.clone();
        let (st, sv, fl, er) = (stop.clone(), served.clone(), failed.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for _ in 0..MAX_REQUESTS {
                ticks.tick().await;
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let error = match service.pick() {
                    None => "no ready endpoint".to_string(),
                    Some(addr) => match http.get(addr, host, "/").await {
                        Ok(a) if a.status == 200 => {
                            let mut map = sv.lock().unwrap_or_else(|p| p.into_inner());
                            *map.entry(addr).or_insert(0) += 1;
                            continue;
                        }
                        Ok(a) => format!("{addr}: status {}", a.status),
                        Err(e) => format!("{addr}: {e:#}"),
                    },
                };
                fl.fetch_add(1, Ordering::Relaxed);
                let mut errors = er.lock().unwrap_or_else(|p| p.into_inner());
                if errors.len() < 5 {
                    errors.push(error);
                }
            }
        });
        Self {
            stop,
            served,
            failed,
            errors,
            task,
        }
    }

    /// Stops the loader; returns the answers by endpoint, the number of
    /// failed requests and up to five of their errors.
    pub async fn finish(self) -> anyhow::Result<(BTreeMap<SocketAddr, u64>, u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        let served = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok((served, self.failed.load(Ordering::Relaxed), errors))
    }
}
