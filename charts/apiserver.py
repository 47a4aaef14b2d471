"""A real kube-apiserver on loopback, for lint.py to validate rendered objects.

helm's renders only prove the templates produce YAML; whether Kubernetes
accepts the objects is the API server's call. This starts etcd and the
kube-apiserver v1.28.7 of ../shared/k8s (the oldest Kubernetes the chart
supports) on 127.0.0.1, with a throwaway CA, a serving certificate signed by
it and one static admin token, and answers `kubectl apply --dry-run=server
--validate=strict`: full server-side validation, defaulting and admission of
every object, nothing stored. Everything it starts it stops.

The Gateway API's CRDs come from ../shared/gateway-api (see gateway_api_crds).
The Prometheus Operator's and cert-manager's CRDs are not in this repository
or reachable from here: charts/testdata/external-crds.yaml defines stand-ins
that accept any spec, so for ServiceMonitor, PodMonitor, PrometheusRule and
Certificate only apiVersion, kind and metadata are validated. Everything else
(Deployments, Services, RBAC, PDBs, the HPA, ConfigMaps, Secrets, our CRDs
and BackendPools with their CEL rules) gets the real API server's validation.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

VERSION = "1.28.7"

# The Gateway API release whose standard-channel CRDs (../shared/gateway-api)
# Gateway examples are validated against. Two of its files cannot be installed
# on Kubernetes 1.28, and Sluice needs neither: TLSRoute's schema calls the CEL
# function isIP (Kubernetes 1.30), and the safe-upgrades admission policy is an
# admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (GA in 1.30).
GATEWAY_API = "v1.5.1"
GATEWAY_API_NEEDS_1_30 = ("gateway.networking.k8s.io_tlsroutes.yaml",
                          "gateway.networking.k8s.io_vap_safeupgrades.yaml")


def gateway_api_crds(folder: pathlib.Path) -> list[pathlib.Path]:
    """The Gateway API CRD files of `folder` that Kubernetes 1.28 accepts."""
    files = sorted(p for p in folder.glob("*.yaml") if p.name not in GATEWAY_API_NEEDS_1_30)
    if not any(p.name == "gateway.networking.k8s.io_httproutes.yaml" for p in files):
        raise FileNotFoundError(f"{folder} holds no Gateway API CRDs: set SLUICE_GATEWAY_API_DIR to the folder "
                                f"with the {GATEWAY_API} standard-channel CRDs")
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unpack(k8s_dir: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
    """kube-apiserver and kubectl from ../shared/k8s, unpacked once into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("kube-apiserver", "kubectl"):
        out = cache / name
        if not out.exists():
            src = k8s_dir / f"{name}.gz"
            if not src.exists():
                raise FileNotFoundError(f"{src} missing: set SLUICE_K8S_DIR to the folder with the Kubernetes "
                                        f"{VERSION} binaries (kube-apiserver.gz, kubectl.gz)")
            tmp = out.with_suffix(".tmp")
            with gzip.open(src) as f, open(tmp, "wb") as g:
                shutil.copyfileobj(f, g)
            tmp.chmod(0o755)
            tmp.rename(out)
    return cache


def openssl(*args: str, cwd: pathlib.Path):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class ApiServer:
    """etcd + kube-apiserver on loopback; `kubectl(...)` talks to it as admin."""

    def __init__(self, bin_dir: pathlib.Path):
        self.bin_dir = bin_dir
        self.procs: list[subprocess.Popen] = []
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="sluice-apiserver-"))

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.out", "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs.append(p)
        return p

    def log_tail(self, name: str) -> str:
        path = self.tmp / f"{name}.out"
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""

    def _start(self):
        t = self.tmp
        # A CA, and a serving leaf it signs (clients refuse a CA as a server certificate).
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "1", "-subj", "/CN=sluice-lint-ca", cwd=t)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=kube-apiserver", cwd=t)
        (t / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.crt", "-days", "1", "-extfile", "san.ext", cwd=t)
        openssl("genrsa", "-out", "sa.key", "2048", cwd=t)
        self.token = os.urandom(16).hex()
        (t / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')

        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        etcd = shutil.which("etcd")
        if etcd is None:
            raise FileNotFoundError("etcd not on PATH (Debian: apt-get install etcd-server)")
        self._spawn("etcd", [etcd, "--data-dir", str(t / "etcd"), "--name", "lint",
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"lint=http://127.0.0.1:{peer_port}"])
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--tls-cert-file={t / 'server.crt'}", f"--tls-private-key-file={t / 'server.key'}",
            f"--token-auth-file={t / 'tokens.csv'}", "--authorization-mode=RBAC",
            f"--service-account-key-file={t / 'sa.key'}", f"--service-account-signing-key-file={t / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/24", "--enable-priority-and-fairness=false",
            "--profiling=false", "--v=0",
        ])
        ctx = ssl.create_default_context(cafile=str(t / "ca.crt"))
        deadline = time.monotonic() + 120
        while True:
            for p, name in zip(self.procs, ("etcd", "kube-apiserver")):
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{self.log_tail(name)}")
            try:
                req = urllib.request.Request(f"https://127.0.0.1:{self.port}/readyz",
                                             headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready in 120 s:\n{self.log_tail('kube-apiserver')}")
            time.sleep(0.5)
        (t / "kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "lint",
            "clusters": [{"name": "lint", "cluster": {"server": f"https://127.0.0.1:{self.port}",
                                                      "certificate-authority": str(t / "ca.crt")}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "lint", "context": {"cluster": "lint", "user": "admin"}}],
        }))

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.tmp / 'kubeconfig'}", *args],
                              input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
