"""`benchmarks/bench.py --smoke` runs every phase against the real broker.

No timing thresholds: only that the harness works and reports every figure as a sane,
positive number. The real measurement is `make bench`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.support.paths import REPO

FIELDS = (
    "raw_passthrough_eps",
    "faust_passthrough_eps",
    "faust_ratio",
    "pipeline_eps",
    "pipeline_ratio",
    "pipeline_vs_faust",
    "worker_cpu_vs_replay",
    "scaleout_eps",
    "scaleout_ratio",
    "replay_eps",
    "parse_only_eps",
    "replay_ratio",
    "replay_jobs2_eps",
    "replay_jobs_ratio",
    "latency_p50_s",
    "latency_p99_s",
    "bytes_per_open_patient_day",
    "records",
)


@pytest.mark.integration
def test_bench_smoke_reports_every_figure(kafka_bootstrap):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--smoke",
         "--broker", kafka_bootstrap],
        cwd=REPO, capture_output=True, text=True, timeout=360,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    for field in FIELDS:
        value = result.get(field)
        assert isinstance(value, int | float) and not isinstance(value, bool), (field, value)
        assert math.isfinite(value), (field, value)
    for field in FIELDS:
        if field != "bytes_per_open_patient_day":  # RSS growth is noisy at smoke sizes
            assert result[field] > 0, (field, result[field])
    assert result["records"] >= 1000
    assert result["latency_p50_s"] <= result["latency_p99_s"]
    assert result["machine"]["cores"] >= 1
    assert result["machine"]["ram_bytes"] > 0
    assert isinstance(result["machine"]["cpu_model"], str)
    assert result["smoke"] is True
    assert all(v >= 0 for v in result["durations_s"].values())
    details = result["details"]
    assert details["pipeline"]["charge_line_messages"] > 0
    assert details["scaleout"]["charge_line_messages"] > 0
    # the Faust floor moved every input message, valid or not, exactly once
    assert details["faust"]["produced"] == details["raw"]["consumed"] == result["records"]
    assert details["latency"]["outputs"] > 0
    assert details["memory_rocksdb"]["open_patient_days"] == \
        details["memory_rocksdb"]["expected_open_patient_days"]
    # the human table comes before the JSON line
    assert any("raw_passthrough_eps" in line for line in lines[:-1])
