"""`make bench`: the worker against the physical limit on the same broker (issue 6).

One run, one broker, one generated stream (the generator's realistic mix, seed 7, the
same records `bench_replay.py` replays). Phases (`--only` picks some):

* **raw**: `raw_passthrough.py` (aiokafka consumer → orjson → aiokafka producer, batched)
  over the pre-produced input → `raw_passthrough_eps`.
* **faust**: `faust_passthrough.py`, the same work in one Faust agent configured as the
  worker's first stage (its Faust app, batching, batched sends), a subprocess over the
  same input; timed from the first to the last Kafka timestamp of its output topic →
  `faust_passthrough_eps`, `faust_ratio` (= faust / raw): the most any pipeline built on
  the worker's Faust configuration could reach on this machine.
* **pipeline**: the real worker (`python -m stream_app worker`, a subprocess with its own
  app id, RocksDB store in a tmp dir) over the *same* pre-produced input. Start = the
  Kafka timestamp of the first message the worker wrote to its repartition topic (its
  first stage stamps it when it forwards its first input); end = the newest Kafka
  timestamp among the last messages of the output topics (charge lines, alerts, dead
  letters), read once the worker's metrics say every input was consumed and its output
  counters and the output topics' end offsets have been still for a quiet period.
  Settle/close are set far in the future, so every decision measured is a present-state
  one (no settle/close work in the window). → `pipeline_eps`, `pipeline_ratio`.
* **replay**: `bench_replay.main(["--records", N])` → `replay_eps`, `parse_only_eps`,
  `replay_ratio`.
* **latency**: a fresh worker on fresh topics; `--rate` events/s for `--latency-seconds`
  (paced every 5 ms). Latency per output = output Kafka timestamp (CreateTime, set by the
  worker's producer) − the newest input timestamp among its `source_event_ids` (the
  inputs' CreateTime set by this harness at send). Final and `MISSING_NDC` outputs are
  excluded (none happen with settle/close in the future). Also reported: the same against
  the patient's newest input sent before the output, and the quantiles of the worker's
  own `chargecap_decision_latency_seconds` histogram.
* **memory**: a fresh worker (RocksDB store in a tmp dir, settle/close in the future) fed
  records until `--open-days` distinct patient-days are open; resident-set growth of the
  worker process (/proc/<pid>/statm) from ready-and-idle to all-consumed-and-quiet,
  divided by the worker's `chargecap_open_patient_days`. Repeated with `memory://`.

Prints a human table, then a last line of JSON. No thresholds: this is a measurement.
Patient ids are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_replay  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from raw_passthrough import run_raw_passthrough  # noqa: E402

from stream_app.engine.records import DeadLetter, parse_record  # noqa: E402
from stream_app.generate import generate_stream, produce  # noqa: E402
from stream_app.topics import apply_topics  # noqa: E402
from stream_app.vocabulary import INPUT_TOPICS, OUTPUT_TOPICS  # noqa: E402

KAFKA_SH = REPO / "deploy" / "kafka-local" / "kafka.sh"
PHASES = ("raw", "faust", "pipeline", "replay", "latency", "memory")
FAR = 10**9  # settle/close seconds: never within a benchmark
SEED = 7  # bench_replay's default seed: the pipeline and replay see the same records
LINES, ALERTS, DEAD = OUTPUT_TOPICS


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    return {"cores": os.cpu_count(), "ram_bytes": mem, "cpu_model": model,
            "python": sys.version.split()[0]}


def git_state() -> dict:
    """The code measured: HEAD and whether stream_app/ has uncommitted changes."""
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "stream_app_dirty": bool(git("status", "--porcelain", "--", "stream_app"))}


def loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- broker


def ensure_broker(broker: str | None) -> str:
    """host:port of the broker; without --broker, `kafka.sh up` (a no-op when it runs)."""
    if broker:
        bootstrap = ",".join(p.split("://")[-1] for p in broker.split(","))
    else:
        port = os.environ.get("KAFKA_PORT", "9092")
        bootstrap = f"127.0.0.1:{port}"
        log(f"starting or reusing the local Kafka ({KAFKA_SH.relative_to(REPO)} up)")
        subprocess.run(["bash", str(KAFKA_SH), "up"], check=True, stdout=sys.stderr)
    for host in bootstrap.split(","):
        if host.split(":")[0] not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"bench: only local brokers (127.0.0.1), not {host}")
    return bootstrap


async def wait_topics(bootstrap: str, topics: list[str]) -> None:
    """Until every partition of `topics` has a leader (fresh topics: no produce retries)."""
    async with Probe(bootstrap) as probe:
        tps = await probe.tps(topics)
        cluster = probe.consumer._client.cluster  # noqa: SLF001
        for _ in range(100):
            if all(cluster.leader_for_partition(tp) not in (None, -1) for tp in tps):
                return
            await asyncio.sleep(0.1)
            await probe.consumer._client.force_metadata_update()  # noqa: SLF001


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="chargecap-bench")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    await wait_topics(bootstrap, [name])


async def delete_topics(bootstrap: str, prefixes: list[str]) -> int:
    """Deletes the topics this run created (names starting with one of its unique prefixes)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="chargecap-bench")
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if any(t.startswith(p) for p in prefixes)]
        if names:
            await admin.delete_topics(names)
        return len(names)
    finally:
        await admin.close()


