"""The operations page runs the Grafana dashboard's own queries (read by panel title)."""

from __future__ import annotations

import json

import pytest

from stream_app.queue import operations
from tests.support.dashboard import DASHBOARD


def test_every_chart_names_a_dashboard_panel_with_queries():
    board = json.loads(DASHBOARD.read_text())
    for chart in operations.CHARTS:
        targets = operations.panel_targets(board, chart.panel_title)
        assert targets and all(expr for expr, _ in targets)


def test_an_unknown_panel_is_a_clear_error():
    with pytest.raises(operations.DashboardError, match="no panel titled 'Nope'"):
        operations.panel_targets({"panels": []}, "Nope")


def test_grafana_variables_are_replaced_as_grafana_does():
    # $__rate_interval = max(step + scrape interval, 4 x scrape interval) (Grafana's docs).
    expr = "rate(x[$__rate_interval]) + increase(y[$__range]) + z[$__interval]"
    out = operations.substitute(expr, step_s=15, window_s=3600, scrape_s=15)
    assert out == "rate(x[60s]) + increase(y[3600s]) + z[15s]"
    fast = operations.substitute("rate(x[$__rate_interval])", step_s=15, window_s=3600, scrape_s=1)
    assert fast == "rate(x[16s])"


def test_legends_follow_the_dashboard_format():
    assert operations.legend("lines {{state}}", {"state": "active"}) == "lines active"
    assert operations.legend("__auto", {"__name__": "m", "a": "1"}) == "a=1"


def test_cumulative_buckets_become_counts_per_bucket():
    series = [
        {"label": "0.1", "values": [None, 3.0]},
        {"label": "+Inf", "values": [None, 10.0]},
        {"label": "0.5", "values": [None, 7.0]},
    ]
    hist = operations.histogram(series)
    assert [b["count"] for b in hist["buckets"]] == [3.0, 4.0, 3.0]
    assert hist["latest_total"] == 10.0
