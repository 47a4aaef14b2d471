//! The command line: every flag also reads `SLUICE_<FLAG>` from the
//! environment, so a Deployment can configure the dataplane either way.
//! Parsing ends in [`Options`]; `main` only adds the runtime and logging.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::front::listener::{self, Limits};
use crate::trace::Settings as TracingSettings;
use crate::{Options, Source};

/// The Sluice L7 proxy.
#[derive(Parser, Debug)]
#[command(
    name = "sluice-dataplane",
    version,
    about,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// What to run instead of the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The proxy's flags.
    #[command(flatten)]
    pub run: RunArgs,
    /// Threads serving traffic, each with its own runtime and its own
    /// connections (default: one per core).
    #[arg(long, env = "SLUICE_WORKERS", global = true)]
    pub workers: Option<NonZeroUsize>,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Flags of the proxy itself.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["config", "controller"])))]
pub struct RunArgs {
    /// Standalone mode: serve the pools of this YAML file (`{pools: [PoolRoute]}`), reloaded on change.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cluster mode: follow this controller's route stream (e.g. http://sluice-controller:8090).
    #[arg(long, env = "SLUICE_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,
    /// Bearer token presented to the controller, re-read on every connect.
    #[arg(
        long,
        env = "SLUICE_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "config"
    )]
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the controller's certificate, for an
    /// https:// --controller.
    #[arg(
        long,
        env = "SLUICE_CA_FILE",
        value_name = "FILE",
        conflicts_with = "config"
    )]
    pub ca_file: Option<PathBuf>,
    /// Persist the last applied table in this directory and start from it.
    #[arg(long, env = "SLUICE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Name reported to the controller (default: $HOSTNAME, the pod name in a cluster).
    #[arg(long, env = "SLUICE_NAME")]
    pub name: Option<String>,
    /// HTTP listener.
    #[arg(long, env = "SLUICE_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// HTTPS listener, terminating TLS for pools with `tls` (certificate chosen by SNI); `off` for none.
    #[arg(long, env = "SLUICE_HTTPS", default_value = "0.0.0.0:8443", value_parser = parse_optional_addr)]
    pub https: OptionalAddr,
    /// Admin listener (/healthz, /readyz, /metrics, /debug/routes).
    #[arg(long, env = "SLUICE_ADMIN", default_value = "0.0.0.0:9901")]
    pub admin: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM (e.g. 10s, 500ms).
    #[arg(long, env = "SLUICE_GRACE_PERIOD", default_value = "10s", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// After SIGTERM, how long new connections are still served while readiness already fails.
    #[arg(long, env = "SLUICE_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// Write one access-log line per request (target sluice::access; JSON with --log-format json).
    #[arg(long, env = "SLUICE_ACCESS_LOG")]
    pub access_log: bool,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[arg(long, env = "SLUICE_MAX_HEADER_BYTES", default_value_t = listener::MAX_HEADER_BYTES, value_parser = clap::value_parser!(usize))]
    pub max_header_bytes: usize,
    /// Most headers per request; more gets 431.
    #[arg(long, env = "SLUICE_MAX_HEADERS", default_value_t = listener::MAX_HEADERS)]
    pub max_headers: usize,
    /// How long a client may take to send a request head (408), a TLS handshake, or (once TLS chose h2) the HTTP/2 preface before the connection closes.
    #[arg(long, env = "SLUICE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// How long an HTTP/2 connection may have no stream open before it is closed with GOAWAY (one to two such periods after its last stream).
    #[arg(long, env = "SLUICE_HTTP2_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http2_idle_timeout: Duration,
    /// How long a client may take none of what is sent to it before its connection is closed (an HTTP/2 stream whose window stays shut: reset), one to two such periods after the last byte it took.
    #[arg(long, env = "SLUICE_SEND_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub send_timeout: Duration,
    /// Propagate W3C trace context: each request's endpoint gets a `traceparent` naming the proxy's span (on with --tracing-otlp-endpoint too).
    #[arg(long, env = "SLUICE_TRACING")]
    pub tracing: bool,
    /// Turn tracing on and export spans over OTLP/HTTP (protobuf) to this URL, e.g. http://otel-collector:4318 (/v1/traces is added to a URL without a path).
    #[arg(long, env = "SLUICE_TRACING_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_otlp_endpoint)]
    pub tracing_otlp_endpoint: Option<String>,
    /// Share of new traces (requests without a valid traceparent) that are recorded, from 0 to 1; a request with one follows its sampled flag.
    #[arg(long, env = "SLUICE_TRACING_SAMPLE_RATIO", value_name = "RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub tracing_sample_ratio: f64,
    /// Connections each listener lets the kernel queue before they are accepted (capped by net.core.somaxconn).
    #[arg(long, env = "SLUICE_LISTEN_BACKLOG", default_value_t = listener::LISTEN_BACKLOG, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub listen_backlog: u32,
}

