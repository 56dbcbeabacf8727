"""The one worker harness of the tests: the worker as a subprocess, producing input,
reading the output topics, and the replay the worker's outputs are compared with.

* `WorkerProcess`: `python -m stream_app worker` with test-friendly timers (settle 1 s,
  close at once, short consumer-group timeouts), its own metrics port, stdout and stderr
  in one log file.
* `produce`: sends (topic, key, value) messages in order with an idempotent producer (a
  broker restart by another test cannot duplicate input).
* `OutputReader`: reads the output topics continuously and waits for them to settle.
* `replay_view` (in process) and `run_replay` (the `replay` command): what the same input
  gives without Kafka.
* `wait_until`, `http_get`, `metric_value`, `free_port`, `terminate`: small utilities.

Every address is 127.0.0.1. Nothing here prints a patient id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.vocabulary import TOPIC_CHARGE_LINES, TOPIC_CORRECTION_ALERTS, TOPIC_DEAD_LETTERS
from tests.support.paths import REPO

LINES = TOPIC_CHARGE_LINES
ALERTS = TOPIC_CORRECTION_ALERTS
DEAD = TOPIC_DEAD_LETTERS
DEFAULT_METRICS_PORT = 9108

Message = tuple[str, "bytes | None", bytes]

__all__ = [
    "ALERTS", "DEAD", "LINES", "REPO", "Message", "OutputReader", "WorkerProcess",
    "create_topics", "free_port", "http_get", "message_counts", "metric_value", "produce",
    "replay_view", "run_replay", "terminate", "uncommitted_inputs", "wait_until",
]


# --------------------------------------------------------------------------- utilities


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


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5,
               detail: Callable[[], str] | None = None) -> Any:
    """Calls `check` until it returns a truthy value (returned) or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - report the last one on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f"\nlast error: {last_exc!r}" if last_exc else ""
            more = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}{more}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in a text exposition whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _faust_broker_url(bootstrap: str) -> str:
    """`host:port[,host:port]` or already `kafka://...` URLs -> the worker's --broker value."""
    if "://" in bootstrap:
        return bootstrap
    return ",".join(f"kafka://{server}" for server in bootstrap.split(","))


# --------------------------------------------------------------------------- the worker


class WorkerProcess:
    """`python -m stream_app worker` as a subprocess with test-friendly settings.

    `bootstrap`: `host:port` or a `kafka://` URL. `metrics_port`: True picks a free port,
    an int uses that one, None or False starts it without `--metrics-addr` (its default
    applies). `log_level` adds `--log-level=X` (one word: `--log-level X worker` is not
    recognised by the CLI). `env` entries with value None are removed from the child's
    environment. `batch_within=None` leaves the worker's default.
    """

    def __init__(self, tmp_path: Path, bootstrap: str, app_id: str, prefix: str, *,
                 store: str = "memory://", settle: float = 1.0, close_after: float = 0.0,
                 tick: float = 0.5, batch_within: float | None = 0.02,
                 extra: Iterable[str] | None = None, name: str = "worker",
                 metrics_port: int | bool | None = True, log_level: str | None = None,
                 env: dict[str, str | None] | None = None) -> None:
        self.tmp_path = Path(tmp_path)
        if metrics_port is True:
            self.port = free_port()
        else:
            self.port = metrics_port or DEFAULT_METRICS_PORT
        self.log_path = self.tmp_path / f"{name}.log"
        self.args = [sys.executable, "-m", "stream_app"]
        if log_level is not None:
            self.args.append(f"--log-level={log_level}")
        self.args += [
            "worker",
            "--broker", _faust_broker_url(bootstrap), "--app-id", app_id,
            "--topic-prefix", prefix,
            "--store", store, "--data-dir", str(self.tmp_path / "data"),
            "--settle-seconds", str(settle), "--close-after-seconds", str(close_after),
            "--tick-seconds", str(tick),
            "--session-timeout", "10", "--heartbeat-interval", "1", "--rebalance-timeout", "10",
        ]
        if batch_within is not None:
            self.args += ["--batch-within", str(batch_within)]
        if metrics_port is not None and metrics_port is not False:
            self.args += ["--metrics-addr", f"127.0.0.1:{self.port}"]
        self.args += list(extra or [])
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = v
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool:
        try:
            return http_get(self.url("/healthz"), timeout=1)[0] == 200
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
        status, body = http_get(self.url("/metrics"))
        assert status == 200, f"/metrics answered {status}"
        return body.decode()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (then SIGKILL after `timeout`); returns the exit status."""
        if self.proc is None:
            return None
        terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-n:])


# --------------------------------------------------------------------------- Kafka


def _b(x) -> bytes | None:
    if x is None or isinstance(x, bytes):
        return x
    return str(x).encode()


async def produce(bootstrap: str, messages, *, max_request_size: int = 4 * 1024 * 1024,
                  chunk: int = 500, pause: float = 0.0) -> list:
    """Sends (topic, key, value) messages in order, `chunk` at a time, waiting for each
    chunk's acks; returns their RecordMetadata."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                enable_idempotence=True, max_request_size=max_request_size,
                                request_timeout_ms=60000)
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


def message_counts(messages) -> dict[str, int]:
    counts: dict[str, int] = {}
    for topic, _k, _v in messages:
        counts[topic] = counts.get(topic, 0) + 1
    return counts


class OutputReader:
    """Reads the output topics continuously (topic order per partition)."""

    def __init__(self, bootstrap: str, prefix: str):
        self.bootstrap = bootstrap
        self.prefix = prefix
        # topic -> [(partition, offset, key, value, headers)]
        self.messages: dict[str, list] = defaultdict(list)
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


# --------------------------------------------------------------------------- replay


def _write_values(path: Path, messages) -> None:
    """The message values as NDJSON in send order (values with a newline cannot be a line)."""
    with open(path, "wb") as f:
        for _t, _k, v in messages:
            v = _b(v)
            if b"\n" not in v and b"\r" not in v:
                f.write(v + b"\n")


def replay_view(tmp_path: Path, messages, *, settle: float = 1.0, close_after: float = 0.0):
    """The settled view `replay` gives for the same message values, run in process."""
    from stream_app.config import Settings
    from stream_app.replay import replay
    from stream_app.runtime import build_engine

    path = Path(tmp_path) / "input.ndjson"
    _write_values(path, messages)
    settings = Settings(settle_seconds=settle, close_after_seconds=close_after)
    res = replay([str(path)], build_engine(settings))
    return res.settled_view(), res


def run_replay(tmp_path: Path, messages, *, log_level: str = "INFO") -> tuple[list[dict], str]:
    """Runs `python -m stream_app replay` over the message values with the worker's timers.
    Returns (the alerts of alerts.ndjson, replay's stdout+stderr)."""
    path = Path(tmp_path) / "replay-input.ndjson"
    out = Path(tmp_path) / "replay-out"
    _write_values(path, messages)
    done = subprocess.run(
        [sys.executable, "-m", "stream_app", f"--log-level={log_level}", "replay", str(path),
         "--out", str(out), "--settle-seconds", "1", "--close-after-seconds", "0"],
        cwd=REPO, capture_output=True, timeout=120,
    )
    logs = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"replay failed ({done.returncode}):\n{logs}"
    alerts = [orjson.loads(line) for line in (out / "alerts.ndjson").read_bytes().splitlines()
              if line.strip()]
    return alerts, logs
