//! Autoscale benchmark: how fast the closed loop reacts, on
//! loopback, with the controller's default trigger settings.
//!
//! `cargo bench -p sluice-tests --bench autoscale`. Each run starts a fresh
//! loop ([`Loop`]: API-server fake, simulated cluster, controller, two
//! dataplanes) and prints the median of five runs of:
//!
//! - **step → first scale patch**: from a step of idle to 10× the
//!   per-replica RequestsPerSecond target until the simulated cluster sees
//!   the Deployment's `spec.replicas` change (it wakes on the fake's own
//!   write, so this is when the `/scale` patch was stored);
//! - **step → first answer from a new replica**: until a request of the
//!   step's own load is answered by a replica started for it;
//! - **zero → first 200**: from a request to a pool scaled to zero until
//!   its answer, minus the simulated backend start time.
//!
//! Targets: the first patch within 3 s of the step (HPA syncs
//! every 15 s, KEDA polls every 30 s); the first answer from zero within
//! 2 s plus the backend's start time.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::closed_loop::{HOST, Loop, behavior, get_held, trigger};
use tokio::task::JoinSet;

#[path = "../propagation/system.rs"]
mod system;

const RUNS: usize = 5;
const TARGET_RPS: f64 = 10.0;
/// The simulated backend start time of the scale-from-zero runs.
const START_DELAY: Duration = Duration::from_millis(500);
/// Most requests one step loader sends.
const MAX_REQUESTS: usize = 10_000;
const LIMIT: Duration = Duration::from_secs(60);

const TARGET_PATCH: Duration = Duration::from_secs(3);
/// HPA's default sync period: how long a step may wait before HPA looks.
const HPA_SYNC: Duration = Duration::from_secs(15);
/// KEDA's default polling interval.
const KEDA_POLL: Duration = Duration::from_secs(30);
const TARGET_ZERO: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "autoscale: a benchmark; run it with `cargo bench -p sluice-tests --bench autoscale`"
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let (mut patch, mut reach, mut zero) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        eprintln!("autoscale: step run {}/{RUNS}", i + 1);
        let (p, r) = step_run().await?;
        eprintln!("autoscale:   first patch {p:?}, first new replica answered {r:?}");
        patch.push(p);
        reach.push(r);
    }
    for i in 0..RUNS {
        eprintln!("autoscale: scale-from-zero run {}/{RUNS}", i + 1);
        let z = zero_run().await?;
        eprintln!("autoscale:   first 200 after {z:?} (start time {START_DELAY:?} excluded)");
        zero.push(z);
    }
    let mut out = format!(
        "# Autoscale: closed loop on loopback, median of {RUNS}\n\n```\n{}\n```\n\n",
        system::describe()
    );
    out.push_str(
        "| measure | median | runs | target | vs HPA (15 s sync) | vs KEDA (30 s poll) |\n",
    );
    out.push_str("|---|---|---|---|---|---|\n");
    let mut row = |name: &str, xs: &mut Vec<Duration>, target: Option<Duration>| {
        let runs: Vec<String> = xs
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        let m = median(xs);
        let verdict = target.map_or(String::new(), |t| {
            let pass = if m < t { "PASS" } else { "MISS" };
            format!("< {} s {pass}", t.as_secs())
        });
        out.push_str(&format!(
            "| {name} | {:.2} s | {} | {verdict} | {:.2}× | {:.2}× |\n",
            m.as_secs_f64(),
            runs.join(", "),
            m.as_secs_f64() / HPA_SYNC.as_secs_f64(),
            m.as_secs_f64() / KEDA_POLL.as_secs_f64(),
        ));
    };
    row(
        "10x step → first /scale patch",
        &mut patch,
        Some(TARGET_PATCH),
    );
    row(
        "10x step → first answer from a new replica (start time 0)",
        &mut reach,
        None,
    );
    row(
        "zero → first 200, minus the 500 ms start time",
        &mut zero,
        Some(TARGET_ZERO),
    );
    out.push_str(
        "\nHPA and KEDA are not run here: their figures are their default periods \
         (HPA's `--horizontal-pod-autoscaler-sync-period` 15 s, KEDA's `pollingInterval` \
         30 s), the time a step can wait before they even look. The ratios are Sluice's \
         median over that period.\n",
    );
    print!("{out}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results/autoscale.md");
    std::fs::write(path, &out)?;
    eprintln!("autoscale: report written to bench/results/autoscale.md");
    Ok(())
}

