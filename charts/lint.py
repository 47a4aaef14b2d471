"""Chart lint and manifest checks; see lint.sh."""
import asyncio
import pathlib
import sys

import helm_sdkpy
import yaml

SEVERITY = {1: "INFO", 2: "WARNING", 3: "ERROR"}
failed = False

result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run("charts/sluice"))
for msg in result.get("Messages") or []:
    sev = msg.get("Severity", 0)
    print(f"helm lint: {SEVERITY.get(sev, sev)} {msg.get('Path')} {msg.get('Err') or ''}")
    if sev >= 2:
        failed = True
if result.get("Errors"):
    failed = True
print(f"helm lint: {result.get('TotalChartsLinted')} chart(s) linted")

for path in sorted(pathlib.Path("deploy").rglob("*.yaml")) + sorted(pathlib.Path("crds").glob("*.yaml")):
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        print(f"{path}: does not parse: {e}")
        failed = True
        continue
    for d in docs:
        missing = [k for k in ("apiVersion", "kind") if k not in d] + (
            [] if d.get("metadata", {}).get("name") else ["metadata.name"]
        )
        if missing:
            print(f"{path}: a {d.get('kind', '?')} lacks {', '.join(missing)}")
            failed = True
    print(f"{path}: {len(docs)} object(s)")

for crd in pathlib.Path("crds").glob("*.yaml"):
    if (pathlib.Path("charts/sluice/crds") / crd.name).read_text() != crd.read_text():
        print(f"charts/sluice/crds/{crd.name} differs from {crd}")
        failed = True

sys.exit(1 if failed else 0)
