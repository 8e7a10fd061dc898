#!/usr/bin/env python3
"""Checks the Grafana dashboard's queries. Standard library only.

    check-dashboard.py PROMETHEUS_URL [DASHBOARD]   run every panel's expr as an instant query
                                                    (/api/v1/query); exit 1 listing each expr
                                                    that fails or returns no series
    check-dashboard.py --lint [DASHBOARD]           structure only: every panel has a datasource
                                                    and targets with a non-empty expr, and uses
                                                    no variable the dashboard does not define
    check-dashboard.py --rules [DASHBOARD]          print the exprs as a Prometheus rule file (one
                                                    recording rule each) so `promtool check rules`
                                                    parses them with Prometheus' own parser

DASHBOARD defaults to deploy/grafana/dashboards/moments.json. Grafana's interval variables
become 1m ($__rate_interval, $__interval, $__range), so a live check needs two scrapes within the
last minute.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / "moments.json"
# Grafana's built-in variables that may appear in a query, and what an instant query uses.
BUILTIN = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m"}
VAR = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)")


def panels(items):
    """Every panel, rows' nested panels included."""
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def queries(dash):
    """(panel title, refId, expr) of every target of every non-row panel."""
    for p in panels(dash.get("panels", [])):
        if p.get("type") == "row":
            continue
        for t in p.get("targets", []):
            yield p.get("title", f"panel {p.get('id')}"), t.get("refId", "?"), t.get("expr", "")


def substitute(expr):
    return VAR.sub(lambda m: BUILTIN.get(m.group(1) or m.group(2), m.group(0)), expr)


def lint(dash):
    problems = []
    defined = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    for name in ("uid", "title", "schemaVersion", "panels"):
        if name not in dash:
            problems.append(f"dashboard has no {name}")
    ids = [p.get("id") for p in panels(dash.get("panels", []))]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    for p in panels(dash.get("panels", [])):
        if p.get("type") == "row":
            continue
        title = p.get("title") or f"panel {p.get('id')}"
        if not p.get("title"):
            problems.append(f"{title}: no title")
        if "gridPos" not in p:
            problems.append(f"{title}: no gridPos")
        ds = p.get("datasource")
        if not isinstance(ds, dict) or not ds.get("uid"):
            problems.append(f"{title}: no datasource uid")
        if not p.get("targets"):
            problems.append(f"{title}: no targets")
        for t in p.get("targets", []):
            ref = t.get("refId", "?")
            if not str(t.get("expr", "")).strip():
                problems.append(f"{title} [{ref}]: empty expr")
            tds = t.get("datasource", ds)
            if not isinstance(tds, dict) or not tds.get("uid"):
                problems.append(f"{title} [{ref}]: no datasource uid")
        text = json.dumps(p)
        for m in VAR.finditer(text):
            name = m.group(1) or m.group(2)
            if name not in defined and name not in BUILTIN:
                problems.append(f"{title}: uses ${name}, which the dashboard does not define")
    return problems


def rules(dash):
    out = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (title, ref, expr) in enumerate(queries(dash)):
        out.append(f"      # {title} [{ref}]")
        out.append(f"      - record: dashboard:query_{i}")
        out.append(f"        expr: {json.dumps(substitute(expr))}")
    return "\n".join(out) + "\n"


def live(base, dash):
    failures, n = [], 0
    for title, ref, expr in queries(dash):
        n += 1
        q = substitute(expr)
        url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            failures.append(f"{title} [{ref}]: HTTP {e.code} {e.read().decode(errors='replace')[:300]}: {q}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{title} [{ref}]: {e}: {q}")
            continue
        if body.get("status") != "success":
            failures.append(f"{title} [{ref}]: {body.get('error', body)}: {q}")
        elif not body.get("data", {}).get("result"):
            failures.append(f"{title} [{ref}]: no series: {q}")
    return n, failures


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    mode, rest = argv[0], argv[1:]
    path = Path(rest[0]) if rest else DEFAULT
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"check-dashboard: cannot read {path}: {e}", file=sys.stderr)
        return 1
    if mode == "--lint":
        problems = lint(dash)
        for p in problems:
            print(f"check-dashboard: {p}", file=sys.stderr)
        count = sum(1 for _ in queries(dash))
        print(f"check-dashboard: {path.name}: {count} queries, {len(problems)} problems")
        return 1 if problems else 0
    if mode == "--rules":
        sys.stdout.write(rules(dash))
        return 0
    if mode.startswith("-"):
        print(f"check-dashboard: unknown option {mode}", file=sys.stderr)
        return 2
    n, failures = live(mode, dash)
    for f in failures:
        print(f"check-dashboard: FAIL {f}", file=sys.stderr)
    print(f"check-dashboard: {n - len(failures)} of {n} queries returned series")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
