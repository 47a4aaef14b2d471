//! Propagation benchmark: how fast an EndpointSlice change reaches
//! every dataplane at 1,000 pools × 10 endpoints with 50 dataplanes.
//!
//! `cargo bench -p sluice-tests --bench propagation`. The API-server fake,
//! the 50 simulated dataplanes ([`subscriber`]) and a watch probe
//! ([`probe`]) run in this process; the controller runs in a child process
//! ([`controller`]) so that its memory and CPU are its own. See
//! `bench/README.md`, section "Propagation", for what each figure means.

mod controller;
mod probe;
mod snapshot;
mod subscriber;
mod system;
mod world;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_protocol::{RouteEvent, RouteTable, sse};
use sluice_tests::apiserver::FakeApiServer;
use tokio::sync::watch;

use crate::subscriber::{Seen, Shared};
use crate::world::{ENDPOINTS, ExpectCell};

const POOLS: usize = 1_000;
/// Simulated dataplanes; `PROPAGATION_DATAPLANES` overrides it (to see how
/// much of the latency is the subscribers sharing this machine's cores).
const DATAPLANES: usize = 50;
const SINGLE_CHANGES: usize = 200;
/// Quiet time after each single change converged, before the next one.
const SINGLE_GAP: Duration = Duration::from_millis(20);
const BURST: usize = 1_000;
const SNAPSHOT_RUNS: usize = 20;
const IDLE_SAMPLE: Duration = Duration::from_secs(3);

const TARGET_SINGLE_P99: Duration = Duration::from_millis(100);
const TARGET_SNAPSHOT: Duration = Duration::from_millis(50);
const TARGET_RSS_BYTES: u64 = 150_000_000;
const TARGET_BURST: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    if let Ok(api_url) = std::env::var(controller::CHILD_ENV) {
        return controller::child(&api_url);
    }
    // `cargo test --all-targets` runs bench targets without `--bench`: a
    // timing run of most of a minute is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "propagation: a benchmark; run it with `cargo bench -p sluice-tests --bench propagation`"
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

/// Every figure the report prints.
struct Figures {
    dataplanes: usize,
    setup: Duration,
    setup_cpu: f64,
    idle_cpu: f64,
    snapshot_bytes: usize,
    single: Vec<Duration>,
    single_fake: Vec<Duration>,
    single_first: Vec<Duration>,
    delta_apply: Duration,
    single_cpu: f64,
    burst_write: Duration,
    burst_fake: Option<Duration>,
    burst: Duration,
    burst_cpu: f64,
    burst_deltas: u64,
    burst_snapshots: u64,
    rss_setup: u64,
    rss_end: u64,
    hwm: u64,
    snapshot: snapshot::Costs,
}

