"""Helpers for the queue tests against real Kafka and PostgreSQL: the worker as a
subprocess, producing, reading the compacted topics' last message per key, and the
database's latest state per key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psycopg
import requests
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.queue.service import free_port

REPO = Path(__file__).resolve().parents[3]


class Worker:
    """`python -m stream_app worker` with test-friendly timers (settle 1 s, close at once)."""

    def __init__(self, tmp_path: Path, bootstrap: str, app_id: str, prefix: str):
        self.port = free_port()
        self.log_path = Path(tmp_path) / f"worker-{self.port}.log"
        self.args = [
            sys.executable,
            "-m",
            "stream_app",
            "worker",
            "--broker",
            f"kafka://{bootstrap}",
            "--app-id",
            app_id,
            "--topic-prefix",
            prefix,
            "--store",
            "memory://",
            "--data-dir",
            str(Path(tmp_path) / "worker-data"),
            "--settle-seconds",
            "1",
            "--close-after-seconds",
            "0",
            "--tick-seconds",
            "0.5",
            "--metrics-addr",
            f"127.0.0.1:{self.port}",
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 90) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError("worker not ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()


async def produce(bootstrap: str, messages, *, chunk: int = 500, pause: float = 0.0) -> None:
    """Sends (topic, key, value) messages in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for i in range(0, len(messages), chunk):
            futs = [await producer.send(t, v, key=k) for t, k, v in messages[i : i + chunk]]
            await asyncio.gather(*futs)
            if pause:
                await asyncio.sleep(pause)
    finally:
        await producer.stop()


async def last_per_key(bootstrap: str, topic: str, id_field: str) -> dict[str, dict]:
    """Every message of `topic` from offset 0 to its end; the last value per key, as
    compaction keeps it. Keys are checked to be the records' id field."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        for _ in range(100):  # without a group the consumer assigns itself every partition
            parts = sorted(consumer.assignment())
            if parts:
                break
            await asyncio.sleep(0.1)
        ends = await consumer.end_offsets(parts)
        out: dict[str, dict] = {}

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        while await behind():
            for recs in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in recs:
                    value = orjson.loads(r.value)
                    assert r.key.decode() == value[id_field]
                    out[value[id_field]] = value
        return out
    finally:
        await consumer.stop()


def db_latest(db, table: str, id_field: str) -> dict[str, dict]:
    with psycopg.connect(db.admin_dsn) as conn:
        return {k: p for k, p in conn.execute(f"SELECT {id_field}, payload FROM {table}")}


def db_dump(db) -> dict[str, list]:
    with psycopg.connect(db.admin_dsn) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("alert", "alert_revision", "charge_line", "charge_line_revision", "sink_reject")
        }


def wait_until(check, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})"[:2000])