/// A listener address, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("{e} (an address like 0.0.0.0:8443, or off)"))
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start three demo backends and the proxy on loopback (the README quick start).
    Demo {
        /// HTTP listener of the demo.
        #[arg(long, env = "SLUICE_DEMO_HTTP", default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Admin listener of the demo.
        #[arg(long, env = "SLUICE_DEMO_ADMIN", default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Wait, then exit 0: the pod's preStop hook (`exec`), which keeps the
    /// proxy serving while Kubernetes takes the pod out of the Service's
    /// endpoints. The images have no shell to run `sleep`, and the kubelet's
    /// own sleep action needs Kubernetes 1.30; this works on every version.
    PreStop {
        /// How long to wait (e.g. 5s, 500ms).
        #[arg(long, env = "SLUICE_PRE_STOP_SLEEP", default_value = "5s", value_parser = parse_duration)]
        sleep: Duration,
    },
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    crate::trace::export::traces_url(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a ratio: give a number from 0 to 1, e.g. 0.1 to record one new trace in ten"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<sluice_protocol::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

impl RunArgs {
    /// The dataplane's options; `hostname` is `$HOSTNAME`, the default name.
    /// `None` when neither source is set, which clap rules out unless a
    /// subcommand was given.
    pub fn options(self, hostname: Option<String>) -> Option<Options> {
        let source = match (self.config, self.controller) {
            (Some(path), _) => Source::File(path),
            (None, Some(url)) => Source::Controller {
                url,
                token_file: self.token_file,
                ca_file: self.ca_file,
            },
            (None, None) => return None,
        };
        Some(Options {
            source,
            name: self.name.or(hostname).unwrap_or_else(|| "dataplane".into()),
            http: self.http,
            https: self.https.0,
            admin: self.admin,
            state_dir: self.state_dir,
            grace_period: self.grace_period,
            drain_delay: self.drain_delay,
            limits: Limits {
                header_read_timeout: self.header_read_timeout,
                http2_idle_timeout: self.http2_idle_timeout,
                send_timeout: self.send_timeout,
                max_header_bytes: self.max_header_bytes.max(8 * 1024),
                max_headers: self.max_headers,
            },
            access_log: self.access_log,
            report_interval: crate::control::report::INTERVAL,
            workers: 1,
            tracing: tracing(
                self.tracing,
                self.tracing_otlp_endpoint,
                self.tracing_sample_ratio,
            ),
            listen_backlog: self.listen_backlog,
        })
    }
}

/// Tracing settings: on with `--tracing` or an OTLP endpoint (an empty
/// one is none, as a Helm value left blank gives).
fn tracing(on: bool, endpoint: Option<String>, sample_ratio: f64) -> Option<TracingSettings> {
    let otlp_endpoint = endpoint.filter(|e| !e.is_empty());
    (on || otlp_endpoint.is_some()).then_some(TracingSettings {
        sample_ratio,
        otlp_endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice-dataplane").chain(args.iter().copied()))
    }

    #[test]
    fn every_flag_has_a_sluice_env_var() {
        let cli = Cli::command();
        let mut commands = vec![&cli];
        commands.extend(cli.get_subcommands());
        for cmd in commands {
            for arg in cmd.get_arguments() {
                if arg.get_long().is_none() || ["help", "version"].contains(&arg.get_id().as_str())
                {
                    continue;
                }
                let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or("");
                assert!(
                    env.starts_with("SLUICE_"),
                    "--{} has no env var",
                    arg.get_id()
                );
            }
        }
        cli.debug_assert();
    }

    #[test]
    fn exactly_one_source_unless_demo() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--config", "a.yaml", "--controller", "http://c"]).is_err());
        assert!(parse(&["--config", "a.yaml", "--token-file", "t"]).is_err());
        let cli = parse(&["--controller", "http://c:8090", "--grace-period", "1500ms"])
            .expect("cluster mode");
        let opts = cli.run.options(Some("pod-7".into())).expect("options");
        assert!(matches!(opts.source, Source::Controller { .. }));
        assert_eq!(opts.name, "pod-7");
        assert_eq!(opts.grace_period, Duration::from_millis(1500));
        let cli = parse(&["demo", "--http", "127.0.0.1:0"]).expect("demo");
        assert!(matches!(cli.command, Some(Command::Demo { .. })));
        assert!(parse(&["--config", "a.yaml", "--grace-period", "10"]).is_err());
    }

    #[test]
    fn pre_stop_takes_a_duration_and_no_source() {
        let sleep = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Some(Command::PreStop { sleep })) => Ok(sleep),
            Ok(other) => panic!("not pre-stop: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            sleep(&["pre-stop", "--sleep", "15s"]).expect("15s"),
            Duration::from_secs(15)
        );
        assert_eq!(
            sleep(&["pre-stop", "--sleep=250ms"]).expect("250ms"),
            Duration::from_millis(250)
        );
        assert_eq!(
            sleep(&["pre-stop"]).expect("default"),
            Duration::from_secs(5)
        );
        assert!(
            sleep(&["pre-stop", "--sleep", "15"]).is_err(),
            "a unit is required"
        );
        assert!(sleep(&["pre-stop", "--sleep", "-1s"]).is_err());
        assert!(
            sleep(&["pre-stop", "15s"]).is_err(),
            "no positional argument"
        );
    }

    #[test]
    fn https_drain_limits_and_access_log_have_defaults_and_flags() {
        let opts = parse(&["--config", "a.yaml"])
            .expect("defaults")
            .run
            .options(None)
            .expect("options");
        assert_eq!(opts.https, Some("0.0.0.0:8443".parse().expect("addr")));
        assert_eq!(opts.drain_delay, Duration::from_secs(5));
        assert_eq!(opts.limits, Limits::default());
        assert_eq!(opts.listen_backlog, listener::LISTEN_BACKLOG);
        assert!(!opts.access_log);
        let opts = parse(&[
            "--config",
            "a.yaml",
            "--https",
            "off",
            "--drain-delay",
            "0s",
            "--access-log",
            "--max-headers",
            "50",
        ])
        .expect("flags")
        .run
        .options(None)
        .expect("options");
        assert_eq!(opts.https, None);
        assert_eq!(opts.drain_delay, Duration::ZERO);
        assert_eq!(opts.limits.max_headers, 50);
        assert!(opts.access_log);
        let backlog = |v: &str| parse(&["--config", "a.yaml", "--listen-backlog", v]);
        let opts = backlog("65535").expect("a backlog").run.options(None);
        assert_eq!(opts.expect("options").listen_backlog, 65535);
        assert!(backlog("0").is_err(), "a listener must queue something");
        assert!(backlog("-1").is_err());
    }

    #[test]
    fn tracing_is_off_unless_asked_and_one_endpoint_turns_it_on() {
        let opts = |args: &[&str]| {
            let mut all = vec!["--config", "a.yaml"];
            all.extend_from_slice(args);
            parse(&all).map(|cli| cli.run.options(None).expect("options").tracing)
        };
        assert_eq!(opts(&[]).expect("defaults"), None);
        assert_eq!(opts(&["--tracing-otlp-endpoint", ""]).expect("blank"), None);
        let on = opts(&["--tracing"]).expect("propagation only");
        assert_eq!(
            on,
            Some(TracingSettings {
                sample_ratio: 1.0,
                otlp_endpoint: None
            })
        );
        let exported = opts(&[
            "--tracing-otlp-endpoint",
            "http://otel-collector:4318",
            "--tracing-sample-ratio",
            "0.25",
        ])
        .expect("export");
        assert_eq!(
            exported,
            Some(TracingSettings {
                sample_ratio: 0.25,
                otlp_endpoint: Some("http://otel-collector:4318".into())
            })
        );
        for bad in [
            &["--tracing-sample-ratio", "1.5"][..],
            &["--tracing-sample-ratio", "ten percent"],
            &["--tracing-otlp-endpoint", "otel-collector:4318"],
        ] {
            let e = opts(bad).expect_err("refused").to_string();
            assert!(e.contains(bad[1]), "{e}");
        }
    }
}