async fn run() -> anyhow::Result<()> {
    let header = system::describe();
    let dataplanes = std::env::var("PROPAGATION_DATAPLANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DATAPLANES);
    eprintln!("propagation: {POOLS} pools x {ENDPOINTS} endpoints, {dataplanes} dataplanes");
    // History must outlast the burst (slices plus the status writes it causes).
    let api = FakeApiServer::builder()
        .history_limit(200_000)
        .start()
        .await?;
    let mut addresses: Vec<Vec<SocketAddr>> = (0..POOLS)
        .map(|i| {
            (0..ENDPOINTS)
                .map(|j| world::initial_address(i, j))
                .collect()
        })
        .collect();
    for (i, addrs) in addresses.iter().enumerate() {
        api.apply(world::service(i))?;
        api.apply(world::slice(i, addrs))?;
        api.apply(world::pool(i))?;
    }

    let expect = Arc::new(ExpectCell::default());
    let all_initial = (0..POOLS)
        .map(|i| (world::pool_name(i), addresses[i][0]))
        .collect();
    let setup_seq = expect.set(all_initial);

    let epoch = Instant::now();
    let ctl = controller::Process::start(api.url())?;
    let cpu0 = ctl.cpu_seconds()?;
    eprintln!("propagation: controller pid {}", ctl.pid());
    let shared = Arc::new(Shared {
        controller: ctl.stream_addr,
        expect: Arc::clone(&expect),
        epoch,
    });
    let (stop_tx, stop) = watch::channel(false);
    let seen: Vec<Arc<Seen>> = (0..dataplanes).map(|_| Arc::default()).collect();
    for (n, s) in seen.iter().enumerate() {
        tokio::spawn(subscriber::follow(
            format!("dp-{n}"),
            Arc::clone(&shared),
            Arc::clone(s),
            stop.clone(),
        ));
    }
    let probe_seen = Arc::new(Seen::default());
    tokio::spawn(probe::watch_slices(
        api.client()?,
        Arc::clone(&shared),
        Arc::clone(&probe_seen),
    ));

    eprintln!("propagation: setup");
    let (_, setup) = converged(&seen, setup_seq, epoch, Duration::from_secs(60)).await?;
    let setup_cpu = ctl.cpu_seconds()? - cpu0;
    let snapshot_bytes = seen[0].bytes.load(Ordering::Relaxed) as usize;
    // Let the status writer and the first reports settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_setup, _) = ctl.memory()?;

    eprintln!("propagation: {SINGLE_CHANGES} single changes");
    let mut change = 0usize;
    let mut single = Vec::with_capacity(SINGLE_CHANGES);
    let mut single_fake = Vec::with_capacity(SINGLE_CHANGES);
    let mut single_first = Vec::with_capacity(SINGLE_CHANGES);
    let deltas_before = delta_totals(&seen);
    let cpu1 = ctl.cpu_seconds()?;
    for c in 0..SINGLE_CHANGES {
        // Spread over the pools rather than always the same one.
        let i = (c * 397) % POOLS;
        addresses[i][0] = world::changed_address(change);
        change += 1;
        let seq = expect.set(HashMap::from([(world::pool_name(i), addresses[i][0])]));
        let written = epoch.elapsed();
        api.put(world::slice(i, &addresses[i]))?;
        let (first, last) = converged(&seen, seq, epoch, Duration::from_secs(10)).await?;
        single.push(last.saturating_sub(written));
        single_first.push(first.saturating_sub(written));
        if let Some(at) = reached(&probe_seen, seq, epoch, Duration::from_secs(1)).await {
            single_fake.push(at.saturating_sub(written));
        }
        tokio::time::sleep(SINGLE_GAP).await;
    }
    let single_cpu = ctl.cpu_seconds()? - cpu1;
    let deltas_after = delta_totals(&seen);
    let delta_apply = Duration::from_nanos(
        (deltas_after.1 - deltas_before.1) / (deltas_after.0 - deltas_before.0).max(1),
    );

    eprintln!("propagation: burst of {BURST} changes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deltas0: u64 = seen.iter().map(|s| s.deltas.load(Ordering::Relaxed)).sum();
    let snaps0: u64 = seen
        .iter()
        .map(|s| s.snapshots.load(Ordering::Relaxed))
        .sum();
    let mut targets = HashMap::new();
    let mut slices = Vec::with_capacity(BURST);
    for k in 0..BURST {
        let i = k % POOLS;
        addresses[i][0] = world::changed_address(change);
        change += 1;
        targets.insert(world::pool_name(i), addresses[i][0]);
        slices.push(world::slice(i, &addresses[i]));
    }
    let seq = expect.set(targets);
    let cpu2 = ctl.cpu_seconds()?;
    let written = epoch.elapsed();
    let writer = api.clone();
    let burst_write = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        for s in slices {
            writer.put(s)?;
        }
        anyhow::Ok(t.elapsed())
    })
    .await??;
    let burst = converged(&seen, seq, epoch, Duration::from_secs(30))
        .await?
        .1
        .saturating_sub(written);
    let burst_fake = reached(&probe_seen, seq, epoch, Duration::from_secs(5))
        .await
        .map(|at| at.saturating_sub(written));
    let burst_cpu = ctl.cpu_seconds()? - cpu2;
    let burst_deltas = seen
        .iter()
        .map(|s| s.deltas.load(Ordering::Relaxed))
        .sum::<u64>()
        - deltas0;
    let burst_snapshots = seen
        .iter()
        .map(|s| s.snapshots.load(Ordering::Relaxed))
        .sum::<u64>()
        - snaps0;
    // What an idle controller spends (status re-examination every second,
    // a report a second from each dataplane), once the burst has settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle0 = ctl.cpu_seconds()?;
    tokio::time::sleep(IDLE_SAMPLE).await;
    let idle_cpu = (ctl.cpu_seconds()? - idle0) / IDLE_SAMPLE.as_secs_f64();
    let (rss_end, hwm) = ctl.memory()?;

    eprintln!("propagation: snapshot encode/apply, {SNAPSHOT_RUNS} runs");
    let table = fetch_table(ctl.stream_addr).await?;
    stop_tx.send_replace(true);
    let snapshot =
        tokio::task::spawn_blocking(move || snapshot::measure(&table, SNAPSHOT_RUNS)).await??;
    drop(ctl);

    print_report(
        &header,
        Figures {
            dataplanes,
            setup,
            setup_cpu,
            idle_cpu,
            snapshot_bytes,
            single,
            single_fake,
            single_first,
            delta_apply,
            single_cpu,
            burst_write,
            burst_fake,
            burst,
            burst_cpu,
            burst_deltas,
            burst_snapshots,
            rss_setup,
            rss_end,
            hwm,
            snapshot,
        },
    );
    Ok(())
}

