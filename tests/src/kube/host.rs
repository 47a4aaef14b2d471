//! What the machine must provide for the real-cluster tests, and the
//! programs they run: etcd from the system, the Kubernetes v1.28.7 binaries
//! unpacked from `../shared/k8s` (checked against its SHA256SUMS), and the
//! Sluice binaries built from this checkout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};

/// Set to 1 to let the real-cluster tests pass without running where the
/// machine cannot run them (not root, no `ip`, no etcd). Never set in CI.
pub const SKIP_VAR: &str = "SLUICE_SKIP_REAL_CLUSTER";

/// The Kubernetes release the binaries in `../shared/k8s` come from.
pub const KUBE_VERSION: &str = "v1.28.7";

/// Where the Kubernetes binaries are, when not in `shared/k8s` beside the
/// checkout (a directory with `*.gz` and `SHA256SUMS`).
pub const BINARIES_VAR: &str = "SLUICE_KUBE_BINARIES";

/// The directory of the `.gz` Kubernetes binaries: `BINARIES_VAR`, or
/// `shared/k8s` in the nearest ancestor of the checkout that has one (a
/// worktree may sit deeper than the main checkout).
pub fn kube_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BINARIES_VAR) {
        let dir = PathBuf::from(dir);
        return dir.join("SHA256SUMS").is_file().then_some(dir);
    }
    let root = repo_root();
    root.ancestors()
        .skip(1)
        .map(|a| a.join("shared/k8s"))
        .find(|d| d.join("SHA256SUMS").is_file())
}

/// The workspace root (the parent of the tests crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory and profile this test binary was built in:
/// `target/<profile>/deps/<test>-<hash>` gives (`target`, `<profile>`).
fn target_and_profile() -> anyhow::Result<(PathBuf, String)> {
    let exe = std::env::current_exe().context("cannot locate the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary outside a cargo target directory")?;
    let target = profile_dir
        .parent()
        .context("test binary outside a cargo target directory")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile directory name")?
        .to_string();
    Ok((target.to_path_buf(), profile))
}

/// Whether the real-cluster tests may be skipped here (`SKIP_VAR=1`).
pub fn skip_requested() -> bool {
    std::env::var(SKIP_VAR).is_ok_and(|v| v == "1")
}

/// What this machine lacks to run a control plane (`needs_node`: and a node
/// stand-in with network namespaces), as one message; `None` when nothing.
pub fn missing(needs_node: bool) -> Option<String> {
    let mut missing = Vec::new();
    if !on_path("etcd") {
        missing.push("etcd (apt-get install -y etcd-server)".to_string());
    }
    if !on_path("setpriv") {
        missing.push("setpriv (util-linux)".to_string());
    }
    if kube_binaries().is_none() {
        missing.push(format!(
            "the Kubernetes binaries (shared/k8s beside the checkout, or {BINARIES_VAR})"
        ));
    }
    if needs_node {
        if !is_root() {
            missing.push("root (network namespaces, a bridge, mounts)".to_string());
        }
        for tool in ["ip", "mount", "python3"] {
            if !on_path(tool) {
                missing.push(format!("the `{tool}` command"));
            }
        }
    }
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "this machine cannot run the real-cluster tests; missing: {} \
             (set {SKIP_VAR}=1 to skip them knowingly)",
            missing.join(", ")
        ))
    }
}

