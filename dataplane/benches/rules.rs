//! Rule matching at scale: 1,000 routes of 10 rules each (10,000 rules,
//! over 100 pools), each route on a host of its own, plus a wildcard and a
//! catch-all route; and, for comparison, 1,000 plain pools with hosts.
//! Measures [`Table::select`] per request shape, and the table build.
//!
//! `cargo bench -p sluice-dataplane --bench rules` prints criterion's lines
//! and then a table: ns/select from a plain timed loop, and allocations per
//! select, counted by this binary's global allocator.

use std::alloc::System;
use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use http::{HeaderMap, HeaderValue, Method};
use sluice_dataplane::endpoint::Registry;
use sluice_dataplane::metrics::Metrics;
use sluice_dataplane::rules::RequestView;
use sluice_dataplane::table::Table;
use sluice_protocol::{RouteFile, RouteTable};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROUTES: usize = 1000;
const POOLS: usize = 100;

/// 1,000 routes × 10 rules: prefixes, an exact path, a regex, a method,
/// headers and query parameters, as a real HTTPRoute set mixes them.
fn rules_yaml() -> String {
    let mut y = String::from("pools:\n");
    for p in 0..POOLS {
        y += &format!(
            "  - {{name: pool-{p}, backendOnly: true, endpoints: [{{address: 127.0.0.1:{}}}]}}\n",
            20000 + p
        );
    }
    y += "routes:\n";
    for r in 0..ROUTES {
        let pool = |k: usize| format!("pool-{}", (r + k) % POOLS);
        y += &format!("  - name: ns/route-{r}\n    hosts: [svc-{r}.bench.example]\n    rules:\n");
        for v in 0..4 {
            y += &format!(
                "      - matches: [{{path: {{value: /api/v{v}}}}}]\n        backends: [{{pool: {}}}]\n",
                pool(v)
            );
        }
        y += &format!(
            "      - matches: [{{path: {{type: Exact, value: /login}}}}]\n        backends: [{{pool: {}}}]\n",
            pool(4)
        );
        y += &format!(
            "      - matches: [{{path: {{type: RegularExpression, value: \"/item/[0-9]+\"}}}}]\n        backends: [{{pool: {}}}]\n",
            pool(5)
        );
        y += &format!(
            "      - matches: [{{path: {{value: /api}}, method: POST}}]\n        backends: [{{pool: {}}}]\n",
            pool(6)
        );
        y += &format!(
            "      - matches: [{{path: {{value: /api}}, headers: [{{name: x-canary, value: \"true\"}}]}}]\n        backends: [{{pool: {}, weight: 90}}, {{pool: {}, weight: 10}}]\n",
            pool(7),
            pool(8)
        );
        y += &format!(
            "      - matches: [{{path: {{value: /api}}, queryParams: [{{name: beta, value: \"1\"}}]}}]\n        backends: [{{pool: {}}}]\n",
            pool(8)
        );
        y += &format!(
            "      - matches: [{{path: {{value: /}}}}]\n        backends: [{{pool: {}}}]\n",
            pool(9)
        );
    }
    y += "  - name: wild\n    hosts: [\"*.wild.example\"]\n    rules: [{backends: [{pool: pool-0}]}]\n";
    y
}

fn plain_yaml() -> String {
    let mut y = String::from("pools:\n");
    for p in 0..ROUTES {
        y += &format!(
            "  - {{name: pool-{p}, hosts: [svc-{p}.bench.example], pathPrefix: /api, endpoints: [{{address: 127.0.0.1:{}}}]}}\n",
            20000 + p % 1000
        );
    }
    y
}

fn build(yaml: &str) -> Table {
    let file = RouteFile::from_yaml(yaml).expect("bench yaml is valid");
    let routes = RouteTable::from_parts(1, file.pools, file.routes);
    Table::build(
        &routes,
        &Table::default(),
        &Metrics::new(),
        &Registry::default(),
    )
}

struct Case {
    name: &'static str,
    host: &'static str,
    method: Method,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
}

fn cases() -> Vec<Case> {
    let canary = {
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("true"));
        h
    };
    let case = |name, host, method, path, query| Case {
        name,
        host,
        method,
        path,
        query,
        headers: HeaderMap::new(),
    };
    vec![
        case(
            "prefix /api/v3",
            "svc-500.bench.example",
            Method::GET,
            "/api/v3/users",
            None,
        ),
        case(
            "exact /login",
            "svc-500.bench.example",
            Method::GET,
            "/login",
            None,
        ),
        case(
            "regex /item/N",
            "svc-500.bench.example",
            Method::GET,
            "/item/42",
            None,
        ),
        Case {
            headers: canary,
            ..case(
                "header x-canary",
                "svc-500.bench.example",
                Method::GET,
                "/api/x",
                None,
            )
        },
        case(
            "query beta=1",
            "svc-500.bench.example",
            Method::GET,
            "/api/x",
            Some("a=2&beta=1"),
        ),
        case(
            "last rule /",
            "svc-500.bench.example",
            Method::GET,
            "/other",
            None,
        ),
        case("wildcard host", "a.wild.example", Method::GET, "/", None),
        case("no host (404)", "nowhere.example", Method::GET, "/", None),
    ]
}

fn select(table: &Table, c: &Case) -> bool {
    let view = RequestView {
        path: c.path,
        query: c.query,
        method: &c.method,
        headers: &c.headers,
    };
    table.select(c.host, &view, false).is_some()
}

fn main() {
    let started = Instant::now();
    let rules = build(&rules_yaml());
    let build_rules = started.elapsed();
    let started = Instant::now();
    let plain = build(&plain_yaml());
    let build_plain = started.elapsed();
    assert_eq!(rules.rule_count(), ROUTES * 10 + 1);

    let mut c = Criterion::default().configure_from_args();
    let cases = cases();
    let mut group = c.benchmark_group("select");
    for case in &cases {
        group.bench_function(format!("10k rules: {}", case.name), |b| {
            b.iter(|| black_box(select(&rules, case)))
        });
    }
    let plain_case = &cases[0];
    group.bench_function("1k pools: prefix /api", |b| {
        b.iter(|| black_box(select(&plain, plain_case)))
    });
    group.finish();
    c.final_summary();

    const N: u64 = 1_000_000;
    println!();
    println!("table build (parse + compile): 10k rules {build_rules:?}, 1k pools {build_plain:?}");
    println!("{:<34} {:>10} {:>14}", "case", "ns/select", "allocs/select");
    let run = |name: String, table: &Table, case: &Case| {
        let region = Region::new(GLOBAL);
        let started = Instant::now();
        for _ in 0..N {
            black_box(select(table, case));
        }
        let ns = started.elapsed().as_nanos() as f64 / N as f64;
        let change = region.change();
        let allocs = (change.allocations + change.reallocations) as f64 / N as f64;
        println!("{name:<34} {ns:>10.1} {allocs:>14}");
    };
    for case in &cases {
        run(format!("10k rules: {}", case.name), &rules, case);
    }
    run("1k pools: prefix /api".into(), &plain, plain_case);
}
