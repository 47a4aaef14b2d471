//! The controller under test runs in its own process — this benchmark's own
//! executable, started again with [`CHILD_ENV`] set — so that its memory and
//! CPU time can be read from `/proc` without the fake API server's and the
//! subscribers' mixed in. It is the same library code the `sluice-controller`
//! binary runs, with a kube client pointed at the fake.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::Context;
use sluice_controller::{Auth, Controller, Options};

/// Set to the fake API server's URL in the child.
pub const CHILD_ENV: &str = "SLUICE_BENCH_CONTROLLER_FOR";

/// Body of the child process: starts the controller on loopback, prints its
/// stream address on stdout, and runs until its stdin closes (the parent
/// exited or is done with it).
pub fn child(api_url: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = kube::Client::try_from(kube::Config::new(api_url.parse()?))?;
        let controller = Controller::start(
            client,
            Options {
                listen: "127.0.0.1:0".parse()?,
                admin: "127.0.0.1:0".parse()?,
                auth: Auth::None,
                ..Options::default()
            },
        )
        .await?;
        let mut out = std::io::stdout();
        writeln!(out, "{}", controller.stream_addr())?;
        out.flush()?;
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        controller.shutdown().await;
        anyhow::Ok(())
    })
}

/// The controller process, from the parent's side. Dropping it ends it.
pub struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its route stream address.
    pub stream_addr: SocketAddr,
}

impl Process {
    /// Starts the child against `api_url` and waits for its address.
    pub fn start(api_url: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .env(CHILD_ENV, api_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the controller process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let stream_addr = line
            .trim()
            .parse()
            .with_context(|| format!("controller process printed {line:?}"))?;
        Ok(Self {
            child,
            stdin,
            stream_addr,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(VmRSS, VmHWM)` in bytes.
    pub fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/PID/status"))?;
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .context("malformed")?
                .parse()?;
            Ok(kb * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// User + system CPU time so far, in seconds (clock ticks of 10 ms, the
    /// Linux default `USER_HZ`).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11).context("no utime")?.parse()?;
        let stime: f64 = fields.get(12).context("no stime")?.parse()?;
        Ok((utime + stime) / 100.0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
