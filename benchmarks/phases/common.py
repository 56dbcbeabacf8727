"""What every phase of `make bench` shares: constants, machine facts, the broker
(topics, an output probe) and reading the worker's Prometheus text."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.devtools.generate import produce
from stream_app.vocabulary import OUTPUT_TOPICS

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka-local" / "kafka.sh"
PHASES = ("raw", "faust", "pipeline", "scaleout", "fhir", "hl7v2", "replay", "latency",
          "memory")
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


def local_broker_pids() -> list[int]:
    """Kafka broker processes on this machine (the local broker or cluster), for their CPU
    time; empty when the broker runs elsewhere."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if b"kafka.Kafka" in fh.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


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




def prefixed(messages, prefix: str):
    return [(prefix + t, k, v) for t, k, v in messages]


async def produce_all(messages, bootstrap: str) -> float:
    t0 = time.perf_counter()
    sent = await produce(messages, bootstrap, progress=False, chunk=5000)
    if sent != len(messages):
        raise RuntimeError(f"produced {sent} of {len(messages)}")
    return time.perf_counter() - t0

