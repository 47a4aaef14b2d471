//! `sluice-dataplane`: the proxy binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_dataplane::{Dataplane, Options, Source};

/// The Sluice L7 proxy.
#[derive(Parser, Debug)]
#[command(name = "sluice-dataplane", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "SLUICE_WORKERS", global = true)]
    workers: Option<usize>,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Standalone mode: serve the pools of this YAML file (`{pools: [PoolRoute]}`), reloaded on change.
    #[arg(long, env = "SLUICE_CONFIG", conflicts_with = "controller")]
    config: Option<PathBuf>,
    /// Cluster mode: follow this controller's route stream (e.g. http://sluice-controller:8090).
    #[arg(long, env = "SLUICE_CONTROLLER")]
    controller: Option<String>,
    /// Bearer token for the controller, re-read on every connect.
    #[arg(long, env = "SLUICE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Persist the last applied table here and start from it.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Name reported to the controller (default: $HOSTNAME, the pod name in a cluster).
    #[arg(long, env = "SLUICE_NAME")]
    name: Option<String>,
    /// HTTP listener.
    #[arg(long, env = "SLUICE_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// Admin listener (/healthz, /readyz, /metrics, /debug/routes).
    #[arg(long, env = "SLUICE_ADMIN", default_value = "0.0.0.0:9901")]
    admin: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SLUICE_GRACE_PERIOD", default_value = "10s", value_parser = parse_duration)]
    grace_period: Duration,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start three demo backends and the proxy on loopback (the README quick start).
    Demo {
        /// HTTP listener of the demo.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Admin listener of the demo.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<sluice_protocol::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = cli.workers {
        runtime.worker_threads(n.max(1));
    }
    runtime
        .build()
        .context("cannot start the runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = match cli.command {
        Some(Command::Demo { http, admin }) => {
            let table = sluice_dataplane::demo::table()
                .await
                .context("cannot start the demo backends")?;
            Options {
                source: Source::Static(table),
                name: "demo".into(),
                http,
                admin,
                state_dir: None,
                grace_period: Duration::from_secs(1),
            }
        }
        None => {
            let args = cli.run;
            let source = match (args.config, args.controller) {
                (Some(path), None) => Source::File(path),
                (None, Some(url)) => Source::Controller {
                    url,
                    token_file: args.token_file,
                },
                _ => anyhow::bail!(
                    "give --config FILE (standalone) or --controller URL (cluster mode); see --help"
                ),
            };
            let name = args
                .name
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "dataplane".into());
            Options {
                source,
                name,
                http: args.http,
                admin: args.admin,
                state_dir: args.state_dir,
                grace_period: args.grace_period,
            }
        }
    };
    let demo = matches!(opts.source, Source::Static(_));
    let dataplane = Dataplane::start(opts).await?;
    if demo {
        let (http, admin) = (dataplane.http_addr(), dataplane.admin_addr());
        println!("Sluice demo: three backends behind the proxy on http://{http}/");
        println!(
            "  curl -s http://{http}/                 # answered by backend-1, backend-2, backend-3 in turn"
        );
        println!("  curl -s http://{admin}/debug/routes    # the table being served");
        println!("  curl -s http://{admin}/metrics         # Prometheus metrics");
        println!("Press Ctrl-C to stop.");
    }
    shutdown_signal().await;
    tracing::info!("draining");
    dataplane.shutdown().await;
    Ok(())
}

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
