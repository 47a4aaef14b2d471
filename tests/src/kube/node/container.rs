//! One container of a pod as a process: which program an image stands for,
//! its argv and environment as the kubelet builds them, how it is started
//! inside the pod's network namespace with its volumes mounted at their
//! mountPaths, and its httpGet probes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Container, EnvVar, HTTPGetAction, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::super::host::Programs;
use super::volumes::Mount;

/// The program an image or a command's argv[0] stands for: the Sluice
/// images and binaries map to the binaries built from this checkout, the
/// test image `sluice.test/echo` to the echo program.
pub fn program(programs: &Programs, name: &str) -> anyhow::Result<PathBuf> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = base.split([':', '@']).next().unwrap_or(base);
    if name.contains("sluice-controller") || base == "sluice-controller" {
        return Ok(programs.sluice_controller.clone());
    }
    if name.contains("sluice-dataplane") || base == "sluice-dataplane" {
        return Ok(programs.sluice_dataplane.clone());
    }
    if name.starts_with("sluice.test/echo") || base == "echo" {
        return Ok(programs.echo.clone());
    }
    bail!(
        "no program for {name:?}: the node stand-in runs images *sluice-controller*, \
         *sluice-dataplane* and sluice.test/echo"
    )
}

/// argv of a container: the image's program, or `command` (its argv[0]
/// mapped like an image), then `args`; `$(VAR)` expanded from `env`.
pub fn argv(
    programs: &Programs,
    c: &Container,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let command = c.command.clone().unwrap_or_default();
    let (prog, mut rest) = match command.split_first() {
        Some((first, rest)) => (program(programs, first)?, rest.to_vec()),
        None => (
            program(
                programs,
                c.image.as_deref().context("container without image")?,
            )?,
            Vec::new(),
        ),
    };
    rest.extend(c.args.clone().unwrap_or_default());
    Ok((prog, rest.iter().map(|a| expand(a, env)).collect()))
}

/// The kubelet's `$(VAR)` expansion: a defined variable is replaced, an
/// undefined one kept as written, `$$` is a literal `$`.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: the API server's address (as the
/// kubelet's service variables, pointing at the node's forwarder), then
/// `env` in order with fieldRef, secretKeyRef and configMapKeyRef resolved.
pub async fn environment(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    api: SocketAddr,
) -> anyhow::Result<BTreeMap<String, String>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    env.insert(
        "HOSTNAME".into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    env.insert("KUBERNETES_SERVICE_HOST".into(), api.ip().to_string());
    env.insert("KUBERNETES_SERVICE_PORT".into(), api.port().to_string());
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        bail!("envFrom is not supported by the node stand-in");
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in c.env.iter().flatten()
    {
        let v = match (value, value_from) {
            (Some(v), _) => expand(v, &env),
            (None, None) => String::new(),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    super::pod::field_value(pod, &f.field_path)?
                } else if let Some(s) = &from.secret_key_ref {
                    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                        kube::Api::namespaced(client.clone(), ns);
                    let secret = api
                        .get(&s.name)
                        .await
                        .with_context(|| format!("Secret {}", s.name))?;
                    let bytes = secret
                        .data
                        .and_then(|d| d.get(&s.key).cloned())
                        .with_context(|| format!("Secret {} has no key {}", s.name, s.key))?;
                    String::from_utf8(bytes.0)?
                } else if let Some(c) = &from.config_map_key_ref {
                    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                        kube::Api::namespaced(client.clone(), ns);
                    let cm = api
                        .get(&c.name)
                        .await
                        .with_context(|| format!("ConfigMap {}", c.name))?;
                    cm.data
                        .and_then(|d| d.get(&c.key).cloned())
                        .with_context(|| format!("ConfigMap {} has no key {}", c.name, c.key))?
                } else {
                    bail!(
                        "env {name}: only fieldRef, secretKeyRef and configMapKeyRef are supported"
                    );
                }
            }
        };
        env.insert(name.clone(), v);
    }
    Ok(env)
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Directories that never get a tmpfs over them to make room for a
/// mountPath: the system would break, or the volumes' own sources vanish.
const KEEP: &[&str] = &[
    "/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/sys", "/dev", "/tmp",
    "/work", "/root", "/home",
];

