//! `sluice-dataplane`: the proxy binary. Parses the command line, sets up
//! logging and the runtime, runs until SIGTERM/SIGINT, then drains.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_dataplane::cli::{Cli, Command, LogFormat};
use sluice_dataplane::{Dataplane, Options, Source, demo};

/// Keeps freed request-sized blocks per thread for the next request
/// (`sluice_dataplane::heap::Recycling`: why, and what it measured).
#[global_allocator]
static HEAP: sluice_dataplane::heap::Recycling = sluice_dataplane::heap::Recycling;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // A current-thread runtime: it is worker 0, and `--workers N` adds
    // N - 1 threads of their own (thread-per-core, see
    // `sluice_dataplane::front::workers`); no work-stealing scheduler anywhere.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (opts, is_demo) = match cli.command {
        Some(Command::Demo { http, admin }) => {
            let table = demo::table()
                .await
                .context("cannot start the demo backends")?;
            let opts = Options {
                source: Source::Static(table),
                name: "demo".into(),
                http,
                https: None,
                admin,
                state_dir: None,
                grace_period: Duration::from_secs(1),
                drain_delay: Duration::ZERO,
                limits: Default::default(),
                access_log: false,
                report_interval: sluice_dataplane::control::report::INTERVAL,
                workers: 1,
                tracing: None,
                listen_backlog: sluice_dataplane::front::listener::LISTEN_BACKLOG,
            };
            (opts, true)
        }
        Some(Command::PreStop { sleep }) => {
            tokio::time::sleep(sleep).await;
            return Ok(());
        }
        None => {
            let opts = cli
                .run
                .options(std::env::var("HOSTNAME").ok())
                .context("give --config FILE (standalone) or --controller URL (cluster mode)")?;
            (opts, false)
        }
    };
    let mut opts = opts;
    opts.workers = match cli.workers {
        Some(n) => n.get(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let dataplane = Dataplane::start(opts).await?;
    if is_demo {
        let (http, admin) = (dataplane.http_addr(), dataplane.admin_addr());
        println!("Sluice demo: three backends behind the proxy on http://{http}/");
        println!(
            "  curl -s http://{http}/                 # backend-1, backend-2, backend-3 in turn"
        );
        println!("  curl -si http://{http}/ | grep x-backend");
        println!("  curl -s http://{admin}/debug/routes    # the table being served");
        println!("  curl -s http://{admin}/metrics         # Prometheus metrics");
        println!("Press Ctrl-C to stop.");
    }
    shutdown_signal().await;
    tracing::info!("shutting down: readiness off, then draining in-flight requests");
    dataplane.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
