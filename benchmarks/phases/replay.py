"""Phase `replay`: `bench_replay.py` on the same records (no Kafka)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile

import bench_replay

from phases.common import SEED


def phase_replay(n: int) -> dict:
    """bench_replay.main on the same records; removes the NDJSON tmp dir it leaves behind."""
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*a, **kw):
        made.append(real_mkdtemp(*a, **kw))
        return made[-1]

    tempfile.mkdtemp = mkdtemp  # only this process, only during the call
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return bench_replay.main(["--records", str(n), "--seed", str(SEED)])
    finally:
        tempfile.mkdtemp = real_mkdtemp
        for d in made:
            shutil.rmtree(d, ignore_errors=True)

