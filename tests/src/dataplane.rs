//! A dataplane as the end-to-end tests run it: every listener on an
//! ephemeral loopback port, no HTTPS, no state directory, a short grace
//! period and no drain delay.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use sluice_dataplane::{Options, Source};

/// Options for a loopback dataplane named `name` following `source`.
pub fn loopback(source: Source, name: &str) -> Options {
    let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    Options {
        source,
        name: name.to_string(),
        http: any_port,
        https: None,
        admin: any_port,
        state_dir: None,
        grace_period: Duration::from_secs(1),
        drain_delay: Duration::ZERO,
        limits: Default::default(),
        access_log: false,
        report_interval: sluice_dataplane::control::report::INTERVAL,
        workers: 1,
        tracing: None,
        listen_backlog: sluice_dataplane::front::listener::LISTEN_BACKLOG,
    }
}
