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
Renders run against a fake of the oldest supported Kubernetes (1.28) and of
the newest (the k8s-openapi API version in Cargo.toml); 1.27 must be refused.
The operations kit (ServiceMonitor, PodMonitor, PrometheusRule, the Grafana
dashboard, PodDisruptionBudgets, the dataplanes' HPA) is rendered and checked,
and every metric its PromQL names must be one the code registers.
The examples' BackendPools are validated against the CRD's OpenAPI schema (and
the backend CEL rules, by hand); the Gateway API examples (examples/gateway/)
and every YAML block of the Gateway API guides are validated by a real
kube-apiserver with the upstream Gateway API CRDs installed, and a block that
names an example file must be that file; the chart's CRDs must equal crds/, and each
Dockerfile's stages are built without a container engine
(charts/dockerfile_stages.py): the manifest-only stage (with the vendored
crates of third_party/ whole) must build the dependencies with --locked, the
final stage must hold the binary its ENTRYPOINT names, running as a non-root
numeric user, with the chart's ports.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import pathlib
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tomllib

import apiserver
import dockerfile_stages
import helm_sdkpy
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "sluice"
NAMESPACE = "sluice-system"
RELEASE = "sluice"
# Gateway API examples, and the guides whose YAML blocks the API server checks.
GATEWAY_EXAMPLES = ROOT / "examples" / "gateway"
GATEWAY_GUIDES = [ROOT / "docs" / "gateway-api.md", ROOT / "docs" / "migrate-ingress-nginx.md"]

# What the controller may do, and nothing more (see the ClusterRole).
CONTROLLER_RULES = [
    (("sluice.io",), ("backendpools", "scalingtriggers"), ("get", "list", "watch")),
    (("sluice.io",), ("backendpools/status", "scalingtriggers/status"), ("get", "patch", "update")),
    (("",), ("services",), ("get", "list", "watch")),
    # TLS certificates of pools; the controller lists type kubernetes.io/tls only.
    (("",), ("secrets",), ("get", "list", "watch")),
    (("discovery.k8s.io",), ("endpointslices",), ("get", "list", "watch")),
    # Gateway API, and Namespaces for allowedRoutes label selectors.
    (("gateway.networking.k8s.io",), ("gatewayclasses", "gateways", "httproutes", "referencegrants"),
     ("get", "list", "watch")),
    (("gateway.networking.k8s.io",), ("gatewayclasses/status", "gateways/status", "httproutes/status"),
     ("get", "patch", "update")),
    (("",), ("namespaces",), ("get", "list", "watch")),
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

# Supported Kubernetes: from the oldest (Chart.yaml's kubeVersion; the API
# server version in ../shared/k8s) to the newest API the code is built
# against (k8s-openapi's feature in Cargo.toml).
OLDEST_KUBE = "1.28.7"
NEWEST_KUBE = "{}.{}.0".format(*re.search(r'"v(\d+)_(\d+)"', re.search(
    r"^k8s-openapi = .*$", (ROOT / "Cargo.toml").read_text(), re.M).group(0)).groups())

# The dataplane's preStop hook: exec of its own binary (the image has no shell).
DATAPLANE_BINARY = "/usr/local/bin/sluice-dataplane"

# Values that differ from every default that changes what is rendered.
NON_DEFAULT = {
    "fullnameOverride": "edge",
    "gatewayClass": {"create": True, "name": "edge"},
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

# The operations kit, all on: ServiceMonitor, alerts, dashboard, an HPA for
# the dataplanes, a PDB for the single controller.
OPERATIONS = {
    "controller": {"podDisruptionBudget": {"enabled": True}},
    "dataplane": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                                  "targetMemoryUtilizationPercentage": 80},
                  "tracing": {"otlpEndpoint": "http://otel-collector.observability:4318", "sampleRatio": 0.1}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                "dashboard": {"enabled": True, "namespace": "monitoring"}},
}
# The same with a PodMonitor instead, and no dataplane admin Service.
POD_MONITOR = {"metrics": {"podMonitor": {"enabled": True, "interval": "15s"}},
               "dataplane": {"adminService": {"enabled": False}}}


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
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True), ("podmonitors", "PodMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "discovery.k8s.io/v1": [("endpointslices", "EndpointSlice", True)],
    "sluice.io/v1alpha1": [("backendpools", "BackendPool", True), ("scalingtriggers", "ScalingTrigger", True)],
    "gateway.networking.k8s.io/v1": [("gatewayclasses", "GatewayClass", False)],
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

    def __init__(self, existing: dict[str, dict] | None = None, kube: str = ""):
        self.existing = existing or {}
        self.kube = kube or NEWEST_KUBE  # what /version answers: helm checks kubeVersion against it
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
                    major, minor, _ = fake.kube.split(".")
                    return self._send(200, {"major": major, "minor": minor, "gitVersion": f"v{fake.kube}",
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
           existing: dict[str, dict] | None = None, chart: pathlib.Path = CHART,
           kube: str = "") -> tuple[list[dict], str]:
    """`helm install` against the fake (a cluster of Kubernetes `kube`, by
    default the newest supported); returns the manifest's objects and NOTES."""
    with FakeKube(existing, kube) as fake:
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


def check_contract(docs: list[dict], release_prefix: str, namespace: str, elsewhere: set = frozenset()):
    """Invariants every render must hold, whatever the values. `elsewhere`:
    objects that values put in another namespace."""
    objs = index(docs)
    ctl = objs[("Deployment", f"{release_prefix}-controller")]
    dp = objs[("Deployment", f"{release_prefix}-dataplane")]
    ctl_svc = objs[("Service", f"{release_prefix}-controller")]
    dp_svc = objs[("Service", f"{release_prefix}-dataplane")]

    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition", "GatewayClass") \
                and (d["kind"], d["metadata"]["name"]) not in elsewhere:
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
    pre = pre_stop_seconds(dc)
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


def pre_stop_seconds(c: dict) -> int:
    """The dataplane's preStop wait: 0 without a hook; the hook must be an
    exec of the image's own binary (`pre-stop --sleep=Ns`), which works on
    every supported Kubernetes (the sleep action needs 1.30, a shell is
    not in the image)."""
    hook = (c.get("lifecycle") or {}).get("preStop")
    if hook is None:
        return 0
    cmd = (hook.get("exec") or {}).get("command", [])
    expect(set(hook) == {"exec"} and len(cmd) == 3 and cmd[:2] == [DATAPLANE_BINARY, "pre-stop"]
           and re.fullmatch(r"--sleep=\d+s", cmd[2]),
           f"dataplane preStop must be exec [{DATAPLANE_BINARY}, pre-stop, --sleep=Ns], got {hook}")
    return int(cmd[2][len("--sleep="):-1])


def check_defaults(docs: list[dict], notes: str):
    check_contract(docs, "sluice", NAMESPACE)
    objs = index(docs)
    dp_env = [e["name"] for e in container(objs[("Deployment", "sluice-dataplane")]).get("env", [])]
    expect(not any(n.startswith("SLUICE_TRACING") for n in dp_env), f"tracing is off by default: {dp_env}")
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
    expect(pre_stop_seconds(container(dp)) == 5, "dataplane: a 5 s preStop wait by default")
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
    gc = objs.get(("GatewayClass", "edge"))
    expect(gc is not None and gc["spec"]["controllerName"] == "sluice.io/gateway-controller",
           "gatewayClass.create: a GatewayClass of the Sluice controller")
    expect(cf.get("--dataplane-service") == "edge-ns/edge-dataplane", f"--dataplane-service {cf.get('--dataplane-service')}")
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


def check_rejected(values: dict, fragment: str, kube: str = ""):
    try:
        render(values, kube=kube)
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


def yaml_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """The ```yaml blocks of a Markdown file, dedented, with the line each starts on."""
    out, block, start = [], None, 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if block is None:
            if line.strip() == "```yaml":
                block, start = [], n + 1
        elif line.strip() == "```":
            out.append((start, textwrap.dedent("\n".join(block)) + "\n"))
            block = None
        else:
            block.append(line)
    expect(block is None, f"{path.relative_to(ROOT)}: the yaml block of line {start} is not closed")
    return out


def guide_blocks() -> tuple[list[tuple[str, list[dict]]], list[tuple[str, dict]], set[pathlib.Path]]:
    """What the Gateway API guides show: blocks of whole objects, blocks of
    chart values (first line `# values.yaml`), and the example files shown.
    A block whose first line names an example file must be that file, so
    what users read is what they apply."""
    objects, values, shown = [], [], set()
    for guide in GATEWAY_GUIDES:
        rel = guide.relative_to(ROOT)
        expect(guide.exists(), f"{rel} missing")
        for line, text in yaml_blocks(guide):
            where = f"{rel}:{line}"
            first = text.split("\n", 1)[0].strip()
            m = re.fullmatch(r"# (examples/gateway/[\w.-]+\.yaml)", first)
            if m:
                path = ROOT / m.group(1)
                expect(path.exists(), f"{where}: {m.group(1)} does not exist")
                expect(path.read_text() == text, f"{where}: the block is not {m.group(1)} as it stands")
                shown.add(path)
            try:
                docs = [d for d in yaml.safe_load_all(text) if d is not None]
            except yaml.YAMLError as e:
                raise Failed(f"{where}: not YAML: {e}") from e
            if first == "# values.yaml":
                expect(len(docs) == 1 and isinstance(docs[0], dict), f"{where}: chart values are one mapping")
                values.append((where, docs[0]))
                continue
            whole = all(isinstance(d, dict) and d.get("apiVersion") and d.get("kind")
                        and (d.get("metadata") or {}).get("name") for d in docs)
            expect(docs and whole, f"{where}: a yaml block holds whole objects (apiVersion, kind, metadata.name) "
                                   f"or starts with '# values.yaml' (chart values)")
            objects.append((where, docs))
    return objects, values, shown


def check_gateway_examples():
    """examples/gateway/ parses into whole objects, each file is shown in a
    guide, the guides' blocks are objects or chart values (the API server
    judges them in check_apiserver), and the guides link nowhere outside the
    repository (they are the contract of this checkout)."""
    examples = load_yaml_dir(GATEWAY_EXAMPLES, "*.yaml")
    expect(examples, f"{GATEWAY_EXAMPLES.relative_to(ROOT)}: no examples")
    _, _, shown = guide_blocks()
    unshown = sorted(str(p.relative_to(ROOT)) for p in GATEWAY_EXAMPLES.glob("*.yaml") if p not in shown)
    expect(not unshown, f"examples not shown in {[str(g.relative_to(ROOT)) for g in GATEWAY_GUIDES]}: {unshown}")
    for guide in GATEWAY_GUIDES:
        outside = re.findall(r"\]\((\w+:[^)]*)\)", guide.read_text())
        expect(not outside, f"{guide.relative_to(ROOT)}: links outside the repository: {outside}")
    for path in GATEWAY_EXAMPLES.glob("*.yaml"):
        head = f"# examples/gateway/{path.name}"
        expect(path.read_text().startswith(head + "\n"), f"{path.relative_to(ROOT)}: the first line must be {head!r}")


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


# ----------------------------------------------------------------- operations kit


def code_metrics() -> dict[str, str]:
    """Every metric the binaries register, as exposed ("sluice_" + name), and
    its type, read from the `registry.register(name, help, family)` calls in
    dataplane/src and controller/src and the type of the family passed."""
    out: dict[str, str] = {}
    register = re.compile(r'register\(\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*(\w+)(?:\.clone\(\))?\s*,?\s*\)')
    for crate in ("dataplane", "controller"):
        for path in sorted((ROOT / crate / "src").rglob("*.rs")):
            text = path.read_text()
            if "Registry::with_prefix(\"sluice\")" not in text:
                continue
            for name, var in register.findall(text):
                m = re.search(rf"^\s*(?:pub\s+)?{var}\s*:\s*(.*)$", text, re.M)
                kinds = re.findall(r"\b(Counter|Gauge|Histogram)\b", m.group(1)) if m else []
                expect(kinds, f"{path.relative_to(ROOT)}: cannot tell the type of metric {name} (field {var})")
                out[f"sluice_{name}"] = kinds[0].lower()
    expect(len(out) >= 10, f"found only {sorted(out)} in the code: has registration changed shape?")
    return out


def series_names(metrics: dict[str, str]) -> set[str]:
    """The series names Prometheus stores for each metric."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {name + sfx for name, kind in metrics.items() for sfx in suffixes[kind]}


def check_promql(exprs: list[tuple[str, str]], metrics: dict[str, str]):
    """Each (where, PromQL) names only series the code exports, and its
    brackets balance."""
    known = series_names(metrics)
    for where, expr in exprs:
        used = set(re.findall(r"\bsluice_[a-z0-9_]+\b", expr))
        expect(used, f"{where}: no sluice metric in {expr!r}")
        unknown = used - known
        expect(not unknown, f"{where}: {sorted(unknown)} not exported by the code (known: {sorted(known)})")
        for a, b in ("()", "{}", "[]"):
            expect(expr.count(a) == expr.count(b), f"{where}: unbalanced {a}{b} in {expr!r}")


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        expect(panel.get("targets"), f"dashboard panel {panel.get('title')!r} has no queries")
        out += [(f"dashboard panel {panel['title']!r}", t["expr"]) for t in panel["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"dashboard variable {var['name']}", var["query"]["query"]))
    return out


def pod_name(deploy: dict) -> str:
    """A name the Deployment's pods get: <deployment>-<replicaset hash>-<suffix>."""
    return f"{deploy['metadata']['name']}-5d8f7b9c6d-x2kq9"


def selects(selector: dict, labels: dict) -> bool:
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", []):
        expect(e["operator"] == "In", f"selector operator {e['operator']} not checked here")
        ok = ok and labels.get(e["key"]) in e["values"]
    return ok


def check_operations(docs: list[dict], notes: str):
    check_contract(docs, "sluice", NAMESPACE, elsewhere={("ConfigMap", "sluice-dashboard")})
    objs = index(docs)
    ctl, dp = objs[("Deployment", "sluice-controller")], objs[("Deployment", "sluice-dataplane")]
    metrics = code_metrics()

    # Tracing: the dataplane's own variables (docs/cli.md), on only when asked.
    env = {e["name"]: e.get("value") for e in container(dp).get("env", [])}
    expect(env.get("SLUICE_TRACING") == "true"
           and env.get("SLUICE_TRACING_OTLP_ENDPOINT") == "http://otel-collector.observability:4318"
           and env.get("SLUICE_TRACING_SAMPLE_RATIO") == "0.1",
           f"dataplane tracing env {env}")

    # ServiceMonitor: exactly the two Services with the admin port.
    sm = objs[("ServiceMonitor", "sluice")]
    expect(sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "kube-prometheus-stack",
           "ServiceMonitor: monitoring.coreos.com/v1 with metrics.serviceMonitor.labels")
    expect(sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}, "ServiceMonitor: the release namespace")
    expect([e["port"] for e in sm["spec"]["endpoints"]] == ["admin"] and sm["spec"]["endpoints"][0]["path"] == "/metrics",
           "ServiceMonitor: /metrics on port admin")
    scraped = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                     and selects(sm["spec"]["selector"], d["metadata"]["labels"])
                     and any(p["name"] == "admin" for p in d["spec"]["ports"]))
    expect(scraped == ["sluice-controller", "sluice-dataplane-admin"], f"ServiceMonitor scrapes Services {scraped}")

    # PrometheusRule: alerts on real metrics, for this release's pods only.
    rule = objs[("PrometheusRule", "sluice")]
    expect(rule["metadata"]["labels"].get("release") == "kube-prometheus-stack", "PrometheusRule: metrics.prometheusRule.labels")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    want = {"SluiceControllerNoLeader", "SluiceDataplaneNotSynced", "SluiceDataplanesDisconnected",
            "SluiceEndpointsAllUnhealthy", "SluicePoolErrorRate", "SluiceScalingLimited"}
    expect(want <= alerts, f"PrometheusRule lacks {want - alerts}")
    for r in rules:
        expect(r.get("for") and r["labels"].get("severity") in ("warning", "critical")
               and r["annotations"].get("summary") and r["annotations"].get("description"),
               f"alert {r['alert']}: for, severity, summary and description")
        for text in r["annotations"].values():  # Prometheus templates survived Helm's
            expect(text.count("{{") == text.count("}}") and "{{`" not in text, f"alert {r['alert']}: template {text!r}")
        regexes = re.findall(r'pod=~"([^"]+)"', r["expr"])
        expect(regexes, f"alert {r['alert']}: not limited to this release's pods")
        for regex in regexes:
            hits = [d["metadata"]["name"] for d in (ctl, dp) if re.fullmatch(regex, pod_name(d))]
            expect(len(hits) == 1, f"alert {r['alert']}: pod=~{regex!r} matches pods of {hits}")
        expect(f'namespace="{NAMESPACE}"' in r["expr"], f"alert {r['alert']}: not limited to the release namespace")
    check_promql([(f"alert {r['alert']}", r["expr"]) for r in rules], metrics)

    # Dashboard: the file, in a ConfigMap for the sidecar.
    cm = objs[("ConfigMap", "sluice-dashboard")]
    expect(cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"].get("grafana_dashboard") == "1",
           "dashboard ConfigMap: metrics.dashboard.namespace and label grafana_dashboard=1")
    text = (CHART / "dashboards" / "sluice.json").read_text()
    expect(cm["data"] == {"sluice.json": text}, "dashboard ConfigMap: data sluice.json is charts/sluice/dashboards/sluice.json")

    # The dataplanes scale with an HPA; the Deployment leaves replicas to it.
    hpa = objs[("HorizontalPodAutoscaler", "sluice-dataplane")]
    expect(hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sluice-dataplane"}
           and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12), f"HPA spec {hpa['spec']}")
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    expect(targets == {"cpu": {"type": "Utilization", "averageUtilization": 70},
                       "memory": {"type": "Utilization", "averageUtilization": 80}}, f"HPA metrics {targets}")
    expect("replicas" not in dp["spec"], "with an HPA the dataplane Deployment must not set replicas")
    expect(all(k in container(dp)["resources"]["requests"] for k in targets),
           "HPA utilization needs requests for cpu and memory")
    expect(objs[("PodDisruptionBudget", "sluice-dataplane")]["spec"]["minAvailable"] == 1,
           "dataplane PDB with autoscaling.minReplicas > 1")

    # The controller's PDB never blocks a drain of its single pod.
    pdb = objs[("PodDisruptionBudget", "sluice-controller")]
    expect(pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
           and selects(pdb["spec"]["selector"], ctl["spec"]["template"]["metadata"]["labels"]),
           f"controller PDB {pdb['spec']}")
    expect("3 to 12 (autoscaled)" in notes, "NOTES: the autoscaled dataplane count")


