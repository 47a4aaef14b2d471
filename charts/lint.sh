#!/usr/bin/env bash
# Lints the Helm chart (helm's own linter, which renders every template) and
# checks that every manifest under deploy/ and crds/ parses. Called by CI.
#
# helm comes from the helm-sdkpy wheel on PyPI (helm compiled into a shared
# library). Its metadata asks for Python >= 3.12 but the library loads on 3.11,
# which is what Debian bookworm ships, hence --ignore-requires-python.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import helm_sdkpy' 2>/dev/null || pip install -q --ignore-requires-python 'helm-sdkpy==0.1.32'
python3 -c 'import yaml' 2>/dev/null || pip install -q 'PyYAML>=6'
python3 charts/lint.py
