//! The cost of one full snapshot on each side of the wire, with the code
//! each side runs: the controller's store builds the event and frames it
//! (`RouteStore::event_since(None)`, JSON, SSE), the dataplane decodes,
//! validates and applies it (`sse::Decoder`, `RouteEvent::from_sse`,
//! `RouteTable::apply`) and compiles its proxy table (`Table::build`).

use std::time::{Duration, Instant};

use sluice_controller::store::RouteStore;
use sluice_dataplane::endpoint::Registry;
use sluice_dataplane::metrics::Metrics;
use sluice_dataplane::table::Table;
use sluice_protocol::{RouteEvent, RouteTable, sse};

/// Medians over the runs.
#[derive(Debug)]
pub struct Costs {
    /// Size of the framed event.
    pub bytes: usize,
    /// Controller: event built, serialised and framed.
    pub encode: Duration,
    /// Dataplane: decoded, validated, applied to a `RouteTable`.
    pub apply: Duration,
    /// Dataplane: the proxy's table compiled from nothing (first table).
    pub build: Duration,
    /// Dataplane: compiled over the previous table holding the same pools
    /// (a resync after a reconnect: every pool is reused).
    pub rebuild: Duration,
}

/// Measures `runs` times the snapshot of `table`'s pools.
pub fn measure(table: &RouteTable, runs: usize) -> anyhow::Result<Costs> {
    let store = RouteStore::new(1);
    store.publish(table.pools.values().cloned().collect(), Vec::new());
    let encode_once = || {
        let event = store
            .event_since(None)
            .ok_or_else(|| anyhow::anyhow!("empty store"))?;
        anyhow::Ok(sse::encode(event.name(), event.version(), &event.to_json()))
    };
    let frame = encode_once()?;
    let metrics = Metrics::new();
    let registry = Registry::default();
    let (mut encode, mut apply) = (Vec::new(), Vec::new());
    let (mut build, mut rebuild) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(encode_once()?);
        encode.push(t.elapsed());

        let t = Instant::now();
        let mut decoder = sse::Decoder::new();
        let mut routes = RouteTable::default();
        for msg in decoder.push(frame.as_bytes())? {
            routes.apply(RouteEvent::from_sse(&msg.event, &msg.data)?)?;
        }
        apply.push(t.elapsed());
        anyhow::ensure!(
            routes.pools.len() == table.pools.len(),
            "decoded {} pools of {}",
            routes.pools.len(),
            table.pools.len()
        );

        let t = Instant::now();
        let first = Table::build(&routes, &Table::default(), &metrics, &registry);
        build.push(t.elapsed());

        let t = Instant::now();
        std::hint::black_box(Table::build(&routes, &first, &metrics, &registry));
        rebuild.push(t.elapsed());
    }
    Ok(Costs {
        bytes: frame.len(),
        encode: median(&mut encode),
        apply: median(&mut apply),
        build: median(&mut build),
        rebuild: median(&mut rebuild),
    })
}

fn median(xs: &mut [Duration]) -> Duration {
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}