fn median(xs: &mut [Duration]) -> Duration {
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

/// One step from idle to 10× the target with the default window and
/// behavior: (step → first patch, step → first answer from a new replica).
async fn step_run() -> anyhow::Result<(Duration, Duration)> {
    let env = Loop::start(Loop::workload()).await?;
    let initial = env.cluster.wait_settled(1, LIMIT).await?;
    env.wait_for_ready_replicas().await?;
    env.api
        .apply(trigger(TARGET_RPS, json!({"maxReplicas": 20})))?;
    env.wait_for_trigger(1, LIMIT).await?;

    let old: BTreeSet<String> = initial.into_keys().collect();
    let step = Instant::now();
    let load = StepLoad::start(&env.http, &env.addrs(), 10.0 * TARGET_RPS, old);
    let reached = sluice_tests::wait::until(LIMIT, "an answer from a new replica", || async {
        load.first_new()
    })
    .await;
    load.stop().await;
    let reached = reached?;
    let (patched, _) = env
        .cluster
        .timeline()
        .first_scale_after(step)
        .ok_or_else(|| anyhow::anyhow!("a new replica answered but no scale was seen"))?;
    env.stop().await;
    Ok((patched - step, reached - step))
}

/// Scale to zero, then one request: its latency minus the start time.
async fn zero_run() -> anyhow::Result<Duration> {
    let env = Loop::start(Loop::workload().start_delay(START_DELAY)).await?;
    env.cluster.wait_settled(1, LIMIT).await?;
    env.wait_for_ready_replicas().await?;
    let spec =
        json!({"minReplicas": 0, "idleAfter": "2s", "window": "5s", "behavior": behavior(0)});
    env.api.apply(trigger(TARGET_RPS, spec))?;
    env.wait_for_replicas("a scale to zero", LIMIT, |r| r == 0)
        .await?;
    env.cluster.wait_settled(0, LIMIT).await?;
    env.wait_for_activation(LIMIT).await?;
    let start = Instant::now();
    let a = get_held(env.dataplanes[0].http_addr()).await?;
    let took = start.elapsed();
    anyhow::ensure!(a.status == 200, "status {} body {:?}", a.status, a.body);
    env.stop().await;
    Ok(took.saturating_sub(START_DELAY))
}

/// The step's load: paced requests through every dataplane, noting when
/// a replica outside `old` first answered.
struct StepLoad {
    stop: Arc<AtomicBool>,
    first_new: Arc<Mutex<Option<Instant>>>,
    tasks: JoinSet<()>,
}

impl StepLoad {
    fn start(
        http: &HttpClient,
        addrs: &[SocketAddr],
        per_second: f64,
        old: BTreeSet<String>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let first_new = Arc::new(Mutex::new(None));
        let old = Arc::new(old);
        let every = Duration::from_secs_f64(addrs.len().max(1) as f64 / per_second);
        let mut tasks = JoinSet::new();
        for addr in addrs {
            let (addr, http, stop) = (*addr, http.clone(), stop.clone());
            let (first_new, old) = (first_new.clone(), old.clone());
            tasks.spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                for _ in 0..MAX_REQUESTS {
                    ticks.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(a) = http.get(addr, HOST, "/").await else {
                        continue;
                    };
                    if a.backend.as_ref().is_some_and(|b| !old.contains(b)) {
                        let mut first = first_new.lock().unwrap_or_else(PoisonError::into_inner);
                        first.get_or_insert_with(Instant::now);
                    }
                }
            });
        }
        Self {
            stop,
            first_new,
            tasks,
        }
    }

    fn first_new(&self) -> Option<Instant> {
        *self
            .first_new
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
    }
}