class Probe:
    """A group-less consumer for end offsets, first/last timestamps and reading topics."""

    def __init__(self, bootstrap: str):
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id="chargecap-bench-probe",
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024)

    async def __aenter__(self):
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc):
        await self.consumer.stop()

    async def tps(self, topics) -> list[TopicPartition]:
        out = []
        for topic in topics:
            parts = None
            for _ in range(100):
                await self.consumer._client.force_metadata_update()  # noqa: SLF001
                parts = self.consumer.partitions_for_topic(topic)
                if parts:
                    break
                await asyncio.sleep(0.1)
            if not parts:
                raise RuntimeError(f"topic {topic} not found")
            out.extend(TopicPartition(topic, p) for p in sorted(parts))
        return out

    async def end_offsets(self, topics) -> dict:
        return await self.consumer.end_offsets(await self.tps(topics))

    async def edge_timestamps(self, topics, last: bool) -> list[int]:
        """Kafka timestamps (ms) of the first (or last) message of every non-empty partition."""
        tps = await self.tps(topics)
        ends = await self.consumer.end_offsets(tps)
        begins = await self.consumer.beginning_offsets(tps)
        want = {tp for tp in tps if ends[tp] > begins[tp]}
        if not want:
            return []
        self.consumer.assign(list(want))
        for tp in want:
            self.consumer.seek(tp, ends[tp] - 1 if last else begins[tp])
        got: dict = {}
        deadline = time.monotonic() + 30
        while len(got) < len(want) and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                if tp in want and tp not in got and msgs:
                    got[tp] = msgs[-1].timestamp if last else msgs[0].timestamp
                    self.consumer.pause(tp)
        self.consumer.resume(*want)
        self.consumer.unsubscribe()
        return list(got.values())

    async def read_all(self, topics) -> list:
        """Every message currently in `topics` (up to the end offsets at call time)."""
        tps = await self.tps(topics)
        ends = await self.consumer.end_offsets(tps)
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        out = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500, max_records=10000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        out.append(m)
                if tp in remaining and await self.consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        self.consumer.unsubscribe()
        return out


# ------------------------------------------------------------------------------- worker


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels_text, value = rest.rsplit("}", 1)
            labels = {}
            for part in _split_labels(labels_text):
                k, v = part.split("=", 1)
                labels[k.strip()] = v.strip().strip('"')
        else:
            name, value = line.split(None, 1)
            labels = {}
        try:
            samples.append((name.strip(), labels, float(value.split()[0])))
        except (ValueError, IndexError):
            continue
    return samples


def _split_labels(text: str) -> list[str]:
    parts, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


