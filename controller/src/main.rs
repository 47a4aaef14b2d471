//! `sluice-controller`: the control plane binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_controller::{Auth, Controller, LeaseConfig, Options, TlsFiles};

/// Watches BackendPools and EndpointSlices and streams routes to Sluice dataplanes.
#[derive(Parser, Debug)]
#[command(name = "sluice-controller", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the route stream and reports (`GET /v1/routes`, `POST /v1/reports`).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8090")]
    listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "SLUICE_ADMIN", default_value = "0.0.0.0:9902")]
    admin: SocketAddr,
    /// Dataplane authentication: `none` (loopback only), `static:<file>` (bearer tokens, one per line)
    /// or `tokenreview:<namespace>/<serviceaccount>` (projected tokens, audience `sluice`).
    #[arg(long, env = "SLUICE_AUTH", default_value = "none")]
    auth: Auth,
    /// How long an accepted dataplane token is trusted: after this, new
    /// requests ask the API server (TokenReview) or the token file again,
    /// and every open route stream re-checks its token at this interval
    /// and is closed when the token is refused. A revoked token (its
    /// ServiceAccount or pod deleted, or a line removed from the static
    /// file) so loses access within this time plus one TokenReview. While
    /// the API server cannot be asked, open streams stay open.
    #[arg(long, env = "SLUICE_TOKEN_RECHECK", default_value = "15s", value_parser = parse_positive)]
    token_recheck: Duration,
    /// How long a dataplane may take to acknowledge a route change before
    /// the pool's `Programmed` condition turns False (`Pending`): until
    /// then a dataplane serving the version just replaced still counts, so
    /// ordinary route updates and endpoint churn leave the condition True.
    /// At most 60s.
    #[arg(long, env = "SLUICE_ACK_DEADLINE", default_value = "5s", value_parser = parse_positive)]
    ack_deadline: Duration,
    /// PEM certificate chain of the stream listener; with --tls-key, the
    /// stream is served over TLS (the files are re-read when they change).
    #[arg(
        long,
        env = "SLUICE_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the stream listener.
    #[arg(
        long,
        env = "SLUICE_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Name of this instance in Events and its identity in the leader
    /// Lease (the pod name in a cluster).
    #[arg(long, env = "SLUICE_NAME", default_value = "sluice-controller")]
    name: String,
    /// Elect a leader with a coordination.k8s.io Lease, so that several
    /// replicas can run: only the leader serves dataplanes, writes status
    /// and reports ready.
    #[arg(long, env = "SLUICE_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease [default: $POD_NAMESPACE, else the service
    /// account's namespace, else sluice-system].
    #[arg(long, env = "SLUICE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the Lease, the same for every replica.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    lease_name: String,
}

/// A duration as `30s`, `500ms`, `1m`; zero is refused.
fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = s
        .parse::<sluice_protocol::Duration>()
        .map_err(|e| e.to_string())?
        .get();
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

/// The controller's own namespace: the downward API's `POD_NAMESPACE`, else
/// the mounted service account's, else `sluice-system`.
fn own_namespace() -> String {
    const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| std::fs::read_to_string(SA_NAMESPACE).ok())
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "sluice-system".to_string())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (`sluice-controller crds | kubectl apply -f -`).
    Crds,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crds) = cli.command {
        let docs: Vec<String> = sluice_crds::crd_yaml()
            .into_iter()
            .map(|(_, yaml)| yaml)
            .collect();
        print!("{}", docs.join("---\n"));
        return Ok(());
    }
    init_logging(cli.log_format);
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration found (in-cluster service account or KUBECONFIG)")?;
    let lease = cli.leader_elect.then(|| {
        LeaseConfig::new(
            cli.lease_namespace.unwrap_or_else(own_namespace),
            cli.lease_name,
            cli.name.clone(),
        )
    });
    let opts = Options {
        listen: cli.listen,
        admin: cli.admin,
        auth: cli.auth,
        token_recheck: cli.token_recheck,
        ack_deadline: cli.ack_deadline,
        instance: cli.name,
        lease,
        tls: cli
            .tls_cert
            .zip(cli.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
        ..Options::default()
    };
    let controller = Controller::start(client, opts).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    tokio::time::timeout(Duration::from_secs(10), controller.shutdown())
        .await
        .ok();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
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
