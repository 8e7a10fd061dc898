#!/usr/bin/env python3
"""Validates the custom resources in rendered manifests (stdin or files) that the Kubernetes
schemas of kubernetes-validate do not cover: KEDA's ScaledObject and TriggerAuthentication, the
Prometheus Operator's ServiceMonitor.

The schemas are the typed models that the PyPI packages cloudcoil-models-keda and
cloudcoil-models-prometheus-operator generate from those projects' CRDs. A model ignores fields
it does not know, so each object is also dumped back and compared with the input: a field that
does not survive the round trip is unknown to the CRD (a typo) and fails the check.

Any object of another API group outside Kubernetes' own fails too, so nothing goes unchecked.
Run with the venv's Python (deploy/install-test-tools.sh).
"""

import sys

import yaml
from cloudcoil import resources

CHECKED = {"keda.sh", "monitoring.coreos.com"}


def core(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return group in ("", "apps", "batch", "policy", "autoscaling") or group.endswith(".k8s.io")


def diff(want, got, path=""):
    """Paths in `want` whose value is missing or different in `got`."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k, v in want.items():
            if k not in got:
                yield f"{path}.{k} (unknown field)"
            else:
                yield from diff(v, got[k], f"{path}.{k}")
    elif isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (a, b) in enumerate(zip(want, got)):
            yield from diff(a, b, f"{path}[{i}]")
    elif want != got:
        yield f"{path}: {want!r} became {got!r}"


def main() -> int:
    docs = []
    for f in sys.argv[1:] or ["-"]:
        text = sys.stdin.read() if f == "-" else open(f, encoding="utf-8").read()
        docs += [d for d in yaml.safe_load_all(text) if d]
    failures, checked = [], 0
    for d in docs:
        api, kind = d.get("apiVersion", ""), d.get("kind", "")
        name = f"{kind}/{d.get('metadata', {}).get('name', '?')} ({api})"
        if core(api):
            continue
        if api.rpartition("/")[0] not in CHECKED:
            failures.append(f"{name}: no schema for this API group")
            continue
        try:
            obj = resources.parse(d)
        except Exception as e:  # pydantic.ValidationError, or an unknown kind
            failures.append(f"{name}: {e}")
            continue
        back = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
        bad = list(diff(d, back))
        if bad:
            failures.append(f"{name}: " + "; ".join(bad))
            continue
        checked += 1
        print(f"check-crds: {name} valid")
    for f in failures:
        print(f"check-crds: FAIL {f}", file=sys.stderr)
    print(f"check-crds: {checked} custom resources valid, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
