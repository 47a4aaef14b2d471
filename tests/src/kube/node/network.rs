//! The node stand-in's network: a bridge with a /24 of 10.213.0.0/16 for
//! this test run, and one network namespace per pod on it through a veth
//! pair. The host reaches every pod address directly (the bridge holds
//! .1), pods reach each other over the bridge, and nothing is routed
//! anywhere else.
//!
//! Runs on one machine do not collide: the /24 is chosen by creating the
//! bridge `slbr<k>` for the first free `k` (creating a link is atomic), and
//! names of namespaces and veths carry `k`. A bridge left by a run that was
//! killed (its alias names a process that is gone) is removed with its
//! namespaces before reuse.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context, bail};

/// The /16 the test runs' /24s come from: unlikely to be used by the host.
const SUPERNET: [u8; 2] = [10, 213];

/// Runs `ip` with `args`; an error with its stderr when it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip`")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The bridge and address pool of one test run.
#[derive(Debug)]
pub struct Network {
    k: u8,
    bridge: String,
    free: Mutex<BTreeSet<u8>>,
    /// The host part handed out last: the next pod gets the next free one
    /// after it, as host-local IPAM does. Handing out the lowest free one
    /// gave a new pod the address of one just deleted, which the other
    /// pods' neighbour caches still map to the dead veth's MAC: the new pod
    /// was unreachable for tens of seconds.
    last: AtomicU8,
}

impl Network {
    /// Creates the bridge with the first free /24 and brings it up.
    pub fn create() -> anyhow::Result<Network> {
        sweep_stale();
        let start = (std::process::id() % 200) as u8;
        for i in 0..200u16 {
            let k = ((u16::from(start) + i) % 200 + 1) as u8;
            let bridge = format!("slbr{k}");
            if ip(&["link", "add", &bridge, "type", "bridge"]).is_err() {
                if reclaim_stale(k) {
                    if ip(&["link", "add", &bridge, "type", "bridge"]).is_err() {
                        continue;
                    }
                } else {
                    continue;
                }
            }
            let net = Network {
                k,
                bridge: bridge.clone(),
                free: Mutex::new((2..=254).collect()),
                last: AtomicU8::new(1),
            };
            let alias = format!("sluice-test pid {}", std::process::id());
            ip(&["link", "set", "dev", &bridge, "alias", &alias])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/24", net.gateway()),
                "dev",
                &bridge,
            ])?;
            ip(&["link", "set", &bridge, "up"])?;
            return Ok(net);
        }
        bail!("no free bridge slbr1..slbr200 (10.213.0.0/16) for this test run")
    }

    /// The host's address on the bridge: where pods reach the API server.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUPERNET[0], SUPERNET[1], self.k, 1)
    }

    /// A network namespace for a pod, with an address from the pool.
    pub fn add_netns(&self) -> anyhow::Result<Netns> {
        let host = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let last = self.last.load(Ordering::Relaxed);
            let next = free
                .range(last.saturating_add(1)..)
                .next()
                .or_else(|| free.iter().next())
                .copied();
            let host = next
                .and_then(|h| free.take(&h))
                .context("the pod address pool (253 addresses) is exhausted")?;
            self.last.store(host, Ordering::Relaxed);
            host
        };
        let name = format!("sl{}-{host}", self.k);
        let veth = format!("sl{}v{host}", self.k);
        let addr = Ipv4Addr::new(SUPERNET[0], SUPERNET[1], self.k, host);
        let ns = Netns {
            name: name.clone(),
            veth: veth.clone(),
            addr,
            host,
        };
        let setup = || -> anyhow::Result<()> {
            ip(&["netns", "add", &name])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ])?;
            ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            Ok(())
        };
        if let Err(e) = setup() {
            self.remove_netns(ns);
            return Err(e);
        }
        Ok(ns)
    }

    /// Deletes a pod's namespace (its veth goes with it) and frees its address.
    pub fn remove_netns(&self, ns: Netns) {
        let _ = ip(&["netns", "del", &ns.name]);
        let _ = ip(&["link", "del", &ns.veth]);
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.host);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        remove_all(self.k);
    }
}

/// Removes bridge `slbr<k>` and the namespaces named after it.
fn remove_all(k: u8) {
    let prefix = format!("sl{k}-");
    for line in ip_out(&["netns", "list"]).lines() {
        if let Some(name) = line.split_whitespace().next()
            && name.starts_with(&prefix)
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
    let _ = ip(&["link", "del", &format!("slbr{k}")]);
}

/// Removes every bridge (and its namespaces) left by a test run that is gone.
fn sweep_stale() {
    for line in ip_out(&["-o", "link", "show", "type", "bridge"]).lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        if let Some(k) = name.strip_prefix("slbr").and_then(|k| k.parse::<u8>().ok()) {
            reclaim_stale(k);
        }
    }
}

/// Removes `slbr<k>` if a test run made it and that process is gone.
fn reclaim_stale(k: u8) -> bool {
    let out = ip_out(&["-d", "link", "show", &format!("slbr{k}")]);
    let Some(pid) = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("alias sluice-test pid "))
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return false;
    };
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    remove_all(k);
    true
}

/// One pod's network namespace.
#[derive(Debug)]
pub struct Netns {
    /// Its name (`ip netns`).
    pub name: String,
    veth: String,
    /// The pod's address.
    pub addr: Ipv4Addr,
    host: u8,
}
