//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager v1.28.7, with RBAC, ServiceAccount token issuing
//! (TokenRequest, TokenReview) and a serving certificate signed by a CA of
//! its own. Everything lives in one temporary directory; dropping the
//! [`ControlPlane`] stops the processes and removes it, also when a test
//! panics (the logs' last lines are printed then).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::host::Programs;
use super::pki::Pki;
use super::process::Proc;
use crate::wait;

/// The ServiceAccount token issuer, also the API audience.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The controllers kube-controller-manager runs: what Deployments, Services
/// and ServiceAccounts need, and the publisher of `kube-root-ca.crt` that
/// every pod's API token volume reads.
pub const CONTROLLERS: &str = "deployment,replicaset,endpointslice,serviceaccount-token,\
namespace,garbagecollector,serviceaccount,root-ca-cert-publisher";

/// A unique directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/sluice-<what>-<pid>-<n>`; first removes those of
    /// processes that are gone (a test run killed before its cleanup).
    pub fn new(what: &str) -> anyhow::Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        sweep(what);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sluice-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sweep(what: &str) {
    let prefix = format!("sluice-{what}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// etcd, kube-apiserver and kube-controller-manager, running.
pub struct ControlPlane {
    /// The programs it runs (and kubectl).
    pub programs: Programs,
    /// Its certificates.
    pub pki: Pki,
    /// Where the API server listens (127.0.0.1).
    pub addr: SocketAddr,
    /// The admin kubeconfig (a `system:masters` token), for kubectl.
    pub kubeconfig: PathBuf,
    admin_token: String,
    apiserver_args: Vec<String>,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    controller_manager: Option<Proc>,
    // Last: removed after the processes are gone.
    dir: TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts the three components and waits until the API server is ready
    /// and the controllers work (the `default` ServiceAccount exists).
    /// `extra_san`: more names or addresses for the serving certificate
    /// (the node stand-in's forwarder address, where pods reach it).
    pub async fn start(programs: Programs, extra_san: &[String]) -> anyhow::Result<ControlPlane> {
        let dir = TempDir::new("k8s")?;
        let mut names = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ];
        names.extend(extra_san.iter().cloned());
        let pki = Pki::generate(dir.path(), &names)?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], api_port));
        let admin_token = format!("admin-{}-{}", std::process::id(), api_port);
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{admin_token},admin,admin-uid,\"system:masters\"\n"),
        )?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(addr, &pki.ca_cert, &admin_token),
        )?;

        let etcd_dir = dir.path().join("etcd");
        let mut etcd_cmd = Command::new(&programs.etcd);
        etcd_cmd
            .arg("--name=default")
            .arg(format!("--data-dir={}", etcd_dir.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            // Test data: no fsync on every write (much faster on slow disks).
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd = Proc::spawn("etcd", &mut etcd_cmd, &dir.path().join("etcd.log"))?;

        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            // The `kubernetes` Service's endpoints would be 127.0.0.1, which
            // Endpoints may not hold; pods reach the API server through the
            // node stand-in instead.
            "--endpoint-reconciler-type=none".to_string(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=Node,RBAC".to_string(),
            format!("--service-account-issuer={ISSUER}"),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            format!("--api-audiences={ISSUER}"),
            "--service-cluster-ip-range=10.96.0.0/16".to_string(),
            "--allow-privileged=true".to_string(),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ];
        let mut cp = ControlPlane {
            programs,
            pki,
            addr,
            kubeconfig,
            admin_token,
            apiserver_args,
            etcd: Some(etcd),
            apiserver: None,
            controller_manager: None,
            dir,
        };
        cp.start_apiserver().await?;

        let mut kcm = Command::new(&cp.programs.controller_manager);
        kcm.arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg(format!(
                "--service-account-private-key-file={}",
                cp.pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", cp.pki.ca_cert.display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        cp.controller_manager = Some(Proc::spawn(
            "kube-controller-manager",
            &mut kcm,
            &cp.dir.path().join("kube-controller-manager.log"),
        )?);
        let client = cp.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        wait::until(
            Duration::from_secs(60),
            "the default ServiceAccount",
            || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten() }
            },
        )
        .await
        .map_err(|e| cp.explain(e))?;
        Ok(cp)
    }

    /// Starts kube-apiserver (again, after [`ControlPlane::stop_apiserver`]:
    /// same port, same data) and waits until it answers `/readyz`.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_some() {
            bail!("the API server is already running");
        }
        let mut cmd = Command::new(&self.programs.apiserver);
        cmd.args(&self.apiserver_args);
        self.apiserver = Some(Proc::spawn(
            "kube-apiserver",
            &mut cmd,
            &self.dir.path().join("kube-apiserver.log"),
        )?);
        let client = self.client().await?;
        let limit = Duration::from_secs(90);
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.apiserver.as_mut().and_then(Proc::exited) {
                return Err(self.explain(anyhow::anyhow!("kube-apiserver exited: {status}")));
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if client
                .request_text(req)
                .await
                .is_ok_and(|t| t.trim() == "ok")
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(self.explain(anyhow::anyhow!(
                    "kube-apiserver not ready (/readyz) after {limit:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after 10 s).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// A client with cluster-admin rights.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let kubeconfig = Kubeconfig::from_yaml(&text)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A client acting as ServiceAccount `namespace/name`, with a token
    /// from the TokenRequest API (audience: the API server's).
    pub async fn client_for(&self, namespace: &str, name: &str) -> anyhow::Result<kube::Client> {
        let token = self.token(namespace, name, &[], 600).await?;
        let text = kubeconfig_yaml(self.addr, &self.pki.ca_cert, &token);
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::from_yaml(&text)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest
    /// API (`audiences` empty: the API server's own).
    pub async fn token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[String],
        expiration_seconds: i64,
    ) -> anyhow::Result<String> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.to_vec(),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let resp: TokenRequest = sas
            .create_subresource("token", name, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
        resp.status
            .map(|s| s.token)
            .context("TokenRequest answered without a token")
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Runs kubectl with the admin kubeconfig; its stdout, or an error with
    /// its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.programs.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .context("cannot run kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The run's temporary directory (logs, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `err` with the last log lines of each component attached.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        let mut msg = String::new();
        for p in [&self.etcd, &self.apiserver, &self.controller_manager]
            .into_iter()
            .flatten()
        {
            msg.push_str(&format!(
                "\n--- {} ({}):\n{}",
                p.name(),
                p.log().display(),
                p.tail(15)
            ));
        }
        err.context(format!("control plane logs:{msg}"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in [&self.etcd, &self.apiserver, &self.controller_manager]
                .into_iter()
                .flatten()
            {
                eprintln!("--- last lines of {}:\n{}", p.name(), p.tail(20));
            }
        }
        for p in [
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ] {
            if let Some(mut p) = p.take() {
                p.stop(Duration::from_secs(5));
            }
        }
    }
}

/// A kubeconfig for `addr` trusting `ca` and sending `token`.
pub fn kubeconfig_yaml(addr: SocketAddr, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
         clusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\n\
         users:\n- name: test\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n",
        ca.display()
    )
}
