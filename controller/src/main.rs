//! `sluice-controller`: the control plane binary.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_controller::cli::{Cli, Command, LogFormat};
use sluice_controller::{Controller, LeaseConfig, Options, TlsFiles};

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
        gateway: sluice_controller::gateway::Config {
            http_port: cli.gateway_http_port,
            https_port: cli.gateway_https_port,
            dataplane_service: cli.dataplane_service,
        },
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
