"""The Grafana dashboard's queries and a small PromQL reader, shared by the dashboard
test and the live Prometheus test."""

from __future__ import annotations

import json
import re

from tests.support.paths import REPO

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "chargecap.json"

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
GRAFANA_VARS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__[a-z_]+\}")
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
MATCHERS = re.compile(r"\{([^{}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
RANGE = re.compile(r"\[[^\]]*\]")
NUMBER = re.compile(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?(?![\w:])")
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def parse_expr(expr: str) -> dict:
    """A small PromQL reader: metric names, matchers (label, op, value), grouping labels."""
    e = GRAFANA_VARS.sub("5m", expr)
    matchers = []
    for body in MATCHERS.findall(e):
        matchers += MATCHER.findall(body)
        assert STRING.sub("", MATCHER.sub("", body)).strip(" ,") == "", f"odd matcher: {body}"
    e = MATCHERS.sub(" ", e)
    e = STRING.sub(" ", e)
    grouping = set()
    for _, labels in GROUPING.findall(e):
        grouping |= {x.strip() for x in labels.split(",") if x.strip()}
    e = GROUPING.sub(" ", e)
    e = RANGE.sub(" ", e)
    e = re.sub(r"\boffset\s+\w+", " ", e)
    e = NUMBER.sub(" ", e)
    metrics = set()
    for m in IDENT.finditer(e):
        word = m.group(0)
        if word.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", e[m.end() :]):
            continue  # a function call
        metrics.add(word)
    return {"metrics": metrics, "matchers": matchers, "grouping": grouping}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def targets() -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in all_panels(dashboard()) for t in p.get("targets", [])]
