//! `echo`: the program behind the test image `sluice.test/echo` in the
//! real-cluster tests (`sluice_tests::kube`). It answers every request with
//! its name (`<name>\n` and `x-backend: <name>`), so a test sees which pod
//! answered; `/healthz` is one more path like any other.
//!
//! Usage: `echo --name NAME [--listen ADDR]` (default 0.0.0.0:8080).
//! Runs until SIGTERM or SIGINT. `echo sleep SECONDS` only waits: an exec
//! preStop hook for test pods (images without a shell have no `sleep`).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use sluice_tests::backend::Backend;

fn parse(args: &[String]) -> anyhow::Result<(String, SocketAddr)> {
    let mut name = None;
    let mut listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080));
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag {
            "--name" => name = Some(value()?),
            "--listen" => {
                let v = value()?;
                listen = v
                    .parse()
                    .with_context(|| format!("--listen: not an address: {v:?}"))?;
            }
            other => bail!("unknown argument {other:?} (usage: echo --name NAME [--listen ADDR])"),
        }
    }
    let name = name.context("--name is required")?;
    Ok((name, listen))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sleep") {
        let secs: u64 = args
            .get(1)
            .and_then(|s| s.parse().ok())
            .context("usage: echo sleep SECONDS")?;
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
        return Ok(());
    }
    let (name, listen) = parse(&args)?;
    let backend = Backend::bind(&name, listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("echo {name} listening on {}", backend.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("echo {name}: stopping after {} requests", backend.hits());
    Ok(())
}