def metric_sum(samples, name: str, **match) -> float:
    return sum(v for n, labels, v in samples
               if n == name and all(labels.get(k) == want for k, want in match.items()))


def histogram_quantile(samples, name: str, q: float) -> float | None:
    """Prometheus-style quantile over a histogram's buckets (summed over label sets)."""
    buckets: dict[float, float] = {}
    for n, labels, v in samples:
        if n == name + "_bucket":
            le = math.inf if labels["le"] in ("+Inf", "inf") else float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_bound
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return bounds[-2] if len(bounds) > 1 else None


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

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except (urllib.error.URLError, OSError):
            return 0, ""

    def scrape(self):
        status, body = self._get("/metrics")
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
            status, _ = await asyncio.to_thread(self._get, "/healthz", 2.0)
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
            codes = [(await asyncio.to_thread(w._get, "/healthz", 2.0))[0] for w in self.members]
            if all(c == 200 for c in codes):
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError(f"workers {self.app_id} not ready after {timeout:.0f} s; "
                           f"log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        for w in self.members:
            w.stop()


# ------------------------------------------------------------------------------- phases


def prefixed(messages, prefix: str):
    return [(prefix + t, k, v) for t, k, v in messages]


async def produce_all(messages, bootstrap: str) -> float:
    t0 = time.perf_counter()
    sent = await produce(messages, bootstrap, progress=False, chunk=5000)
    if sent != len(messages):
        raise RuntimeError(f"produced {sent} of {len(messages)}")
    return time.perf_counter() - t0


async def phase_raw(bootstrap: str, prefix: str, n: int) -> dict:
    out_topic = prefix + "bench.raw-passthrough"
    await create_topic(bootstrap, out_topic, 3)
    res = await run_raw_passthrough(bootstrap, [prefix + t for t in INPUT_TOPICS], out_topic, n)
    if res["produced"] != n:
        raise RuntimeError(f"raw passthrough produced {res['produced']} of {n}")
    return res


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


async def phase_pipeline(bootstrap: str, prefix: str, n: int, workdir: Path, app_id: str,
                         quiet: float, timeout: float, profile: Path | None = None,
                         workers: int = 1) -> dict:
    w = WorkerGroup(bootstrap, app_id, prefix, "rocksdb://", workdir, workers).start()
    try:
        t_start = time.monotonic()
        w.start_profile(profile)
        ready_s = await w.wait_ready()
        cpu0 = sum(cpu_seconds_of(m.pid) for m in w.members)
        async with Probe(bootstrap) as probe:
            done = await w.wait_processed(n, [prefix + t for t in INPUT_TOPICS], probe,
                                          [prefix + t for t in OUTPUT_TOPICS], quiet, timeout)
            # includes the quiet wait at the end (an idle worker uses ~3 % of a core)
            cpu = sum(cpu_seconds_of(m.pid) for m in w.members) - cpu0
            w.stop_profile()
            first = await probe.edge_timestamps([f"{app_id}-patient-records"], last=False)
            last = await probe.edge_timestamps([prefix + t for t in OUTPUT_TOPICS], last=True)
            ends = await probe.end_offsets([prefix + t for t in OUTPUT_TOPICS])
        wall = time.monotonic() - t_start
    finally:
        w.stop()
    samples = done["samples"]
    seconds = (max(last) - min(first)) / 1000.0
    poll_seconds = done["last_change_poll"] - (done["first_consumed_poll"] or math.nan)
    outputs = {t: sum(v for tp, v in ends.items() if tp.topic == prefix + t) for t in OUTPUT_TOPICS}
    return {
        "seconds": seconds,
        "eps": n / seconds if seconds > 0 else 0.0,
        "poll_seconds": poll_seconds,
        "poll_eps": n / poll_seconds if poll_seconds > 0 else 0.0,
        "ready_s": ready_s,
        "wall_s": wall,
        "worker_cpu_s": cpu,
        "worker_cpu_us_per_event": cpu / n * 1e6 if n else 0.0,
        "charge_line_messages": outputs[LINES],
        "alert_messages": outputs[ALERTS],
        "dead_letter_messages": outputs[DEAD],
        "lines_emitted_metric": metric_sum(samples, "chargecap_charge_lines_emitted_total"),
        "alerts_emitted_metric": metric_sum(samples, "chargecap_alerts_emitted_total"),
        "open_patient_days": metric_sum(samples, "chargecap_open_patient_days"),
    }


async def produce_paced(messages, bootstrap: str, rate: float, seconds: float):
    """Sends at `rate` msg/s (due messages every 5 ms); returns {event_id: ts_ms}, (pid, ts)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                client_id="chargecap-bench-latency")
    await producer.start()
    n = min(len(messages), int(rate * seconds))
    sent_ts: dict[str, int] = {}
    patient_ts: list[tuple[str, int]] = []
    meta = []
    for _t, _k, v in messages[:n]:
        d = orjson.loads(v)
        meta.append((d.get("event_id"), d.get("patient_id")))
    loop = asyncio.get_running_loop()
    futures = []
    try:
        t0 = loop.time()
        i = 0
        while i < n:
            due = min(n, int((loop.time() - t0) * rate) + 1)
            while i < due:
                topic, key, value = messages[i]
                ts = int(time.time() * 1000)
                futures.append(await producer.send(topic, value=value, key=key, timestamp_ms=ts))
                eid, pid = meta[i]
                if eid is not None and eid not in sent_ts:
                    sent_ts[eid] = ts
                if pid is not None:
                    patient_ts.append((pid, ts))
                i += 1
            if len(futures) > 5000:
                await asyncio.gather(*futures)
                futures = []
            await asyncio.sleep(0.005)
        await asyncio.gather(*futures)
        elapsed = loop.time() - t0
        await producer.flush()
    finally:
        await producer.stop()
    return n, elapsed, sent_ts, patient_ts


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[idx]


async def phase_latency(bootstrap: str, prefix: str, messages, rate: float, seconds: float,
                        workdir: Path, app_id: str, quiet: float, workers: int = 1) -> dict:
    await apply_topics(bootstrap, prefix)
    await wait_topics(bootstrap, [prefix + t for t in INPUT_TOPICS + OUTPUT_TOPICS])
    w = WorkerGroup(bootstrap, app_id, prefix, "rocksdb://", workdir, workers).start()
    try:
        await w.wait_ready()
        await asyncio.sleep(quiet / 3)
        n, elapsed, sent_ts, patient_ts = await produce_paced(
            prefixed(messages, prefix), bootstrap, rate, seconds)
        async with Probe(bootstrap) as probe:
            done = await w.wait_processed(n, [prefix + t for t in INPUT_TOPICS], probe,
                                          [prefix + t for t in OUTPUT_TOPICS], quiet, 300)
            outs = await probe.read_all([prefix + LINES, prefix + ALERTS])
    finally:
        w.stop()
    by_patient: dict[str, list[int]] = {}
    for pid, ts in patient_ts:
        by_patient.setdefault(pid, []).append(ts)
    for lst in by_patient.values():
        lst.sort()
    lat_src, lat_trigger = [], []
    # event id -> (ts of the earliest output naming it, newest send time among that
    # output's sources: when the event became decidable)
    first_decision: dict[str, tuple[int, int]] = {}
    skipped = 0
    for m in outs:
        v = orjson.loads(m.value)
        if v.get("final") or v.get("reason_code") == "MISSING_NDC":
            skipped += 1
            continue
        named = []
        for e in v.get("source_event_ids") or ():
            t = sent_ts.get(e)
            if t is not None and t <= m.timestamp:
                named.append(e)
        if not named:
            skipped += 1
            continue
        newest = max(sent_ts[e] for e in named)
        for e in named:
            if m.timestamp < first_decision.get(e, (1 << 62, 0))[0]:
                first_decision[e] = (m.timestamp, newest)
        lat_src.append((m.timestamp - newest) / 1000.0)
        lst = by_patient.get(v.get("patient_id"), [])
        j = bisect.bisect_right(lst, m.timestamp)
        if j:
            lat_trigger.append((m.timestamp - lst[j - 1]) / 1000.0)
    lat_src.sort()
    lat_trigger.sort()
    # Event to decision: each input event's first output that names it, timed from the
    # moment it became decidable: the newest send among that output's sources. A dispense
    # sent before its administration (the generator's pharmacy sends most of them ahead,
    # median ~1,900 messages) cannot be decided before the administration arrives; timing
    # it from its own send (`own_*`, the session-5 figure) charges the worker for that wait.
    lat_event = sorted((t - newest) / 1000.0 for t, newest in first_decision.values())
    lat_own = sorted((t - sent_ts[e]) / 1000.0 for e, (t, _n) in first_decision.items())
    dump = os.environ.get("BENCH_LATENCY_DUMP")
    if dump:  # (sent ms, s from decidable, s from own send, event id): latency over time
        rows = sorted((sent_ts[e], (t - n) / 1000.0, (t - sent_ts[e]) / 1000.0, e)
                      for e, (t, n) in first_decision.items())
        Path(dump).write_bytes(orjson.dumps(rows))
    samples = done["samples"]
    name = "chargecap_decision_latency_seconds"
    return {
        "sent": n,
        "offered_eps": n / elapsed if elapsed > 0 else 0.0,
        "outputs": len(lat_src),
        "outputs_skipped": skipped,
        "p50_s": quantile(lat_src, 0.50),
        "p99_s": quantile(lat_src, 0.99),
        "max_s": lat_src[-1] if lat_src else float("nan"),
        "events_decided": len(lat_event),
        "event_p50_s": quantile(lat_event, 0.50),
        "event_p99_s": quantile(lat_event, 0.99),
        "event_max_s": lat_event[-1] if lat_event else float("nan"),
        "own_p50_s": quantile(lat_own, 0.50),
        "own_p99_s": quantile(lat_own, 0.99),
        "trigger_p50_s": quantile(lat_trigger, 0.50),
        "trigger_p99_s": quantile(lat_trigger, 0.99),
        "hist_p50_s": histogram_quantile(samples, name, 0.50),
        "hist_p99_s": histogram_quantile(samples, name, 0.99),
    }


def memory_messages(open_days: int, have: list) -> tuple[list, int]:
    """A prefix of the realistic stream holding exactly `open_days` distinct patient-days."""
    def take(messages):
        days: set = set()
        for i, (_t, _k, v) in enumerate(messages):
            rec = parse_record(v)
            if isinstance(rec, DeadLetter):
                continue
            day = (rec.patient_id, getattr(rec, "service_date", None))
            if day not in days:
                if len(days) == open_days:
                    return messages[:i], len(days)
                days.add(day)
        return None, len(days)

    got, _ = take(have)
    if got is not None:
        return got, open_days
    # about three records per patient-day in the default mix; a different seed, more records
    stream = generate_stream(SEED + 1, records=int(open_days * 3.4) + 100)
    got, count = take(stream.messages)
    if got is None:
        return stream.messages, count
    return got, open_days


async def phase_memory(bootstrap: str, prefix: str, messages, open_days: int, store: str,
                       workdir: Path, app_id: str, quiet: float) -> dict:
    await apply_topics(bootstrap, prefix)
    await wait_topics(bootstrap, [prefix + t for t in INPUT_TOPICS + OUTPUT_TOPICS])
    w = Worker(bootstrap, app_id, prefix, store, workdir).start()
    try:
        await w.wait_ready()
        await asyncio.sleep(quiet / 1.5)
        rss0 = rss_of(w.pid)
        await produce_all(prefixed(messages, prefix), bootstrap)
        async with Probe(bootstrap) as probe:
            done = await w.wait_processed(len(messages), [prefix + t for t in INPUT_TOPICS],
                                          probe, [prefix + t for t in OUTPUT_TOPICS], quiet,
                                          900)
        await asyncio.sleep(quiet / 1.5)
        samples = await asyncio.to_thread(w.scrape)
        rss1 = rss_of(w.pid)
    finally:
        w.stop()
    days_open = metric_sum(samples or done["samples"], "chargecap_open_patient_days")
    return {
        "store": store,
        "records": len(messages),
        "open_patient_days": int(days_open),
        "expected_open_patient_days": open_days,
        "rss_idle_bytes": rss0,
        "rss_loaded_bytes": rss1,
        "bytes_per_open_patient_day": (rss1 - rss0) / days_open if days_open else float("nan"),
    }


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


# ------------------------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default=None,
                    help="host:port of a running broker (default: start/reuse the local one)")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes in the group for pipeline and latency (one per core)")
    ap.add_argument("--open-days", type=int, default=100_000)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (every phase, well under a minute)")
    ap.add_argument("--only", default=",".join(PHASES),
                    help="comma-separated phases: " + ",".join(PHASES))
    ap.add_argument("--no-memory-compare", action="store_true",
                    help="skip the memory:// comparison run")
    ap.add_argument("--keep", action="store_true", help="keep topics and tmp dirs")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy the pipeline worker (collapsed stacks in DIR; slows it)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.records = min(args.records, 2000)
        args.latency_seconds = min(args.latency_seconds, 4.0)
        args.rate = min(args.rate, 200.0)
        args.open_days = min(args.open_days, 300)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = set(args.phases) - set(PHASES)
    if bad:
        ap.error(f"unknown phase(s) {', '.join(sorted(bad))}; known: {', '.join(PHASES)}")
    return args


async def run(args, bootstrap: str, workdir: Path) -> dict:
    run_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    prefixes: list[str] = []
    quiet = 1.0 if args.smoke else 3.0
    res: dict = {"records": args.records}
    durations: dict[str, float] = {}
    details: dict = {}
    try:
        t = time.perf_counter()
        stream = generate_stream(SEED, records=args.records)
        messages = stream.messages
        n = len(messages)
        res["records"] = n
        durations["generate"] = time.perf_counter() - t
        log(f"generated {n} messages in {durations['generate']:.1f} s")
        # The generated stream is millions of tracked objects that live to the end: a
        # full collection of them paused this process for 0.6-0.8 s, stalling the raw
        # loop, and the paced producer mid-run (a burst of late sends the latency figure
        # then charged to the worker). Frozen, the collector skips them.
        gc.collect()
        gc.freeze()

        if {"raw", "faust", "pipeline"} & set(args.phases):
            p1 = f"bench-{run_id}-in."
            prefixes.append(p1)
            t = time.perf_counter()
            await apply_topics(bootstrap, p1)
            await wait_topics(bootstrap, [p1 + t for t in INPUT_TOPICS + OUTPUT_TOPICS])
            durations["produce_input"] = await produce_all(prefixed(messages, p1), bootstrap)
            log(f"pre-produced {n} messages in {durations['produce_input']:.1f} s")
            if "raw" in args.phases:
                t = time.perf_counter()
                raw = await phase_raw(bootstrap, p1, n)
                durations["raw"] = time.perf_counter() - t
                details["raw"] = raw
                res["raw_passthrough_eps"] = round(raw["eps"])
                log(f"raw passthrough: {raw['eps']:,.0f} events/s")
            if "faust" in args.phases:
                t = time.perf_counter()
                app_id = f"bench-{run_id}-faust"
                prefixes.append(app_id)
                fp = await phase_faust(bootstrap, p1, n, workdir, app_id, quiet,
                                       timeout=max(300.0, n / 200))
                durations["faust"] = time.perf_counter() - t
                details["faust"] = fp
                res["faust_passthrough_eps"] = round(fp["eps"])
                log(f"faust passthrough: {fp['eps']:,.0f} events/s")
            if "pipeline" in args.phases:
                t = time.perf_counter()
                app_id = f"bench-{run_id}-pipe"
                prefixes.append(app_id)
                pipe = await phase_pipeline(bootstrap, p1, n, workdir, app_id, quiet,
                                            timeout=max(300.0, n / 200), profile=args.profile,
                                            workers=args.workers)
                durations["pipeline"] = time.perf_counter() - t
                details["pipeline"] = pipe
                res["pipeline_eps"] = round(pipe["eps"])
                log(f"pipeline: {pipe['eps']:,.0f} events/s")
        if "replay" in args.phases:
            t = time.perf_counter()
            rep = phase_replay(args.records)
            durations["replay"] = time.perf_counter() - t
            details["replay"] = rep
            for k in ("replay_eps", "parse_only_eps", "replay_ratio"):
                res[k] = rep[k]
        if "latency" in args.phases:
            t = time.perf_counter()
            need = int(args.rate * args.latency_seconds)
            lat_msgs = messages
            if need > len(lat_msgs):
                lat_msgs = generate_stream(SEED, records=need + 100).messages
                gc.collect()
                gc.freeze()
            p2 = f"bench-{run_id}-lat."
            app_id = f"bench-{run_id}-lat"
            prefixes += [p2, app_id]
            lat = await phase_latency(bootstrap, p2, lat_msgs, args.rate, args.latency_seconds,
                                      workdir, app_id, quiet, workers=args.workers)
            durations["latency"] = time.perf_counter() - t
            details["latency"] = lat
            # Event to decision (the figure): each input event's first decision,
            # from when the event became decidable (see phase_latency).
            # The per-output measure also charges an output re-emitted because of a
            # *later* record of the patient with its older sources' age; kept alongside.
            res["latency_p50_s"] = round(lat["event_p50_s"], 4)
            res["latency_p99_s"] = round(lat["event_p99_s"], 4)
            res["latency_output_p50_s"] = round(lat["p50_s"], 4)
            res["latency_output_p99_s"] = round(lat["p99_s"], 4)
            log(f"latency per event: p50 {lat['event_p50_s']:.3f} s, p99 "
                f"{lat['event_p99_s']:.3f} s; per output p50 {lat['p50_s']:.3f} s, "
                f"p99 {lat['p99_s']:.3f} s")
        if "memory" in args.phases:
            t = time.perf_counter()
            mem_msgs, days = memory_messages(args.open_days, messages)
            stores = ["rocksdb://"] + ([] if args.no_memory_compare else ["memory://"])
            for i, store in enumerate(stores):
                p3 = f"bench-{run_id}-mem{i}."
                app_id = f"bench-{run_id}-mem{i}"
                prefixes += [p3, app_id]
                mem = await phase_memory(bootstrap, p3, mem_msgs, days, store, workdir,
                                         app_id, quiet)
                details["memory_" + store.split(":")[0]] = mem
                log(f"memory ({store}): {mem['bytes_per_open_patient_day']:,.0f} B per "
                    f"open patient-day ({mem['open_patient_days']} open)")
            durations["memory"] = time.perf_counter() - t
            res["bytes_per_open_patient_day"] = round(
                details["memory_rocksdb"]["bytes_per_open_patient_day"])
            if "memory_memory" in details:
                res["bytes_per_open_patient_day_memory_store"] = round(
                    details["memory_memory"]["bytes_per_open_patient_day"])
    finally:
        if prefixes and not args.keep:
            with contextlib.suppress(Exception):
                deleted = await delete_topics(bootstrap, prefixes)
                log(f"deleted {deleted} benchmark topic(s)")
    if "raw_passthrough_eps" in res and "pipeline_eps" in res:
        res["pipeline_ratio"] = round(res["pipeline_eps"] / res["raw_passthrough_eps"], 4)
    if "raw_passthrough_eps" in res and "faust_passthrough_eps" in res:
        res["faust_ratio"] = round(res["faust_passthrough_eps"] / res["raw_passthrough_eps"], 4)
    res["durations_s"] = {k: round(v, 2) for k, v in durations.items()}
    res["details"] = _rounded(details)
    return res


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def print_table(res: dict) -> None:
    rows = [
        ("raw_passthrough_eps", "aiokafka consume → orjson → produce (events/s)"),
        ("faust_passthrough_eps", "one Faust agent as the worker's, orjson only (events/s)"),
        ("faust_ratio", "faust passthrough / raw: the ceiling for pipeline_ratio"),
        ("pipeline_eps", "worker, input → last output (events/s)"),
        ("pipeline_ratio", "pipeline / raw (goal ≥ 0.5)"),
        ("parse_only_eps", "orjson.loads only (events/s)"),
        ("replay_eps", "replay, in-process (events/s)"),
        ("replay_ratio", "replay / parse-only (goal ≥ 0.25)"),
        ("latency_p50_s", "input event (once decidable) → its first decision, p50 at --rate (s)"),
        ("latency_p99_s", "input event → its first decision, p99 (goal ≤ 0.25 s)"),
        ("latency_output_p99_s", "output → its newest source event, p99 (s)"),
        ("bytes_per_open_patient_day", "RSS growth per open patient-day, RocksDB (goal ≤ 2048)"),
        ("bytes_per_open_patient_day_memory_store", "same with memory:// store"),
    ]
    m = res["machine"]
    dirty = " + uncommitted stream_app" if res["git"]["stream_app_dirty"] else ""
    print(f"machine: {m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB, {m['cpu_model']}, "
          f"python {m['python']}; load avg {res['load_avg_start']} → {res['load_avg_end']}; "
          f"code {res['git']['commit']}{dirty}")
    print(f"records: {res['records']:,}")
    for key, label in rows:
        v = res.get(key)
        if v is None:
            continue
        text = f"{v:,.4f}" if isinstance(v, float) and v < 10 else f"{v:,}"
        print(f"  {key:<42} {text:>14}   {label}")
    d = res["details"]
    if "pipeline" in d:
        p = d["pipeline"]
        print(f"  pipeline by metrics polling: {p['poll_eps']:,.0f} events/s; outputs "
              f"{p['charge_line_messages']:,} lines, {p['alert_messages']:,} alerts, "
              f"{p['dead_letter_messages']:,} dead letters; worker ready in {p['ready_s']:.1f} s; "
              f"worker CPU {p['worker_cpu_us_per_event']:,.0f} µs per event")
    if "latency" in d:
        la = d["latency"]
        print(f"  latency: {la['outputs']:,} decisions at {la['offered_eps']:,.0f} events/s "
              f"offered; vs patient's newest input p50 {la['trigger_p50_s']} / p99 "
              f"{la['trigger_p99_s']} s; worker histogram p50 {la['hist_p50_s']} / p99 "
              f"{la['hist_p99_s']} s; max {la['max_s']} s")
        print(f"  latency per input event (its first decision, from when it was decidable): "
              f"{la['events_decided']:,} events, p50 {la['event_p50_s']} / p99 "
              f"{la['event_p99_s']} / max {la['event_max_s']} s; from its own send p50 "
              f"{la['own_p50_s']} / p99 {la['own_p99_s']} s")
    for key in ("memory_rocksdb", "memory_memory"):
        if key in d:
            mm = d[key]
            print(f"  memory {mm['store']}: {mm['open_patient_days']:,} open patient-days "
                  f"({mm['records']:,} records), RSS {mm['rss_idle_bytes'] / 2**20:.0f} → "
                  f"{mm['rss_loaded_bytes'] / 2**20:.0f} MiB")
    print("  durations (s): " + ", ".join(f"{k} {v}" for k, v in res["durations_s"].items()))


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    bootstrap = ensure_broker(args.broker)
    workdir = Path(tempfile.mkdtemp(prefix="chargecap-bench-"))
    res: dict = {"machine": machine_info(), "git": git_state(), "load_avg_start": loadavg()}
    try:
        res.update(asyncio.run(run(args, bootstrap, workdir)))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    res["load_avg_end"] = loadavg()
    res["smoke"] = bool(args.smoke)
    res["durations_s"]["total"] = round(time.perf_counter() - t0, 2)
    print_table(res)
    sys.stdout.flush()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
