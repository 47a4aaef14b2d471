//! The command line: every flag also reads `SLUICE_<FLAG>` from the
//! environment. Here in the library rather than in `main.rs` so that the
//! reference in `docs/cli.md` can be checked against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::Auth;

/// Watches BackendPools and EndpointSlices and streams routes to Sluice dataplanes.
#[derive(Parser, Debug)]
#[command(name = "sluice-controller", version)]
pub struct Cli {
    /// What to run instead of the controller.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address of the route stream and reports (`GET /v1/routes`, `POST /v1/reports`).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "SLUICE_ADMIN", default_value = "0.0.0.0:9902")]
    pub admin: SocketAddr,
    /// Dataplane authentication: `none` (loopback only), `static:<file>` (bearer tokens, one per line)
    /// or `tokenreview:<namespace>/<serviceaccount>` (projected tokens, audience `sluice`).
    #[arg(long, env = "SLUICE_AUTH", default_value = "none")]
    pub auth: Auth,
    /// How long an accepted dataplane token is trusted: after this, new
    /// requests ask the API server (TokenReview) or the token file again,
    /// and every open route stream re-checks its token at this interval
    /// and is closed when the token is refused. A revoked token (its
    /// ServiceAccount or pod deleted, or a line removed from the static
    /// file) so loses access within this time plus one TokenReview (plus
    /// up to 10 s kube-apiserver itself still accepts a token it checked
    /// recently). While
    /// the API server cannot be asked, open streams stay open.
    #[arg(long, env = "SLUICE_TOKEN_RECHECK", default_value = "15s", value_parser = parse_positive)]
    pub token_recheck: Duration,
    /// How long a dataplane may take to acknowledge a route change before
    /// the pool's `Programmed` condition turns False (`Pending`): until
    /// then a dataplane serving the version just replaced still counts, so
    /// ordinary route updates and endpoint churn leave the condition True.
    /// At most 60s.
    #[arg(long, env = "SLUICE_ACK_DEADLINE", default_value = "5s", value_parser = parse_positive)]
    pub ack_deadline: Duration,
    /// PEM certificate chain of the stream listener; with --tls-key, the
    /// stream is served over TLS (the files are re-read when they change).
    #[arg(
        long,
        env = "SLUICE_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the stream listener.
    #[arg(
        long,
        env = "SLUICE_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Name of this instance in Events and its identity in the leader
    /// Lease (the pod name in a cluster).
    #[arg(long, env = "SLUICE_NAME", default_value = "sluice-controller")]
    pub name: String,
    /// Elect a leader with a coordination.k8s.io Lease, so that several
    /// replicas can run: only the leader serves dataplanes, writes status
    /// and reports ready.
    #[arg(long, env = "SLUICE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease [default: $POD_NAMESPACE, else the service
    /// account's namespace, else sluice-system].
    #[arg(long, env = "SLUICE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the Lease, the same for every replica.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    pub lease_name: String,
    /// Gateway API: the port of the dataplane Service that serves plain
    /// HTTP. A Gateway listener of protocol HTTP must use this port (one
    /// dataplane fleet serves every Gateway of the `sluice` class); any
    /// other port is refused with `PortUnavailable`.
    #[arg(long, env = "SLUICE_GATEWAY_HTTP_PORT", default_value_t = 80)]
    pub gateway_http_port: u16,
    /// Gateway API: the port of the dataplane Service that serves HTTPS
    /// (TLS terminated by the dataplanes, certificate chosen by SNI). A
    /// listener of protocol HTTPS must use this port.
    #[arg(long, env = "SLUICE_GATEWAY_HTTPS_PORT", default_value_t = 443)]
    pub gateway_https_port: u16,
    /// Gateway API: the dataplane Service, as `namespace/name`. Its
    /// LoadBalancer ingress IPs and hostnames (else its clusterIP) are
    /// each Gateway's `status.addresses`. Without it Gateways get no
    /// addresses.
    #[arg(long, env = "SLUICE_DATAPLANE_SERVICE", value_name = "NAMESPACE/NAME", value_parser = parse_namespaced)]
    pub dataplane_service: Option<(String, String)>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML (`sluice-controller crds | kubectl apply -f -`).
    Crds,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
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

/// `namespace/name`, both non-empty.
fn parse_namespaced(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?}: expected namespace/name")),
    }
}
