"""Checks of the Helm chart and the plain manifests; run through charts/lint.sh.

helm-sdkpy (helm v4 as a shared library) exposes `helm lint` but neither
`helm template` nor a client-only dry run, and its lint results carry no error
text. So the chart is
  * linted with `helm lint`, on the chart and on a copy with non-default values;
  * rendered with a real `helm install` against a fake API server on loopback,
    in this process: discovery for the kinds the chart uses, 404 for every
    object (or a chosen existing one, for `lookup`), objects created as posted.
    That is helm's full install path (schema, CRD step, lookup, render,
    manifest parsing, object building), and its errors do carry text.
The renders are then checked: least-privilege RBAC, the contract between the
two Deployments (URLs, ports, token and certificate sources), the generated
stream certificate (a real TLS handshake with Python's ssl), security
settings, the effect of non-default values, and that deploy/ is the default
render for sluice-system.
The examples' BackendPools are validated against the CRD's OpenAPI schema (and
the backend CEL rules, by hand), the chart's CRDs must equal crds/, and the
Dockerfiles are parsed with buildkit's parser and checked against the
workspace (every member's manifest copied, every needed crate's sources) and
the chart (exposed ports, user 65532).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import fnmatch
import hashlib
import json
import pathlib
import re
import shutil
import ssl
import sys
import tempfile
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tomllib

import dockerfile
import helm_sdkpy
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "sluice"
NAMESPACE = "sluice-system"
RELEASE = "sluice"

# What the controller may do, and nothing more (see the ClusterRole).
CONTROLLER_RULES = [
    (("sluice.io",), ("backendpools", "scalingtriggers"), ("get", "list", "watch")),
    (("sluice.io",), ("backendpools/status", "scalingtriggers/status"), ("get", "patch", "update")),
    (("",), ("services",), ("get", "list", "watch")),
    # TLS certificates of pools; the controller lists type kubernetes.io/tls only.
    (("",), ("secrets",), ("get", "list", "watch")),
    (("discovery.k8s.io",), ("endpointslices",), ("get", "list", "watch")),
    # ScalingTrigger targets, any kind with /scale (as HPA): never their spec.
    (("*",), ("*/scale",), ("get", "patch")),
    (("events.k8s.io",), ("events",), ("create", "patch")),
    (("",), ("events",), ("create", "patch")),
]
# Leader election, namespaced: create any Lease, read and renew only the
# controller's own, as (apiGroups, resources, verbs, resourceNames).
def lease_rules(lease_name: str) -> list:
    return sorted([
        (("coordination.k8s.io",), ("leases",), ("create",), ()),
        (("coordination.k8s.io",), ("leases",), ("get", "update"), (lease_name,)),
    ])


# With auth.mode tokenreview (the default) only: the dataplanes' tokens.
TOKENREVIEW_RULE = (("authentication.k8s.io",), ("tokenreviews",), ("create",))

# The audience the controller asks TokenReview about (controller/src/auth.rs).
TOKEN_AUDIENCE = "sluice"

# Values that differ from every default that changes what is rendered.
NON_DEFAULT = {
    "fullnameOverride": "edge",
    "imagePullSecrets": [{"name": "regcred"}],
    "auth": {"mode": "static", "existingSecret": "my-token"},
    "streamTLS": {"existingSecret": "edge-stream-tls"},
    "metrics": {"scrapeAnnotations": False},
    "controller": {
        "image": {"tag": "dev", "pullPolicy": "Always"},
        "replicas": 3,
        "logFormat": "text",
        "extraArgs": ["--name=edge-controller"],
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "lb", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "lb", "operator": "Exists"}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/a": "b"},
    },
    "dataplane": {
        "image": {"repository": "registry.example.com/dp", "tag": "1.2.3"},
        "replicas": 1,
        "workers": 2,
        "preStopSleepSeconds": 0,
        "gracePeriodSeconds": 20,
        "https": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "adminService": {"enabled": False},
        "service": {
            "type": "LoadBalancer",
            "port": 8000,
            "httpsPort": 8443,
            "nodePort": 30080,
            "httpsNodePort": 30443,
            "externalTrafficPolicy": "Local",
            "loadBalancerClass": "example.com/lb",
            "annotations": {"example.com/lb": "internal"},
        },
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "dataplane"}}}]}},
    },
}

# The other ways to run: cert-manager issues the stream certificate, a static
# token generated by the chart, no HTTPS listener.
CERT_MANAGER = {
    "auth": {"mode": "static"},
    "streamTLS": {"certManager": {"issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"},
                                  "duration": "2160h", "renewBefore": "360h"}},
    "dataplane": {"https": {"enabled": False}},
}

# A plain-HTTP stream (e.g. under a mesh that already encrypts pod traffic).
NO_TLS = {"streamTLS": {"enabled": False}, "auth": {"tokenExpirationSeconds": 7200}}


# ----------------------------------------------------------------- fake API


DISCOVERY = {
    "v1": [("namespaces", "Namespace", False), ("secrets", "Secret", True),
           ("services", "Service", True), ("serviceaccounts", "ServiceAccount", True),
           ("configmaps", "ConfigMap", True), ("pods", "Pod", True), ("events", "Event", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "discovery.k8s.io/v1": [("endpointslices", "EndpointSlice", True)],
    "sluice.io/v1alpha1": [("backendpools", "BackendPool", True), ("scalingtriggers", "ScalingTrigger", True)],
    "cert-manager.io/v1": [("certificates", "Certificate", True), ("issuers", "Issuer", True),
                           ("clusterissuers", "ClusterIssuer", False)],
}


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message}


class FakeKube:
    """Just enough of an API server for `helm install` to render and create.

    `existing` maps request paths (e.g. /api/v1/namespaces/ns/secrets/name) to
    objects returned by GET; everything else is 404 on GET, created on POST.
    CRDs answer AlreadyExists so helm skips waiting for them to be established.
    """

    def __init__(self, existing: dict[str, dict] | None = None):
        self.existing = existing or {}
        self.created: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, *args):
                pass

            def _send(self, code: int, obj: dict):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> dict | None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    return json.loads(raw or b"{}")
                except ValueError:  # protobuf: helm's release record (a Secret)
                    return None

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/version":
                    return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                            "platform": "linux/amd64"})
                if path == "/api":
                    return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": []})
                if path == "/apis":
                    groups = []
                    for gv in DISCOVERY:
                        if "/" in gv:
                            g, v = gv.split("/")
                            ver = {"groupVersion": gv, "version": v}
                            groups.append({"name": g, "versions": [ver], "preferredVersion": ver})
                    return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
                gv = "v1" if path == "/api/v1" else path[len("/apis/"):] if path.startswith("/apis/") else None
                if gv in DISCOVERY:
                    return self._send(200, {
                        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                        "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
                                       "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                                      for n, k, ns in DISCOVERY[gv]]})
                if path in fake.existing:
                    return self._send(200, fake.existing[path])
                parts = path.strip("/").split("/")
                is_list = (parts[0] == "api" and len(parts) in (3, 5)) or (parts[0] == "apis" and len(parts) in (4, 6))
                if is_list:  # e.g. helm's release history
                    return self._send(200, {"kind": "List", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": "1"}, "items": []})
                return self._send(404, _status(404, "NotFound", f"{path} not found"))

            def _write(self, code: int):
                obj = self._body()
                if obj is None:
                    obj = {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "helm-release"}}
                elif self.command == "POST":
                    if obj.get("kind") == "CustomResourceDefinition":
                        return self._send(409, _status(409, "AlreadyExists", "exists"))
                    fake.created.append(copy.deepcopy(obj))
                obj.setdefault("metadata", {}).update(resourceVersion="1", uid="00000000-0000-0000-0000-000000000001")
                return self._send(code, obj)

            def do_POST(self):
                self._write(201)

            def do_PUT(self):
                self._write(200)

            def do_PATCH(self):  # adopting an existing object: answer with it
                self._body()
                path = self.path.split("?")[0]
                if path in fake.existing:
                    return self._send(200, fake.existing[path])
                return self._send(404, _status(404, "NotFound", f"{path} not found"))

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # client-go discovers API groups in parallel

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, namespace: str) -> str:
        port = self.server.server_address[1]
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        })


def render(values: dict | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE,
           existing: dict[str, dict] | None = None, chart: pathlib.Path = CHART) -> tuple[list[dict], str]:
    """`helm install` against the fake; returns the manifest's objects and NOTES."""
    with FakeKube(existing) as fake:
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=fake.kubeconfig(namespace))
        result = asyncio.run(helm_sdkpy.Install(config).run(
            release, str(chart), values=values or {}, wait=False, timeout=60, take_ownership=True))
    docs = [d for d in yaml.safe_load_all(result.get("manifest", "")) if d]
    notes = (result.get("info") or {}).get("notes", "")
    return docs, notes


