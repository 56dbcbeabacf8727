"""The three-node cluster of deploy/kafka-local/cluster.sh, as the cluster fault tests use
it: start and SIGKILL single nodes, find who leads a partition or coordinates a group,
and time how long Kafka takes to move leadership away from a dead node.

Every address is 127.0.0.1. Node ids are 1..3 and node N's broker listens on
KAFKA_CLUSTER_PORT + N - 1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.paths import REPO
from tests.support.worker import ALERTS, LINES, OutputReader

CLUSTER_SH = REPO / "deploy" / "kafka-local" / "cluster.sh"
PROBE = REPO / "deploy" / "kafka-local" / "probe.py"
NODES = (1, 2, 3)


class Cluster:
    def __init__(self, base_port: int | None = None):
        self.base = base_port or int(os.environ.get("KAFKA_CLUSTER_PORT", "19092"))
        self.env = {**os.environ, "KAFKA_CLUSTER_PORT": str(self.base)}
        self.data = REPO / "deploy" / "kafka-local" / "data" / f"cluster-{self.base}"
        self.bootstrap = ",".join(f"127.0.0.1:{self.port(n)}" for n in NODES)

    def port(self, node: int) -> int:
        return self.base + node - 1

    def log_path(self, node: int) -> Path:
        return self.data / f"node{node}" / "logs" / "server.log"

    def _run(self, *args: str, timeout: float = 240) -> float:
        t0 = time.monotonic()
        r = subprocess.run(["bash", str(CLUSTER_SH), *args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
        return time.monotonic() - t0

    def answers(self, node: int, timeout: float = 2.0) -> bool:
        r = subprocess.run([sys.executable, str(PROBE), f"127.0.0.1:{self.port(node)}",
                            str(timeout)], capture_output=True, timeout=timeout + 10)
        return r.returncode == 0

    def all_answer(self) -> bool:
        return all(self.answers(n) for n in NODES)

    def any_answers(self) -> bool:
        return any(self.answers(n, 1.0) for n in NODES)

    def up(self, fresh: bool = False) -> float:
        if fresh:
            shutil.rmtree(self.data, ignore_errors=True)
        return self._run("up")

    def down(self) -> float:
        return self._run("down")

    def kill(self, node: int) -> float:
        """SIGKILL: a crash, no controlled shutdown (leadership moves only once the
        controller notices the missed heartbeats)."""
        return self._run("kill", str(node))

    def start(self, node: int) -> float:
        return self._run("start", str(node))


async def partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: leader node id (-1: none)} from a fresh metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
        return {p["partition"]: p["leader"] for p in desc["partitions"]}
    finally:
        await admin.close()


async def group_coordinator(bootstrap: str, group: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        return await admin.find_coordinator(group)
    finally:
        await admin.close()


async def wait_leaders_moved(bootstrap: str, topic: str, dead: set[int],
                             timeout: float = 60.0) -> float:
    """Seconds until every partition of `topic` has a live leader (none of `dead`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            leaders = await partition_leaders(bootstrap, topic)
            if leaders and all(ld >= 0 and ld not in dead for ld in leaders.values()):
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - metadata from a node that is going away
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"leaders of {topic} still on {dead} after {timeout}s")


def decision_gaps(timestamps_ms: list[int], start: float, stop: float) -> float:
    """The longest time (s) without a decision between wall-clock `start` and `stop`,
    from the create timestamps the worker's producer gave its output messages."""
    ts = sorted(t / 1000.0 for t in timestamps_ms if start * 1000 <= t <= stop * 1000)
    points = [start, *ts, stop]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


class TimedOutputReader(OutputReader):
    """The harness's OutputReader, also keeping each decision's create timestamp (set by
    the worker's producer when it sent the line or alert) for the stall measurement."""

    def __init__(self, bootstrap: str, prefix: str):
        super().__init__(bootstrap, prefix)
        self.decided_at_ms: list[int] = []

    async def poll(self, timeout: float = 0.5) -> int:
        got = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=20000)
        n = 0
        for tp, msgs in got.items():
            topic = tp.topic[len(self.prefix):]
            for m in msgs:
                self.messages[topic].append((tp.partition, m.offset, m.key, m.value, m.headers))
                if topic in (LINES, ALERTS):
                    self.decided_at_ms.append(m.timestamp)
                n += 1
        if n:
            self.last_at = time.monotonic()
        return n