/// Waits until every subscriber has met expectation `seq`; returns when the
/// first and the last one did, as times since `epoch`.
async fn converged(
    seen: &[Arc<Seen>],
    seq: u64,
    epoch: Instant,
    limit: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let deadline = Instant::now() + limit;
    loop {
        let done = seen
            .iter()
            .filter(|s| s.seq.load(Ordering::Acquire) >= seq)
            .count();
        if done == seen.len() {
            let at: Vec<u64> = seen
                .iter()
                .map(|s| s.at_nanos.load(Ordering::Acquire))
                .collect();
            let first = Duration::from_nanos(at.iter().copied().min().unwrap_or(0));
            let last = Duration::from_nanos(at.iter().copied().max().unwrap_or(0));
            return Ok((first, last.min(epoch.elapsed())));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {} dataplanes converged within {limit:?}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Deltas applied by all subscribers, and the nanoseconds they took.
fn delta_totals(seen: &[Arc<Seen>]) -> (u64, u64) {
    seen.iter().fold((0, 0), |(n, t), s| {
        (
            n + s.deltas.load(Ordering::Relaxed),
            t + s.delta_nanos.load(Ordering::Relaxed),
        )
    })
}

/// When the probe met expectation `seq`, if it did within `limit`.
async fn reached(seen: &Arc<Seen>, seq: u64, epoch: Instant, limit: Duration) -> Option<Duration> {
    converged(std::slice::from_ref(seen), seq, epoch, limit)
        .await
        .ok()
        .map(|(_, last)| last)
}

/// The controller's current table, as a new dataplane would get it.
async fn fetch_table(controller: SocketAddr) -> anyhow::Result<RouteTable> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(format!(
        "http://{controller}{}?dataplane=bench-snapshot",
        sluice_protocol::ROUTES_PATH
    ))
    .body(http_body_util::Empty::new())?;
    let mut body = client.request(req).await?.into_body();
    let mut decoder = sse::Decoder::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        if let Some(msg) = decoder.push(&chunk)?.into_iter().next() {
            let mut table = RouteTable::default();
            table.apply(RouteEvent::from_sse(&msg.event, &msg.data)?)?;
            return Ok(table);
        }
    }
    anyhow::bail!("the stream closed before a snapshot")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn print_report(header: &str, mut f: Figures) {
    f.single.sort_unstable();
    f.single_fake.sort_unstable();
    f.single_first.sort_unstable();
    let p = |xs: &[Duration], q| percentile(xs, q);
    let spread = |xs: &[Duration]| {
        format!(
            "p50 {} · p90 {} · p99 {} · max {}",
            ms(p(xs, 50.0)),
            ms(p(xs, 90.0)),
            ms(p(xs, 99.0)),
            ms(p(xs, 100.0))
        )
    };
    let snapshot_total = f.snapshot.encode + f.snapshot.apply;
    let dataplanes = f.dataplanes;
    println!("# Propagation: {POOLS} pools x {ENDPOINTS} endpoints, {dataplanes} dataplanes\n");
    println!("```\n{header}\n```\n");
    println!("| measure | figure | target | |");
    println!("|---|---|---|---|");
    println!(
        "| setup: controller start → all {dataplanes} dataplanes hold all {POOLS} pools | {} (controller CPU {:.2} s; dp-0 received {:.0} KiB) | — | |",
        ms(f.setup),
        f.setup_cpu,
        f.snapshot_bytes as f64 / 1024.0
    );
    println!(
        "| single slice change → all {dataplanes} applied ({} changes) | {} | p99 < {} | {} |",
        f.single.len(),
        spread(&f.single),
        ms(TARGET_SINGLE_P99),
        verdict(p(&f.single, 99.0) < TARGET_SINGLE_P99)
    );
    println!(
        "| of which: write → a kube watcher sees it (the fake's share) | {} | — | |",
        spread(&f.single_fake)
    );
    println!(
        "| of which: write → the first dataplane applied | {} | — | |",
        spread(&f.single_first)
    );
    println!(
        "| one dataplane: parse + apply one delta (`RouteTable::apply`, mean) | {} × {dataplanes} dataplanes on these cores | — | |",
        ms(f.delta_apply)
    );
    println!(
        "| controller CPU: per single change (incl. idle work) / idle | {:.2} ms / {:.0} ms per s | — | |",
        f.single_cpu * 1000.0 / f.single.len().max(1) as f64,
        f.idle_cpu * 1000.0
    );
    println!(
        "| burst: {BURST} slice changes → all {dataplanes} applied all | {} (the fake took {} to take the writes; a kube watcher saw the last after {}, the dataplanes {} later) | < {} | {} |",
        ms(f.burst),
        ms(f.burst_write),
        f.burst_fake.map_or_else(|| "—".to_string(), ms),
        f.burst_fake
            .map_or_else(|| "—".to_string(), |at| ms(f.burst.saturating_sub(at))),
        ms(TARGET_BURST),
        verdict(f.burst < TARGET_BURST)
    );
    println!(
        "| burst: events per dataplane, controller CPU | {:.1} deltas + {:.1} snapshots, {:.2} s CPU | — | |",
        f.burst_deltas as f64 / f.dataplanes as f64,
        f.burst_snapshots as f64 / f.dataplanes as f64,
        f.burst_cpu
    );
    println!(
        "| snapshot of {POOLS} pools ({:.0} KiB): encoded by the controller + applied by a dataplane (median of {SNAPSHOT_RUNS}) | {} + {} = {} | < {} | {} |",
        f.snapshot.bytes as f64 / 1024.0,
        ms(f.snapshot.encode),
        ms(f.snapshot.apply),
        ms(snapshot_total),
        ms(TARGET_SNAPSHOT),
        verdict(snapshot_total < TARGET_SNAPSHOT)
    );
    let cold = snapshot_total + f.snapshot.build;
    println!(
        "| the same + compiled into the proxy's table from nothing (`Table::build`: a dataplane's first table) | {} + {} = {} | < {} | {} |",
        ms(snapshot_total),
        ms(f.snapshot.build),
        ms(cold),
        ms(TARGET_SNAPSHOT),
        verdict(cold < TARGET_SNAPSHOT)
    );
    println!(
        "| compiled over a previous table with the same pools (a resync) | {} | — | |",
        ms(f.snapshot.rebuild)
    );
    println!(
        "| controller RSS, peak (VmHWM) over the whole run | {} ({:.0} MB) | < {:.0} MB | {} |",
        mib(f.hwm),
        f.hwm as f64 / 1e6,
        TARGET_RSS_BYTES as f64 / 1e6,
        verdict(f.hwm < TARGET_RSS_BYTES)
    );
    println!(
        "| controller RSS after setup / after the burst | {} / {} | — | |",
        mib(f.rss_setup),
        mib(f.rss_end)
    );
}
