"""benchmarks/queue_bench.py runs end to end at toy sizes (no thresholds: a measurement)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.queue.pg import REPO

pytestmark = pytest.mark.integration


def test_queue_bench_smoke(kafka_bootstrap, pg_server, monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_PORT", kafka_bootstrap.rsplit(":", 1)[1])
    monkeypatch.setenv("PG_PORT", str(pg_server[1]))
    spec = importlib.util.spec_from_file_location("queue_bench", REPO / "benchmarks" / "queue_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--smoke"])
    assert result["sink_db"]["records"] == 2000 and result["sink_db"]["upserts_per_s"] > 0
    assert result["sink_kafka"]["records"] == 2000 and result["sink_kafka"]["upserts_per_s"] > 0
    assert set(result["list"]["shapes"]) >= {"default (dollars at risk)", "by age", "overview"}
    assert result["list"]["shapes"]["default (dollars at risk)"]["total"] > 0