def check_pod_monitor(docs: list[dict], notes: str):
    check_contract(docs, "sluice", NAMESPACE)
    objs = index(docs)
    pm = objs[("PodMonitor", "sluice")]
    expect(("ServiceMonitor", "sluice") not in objs, "PodMonitor only")
    expect([(e["port"], e["path"], e["interval"]) for e in pm["spec"]["podMetricsEndpoints"]] == [("admin", "/metrics", "15s")],
           f"PodMonitor endpoints {pm['spec']['podMetricsEndpoints']}")
    scraped = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"
                     and selects(pm["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
                     and any(p["name"] == "admin" for p in container(d)["ports"]))
    expect(scraped == ["sluice-controller", "sluice-dataplane"], f"PodMonitor scrapes {scraped}")


def check_dashboard_file():
    """The dashboard: valid JSON for Grafana, every query on a real metric,
    and the views the chart promises."""
    dash = json.loads((CHART / "dashboards" / "sluice.json").read_text())
    expect(dash.get("uid") and dash.get("title") and dash.get("panels"), "dashboard: uid, title, panels")
    ids = [p["id"] for p in dash["panels"]]
    expect(len(ids) == len(set(ids)), "dashboard: panel ids repeat")
    check_promql(dashboard_exprs(dash), code_metrics())
    text = json.dumps(dash)
    for metric in ("sluice_requests_total", "sluice_request_duration_seconds_bucket", "sluice_endpoint_healthy",
                   "sluice_route_version", "sluice_scale_decisions_total", "sluice_desired_replicas"):
        expect(metric in text, f"dashboard: nothing shows {metric}")


def check_kube_version(kube: str):
    """The chart installs on Kubernetes `kube`, with the exec preStop."""
    docs, _ = render(kube=kube)
    dp = index(docs)[("Deployment", "sluice-dataplane")]
    expect(pre_stop_seconds(container(dp)) == 5, f"Kubernetes {kube}: the dataplane keeps its preStop wait")
    check_contract(docs, "sluice", NAMESPACE)


def check_image_runs_pre_stop():
    """The image's own binary runs the chart's preStop command and exits 0."""
    expect("dataplane" in IMAGES, "Dockerfile.dataplane was not built")
    final = IMAGES["dataplane"][-1]
    docs, _ = render({"dataplane": {"preStopSleepSeconds": 1}})
    c = container(index(docs)[("Deployment", "sluice-dataplane")])
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    out = subprocess.run([str(final.path(cmd[0]))] + cmd[1:], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=30)
    expect(out.returncode == 0, f"preStop {cmd} in the image: exit {out.returncode}: {out.stdout.strip()}")


# ----------------------------------------------------------------- real API server


def dropped(sent, got, path="") -> list[str]:
    """Fields of `sent` the API server's answer lacks: pruned, or dropped
    because this Kubernetes does not know them (a disabled feature gate)."""
    if isinstance(sent, dict) and isinstance(got, dict):
        return [p for k, v in sent.items()
                for p in ([f"{path}.{k}"] if k not in got else dropped(v, got[k], f"{path}.{k}"))]
    if isinstance(sent, list) and isinstance(got, list):
        if len(sent) != len(got):
            return [f"{path}: {len(sent)} items sent, {len(got)} kept"]
        return [p for i, (a, b) in enumerate(zip(sent, got)) for p in dropped(a, b, f"{path}[{i}]")]
    return []


def check_apiserver():
    """Kubernetes 1.28.7 itself (charts/apiserver.py) validates every object of
    every render, deploy/, the examples and the Gateway API guides' blocks (with
    the upstream Gateway API CRDs installed): `kubectl create --dry-run=server
    --validate=strict`, and no field we send may be dropped."""
    k8s_dir = pathlib.Path(os.environ.get("SLUICE_K8S_DIR") or ROOT.parent / "shared" / "k8s")
    bins = apiserver.unpack(k8s_dir, ROOT / "target" / f"kube-{apiserver.VERSION}")
    kube = apiserver.VERSION
    renders = {
        "default values": render(kube=kube)[0],
        "non-default values": render(NON_DEFAULT, release="edge", namespace="edge-ns", kube=kube)[0],
        "cert-manager values": render(CERT_MANAGER, kube=kube)[0],
        "plain-HTTP stream": render(NO_TLS, kube=kube)[0],
        "operations kit": render(OPERATIONS, kube=kube)[0],
        "PodMonitor": render(POD_MONITOR, kube=kube)[0],
        "deploy/": [d for _, d in load_yaml_dir(ROOT / "deploy", "*.yaml")],
        "deploy/examples": [d for _, d in load_yaml_dir(ROOT / "deploy" / "examples", "*.yaml")],
        "examples/gateway": [d for _, d in load_yaml_dir(GATEWAY_EXAMPLES, "*.yaml")],
    }
    objects, values, _ = guide_blocks()
    renders.update(objects)
    for where, v in values:
        renders[f"{where} (chart values)"] = render(v, kube=kube)[0]
    gateway_dir = pathlib.Path(os.environ.get("SLUICE_GATEWAY_API_DIR")
                               or ROOT.parent / "shared" / "gateway-api" / apiserver.GATEWAY_API)
    crd_files = [CHART / "crds", ROOT / "charts" / "testdata" / "external-crds.yaml",
                 *apiserver.gateway_api_crds(gateway_dir)]
    # Namespaces the objects name (a dry run cannot create one and use it).
    namespaces = {NAMESPACE, "edge-ns", "monitoring"} | {
        d["metadata"]["namespace"] for docs in renders.values() for d in docs
        if (d.get("metadata") or {}).get("namespace")} - {"default", "kube-system", "kube-public", "kube-node-lease"}
    with apiserver.ApiServer(bins) as api:
        r = api.kubectl("create", *[a for f in crd_files for a in ("-f", str(f))])
        expect(r.returncode == 0, f"CRDs refused by kube-apiserver {kube}: {r.stderr.strip()}")
        r = api.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        expect(r.returncode == 0, f"CRDs not established: {r.stderr.strip()}")
        for ns in sorted(namespaces):
            r = api.kubectl("create", "namespace", ns)
            expect(r.returncode == 0, f"namespace {ns}: {r.stderr.strip()}")
        problems = []
        for name, docs in renders.items():
            # deploy/ creates its namespace, which exists already.
            docs = [d for d in docs if d["kind"] != "Namespace"]
            r = api.kubectl("create", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-",
                            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
            if r.returncode != 0:
                problems.append(f"{name}: {r.stderr.strip()}")
                continue
            got, pos, dec = [], 0, json.JSONDecoder()  # one JSON document per object
            while r.stdout[pos:].strip():
                obj, end = dec.raw_decode(r.stdout[pos:].lstrip())
                pos += len(r.stdout[pos:]) - len(r.stdout[pos:].lstrip()) + end
                got += obj["items"] if obj.get("kind") == "List" else [obj]
            expect(len(got) == len(docs), f"{name}: {len(docs)} objects sent, {len(got)} answered")
            for sent, back in zip(docs, got):
                lost = dropped(sent, back)
                if lost:
                    problems.append(f"{name}: {sent['kind']} {sent['metadata']['name']} lost {lost}")
        expect(not problems, f"kube-apiserver {kube} refused:\n  " + "\n  ".join(problems))


# Where the Dockerfiles' stages are replayed, and their shared cargo target
# directory (kept between runs, like a warm build cache).
IMAGE_WORK = ROOT / "target" / "image-check"
# The images' stages, built by check_dockerfile, for the checks after it.
IMAGES: dict[str, list[dockerfile_stages.Stage]] = {}


def check_dockerfile(component: str, chart_docs: list[dict]):
    """Builds every stage of Dockerfile.<component> without a container
    engine (see charts/dockerfile_stages.py), then checks what came out."""
    name = f"Dockerfile.{component}"
    binary = f"sluice-{component}"
    try:
        stages = dockerfile_stages.build(ROOT / name, ROOT, IMAGE_WORK / component, IMAGE_WORK / "cargo-target",
                                         log=lambda line: print(f"      {line}", flush=True))
    except dockerfile_stages.StageError as e:
        raise Failed(str(e)) from e
    IMAGES[component] = stages
    expect(len(stages) >= 2 and stages[0].base == "rust:1-bookworm", f"{name}: build stages FROM rust:1-bookworm")
    final = stages[-1]
    expect(final.base in ("gcr.io/distroless/cc-debian12:nonroot", "debian:bookworm-slim"),
           f"{name}: runtime base {final.base}")

    # The dependency stage sees manifests and identical stubs only, so its
    # cache key changes with the manifests and the list of files, not the code.
    skeleton = next((s for s in stages if s.name == "skeleton"), None)
    expect(skeleton is not None, f"{name}: no stage 'skeleton' (manifests and stub sources)")
    # Vendored crates (third_party/) are dependencies: the skeleton keeps
    # them whole, as the repository holds them.
    vendored = skeleton.path(skeleton.workdir) / "third_party"
    for p in (ROOT / "third_party").rglob("*"):
        if p.is_file():
            kept = vendored / p.relative_to(ROOT / "third_party")
            expect(kept.is_file() and kept.read_bytes() == p.read_bytes(),
                   f"{name}: the skeleton stage does not keep {p.relative_to(ROOT)} whole")
    files = [p for p in skeleton.path(skeleton.workdir).rglob("*")
             if p.is_file() and vendored not in p.parents]
    kinds = {p.name if p.suffix != ".rs" else ".rs" for p in files}
    expect(kinds <= {"Cargo.toml", "Cargo.lock", ".rs"} and "Cargo.lock" in kinds,
           f"{name}: the skeleton stage keeps more than manifests and stubs: {sorted(kinds)}")
    stubs = {p.read_bytes() for p in files if p.suffix == ".rs"}
    expect(len(stubs) == 1, f"{name}: the skeleton's .rs files differ ({len(stubs)} contents)")
    members, _ = workspace()
    for m in members:
        expect(skeleton.path(f"{m}/Cargo.toml").is_file(), f"{name}: the skeleton lacks {m}/Cargo.toml")
    build = next(s for s in stages if any(kind == "RUN" and "cargo build" in v for kind, v in s.steps))
    first_build = next(i for i, (kind, v) in enumerate(build.steps) if kind == "RUN" and "cargo build" in v)
    expect(all(kind == "COPY" and v.startswith("skeleton:") for kind, v in build.steps[:first_build]),
           f"{name}: stage {build.name} copies more than the skeleton before building dependencies: "
           f"{build.steps[:first_build]}")
    for kind, v in build.steps:
        for c in re.findall(r"cargo [^;&|]*", v) if kind == "RUN" else []:
            expect("--locked" in c.split(), f"{name}: {c.strip()!r} without --locked")
    expect(re.search(rf"cargo build (--release|--profile [\w-]+) --locked -p {binary}(\s|;|$)",
                     " ".join(v for _, v in build.steps)),
           f"{name}: cargo build --release (or --profile P) --locked -p {binary}")

    # The runtime stage: non-root, and its ENTRYPOINT is the real program.
    uid, _, gid = (final.user or "").partition(":")
    expect(uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0)),
           f"{name}: runtime USER must be a numeric non-root uid[:gid], got {final.user!r}")
    expect(int(uid) == 65532, f"{name}: USER {uid}, but the chart runs as 65532")
    expect(final.entrypoint == [f"/usr/local/bin/{binary}"], f"{name}: exec-form ENTRYPOINT {binary}, got {final.entrypoint}")
    exe = final.path(final.entrypoint[0])
    expect(exe.is_file() and os.access(exe, os.X_OK) and exe.read_bytes()[:4] == b"\x7fELF",
           f"{name}: ENTRYPOINT {final.entrypoint[0]} is not an executable in the final stage")
    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    out = subprocess.run([str(exe), "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    expect(out.returncode == 0 and out.stdout.strip() == f"{binary} {version}",
           f"{name}: {final.entrypoint[0]} --version printed {out.stdout.strip()!r} (exit {out.returncode}), "
           f"not {binary} {version}: not the real program")
    libs = dockerfile_stages.shared_libraries(exe)
    extra = [lib for lib in libs if not os.path.basename(lib).startswith(dockerfile_stages.DISTROLESS_CC_LIBS)]
    expect(not extra, f"{name}: the binary needs libraries distroless/cc lacks: {extra}")

    exposed = sorted(final.exposed)
    dep = index(chart_docs)[("Deployment", binary)]
    ports = sorted(p["containerPort"] for p in container(dep)["ports"])
    expect(exposed == ports, f"{name}: EXPOSE {exposed} but the chart's container ports are {ports}")
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
        (f"render: Kubernetes {OLDEST_KUBE} (oldest supported)", lambda: check_kube_version(OLDEST_KUBE)),
        (f"render: Kubernetes {NEWEST_KUBE} (newest supported)", lambda: check_kube_version(NEWEST_KUBE)),
        ("render: Kubernetes 1.27 is refused",
         lambda: check_rejected({}, "incompatible with Kubernetes v1.27", kube="1.27.16")),
        ("helm lint (operations kit)", lint(OPERATIONS)),
        ("render: operations kit (ServiceMonitor, alerts, dashboard, HPA, PDBs)",
         lambda: check_operations(*render(OPERATIONS))),
        ("render: PodMonitor without the dataplane admin Service", lambda: check_pod_monitor(*render(POD_MONITOR))),
        ("dashboard: JSON, metrics that exist", check_dashboard_file),
        ("render: ServiceMonitor and PodMonitor are refused together",
         lambda: check_rejected({"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
                                "enable one")),
        ("render: ServiceMonitor needs the dataplane admin Service",
         lambda: check_rejected({"metrics": {"serviceMonitor": {"enabled": True}},
                                 "dataplane": {"adminService": {"enabled": False}}}, "needs dataplane.adminService")),
        ("render: a controller PDB with several replicas is refused",
         lambda: check_rejected({"controller": {"replicas": 2, "podDisruptionBudget": {"enabled": True}}},
                                "node drains would hang")),
        ("render: autoscaling minReplicas above maxReplicas is refused",
         lambda: check_rejected({"dataplane": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
                                "is above maxReplicas")),
        ("render: schema rejects a bad scrape interval",
         lambda: check_rejected({"metrics": {"podMonitor": {"enabled": True, "interval": "30"}}},
                                "/metrics/podMonitor/interval")),
        ("deploy/ equals the default render for sluice-system", deploy_matches),
        ("deploy/examples parse and match the CRD schema", check_examples),
        ("examples/gateway parse and each is shown in the Gateway API guides", check_gateway_examples),
        (f"kube-apiserver {apiserver.VERSION} accepts every rendered object, deploy/, the examples and the guides' YAML",
         check_apiserver),
        ("Dockerfile.controller", lambda: check_dockerfile("controller", rendered["defaults"][0])),
        ("Dockerfile.dataplane", lambda: check_dockerfile("dataplane", rendered["defaults"][0])),
        ("Dockerfile.dataplane: the chart's preStop command runs with the image's binary", check_image_runs_pre_stop),
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
    """`lint.sh render [NAMESPACE [KUBE_VERSION]]`: the chart as `helm install` renders it
    (the same path as the checks) with values read as JSON from stdin;
    prints the objects as one JSON list. The real-cluster tests install
    the chart with this."""
    namespace = args[0] if args else NAMESPACE
    kube = args[1] if len(args) > 1 else ""
    values = json.loads(sys.stdin.read() or "{}")
    try:
        docs, _ = render(values, namespace=namespace, kube=kube)
    except helm_sdkpy.HelmError as e:
        print(f"render: {e}", file=sys.stderr)
        return 1
    json.dump(docs, sys.stdout)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["render"]:
        sys.exit(render_main(sys.argv[2:]))
    sys.exit(main())
