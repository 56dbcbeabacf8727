"""Helpers for the streaming tests: a real worker subprocess, producing, reading outputs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parents[2]
LINES = "billing.charge-lines"
ALERTS = "billing.correction-alerts"
DEAD = "billing.dead-letters"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


class WorkerProcess:
    """`python -m stream_app worker` as a subprocess with test-friendly settings."""

    def __init__(self, tmp_path: Path, bootstrap: str, app_id: str, prefix: str, *,
                 store: str = "memory://", settle: float = 1.0, close_after: float = 0.0,
                 tick: float = 0.5, extra: list[str] | None = None, name: str = "worker"):
        self.tmp_path = Path(tmp_path)
        self.port = free_port()
        self.log_path = self.tmp_path / f"{name}.log"
        self.args = [
            sys.executable, "-m", "stream_app", "worker",
            "--broker", f"kafka://{bootstrap}", "--app-id", app_id, "--topic-prefix", prefix,
            "--store", store, "--data-dir", str(self.tmp_path / "data"),
            "--settle-seconds", str(settle), "--close-after-seconds", str(close_after),
            "--tick-seconds", str(tick), "--metrics-addr", f"127.0.0.1:{self.port}",
            "--session-timeout", "10", "--heartbeat-interval", "1",
            "--rebalance-timeout", "10", "--batch-within", "0.02",
            *(extra or []),
        ]
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.tail()}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as r:
            return r.read().decode()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _b(x) -> bytes | None:
    if x is None or isinstance(x, bytes):
        return x
    return str(x).encode()


async def produce(bootstrap: str, messages, *, max_request_size: int = 1_048_576,
                  chunk: int = 500, pause: float = 0.0) -> list:
    """Send (topic, key, value) messages in order; returns their RecordMetadata."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_request_size=max_request_size)
    await producer.start()
    metas = []
    try:
        for i in range(0, len(messages), chunk):
            futs = [await producer.send(t, _b(v), key=_b(k)) for t, k, v in messages[i:i + chunk]]
            metas.extend(await asyncio.gather(*futs))
            if pause:
                await asyncio.sleep(pause)
    finally:
        await producer.stop()
    return metas


class OutputReader:
    """Reads the output topics continuously (topic order per partition)."""

    def __init__(self, bootstrap: str, prefix: str):
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.messages: dict[str, list] = defaultdict(list)  # topic -> [(partition, offset, key, value)]
        self.last_at = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *(self.prefix + t for t in (LINES, ALERTS, DEAD)),
            bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024, metadata_max_age_ms=2000,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout: float = 0.5) -> int:
        got = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=20000)
        n = 0
        for tp, msgs in got.items():
            topic = tp.topic[len(self.prefix):]
            for m in msgs:
                self.messages[topic].append((tp.partition, m.offset, m.key, m.value, m.headers))
                n += 1
        if n:
            self.last_at = time.monotonic()
        return n

    def last_per_key(self, topic: str) -> dict[bytes, dict]:
        last = {}
        for _p, _o, key, value, _h in self.messages[topic]:
            last[key] = orjson.loads(value)
        return last

    def all_final(self) -> bool:
        lines, alerts = self.last_per_key(LINES), self.last_per_key(ALERTS)
        return bool(lines or alerts) and all(
            v.get("final") for v in list(lines.values()) + list(alerts.values()))

    async def wait_settled(self, *, quiet: float = 4.0, timeout: float = 120.0,
                           dead_letters: int | None = None) -> None:
        """Until every key's last message is final and nothing arrived for `quiet` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.poll(0.5)
            if (self.all_final() and time.monotonic() - self.last_at >= quiet
                    and (dead_letters is None or len(self.messages[DEAD]) >= dead_letters)):
                return
        raise AssertionError(
            f"outputs not settled after {timeout}s: {len(self.messages[LINES])} line and "
            f"{len(self.messages[ALERTS])} alert messages, all final: {self.all_final()}")

    def settled_view(self) -> tuple[list[dict], list[dict]]:
        """Highest revision per key, active lines and open alerts, without revision."""
        from stream_app.replay import settled_view

        def highest(topic, id_field):
            best: dict[str, dict] = {}
            for _p, _o, _k, value, _h in self.messages[topic]:
                v = orjson.loads(value)
                cur = best.get(v[id_field])
                if cur is None or v["revision"] > cur["revision"]:
                    best[v[id_field]] = v
            return best.values()

        return settled_view(highest(LINES, "line_id"), highest(ALERTS, "alert_id"))

    def revisions_monotonic(self) -> list[str]:
        """Keys whose revision does not strictly increase in topic order (should be [])."""
        bad = []
        for topic in (LINES, ALERTS):
            last: dict[bytes, int] = {}
            for _p, _o, key, value, _h in self.messages[topic]:
                rev = orjson.loads(value)["revision"]
                if key in last and rev <= last[key]:
                    bad.append(f"{topic}:{key!r}:{last[key]}->{rev}")
                last[key] = rev
        return bad

    def last_equals_highest(self) -> bool:
        for topic in (LINES, ALERTS):
            last: dict[bytes, int] = {}
            high: dict[bytes, int] = {}
            for _p, _o, key, value, _h in self.messages[topic]:
                rev = orjson.loads(value)["revision"]
                last[key] = rev
                high[key] = max(high.get(key, rev), rev)
            if last != high:
                return False
        return True


def replay_view(tmp_path: Path, messages, *, settle: float = 1.0, close_after: float = 0.0):
    """The settled view `replay` gives for the same message values (NDJSON, send order)."""
    from stream_app.config import Settings
    from stream_app.replay import replay
    from stream_app.runtime import build_engine

    path = Path(tmp_path) / "input.ndjson"
    with open(path, "wb") as f:
        for _t, _k, v in messages:
            v = _b(v)
            if b"\n" not in v and b"\r" not in v:
                f.write(v + b"\n")
    settings = Settings(settle_seconds=settle, close_after_seconds=close_after)
    res = replay([str(path)], build_engine(settings))
    return res.settled_view(), res


async def create_topics(bootstrap: str, prefix: str, partitions: dict[str, int] | None = None,
                        configs: dict[str, dict[str, str]] | None = None) -> None:
    """apply_topics, after creating some topics first with other partition counts/configs."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from stream_app.topics import apply_topics

    if partitions or configs:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            names = set(partitions or {}) | set(configs or {})
            await admin.create_topics([
                NewTopic(prefix + n, (partitions or {}).get(n, 3), 1,
                         topic_configs=(configs or {}).get(n, {}))
                for n in names
            ])
        finally:
            await admin.close()
    await apply_topics(bootstrap, prefix)


async def uncommitted_inputs(bootstrap: str, group: str, topics: list[str]) -> dict:
    """{(topic, partition): end - committed} where the group has not committed to the end."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, p) for t in topics
               for p in (consumer.partitions_for_topic(t) or ())]
        if not tps:
            await consumer.topics()
            tps = [TopicPartition(t, p) for t in topics
                   for p in (consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps)
        gaps = {}
        for tp in tps:
            meta = committed.get(tp)
            c = meta.offset if meta is not None else 0
            if ends[tp] > c:
                gaps[(tp.topic, tp.partition)] = ends[tp] - c
        return gaps
    finally:
        await consumer.stop()
        await admin.close()
