#!/usr/bin/env bash
# Packaging checks (see charts/lint.py): helm lint, real renders of the chart
# with default and non-default values on Kubernetes 1.28 and the newest,
# least-privilege RBAC, the wiring between controller and dataplane, the
# operations kit and its metric names, deploy/ == the default render, the
# examples against the CRD schema, examples/gateway/ and the Gateway API
# guides' YAML against the upstream Gateway API CRDs (SLUICE_GATEWAY_API_DIR,
# by default ../shared/gateway-api/v1.5.1), the chart's CRD copies, and both
# Dockerfiles' stages built without a container engine (cargo, in a cheap
# profile, under target/image-check/). Called by .ci/run.
#
# `charts/lint.sh render [NAMESPACE [KUBE_VERSION]] < values.json` prints the chart
# as helm installs it on that Kubernetes version, as a JSON list (the real-cluster tests install that).
#
# Needs cargo (the image stages), openssl and etcd (the API-server check,
# with kube-apiserver and kubectl 1.28.7 from SLUICE_K8S_DIR, by default
# ../shared/k8s), python3 (>= 3.11) with pip, and PyPI. helm comes from the helm-sdkpy
# wheel (helm v4 built as a shared library: no helm binary, no cluster); the
# Dockerfiles are parsed by the `dockerfile` wheel (buildkit's parser).
# helm-sdkpy's metadata asks for Python >= 3.12 but it runs on 3.11 (Debian
# bookworm's), hence --ignore-requires-python. Missing packages go to a private
# directory (--target), so a system Python that refuses global installs
# (PEP 668) works too.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDKPY_VERSION=0.1.32
DOCKERFILE_VERSION=3.4.0
deps="${SLUICE_LINT_DEPS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sluice-lint/$(python3 -c 'import sys; print("py%d.%d" % sys.version_info[:2])')}"
export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"

have() {
  python3 - "$HELM_SDKPY_VERSION" "$DOCKERFILE_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import dockerfile, helm_sdkpy, yaml  # noqa: F401
sys.exit(version("helm-sdkpy") != sys.argv[1] or version("dockerfile") != sys.argv[2])
PY
}

if ! have; then
  echo "== installing helm-sdkpy $HELM_SDKPY_VERSION, dockerfile $DOCKERFILE_VERSION and PyYAML into $deps" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-input \
    --ignore-requires-python --upgrade --target "$deps" \
    "helm-sdkpy==$HELM_SDKPY_VERSION" "dockerfile==$DOCKERFILE_VERSION" "PyYAML>=6"
  have || { echo "charts/lint.sh: the Python packages do not import after install" >&2; exit 1; }
fi

if [ "${1:-}" = render ]; then
  shift
  exec python3 charts/lint.py render "$@"
fi

python3 charts/lint.py