def helm_lint(values: dict | None = None) -> list[str]:
    """`helm lint` on the chart, or on a copy whose values.yaml has `values` merged in."""
    chart = CHART
    tmp = None
    if values:
        tmp = tempfile.mkdtemp(prefix="sluice-lint-")
        chart = pathlib.Path(tmp) / "sluice"
        shutil.copytree(CHART, chart)
        merged = merge(yaml.safe_load((chart / "values.yaml").read_text()), values)
        (chart / "values.yaml").write_text(yaml.safe_dump(merged))
    try:
        result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart)))
    finally:
        if tmp:
            shutil.rmtree(tmp)
    severity = {1: "INFO", 2: "WARNING", 3: "ERROR"}
    problems = [f"{severity.get(m.get('Severity'), m.get('Severity'))} in {m.get('Path') or 'the chart'}"
                for m in result.get("Messages") or [] if (m.get("Severity") or 0) >= 2]
    if result.get("Errors") and not problems:
        problems.append(f"{len(result['Errors'])} error(s)")
    return problems


# ----------------------------------------------------------------- helpers


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def index(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container(deploy: dict) -> dict:
    return deploy["spec"]["template"]["spec"]["containers"][0]


def flags(c: dict) -> dict[str, str]:
    out = {}
    for a in c.get("args", []):
        k, _, v = a.partition("=")
        out[k] = v
    return out


def mounted_file(deploy: dict, path: str) -> tuple:
    """Where the file at `path` comes from: ("secret", name, key) for a Secret
    key (secret or projected volume), ("serviceAccountToken", audience,
    expirationSeconds) for a projected ServiceAccount token."""
    c = container(deploy)
    vols = {v["name"]: v for v in deploy["spec"]["template"]["spec"].get("volumes", [])}
    for m in c.get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        vol = vols.get(m["name"], {})
        if not path.startswith(prefix) or m.get("subPath"):
            continue
        if "secret" in vol:
            for item in vol["secret"].get("items", []):
                if prefix + item["path"] == path:
                    return "secret", vol["secret"]["secretName"], item["key"]
        for src in (vol.get("projected") or {}).get("sources", []):
            if "secret" in src:
                for item in src["secret"].get("items", []):
                    if prefix + item["path"] == path:
                        return "secret", src["secret"]["name"], item["key"]
            tok = src.get("serviceAccountToken")
            if tok and prefix + tok["path"] == path:
                return "serviceAccountToken", tok.get("audience"), tok.get("expirationSeconds", 3600)
    raise AssertionError(f"{deploy['metadata']['name']}: nothing mounts a Secret key or token at {path}")


def tls_handshake(secret: dict, server_name: str):
    """A TLS handshake in memory: a server with the Secret's tls.crt/tls.key,
    a client trusting only its ca.crt and checking `server_name`, as the
    dataplane does with --ca-file. Raises ssl.SSLError when it fails."""
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="sluice-lint-") as tmp:
        (pathlib.Path(tmp) / "tls.crt").write_text(data["tls.crt"])
        (pathlib.Path(tmp) / "tls.key").write_text(data["tls.key"])
        server.load_cert_chain(pathlib.Path(tmp) / "tls.crt", pathlib.Path(tmp) / "tls.key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    client.load_verify_locations(cadata=data["ca.crt"])
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for key, side in (("c", cli), ("s", srv)):
            if not done[key]:
                try:
                    side.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise Failed(f"TLS handshake for {server_name} did not finish")


class Failed(AssertionError):
    pass


def expect(cond, msg: str):
    if not cond:
        raise Failed(msg)


# ----------------------------------------------------------------- checks


def check_contract(docs: list[dict], release_prefix: str, namespace: str):
    """Invariants every render must hold, whatever the values."""
    objs = index(docs)
    ctl = objs[("Deployment", f"{release_prefix}-controller")]
    dp = objs[("Deployment", f"{release_prefix}-dataplane")]
    ctl_svc = objs[("Service", f"{release_prefix}-controller")]
    dp_svc = objs[("Service", f"{release_prefix}-dataplane")]

    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition"):
            expect(d["metadata"].get("namespace") == namespace,
                   f"{d['kind']} {d['metadata']['name']} is not in namespace {namespace}")
    # Services select their own Deployment's pods.
    for svc, dep in ((ctl_svc, ctl), (dp_svc, dp)):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        expect(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
               f"Service {svc['metadata']['name']} does not select {dep['metadata']['name']}")
        expect(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(),
               f"{dep['metadata']['name']}: selector does not match its pod labels")

    # Controller: ports, probes, RBAC.
    cc, cf = container(ctl), flags(container(ctl))
    dc, df = container(dp), flags(container(dp))
    dps = dp["spec"]["template"]["spec"]
    expect(cf.get("--listen") == "0.0.0.0:8090" and cf.get("--admin") == "0.0.0.0:9902",
           f"controller listen/admin flags: {cf}")
    ports = {p["name"]: p["containerPort"] for p in cc["ports"]}
    expect(ports == {"stream": 8090, "admin": 9902}, f"controller ports {ports}")
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in ctl_svc["spec"]["ports"]}
    expect(svc_ports == {"stream": (8090, "stream"), "admin": (9902, "admin")}, f"controller Service ports {svc_ports}")

    # Auth: the controller accepts exactly what the dataplane presents.
    auth = cf.get("--auth", "")
    dp_token = mounted_file(dp, df.get("--token-file", ""))
    if auth.startswith("tokenreview:"):
        want = f"tokenreview:{namespace}/{dps['serviceAccountName']}"
        expect(auth == want, f"controller --auth {auth!r}: must name the dataplane's ServiceAccount, {want!r}")
        expect(dp_token[0] == "serviceAccountToken" and dp_token[1] == TOKEN_AUDIENCE and dp_token[2] >= 600,
               f"dataplane --token-file must be a projected ServiceAccount token for audience "
               f"{TOKEN_AUDIENCE!r} (expirationSeconds >= 600), got {dp_token}")
        want_rules = CONTROLLER_RULES + [TOKENREVIEW_RULE]
    else:
        expect(auth.startswith("static:/"), f"controller --auth {auth!r}: expected tokenreview:<ns>/<sa> or static:<file>")
        ctl_token = mounted_file(ctl, auth[len("static:"):])
        expect(ctl_token[0] == "secret" and dp_token == ctl_token,
               f"controller and dataplane must read the same Secret key as their token: {ctl_token} vs {dp_token}")
        want_rules = CONTROLLER_RULES  # no TokenReview without tokenreview

    sa_name = ctl["spec"]["template"]["spec"]["serviceAccountName"]
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    cluster_bindings = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    expect(len(cluster_roles) == 1, f"expected one ClusterRole, got {len(cluster_roles)}")
    rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in cluster_roles[0]["rules"])
    expect(rules == sorted(want_rules), f"ClusterRole rules differ from least privilege:\n  {rules}")
    expect(all("resourceNames" not in r for r in cluster_roles[0]["rules"]), "ClusterRole: unexpected resourceNames")
    expect(len(cluster_bindings) == 1
           and cluster_bindings[0]["roleRef"]["name"] == cluster_roles[0]["metadata"]["name"]
           and cluster_bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
           "the ClusterRoleBinding must bind the ClusterRole to the controller's ServiceAccount only")

    # Leader election: one namespaced Role for the controller's own Lease.
    expect("--leader-elect" in cc.get("args", []), "controller: --leader-elect")
    lease_name = cf.get("--lease-name", "")
    expect(lease_name == f"{release_prefix}-controller", f"controller --lease-name {lease_name!r}")
    env = {e["name"]: e for e in cc.get("env", [])}
    expect(env.get("POD_NAMESPACE", {}).get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.namespace"}},
           "controller: POD_NAMESPACE from the downward API (the Lease's namespace)")
    roles = [d for d in docs if d["kind"] == "Role"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    expect(len(roles) == 1 and len(bindings) == 1,
           f"expected one Role and one RoleBinding, got {len(roles)}, {len(bindings)}")
    role_rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]),
                         tuple(r.get("resourceNames", []))) for r in roles[0]["rules"])
    expect(role_rules == lease_rules(lease_name),
           f"leader-election Role rules differ from least privilege:\n  {role_rules}")
    expect(bindings[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[0]["metadata"]["name"]}
           and bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
           "the RoleBinding must bind the leader-election Role to the controller's ServiceAccount only")
    expect(("ServiceAccount", sa_name) in objs, f"controller ServiceAccount {sa_name} missing")

    # Dataplane: no API access at all (a projected token for audience sluice
    # is no API credential), and its ServiceAccount exists (TokenRequest needs it).
    dp_sa = objs.get(("ServiceAccount", dps["serviceAccountName"]))
    expect(dp_sa is not None, "dataplane ServiceAccount missing")
    expect(dp_sa.get("automountServiceAccountToken") is False and dps.get("automountServiceAccountToken") is False,
           "dataplane must not mount a ServiceAccount API token")
    for v in dps.get("volumes", []):
        for src in (v.get("projected") or {}).get("sources", []):
            aud = (src.get("serviceAccountToken") or {}).get("audience")
            expect(src.get("serviceAccountToken") is None or aud == TOKEN_AUDIENCE,
                   f"dataplane volume {v['name']}: a projected token for audience {aud!r} (API access)")

    # Stream TLS: the controller serves the cert and key of the Secret whose
    # ca.crt the dataplane trusts, for the Service name the dataplane dials.
    host = f"{ctl_svc['metadata']['name']}.{namespace}.svc:8090"
    if "--tls-cert" in cf or "--tls-key" in cf:
        cert, key = mounted_file(ctl, cf.get("--tls-cert", "")), mounted_file(ctl, cf.get("--tls-key", ""))
        expect(cert[0] == "secret" and cert[2] == "tls.crt", f"--tls-cert must be a Secret's tls.crt, got {cert}")
        tls_secret = cert[1]
        expect(key == ("secret", tls_secret, "tls.key"), f"--tls-key must be tls.key of {tls_secret}, got {key}")
        expect(df.get("--controller") == f"https://{host}",
               f"dataplane --controller {df.get('--controller')!r}, want https://{host}")
        ca = mounted_file(dp, df.get("--ca-file", ""))
        expect(ca == ("secret", tls_secret, "ca.crt"),
               f"dataplane --ca-file must be ca.crt of {tls_secret}, the controller's certificate Secret; got {ca}")
    else:
        expect(df.get("--controller") == f"http://{host}",
               f"dataplane --controller {df.get('--controller')!r}, want http://{host}")
        expect("--ca-file" not in df, "--ca-file without a TLS stream")

    # Dataplane: listeners, ports, Service, shutdown.
    https = df.get("--https")
    expect(df.get("--http") == "0.0.0.0:8080" and df.get("--admin") == "0.0.0.0:9901"
           and https in ("0.0.0.0:8443", "off"), f"dataplane flags {df}")
    state = df.get("--state-dir")
    expect(state and any(m["mountPath"] == state for m in dc["volumeMounts"]), "--state-dir must be a mounted volume")
    ports = {p["name"]: p["containerPort"] for p in dc["ports"]}
    want_ports = {"http": 8080, "admin": 9901} | ({"https": 8443} if https != "off" else {})
    expect(ports == want_ports, f"dataplane ports {ports}, want {want_ports} with --https={https}")
    want_targets = ["http"] + (["https"] if https != "off" else [])
    expect([p["targetPort"] for p in dp_svc["spec"]["ports"]] == want_targets,
           f"the dataplane Service must expose {want_targets} only (admin stays internal)")
    grace = df.get("--grace-period", "10s")
    expect(re.fullmatch(r"\d+s", grace), f"--grace-period {grace!r}")
    pre = ((dc.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    expect(dps["terminationGracePeriodSeconds"] > int(grace[:-1]) + pre,
           "terminationGracePeriodSeconds must exceed preStop sleep + --grace-period")

    # Both: each flag once (clap refuses a repeat), probes on the admin port,
    # hardened security contexts.
    for dep in (ctl, dp):
        c, spec, n = container(dep), dep["spec"]["template"]["spec"], dep["metadata"]["name"]
        names = [a.partition("=")[0] for a in c.get("args", [])]
        expect(len(names) == len(set(names)), f"{n}: a flag is given twice: {names}")
        expect(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, f"{n}: liveness probe")
        expect(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, f"{n}: readiness probe")
        psc, sc = spec["securityContext"], c["securityContext"]
        expect(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532
               and psc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{n}: pod securityContext {psc}")
        expect(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
               and sc.get("capabilities", {}).get("drop") == ["ALL"], f"{n}: container securityContext {sc}")
        expect("limits" in c["resources"] and "requests" in c["resources"], f"{n}: resources")


def check_defaults(docs: list[dict], notes: str):
    check_contract(docs, "sluice", NAMESPACE)
    objs = index(docs)
    want = {("Deployment", "sluice-controller"), ("Deployment", "sluice-dataplane"),
            ("Service", "sluice-controller"), ("Service", "sluice-dataplane"), ("Service", "sluice-dataplane-admin"),
            ("ServiceAccount", "sluice-controller"), ("ServiceAccount", "sluice-dataplane"),
            ("ClusterRole", "sluice-controller"), ("ClusterRoleBinding", "sluice-controller"),
            ("Role", "sluice-controller-leader-election"), ("RoleBinding", "sluice-controller-leader-election"),
            ("Secret", "sluice-stream-tls"), ("PodDisruptionBudget", "sluice-dataplane")}
    expect(set(objs) == want, f"default objects differ: extra {set(objs) - want}, missing {want - set(objs)}")
    ctl, dp = objs[("Deployment", "sluice-controller")], objs[("Deployment", "sluice-dataplane")]
    expect(ctl["spec"]["replicas"] == 1 and dp["spec"]["replicas"] == 2, "replicas: controller 1, dataplane 2")
    expect(container(ctl)["image"] == "ghcr.io/sluice-lb/sluice-controller:0.1.0", container(ctl)["image"])
    expect(container(dp)["image"] == "ghcr.io/sluice-lb/sluice-dataplane:0.1.0", container(dp)["image"])
    expect(objs[("Service", "sluice-dataplane")]["spec"]["type"] == "ClusterIP", "dataplane Service type")
    expect(objs[("Service", "sluice-dataplane")]["spec"]["ports"][0]["port"] == 80, "dataplane Service port 80")
    expect(objs[("Service", "sluice-dataplane")]["spec"]["ports"][1] == {
        "name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}, "dataplane Service port 443")
    expect(flags(container(ctl))["--auth"] == "tokenreview:sluice-system/sluice-dataplane"
           and mounted_file(dp, "/var/run/sluice/token") == ("serviceAccountToken", "sluice", 3600),
           "default auth: TokenReview of the dataplanes' projected tokens (1 h)")
    check_generated_tls(docs, "sluice", NAMESPACE)
    for dep, port in ((ctl, "9902"), (dp, "9901")):
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        expect(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == port,
               f"{dep['metadata']['name']}: Prometheus scrape annotations")
    anti = dp["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    expect(anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"]
           == "kubernetes.io/hostname", "dataplane: preferred anti-affinity across nodes")
    expect(objs[("PodDisruptionBudget", "sluice-dataplane")]["spec"]["minAvailable"] == 1, "PDB minAvailable 1")
    expect("port-forward svc/sluice-dataplane 8080:80" in notes and "kubectl apply -f" in notes,
           "NOTES tell how to apply a pool and reach the dataplane")


def check_generated_tls(docs: list[dict], prefix: str, namespace: str):
    """The generated stream Secret: type kubernetes.io/tls, a certificate the
    dataplanes accept for every name of the controller Service, and a CA
    checksum on the dataplane pods so a new CA rolls them."""
    objs = index(docs)
    secret = objs[("Secret", f"{prefix}-stream-tls")]
    expect(secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"},
           f"stream TLS Secret: type {secret['type']}, keys {sorted(secret['data'])}")
    svc = f"{prefix}-controller"
    for name in (svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"):
        try:
            tls_handshake(secret, name)
        except ssl.SSLError as e:
            raise Failed(f"the generated certificate does not verify for {name}: {e}") from e
    try:
        tls_handshake(secret, f"{svc}.elsewhere.svc")
        raise Failed("the generated certificate verifies for a name it must not carry")
    except ssl.SSLError:
        pass
    dp = objs[("Deployment", f"{prefix}-dataplane")]
    ann = dp["spec"]["template"]["metadata"].get("annotations", {})
    want = hashlib.sha256(secret["data"]["ca.crt"].encode()).hexdigest()
    expect(ann.get("checksum/stream-ca") == want,
           f"dataplane checksum/stream-ca {ann.get('checksum/stream-ca')} is not the rendered CA's ({want}): "
           "the Secret and the Deployment saw different certificates")


def check_non_default(docs: list[dict], notes: str):
    check_contract(docs, "edge", "edge-ns")
    objs = index(docs)
    ctl, dp = objs[("Deployment", "edge-controller")], objs[("Deployment", "edge-dataplane")]
    kinds = {k for k, _ in objs}
    expect("Secret" not in kinds, "auth.existingSecret, streamTLS.existingSecret: no Secret is generated")
    expect(flags(container(ctl))["--auth"] == "static:/var/run/sluice/token", "auth.mode static")
    expect(mounted_file(ctl, "/var/run/sluice/tls.crt") == ("secret", "edge-stream-tls", "tls.crt"),
           "streamTLS.existingSecret is the controller's certificate")
    expect("checksum/stream-ca" not in (dp["spec"]["template"]["metadata"].get("annotations") or {}),
           "no CA checksum for a Secret the chart does not render")
    expect("PodDisruptionBudget" not in kinds, "no PDB with one dataplane replica")
    expect(("Service", "edge-dataplane-admin") not in objs, "adminService.enabled=false")
    expect(mounted_file(dp, "/var/run/sluice/token") == ("secret", "my-token", "token"), "existingSecret is mounted")
    expect(container(ctl)["image"] == "ghcr.io/sluice-lb/sluice-controller:dev", container(ctl)["image"])
    expect(container(ctl)["imagePullPolicy"] == "Always", "controller pullPolicy")
    expect(ctl["spec"]["replicas"] == 3, "controller replicas: several, electing a leader")
    expect(container(dp)["image"] == "registry.example.com/dp:1.2.3", container(dp)["image"])
    cf, df = flags(container(ctl)), flags(container(dp))
    expect(cf.get("--log-format") == "text" and cf.get("--name") == "edge-controller", f"controller args {cf}")
    expect(df.get("--workers") == "2" and df.get("--grace-period") == "20s", f"dataplane args {df}")
    expect({"name": "EXTRA", "value": "1"} in container(ctl)["env"], "controller extraEnv")
    cs = ctl["spec"]["template"]["spec"]
    expect(cs["nodeSelector"] == {"kubernetes.io/os": "linux"} and cs["tolerations"][0]["key"] == "dedicated"
           and "nodeAffinity" in cs["affinity"] and cs["priorityClassName"] == "system-cluster-critical",
           "controller scheduling values")
    expect(cs["imagePullSecrets"] == [{"name": "regcred"}], "imagePullSecrets")
    expect(ctl["spec"]["template"]["metadata"].get("annotations") == {"example.com/a": "b"},
           "scrapeAnnotations=false keeps only the user's pod annotations")
    ds = dp["spec"]["template"]["spec"]
    expect("lifecycle" not in container(dp), "preStopSleepSeconds=0: no preStop hook")
    expect(ds["terminationGracePeriodSeconds"] == 25, f"terminationGracePeriodSeconds {ds['terminationGracePeriodSeconds']}")
    expect(list(ds["affinity"]) == ["podAntiAffinity"]
           and "requiredDuringSchedulingIgnoredDuringExecution" in ds["affinity"]["podAntiAffinity"],
           "dataplane.affinity replaces the default anti-affinity")
    svc = objs[("Service", "edge-dataplane")]
    expect(svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
           and svc["spec"]["loadBalancerClass"] == "example.com/lb"
           and svc["spec"]["ports"] == [
               {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP", "nodePort": 30080},
               {"name": "https", "port": 8443, "targetPort": "https", "protocol": "TCP", "nodePort": 30443}]
           and svc["metadata"]["annotations"] == {"example.com/lb": "internal"}, f"dataplane Service {svc['spec']}")
    expect("loadBalancer.ingress" in notes, "NOTES for a LoadBalancer Service")


def check_cert_manager(docs: list[dict], notes: str):
    """cert-manager issues the stream certificate; static token generated."""
    check_contract(docs, "sluice", NAMESPACE)
    objs = index(docs)
    cert = objs.get(("Certificate", "sluice-controller"))
    expect(cert is not None and cert["apiVersion"] == "cert-manager.io/v1", "no cert-manager Certificate rendered")
    ctl, dp = objs[("Deployment", "sluice-controller")], objs[("Deployment", "sluice-dataplane")]
    spec = cert["spec"]
    expect(mounted_file(ctl, "/var/run/sluice/tls.crt")[1] == spec["secretName"] == "sluice-controller-tls",
           f"the controller must serve the Certificate's Secret {spec['secretName']}")
    svc = f"sluice-controller.{NAMESPACE}.svc"
    expect(set(spec["dnsNames"]) == {"sluice-controller", f"sluice-controller.{NAMESPACE}", svc, f"{svc}.cluster.local"},
           f"Certificate dnsNames {spec['dnsNames']}")
    expect(spec["issuerRef"] == {"name": "ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"}
           and spec["duration"] == "2160h" and spec["renewBefore"] == "360h", f"Certificate spec {spec}")
    expect(("Secret", "sluice-stream-tls") not in objs, "cert-manager: no generated stream Secret")
    expect("checksum/stream-ca" not in (dp["spec"]["template"]["metadata"].get("annotations") or {}),
           "cert-manager: no CA checksum (the chart never sees the CA)")
    token = base64.b64decode(objs[("Secret", "sluice-token")]["data"]["token"]).decode()
    expect(re.fullmatch(r"[A-Za-z0-9]{48}", token), "generated token: 48 alphanumerics")
    expect(flags(container(dp))["--https"] == "off", "dataplane.https.enabled=false: --https=off")


def check_no_tls(docs: list[dict], notes: str):
    check_contract(docs, "sluice", NAMESPACE)
    objs = index(docs)
    ctl, dp = objs[("Deployment", "sluice-controller")], objs[("Deployment", "sluice-dataplane")]
    expect(not any(k == "Secret" for k, _ in objs), "streamTLS off, tokenreview: no Secret at all")
    expect("volumes" not in ctl["spec"]["template"]["spec"], "streamTLS off, tokenreview: the controller mounts nothing")
    expect(mounted_file(dp, "/var/run/sluice/token")[2] == 7200, "auth.tokenExpirationSeconds")
    expect("plain HTTP" in notes, "NOTES warn that the stream is not encrypted")


def existing_secret(name: str, data: dict, type_: str) -> dict[str, dict]:
    """An object the fake API server holds, as a release's earlier install left it."""
    return {f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}": {
        "kind": "Secret", "apiVersion": "v1", "type": type_, "data": data,
        "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": "7",
                     "labels": {"app.kubernetes.io/managed-by": "Helm"},
                     "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}}}}


def check_token_kept():
    """A second install/upgrade keeps the token of the existing Secret."""
    kept = base64.b64encode(b"kept-token").decode()
    docs, _ = render({"auth": {"mode": "static"}}, existing=existing_secret("sluice-token", {"token": kept}, "Opaque"))
    got = index(docs)[("Secret", "sluice-token")]["data"]["token"]
    expect(got == kept, f"token regenerated ({got!r}) although the Secret exists")


def check_tls_kept():
    """A second install/upgrade keeps the generated CA and certificate, and
    the dataplanes' CA checksum with them (no restart)."""
    first, _ = render()
    data = index(first)[("Secret", "sluice-stream-tls")]["data"]
    docs, _ = render(existing=existing_secret("sluice-stream-tls", data, "kubernetes.io/tls"))
    got = index(docs)[("Secret", "sluice-stream-tls")]["data"]
    expect(got == data, "stream certificate regenerated although the Secret exists")
    check_generated_tls(docs, "sluice", NAMESPACE)
    ann = lambda d: index(d)[("Deployment", "sluice-dataplane")]["spec"]["template"]["metadata"]["annotations"]
    expect(ann(docs)["checksum/stream-ca"] == ann(first)["checksum/stream-ca"], "CA checksum changed on upgrade")
    fresh, _ = render()
    expect(index(fresh)[("Secret", "sluice-stream-tls")]["data"]["ca.crt"] != data["ca.crt"],
           "without an existing Secret a new CA is generated")


def check_rejected(values: dict, fragment: str):
    try:
        render(values)
    except helm_sdkpy.HelmError as e:
        expect(fragment in str(e), f"rejected, but not for {fragment!r}: {e}")
        return
    raise Failed(f"values {values} were accepted")


NORMALIZE_DROP_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def normalize(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    metas = [obj["metadata"]]
    tmpl = obj.get("spec", {}).get("template") if isinstance(obj.get("spec"), dict) else None
    if tmpl:
        metas.append(tmpl["metadata"])
    for m in metas:
        for k in NORMALIZE_DROP_LABELS:
            (m.get("labels") or {}).pop(k, None)
    if tmpl:  # follows the random generated CA; deploy/ users bring their own
        (tmpl["metadata"].get("annotations") or {}).pop("checksum/stream-ca", None)
    return obj


def diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}.{k}: only in deploy/")
            elif k not in b:
                out.append(f"{path}.{k}: only in the chart")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: chart {json.dumps(a)} != deploy/ {json.dumps(b)}"]


def load_yaml_dir(folder: pathlib.Path, pattern: str) -> list[tuple[pathlib.Path, dict]]:
    out = []
    for path in sorted(folder.glob(pattern)):
        for d in yaml.safe_load_all(path.read_text()):
            if d is None:
                continue
            missing = [k for k in ("apiVersion", "kind") if not d.get(k)]
            if not (d.get("metadata") or {}).get("name"):
                missing.append("metadata.name")
            expect(not missing, f"{path.relative_to(ROOT)}: a {d.get('kind', '?')} lacks {', '.join(missing)}")
            out.append((path, d))
    return out


def check_deploy_matches(chart_docs: list[dict]):
    deployed = load_yaml_dir(ROOT / "deploy", "*.yaml")
    by_key = {}
    for path, d in deployed:
        key = (d["kind"], d["metadata"]["name"])
        expect(key not in by_key, f"deploy/: {key} defined twice")
        by_key[key] = d
    ns = by_key.pop(("Namespace", NAMESPACE), None)
    expect(ns is not None, f"deploy/ must create namespace {NAMESPACE}")
    first = sorted((ROOT / "deploy").glob("*.yaml"))[0]
    expect(any(d["kind"] == "Namespace" for d in yaml.safe_load_all(first.read_text()) if d),
           f"{first.name} sorts first, so it must hold the Namespace")
    # Secrets (the generated stream certificate; a static token) are what
    # deploy/ leaves out on purpose: a key committed to the repository would be
    # public, and re-applying the folder would reset a rotated one. The
    # comments in deploy/ (and the README) have users create them by hand.
    chart = {(d["kind"], d["metadata"]["name"]): d for d in chart_docs if d["kind"] != "Secret"}
    secrets = [k for k in by_key if k[0] == "Secret"]
    expect(not secrets, f"deploy/ must not ship Secrets (they would be public): {secrets}")
    text = "\n".join(p.read_text() for p in sorted((ROOT / "deploy").glob("*.yaml")))
    expect("PRIVATE KEY" not in text and "checksum/stream-ca" not in text,
           "deploy/ must not carry key material or the chart's CA checksum")
    for d in chart_docs:
        if d["kind"] == "Secret":
            expect(f"secret generic {d['metadata']['name']}" in text or f"secretName: {d['metadata']['name']}" in text,
                   f"deploy/ must tell how to create Secret {d['metadata']['name']}")
    expect(set(chart) == set(by_key),
           f"deploy/ and the default render differ in objects: only in the chart {set(chart) - set(by_key)}, "
           f"only in deploy/ {set(by_key) - set(chart)}")
    problems = [f"{k[0]} {k[1]}{line}" for k in sorted(chart)
                for line in diff(normalize(chart[k]), normalize(by_key[k]))]
    expect(not problems, "deploy/ is not the chart's default render:\n  " + "\n  ".join(problems))


def validate(value, schema: dict, path: str) -> list[str]:
    """The parts of Kubernetes' structural-schema validation examples can trip on."""
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null"]
    if schema.get("x-kubernetes-int-or-string"):
        return [] if isinstance(value, (int, str)) and not isinstance(value, bool) else [f"{path}: int or string"]
    t, errs = schema.get("type"), []
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool, "number": (int, float)}
    if t and (not isinstance(value, types[t]) or (t in ("integer", "number") and isinstance(value, bool))):
        return [f"{path}: expected {t}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if t == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errs.append(f"{path}: length")
    if t in ("integer", "number") and not (schema.get("minimum", -1e300) <= value <= schema.get("maximum", 1e300)):
        errs.append(f"{path}: {value} out of range")
    if t == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 30):
            errs.append(f"{path}: {len(value)} items")
        for i, item in enumerate(value):
            errs += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if t == "object":
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}.{k}: required")
        for k, v in value.items():
            if k in props:
                errs += validate(v, props[k], f"{path}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += validate(v, schema["additionalProperties"], f"{path}.{k}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errs.append(f"{path}.{k}: unknown field")
    return errs


def check_examples():
    crds = {}
    for _, crd in load_yaml_dir(ROOT / "crds", "*.yaml"):
        for v in crd["spec"]["versions"]:
            crds[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    examples = load_yaml_dir(ROOT / "deploy" / "examples", "*.yaml")
    pools = [(p, d) for p, d in examples if d["kind"] == "BackendPool"]
    expect(len(pools) >= 2, "deploy/examples: expected at least two BackendPools")
    for path, d in examples:
        key = (d["apiVersion"], d["kind"])
        if key in crds:
            body = {k: v for k, v in d.items() if k not in ("apiVersion", "kind", "metadata")}
            errs = validate(body, crds[key], d["metadata"]["name"])
            expect(not errs, f"{path.relative_to(ROOT)}: {'; '.join(errs)}")
            if d["kind"] == "BackendPool":  # the fields this release implements end to end
                extra = set(d["spec"]) - {"hosts", "pathPrefix", "backends", "algorithm"}
                extra |= {k for b in d["spec"]["backends"] for k in b} - {"service", "port", "address", "weight"}
                expect(not extra, f"{path.relative_to(ROOT)}: examples use only this release's fields, not {extra}")
            for b in d["spec"].get("backends", []):  # the CEL rules, by hand
                expect(("service" in b) != ("address" in b) and ("service" not in b or "port" in b)
                       and ("address" not in b or "port" not in b),
                       f"{path.relative_to(ROOT)}: backend {b} breaks the service/address/port rules")
        if d["kind"] == "Service":
            expect(all(p.get("name") for p in d["spec"]["ports"]), f"{path.name}: Service ports need names")


def check_crd_copies():
    src = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    expect(src, "crds/*.yaml missing")
    expect(src == copies, f"charts/sluice/crds/ holds {copies}, crds/ holds {src}")
    for name in src:
        expect((ROOT / "crds" / name).read_bytes() == (CHART / "crds" / name).read_bytes(),
               f"charts/sluice/crds/{name} differs from crds/{name}")


def workspace() -> tuple[list[str], dict[str, list[str]]]:
    """Workspace members, and each member's workspace (path) dependencies."""
    def load(path: pathlib.Path) -> dict:
        return tomllib.loads(path.read_text())
    root = load(ROOT / "Cargo.toml")
    members = root["workspace"]["members"]
    paths = {name: spec["path"] for name, spec in root["workspace"]["dependencies"].items()
             if isinstance(spec, dict) and "path" in spec}
    deps = {}
    for m in members:
        manifest = load(ROOT / m / "Cargo.toml")
        deps[manifest["package"]["name"]] = [paths[d] for d in manifest.get("dependencies", {}) if d in paths]
        deps[m] = deps[manifest["package"]["name"]]
    return members, deps


def dockerignored(path: str) -> bool:
    """Whether .dockerignore excludes `path` (plain names, globs and **/ prefixes)."""
    parts = pathlib.PurePosixPath(path).parts
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pat = line.strip()
        if not pat or pat.startswith("#"):
            continue
        anywhere, pat = pat.startswith("**/"), pat.removeprefix("**/").rstrip("/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:i]), pat) or (anywhere and fnmatch.fnmatchcase(parts[i - 1], pat)):
                return True
    return False


def check_dockerfile(component: str, chart_docs: list[dict]):
    name = f"Dockerfile.{component}"
    binary, crate = f"sluice-{component}", component
    cmds = dockerfile.parse_file(str(ROOT / name))  # buildkit's own parser
    froms = [i for i, c in enumerate(cmds) if c.cmd == "FROM"]
    expect(len(froms) >= 2, f"{name}: expected a multi-stage build")
    expect(cmds[froms[0]].value[0] == "rust:1-bookworm", f"{name}: build stage FROM rust:1-bookworm")
    final = cmds[froms[-1]:]
    expect(cmds[froms[-1]].value[0] in ("gcr.io/distroless/cc-debian12:nonroot", "debian:bookworm-slim"),
           f"{name}: runtime base {cmds[froms[-1]].value[0]}")
    users = [c.value[0] for c in final if c.cmd == "USER"]
    expect(users and users[-1].split(":")[0] == "65532", f"{name}: runtime USER must be 65532, got {users}")
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    expect(entry and entry[-1].value[0].endswith("/" + binary) and entry[-1].json, f"{name}: exec-form ENTRYPOINT {binary}")
    runs = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN")
    build = re.search(rf"cargo build (--release|--profile [\w-]+) --locked -p {binary}(\s|;|$)", runs)
    expect(build is not None, f"{name}: cargo build --release (or --profile P) --locked -p {binary}")

    exposed = sorted(int(p.split("/")[0]) for c in final if c.cmd == "EXPOSE" for p in c.value)
    dep = index(chart_docs)[("Deployment", f"sluice-{component}")]
    ports = sorted(p["containerPort"] for p in container(dep)["ports"])
    expect(exposed == ports, f"{name}: EXPOSE {exposed} but the chart's container ports are {ports}")

    copied = []
    for c in cmds:
        if c.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                expect((ROOT / src).exists(), f"{name}: COPY source {src} does not exist")
                expect(not dockerignored(src), f"{name}: COPY source {src} is excluded by .dockerignore")
                copied.append(src.rstrip("/"))
    members, deps = workspace()
    for m in members:
        expect(f"{m}/Cargo.toml" in copied, f"{name}: workspace member {m}/Cargo.toml is not copied")
    expect(re.search(r"for crate in ([\w ]+); do", runs) and
           sorted(re.search(r"for crate in ([\w ]+); do", runs).group(1).split()) == sorted(members),
           f"{name}: the stub loop must cover the workspace members {members}")
    needed, todo = set(), [crate]
    while todo:
        m = todo.pop()
        if m not in needed:
            needed.add(m)
            todo += deps.get(m, [])
    for m in sorted(needed):
        expect(f"{m}/src" in copied, f"{name}: {m}/src is needed by {binary} but not copied")
    expect(any(d.rstrip("/") in ("target", "**/target") for d in
               (ROOT / ".dockerignore").read_text().split()), ".dockerignore must exclude target/")


def main() -> int:
    rendered: dict[str, tuple[list[dict], str]] = {}

    def defaults():
        rendered["defaults"] = render()
        check_defaults(*rendered["defaults"])

    def non_default():
        check_non_default(*render(NON_DEFAULT, release="edge", namespace="edge-ns"))

    def deploy_matches():
        expect("defaults" in rendered, "no default render to compare with")
        check_deploy_matches(rendered["defaults"][0])

    def lint(values=None):
        def run():
            problems = helm_lint(values)
            expect(not problems, "; ".join(problems) + " (helm-sdkpy drops lint error texts: "
                   "the render checks below show helm's message)")
        return run

    checks = [
        ("crds: chart copies identical to crds/", check_crd_copies),
        ("helm lint (default values)", lint()),
        ("helm lint (non-default values)", lint(NON_DEFAULT)),
        ("helm lint (cert-manager values)", lint(CERT_MANAGER)),
        ("render: default values", defaults),
        ("render: non-default values", non_default),
        ("render: cert-manager Certificate, static token, no HTTPS",
         lambda: check_cert_manager(*render(CERT_MANAGER))),
        ("render: plain-HTTP stream", lambda: check_no_tls(*render(NO_TLS))),
        ("render: existing token Secret is kept", check_token_kept),
        ("render: generated stream certificate is kept", check_tls_kept),
        ("render: schema rejects an unknown value", lambda: check_rejected({"dataplane": {"replica": 3}}, "additional properties 'replica'")),
        ("render: schema rejects auth.mode none", lambda: check_rejected({"auth": {"mode": "none"}}, "/auth/mode")),
        ("render: schema rejects a cert-manager issuerRef without a name",
         lambda: check_rejected({"streamTLS": {"certManager": {"issuerRef": {"kind": "Issuer"}}}},
                                "/streamTLS/certManager/issuerRef")),
        ("render: auth.existingSecret needs auth.mode static",
         lambda: check_rejected({"auth": {"existingSecret": "t"}}, "set auth.mode=static")),
        ("render: two sources of the stream certificate are refused",
         lambda: check_rejected({"streamTLS": {"existingSecret": "s", "certManager": {"issuerRef": {"name": "i"}}}},
                                "exclude each other")),
        ("render: schema rejects a bad Service type",
         lambda: check_rejected({"dataplane": {"service": {"type": "Ingress"}}}, "/dataplane/service/type")),
        ("deploy/ equals the default render for sluice-system", deploy_matches),
        ("deploy/examples parse and match the CRD schema", check_examples),
        ("Dockerfile.controller", lambda: check_dockerfile("controller", rendered["defaults"][0])),
        ("Dockerfile.dataplane", lambda: check_dockerfile("dataplane", rendered["defaults"][0])),
    ]
    failed = 0
    for name, fn in checks:
        try:
            fn()
            print(f"ok    {name}")
        except (Failed, helm_sdkpy.HelmError) as e:
            failed += 1
            print(f"FAIL  {name}: {e}")
        except Exception as e:  # noqa: BLE001 - a broken check is a failed check
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
    total = len(checks)
    print(f"chart and manifests: {total - failed} of {total} checks ok" if failed
          else f"chart and manifests: all {total} checks ok")
    return 1 if failed else 0


def render_main(args: list[str]) -> int:
    """`lint.sh render [NAMESPACE]`: the chart as `helm install` renders it
    (the same path as the checks) with values read as JSON from stdin;
    prints the objects as one JSON list. The real-cluster tests install
    the chart with this."""
    namespace = args[0] if args else NAMESPACE
    values = json.loads(sys.stdin.read() or "{}")
    try:
        docs, _ = render(values, namespace=namespace)
    except helm_sdkpy.HelmError as e:
        print(f"render: {e}", file=sys.stderr)
        return 1
    json.dump(docs, sys.stdout)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["render"]:
        sys.exit(render_main(sys.argv[2:]))
    sys.exit(main())