/// The command that runs `prog argv` in network namespace `netns` with
/// `env` only, in a mount namespace of its own (the one `ip netns exec`
/// makes) where every mount appears at its mountPath and `hosts` is
/// `/etc/hosts`; as `user` (uid, gid, supplementary group) when set.
/// A mountPath whose parent does not exist on the host gets a tmpfs over
/// its deepest existing ancestor first (`/var/run/sluice`: a tmpfs on
/// `/run`), visible to this process only.
pub fn command(
    netns: &str,
    mounts: &[Mount],
    hosts: &Path,
    user: Option<(u32, u32, Option<u32>)>,
    env: &BTreeMap<String, String>,
    prog: &Path,
    argv: &[String],
) -> anyhow::Result<Command> {
    let mut script = String::from("set -e\n");
    let mut tmpfs: Vec<PathBuf> = Vec::new();
    for m in mounts {
        let target = Path::new(&m.target);
        if !target.is_absolute() {
            bail!("mountPath {:?} is not absolute", m.target);
        }
        if target.exists() {
            continue;
        }
        let base = target
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"))
            .canonicalize()?;
        if KEEP.iter().any(|k| Path::new(k) == base)
            || hosts.starts_with(&base)
            || m.source.starts_with(&base)
        {
            bail!(
                "mountPath {:?}: would need a tmpfs over {}",
                m.target,
                base.display()
            );
        }
        if !tmpfs.contains(&base) {
            tmpfs.push(base);
        }
    }
    tmpfs.sort_by_key(|p| p.components().count());
    for t in &tmpfs {
        script.push_str(&format!(
            "mount -t tmpfs -o mode=755 tmpfs {}\n",
            quote(&t.to_string_lossy())
        ));
    }
    let mut sorted: Vec<&Mount> = mounts.iter().collect();
    sorted.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in sorted {
        let src = quote(&m.source.to_string_lossy());
        let dst = quote(&m.target);
        if m.source.is_dir() {
            script.push_str(&format!("mkdir -p {dst}\n"));
        } else {
            script.push_str(&format!(
                "[ -e {dst} ] || {{ mkdir -p \"$(dirname {dst})\"; : > {dst}; }}\n"
            ));
        }
        script.push_str(&format!("mount --bind {src} {dst}\n"));
        if m.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    }
    script.push_str(&format!(
        "mount --bind {} /etc/hosts\n",
        quote(&hosts.to_string_lossy())
    ));
    script.push_str("exec setpriv --pdeathsig=KILL ");
    if let Some((uid, gid, group)) = user {
        script.push_str(&format!("--reuid={uid} --regid={gid} "));
        match group {
            Some(g) => script.push_str(&format!("--groups={g} ")),
            None => script.push_str("--clear-groups "),
        }
    }
    script.push_str("-- \"$@\"\n");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", netns, "sh", "-c", &script, "sh", "env", "-i",
    ]);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(prog).args(argv);
    Ok(cmd)
}

/// One httpGet probe from the host to the pod: true for a 2xx or 3xx
/// answer within `timeout`.
pub async fn http_get(
    pod_ip: Ipv4Addr,
    c: &Container,
    action: &HTTPGetAction,
    timeout: Duration,
) -> bool {
    let Ok(port) = port_number(c, &action.port) else {
        return false;
    };
    let path = action.path.as_deref().unwrap_or("/");
    let addr = SocketAddr::from((pod_ip, port));
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.28\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let got = s.read(&mut buf[n..]).await.ok()?;
            if got == 0 {
                break;
            }
            n += got;
        }
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(timeout, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A port by number, or by name from the container's ports.
pub fn port_number(c: &Container, port: &IntOrString) -> anyhow::Result<u16> {
    match port {
        IntOrString::Int(n) => Ok(u16::try_from(*n)?),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .with_context(|| format!("container {} has no port named {name}", c.name))
            .and_then(|p| Ok(u16::try_from(p)?)),
    }
}
