//! Steady, bounded background load through dataplanes, counting what was
//! served and what failed: the "zero failed requests" of restarts and
//! failovers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::client::HttpClient;

/// Most requests one loader sends, whatever happens.
const MAX_REQUESTS: usize = 20_000;

/// One sequential loader per address, each sending `GET /` with a host
/// every 2 ms until stopped (at most [`MAX_REQUESTS`] each).
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts loading `addrs` with `Host: host`.
    pub fn start(http: &HttpClient, addrs: &[SocketAddr], host: &'static str) -> Self {
        Self::spawn(http, addrs, host, None)
    }

    /// Starts loading `addrs` with `Host: host` at a steady `per_second`
    /// requests per second in all (split evenly across `addrs`), for the
    /// autoscaling tests, whose assertions depend on the offered rate. A
    /// loader that falls behind skips ticks rather than bursting to catch up.
    pub fn paced(
        http: &HttpClient,
        addrs: &[SocketAddr],
        host: &'static str,
        per_second: f64,
    ) -> Self {
        let each = per_second / addrs.len().max(1) as f64;
        let every = Duration::from_secs_f64(1.0 / each.max(0.01));
        Self::spawn(http, addrs, host, Some(every))
    }

    /// One loader per address; `every` paces it, else it sleeps 2 ms between requests.
    fn spawn(
        http: &HttpClient,
        addrs: &[SocketAddr],
        host: &'static str,
        every: Option<Duration>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = addrs
            .iter()
            .map(|addr| {
                let (addr, http) = (*addr, http.clone());
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut ticks = every.map(|every| {
                        let mut t = tokio::time::interval(every);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                        t
                    });
                    for _ in 0..MAX_REQUESTS {
                        if let Some(ticks) = ticks.as_mut() {
                            ticks.tick().await;
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match http.get(addr, host, "/").await {
                            Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        if ticks.is_none() {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Requests answered 200 so far.
    pub fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the loaders; returns `(served, failed)`.
    pub async fn finish(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        Ok((
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        ))
    }
}
