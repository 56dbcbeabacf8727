"""`python -m stream_app demo` end to end (short), against the real broker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fmt", ["canonical", "fhir", "hl7v2"])
def test_demo_runs_and_shuts_down(kafka_bootstrap, unique_name, fmt):
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app", "demo", "--duration", "4", "--rate", "150",
         "--demo-settle", "1", "--broker", f"kafka://{kafka_bootstrap}",
         "--topic-prefix", unique_name("demo") + ".", "--format", fmt],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "chargecap demo summary" in out
    assert "events consumed" in out and "revenue at risk" in out
    assert "/metrics" in out
    assert "demo stopped (worker shut down" in out
    consumed = next(line for line in out.splitlines() if line.startswith("events consumed"))
    assert int(consumed.split()[-1].replace(",", "")) == 600
