"""The operations page's charts: the Grafana dashboard's own queries, run against Prometheus.

The queries are read from the dashboard JSON (deploy/grafana/dashboards/chargecap.json) by
panel title, never retyped, so this page and Grafana always show the same thing. Grafana's
variables are replaced as Grafana does: ``$__rate_interval`` = max(step + scrape interval,
4 × scrape interval), ``$__interval`` = the step, ``$__range`` = the window. The service
asks Prometheus (``/api/v1/query_range``) server side: the browser talks only to the
service.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

DEFAULT_DASHBOARD = (
    Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "chargecap.json"
)
WINDOWS_HOURS = (1, 3, 6, 12, 24)
POINTS = 240


@dataclass(frozen=True)
class Chart:
    chart_id: str
    panel_title: str  # the dashboard panel whose queries it runs
    heading: str
    unit: str
    kind: str = "lines"  # or "histogram": the last value of each `le` series as bars


CHARTS = (
    Chart("throughput", "Events in per topic", "Throughput: events in per second, by topic", "events/s"),
    Chart("decisions", "Decisions per second", "Decisions per second (charge lines and alerts)", "/s"),
    Chart("latency", "Decision latency p50 / p99", "Decision latency p50 / p99", "s"),
    Chart("dead_letters", "Dead letters by error code", "Dead letters per second, by error code", "/s"),
    Chart(
        "denial_risk",
        "Denial-risk distribution",
        "Denial-risk distribution of the charge lines decided in the window",
        "charge lines",
        "histogram",
    ),
    Chart("revenue", "Open revenue at risk by payer class", "Open revenue at risk by payer class", "$"),
    Chart("revenue_queue", "Open revenue at risk by queue", "Open revenue at risk by work queue", "$"),
)


class DashboardError(Exception):
    pass


def panel_targets(dashboard: dict, title: str) -> list[tuple[str, str]]:
    """(expr, legendFormat) of every query of the panel titled `title` (rows included)."""

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels") or [])

    for panel in walk(dashboard.get("panels") or []):
        if panel.get("title") == title:
            targets = [(t["expr"], t.get("legendFormat") or "__auto") for t in panel.get("targets", [])]
            if targets:
                return targets
    raise DashboardError(f"the dashboard has no panel titled {title!r} with queries")


def load_dashboard(path: str | Path | None) -> dict:
    p = Path(path) if path else DEFAULT_DASHBOARD
    try:
        return orjson.loads(p.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DashboardError(f"cannot read the dashboard {p}: {exc}") from exc


def step_seconds(window_s: float, scrape_s: float) -> int:
    return max(int(math.ceil(window_s / POINTS)), int(math.ceil(scrape_s)), 1)


def substitute(expr: str, *, step_s: int, window_s: int, scrape_s: float) -> str:
    rate_interval = int(max(step_s + scrape_s, 4 * scrape_s))
    expr = expr.replace("$__rate_interval", f"{rate_interval}s").replace("$__range", f"{window_s}s")
    return expr.replace("$__interval", f"{step_s}s")


_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt == "__auto" or not fmt:
        inner = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
        return inner or "value"
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), fmt)


async def _query_range(
    http: aiohttp.ClientSession, base: str, expr: str, start: float, end: float, step: int
) -> list[dict]:
    async with http.get(
        f"{base.rstrip('/')}/api/v1/query_range",
        params={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)},
    ) as r:
        body = await r.json(content_type=None)
    if body.get("status") != "success":
        raise DashboardError(f"Prometheus refused a query: {body.get('error', r.status)}")
    return body["data"]["result"]


def _le_key(le: str) -> float:
    try:
        return float(le)
    except ValueError:
        return math.inf


async def chart_data(
    prometheus_url: str, dashboard: dict, hours: int, scrape_s: float, now: float | None = None
) -> dict:
    """Every chart of CHARTS over the last `hours`: aligned times and one series per legend."""
    window = int(hours * 3600)
    step = step_seconds(window, scrape_s)
    # Up to now (not floored to the step as Grafana does): the latest point is the latest rate.
    end = int(now if now is not None else time.time())
    start = end - window
    times = list(range(int(start), int(end) + 1, step))
    index = {t: i for i, t in enumerate(times)}
    charts, errors = [], []
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for chart in CHARTS:
            try:
                targets = panel_targets(dashboard, chart.panel_title)
                series = []
                for expr, fmt in targets:
                    q = substitute(expr, step_s=step, window_s=window, scrape_s=scrape_s)
                    for res in await _query_range(http, prometheus_url, q, start, end, step):
                        values: list[float | None] = [None] * len(times)
                        for ts, v in res["values"]:
                            i = index.get(int(round(float(ts))))
                            f = float(v)
                            if i is not None and math.isfinite(f):
                                values[i] = f
                        series.append({"label": legend(fmt, res["metric"]), "values": values})
            except (DashboardError, aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{chart.heading}: {exc}")
                series = []
            entry = {
                "id": chart.chart_id,
                "heading": chart.heading,
                "panel_title": chart.panel_title,
                "unit": chart.unit,
                "kind": chart.kind,
            }
            if chart.kind == "histogram":
                entry.update(histogram(series))
            else:
                series.sort(key=lambda s: s["label"])
                latest = {s["label"]: _last(s["values"]) for s in series}
                known = [v for v in latest.values() if v is not None]
                entry.update(
                    times=times,
                    series=series,
                    latest=latest,
                    latest_total=sum(known) if known else None,
                )
            charts.append(entry)
    return {"hours": hours, "step_seconds": step, "charts": charts, "errors": errors}


def _last(values: list[float | None]) -> float | None:
    for v in reversed(values):
        if v is not None:
            return v
    return None


def histogram(series: list[dict]) -> dict:
    """Cumulative `le` buckets (their last value) → the count in each bucket."""
    cumulative = sorted(
        ((s["label"], _last(s["values"]) or 0.0) for s in series), key=lambda x: _le_key(x[0])
    )
    buckets, previous, lower = [], 0.0, "0"
    for le, count in cumulative:
        upper = "∞" if _le_key(le) == math.inf else le
        buckets.append({"label": f"{lower}–{upper}", "count": max(count - previous, 0.0)})
        previous, lower = count, upper
    total = sum(b["count"] for b in buckets)
    return {"buckets": buckets, "latest_total": total if buckets else None}
