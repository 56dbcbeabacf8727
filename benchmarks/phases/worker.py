"""The benchmark's own worker runner: `python -m stream_app worker` (or several, as one
group) with settle/close far in the future, a RocksDB or memory store, CPU and RSS
sampling and an optional py-spy/cProfile profile. The tests have their own harness
(tests/support/worker.py); a benchmark does not depend on the test tree."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from phases.common import FAR, REPO, Probe, free_port, log, metric_sum, parse_prometheus


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM (a Faust worker stops cleanly on it), SIGKILL if still there after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Worker:
    """`python -m stream_app worker` as a subprocess, with its metrics and its RSS."""

    def __init__(self, bootstrap: str, app_id: str, prefix: str, store: str, workdir: Path,
                 extra: list[str] | None = None, member: int = 0):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.app_id = app_id
        name = app_id if member == 0 else f"{app_id}-{member}"
        self.name = name
        self.data_dir = workdir / f"data-{name}"
        self.log_path = workdir / f"worker-{name}.log"
        self.cmd = [
            sys.executable, "-m", "stream_app", "worker",
            "--broker", ",".join(f"kafka://{b}" for b in bootstrap.split(",")),
            "--app-id", app_id, "--topic-prefix", prefix, "--store", store,
            "--data-dir", str(self.data_dir), "--metrics-addr", f"127.0.0.1:{port}",
            "--settle-seconds", str(FAR), "--close-after-seconds", str(FAR),
            *(extra or []),
        ]
        self.proc: subprocess.Popen | None = None
        self.spy: subprocess.Popen | None = None
        self.profile_path: Path | None = None

    def start(self) -> Worker:
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def start_profile(self, out_dir: Path | None) -> None:
        """py-spy (collapsed stacks, GIL-holding samples only) on the worker, if asked."""
        if out_dir is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.profile_path = out_dir / f"{self.name}.txt"
        self.spy = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "100",
             "--nolineno", "--gil", "--output", str(self.profile_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_profile(self) -> None:
        if self.spy is None:
            return
        self.spy.send_signal(signal.SIGINT)
        try:
            self.spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.spy.kill()
            self.spy.wait(timeout=10)
        self.spy = None
        log(f"profile of {self.name}: {self.profile_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except (urllib.error.URLError, OSError):
            return 0, ""

    def scrape(self):
        status, body = self.get("/metrics")
        return parse_prometheus(body) if status == 200 else []

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.app_id} exited with {self.proc.returncode}; "
                               f"log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = 180.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            status, _ = await asyncio.to_thread(self.get, "/healthz", 2.0)
            if status == 200:
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError(f"worker {self.app_id} not ready after {timeout:.0f} s; "
                           f"log tail:\n{self.log_tail()}")

    async def wait_processed(self, n: int, input_topics: list[str], probe: Probe,
                             out_topics: list[str], quiet: float, timeout: float) -> dict:
        """Until every input is consumed and the outputs have been still for `quiet` s."""
        t0 = time.monotonic()
        first_consumed = None
        last_state = None
        last_change = time.monotonic()
        consumed = 0
        while True:
            self.check_alive()
            now = time.monotonic()
            if now - t0 > timeout:
                raise TimeoutError(f"worker {self.app_id}: {consumed}/{n} consumed after "
                                   f"{timeout:.0f} s; log tail:\n{self.log_tail()}")
            samples = await asyncio.to_thread(self.scrape)
            consumed = int(sum(metric_sum(samples, "chargecap_events_consumed_total", topic=t)
                               for t in input_topics))
            if consumed and first_consumed is None:
                first_consumed = time.time()
            ends = await probe.end_offsets(out_topics) if consumed >= n else None
            state = (
                consumed,
                metric_sum(samples, "chargecap_charge_lines_emitted_total"),
                metric_sum(samples, "chargecap_alerts_emitted_total"),
                metric_sum(samples, "chargecap_events_dead_lettered_total"),
                tuple(sorted((str(k), v) for k, v in ends.items())) if ends else None,
            )
            if state != last_state:
                last_state, last_change = state, now
            elif consumed >= n and now - last_change >= quiet:
                return {"consumed": consumed, "first_consumed_poll": first_consumed,
                        "last_change_poll": time.time() - (now - last_change),
                        "samples": samples}
            await asyncio.sleep(0.1 if consumed < n else 0.25)

    def stop(self) -> None:
        self.stop_profile()
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            terminate(self.proc)
        finally:
            self._log.close()


class WorkerGroup(Worker):
    """`--workers N` processes of the worker in one consumer group (one per core is how a
    single-threaded Faust app uses a machine); scraped and waited on as one."""

    def __init__(self, bootstrap: str, app_id: str, prefix: str, store: str, workdir: Path,
                 n: int, extra: list[str] | None = None):
        self.members = [Worker(bootstrap, app_id, prefix, store, workdir, extra, member=i)
                        for i in range(n)]
        self.app_id = app_id

    def start(self) -> WorkerGroup:
        for w in self.members:
            w.start()
        return self

    def start_profile(self, out_dir: Path | None) -> None:
        for w in self.members:
            w.start_profile(out_dir)

    def stop_profile(self) -> None:
        for w in self.members:
            w.stop_profile()

    @property
    def pid(self) -> int:
        return self.members[0].pid

    def scrape(self):
        return [s for w in self.members for s in w.scrape()]

    def check_alive(self) -> None:
        for w in self.members:
            w.check_alive()

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(w.log_tail(n) for w in self.members)

    async def wait_ready(self, timeout: float = 180.0) -> float:
        """Until every member says ready at the same time (none rebalancing)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            codes = [(await asyncio.to_thread(w.get, "/healthz", 2.0))[0] for w in self.members]
            if all(c == 200 for c in codes):
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError(f"workers {self.app_id} not ready after {timeout:.0f} s; "
                           f"log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        for w in self.members:
            w.stop()