/// `Ok(true)` when the test should run, `Ok(false)` when it may be skipped
/// (`SKIP_VAR=1` and something is missing), an error naming what is missing
/// otherwise.
pub fn check(needs_node: bool) -> anyhow::Result<bool> {
    match missing(needs_node) {
        None => Ok(true),
        Some(msg) if skip_requested() => {
            eprintln!("skipped: {msg}");
            Ok(false)
        }
        Some(msg) => bail!(msg),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Paths of the programs a real-cluster test runs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// kube-apiserver v1.28.7.
    pub apiserver: PathBuf,
    /// kube-controller-manager v1.28.7.
    pub controller_manager: PathBuf,
    /// kubectl v1.28.7.
    pub kubectl: PathBuf,
    /// etcd, from the system.
    pub etcd: PathBuf,
    /// `sluice-controller` built from this checkout.
    pub sluice_controller: PathBuf,
    /// `sluice-dataplane` built from this checkout.
    pub sluice_dataplane: PathBuf,
    /// The echo backend of the tests crate (`tests/src/bin/echo.rs`).
    pub echo: PathBuf,
}

/// The programs, prepared once per test binary: the Kubernetes binaries
/// unpacked into `target/k8s-v1.28.7/` and checked, the Sluice binaries
/// built with `cargo build` (a no-op when they are fresh).
pub fn programs() -> anyhow::Result<Programs> {
    static ONCE: OnceLock<Mutex<Option<Programs>>> = OnceLock::new();
    let cell = ONCE.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = guard.as_ref() {
        return Ok(p.clone());
    }
    let (target, profile) = target_and_profile()?;
    let kube_dir = target.join(format!("k8s-{KUBE_VERSION}"));
    let src = kube_binaries().context("the Kubernetes binaries are missing (shared/k8s)")?;
    unpack(&src, &kube_dir)?;
    build_sluice(&target, &profile)?;
    let bin = target.join(&profile);
    let etcd = which("etcd").context("etcd is not installed (apt-get install -y etcd-server)")?;
    let programs = Programs {
        apiserver: kube_dir.join("kube-apiserver"),
        controller_manager: kube_dir.join("kube-controller-manager"),
        kubectl: kube_dir.join("kubectl"),
        etcd,
        sluice_controller: bin.join("sluice-controller"),
        sluice_dataplane: bin.join("sluice-dataplane"),
        echo: bin.join("echo"),
    };
    *guard = Some(programs.clone());
    Ok(programs)
}

fn which(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Unpacks the `.gz` binaries listed in `src/SHA256SUMS` into `dest`,
/// checking each digest; a binary already there with the right digest is
/// kept. Each file is written under a temporary name and renamed, so test
/// binaries running at once never see half a file.
fn unpack(src: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let sums = std::fs::read_to_string(src.join("SHA256SUMS"))
        .with_context(|| format!("cannot read {}/SHA256SUMS", src.display()))?;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("SHA256SUMS: bad line {line:?}"))?;
        let name = name.trim().trim_start_matches('*');
        let out = dest.join(name);
        if out.exists() && sha256(&out)? == sum {
            continue;
        }
        let tmp = dest.join(format!(".{name}.{}", std::process::id()));
        let file = std::fs::File::create(&tmp)?;
        let status = Command::new("gunzip")
            .arg("-c")
            .arg(src.join(format!("{name}.gz")))
            .stdout(file)
            .status()
            .context("cannot run gunzip")?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            bail!("gunzip {name}.gz failed: {status}");
        }
        let got = sha256(&tmp)?;
        if got != sum {
            let _ = std::fs::remove_file(&tmp);
            bail!("{name}: SHA-256 {got} does not match SHA256SUMS ({sum})");
        }
        Command::new("chmod").arg("+x").arg(&tmp).status()?;
        std::fs::rename(&tmp, &out)?;
    }
    Ok(())
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("cannot run sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("sha256sum {}: no output", path.display()))
}

/// Builds the Sluice binaries (and the echo program) into the target
/// directory and profile of this test binary. `cargo test` builds the
/// binaries of the package under test only, not those of other workspace
/// members, and stale binaries would test old code; cargo's own freshness
/// check makes this cheap when nothing changed. `CARGO` is the cargo that
/// runs the tests.
fn build_sluice(target: &Path, profile: &str) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args([
            "build",
            "--locked",
            "--bin",
            "sluice-controller",
            "--bin",
            "sluice-dataplane",
        ])
        .args([
            "--bin",
            "echo",
            "-p",
            "sluice-controller",
            "-p",
            "sluice-dataplane",
        ])
        .args(["-p", "sluice-tests"])
        .arg("--target-dir")
        .arg(target);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().context("cannot run cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build of the Sluice binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
