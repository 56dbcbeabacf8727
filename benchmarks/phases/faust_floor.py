"""Phase `faust`: the same pass-through in one Faust agent configured as the worker's
first stage (`faust_passthrough.py`, a subprocess), the most any pipeline built on the
worker's Faust configuration could reach."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from phases.common import REPO, Probe, cpu_seconds_of, create_topic
from phases.worker import terminate


async def phase_faust(bootstrap: str, prefix: str, n: int, workdir: Path, app_id: str,
                      quiet: float, timeout: float) -> dict:
    out_topic = prefix + "bench.faust-passthrough"
    await create_topic(bootstrap, out_topic, 3)
    cmd = [sys.executable, str(REPO / "benchmarks" / "faust_passthrough.py"),
           "--out", out_topic, "--app-id", app_id, "--topic-prefix", prefix,
           "--broker", ",".join(f"kafka://{b}" for b in bootstrap.split(",")),
           "--store", "memory://", "--data-dir", str(workdir / f"data-{app_id}")]
    log_path = workdir / f"{app_id}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            t0 = time.monotonic()
            cpu0 = cpu_seconds_of(proc.pid)
            async with Probe(bootstrap) as probe:
                produced, last_change, last = 0, time.monotonic(), -1
                while produced < n or time.monotonic() - last_change < quiet:
                    if proc.poll() is not None:
                        raise RuntimeError(f"faust passthrough exited with {proc.returncode}; "
                                           f"log: {log_path.read_text(errors='replace')[-2000:]}")
                    if time.monotonic() - t0 > timeout:
                        raise TimeoutError(f"faust passthrough: {produced}/{n} after {timeout:.0f} s")
                    produced = sum((await probe.end_offsets([out_topic])).values())
                    if produced != last:
                        last, last_change = produced, time.monotonic()
                    await asyncio.sleep(0.1 if produced < n else 0.25)
                cpu = cpu_seconds_of(proc.pid) - cpu0
                first = await probe.edge_timestamps([out_topic], last=False)
                end = await probe.edge_timestamps([out_topic], last=True)
        finally:
            terminate(proc)
    if produced != n:
        raise RuntimeError(f"faust passthrough produced {produced} of {n}")
    seconds = (max(end) - min(first)) / 1000.0
    return {"produced": produced, "seconds": seconds,
            "eps": n / seconds if seconds > 0 else 0.0,
            "cpu_us_per_event": cpu / n * 1e6 if n else 0.0}

