"""`make bench-failover`: how long the worker's decisions stop when a broker of a replicated
cluster dies, against how long Kafka itself takes to move leadership (issue 24).

The three-node cluster of deploy/kafka-local/cluster.sh (reused when it answers on
KAFKA_CLUSTER_PORT, else started on a fresh data folder and stopped at the end); topics
with replication factor 3; the real worker (`python -m stream_app worker
--replication-factor 3`, RocksDB store) fed a steady generated stream (`--rate` events/s,
sent without waiting for earlier sends, so input keeps arriving on the partitions that
still have a leader). Then `--rounds` times: SIGKILL the node that leads the most
partitions of the repartition topic (`--fault leader`) or hosts the worker's group
coordinator (`--fault coordinator`), restart it `--hold` seconds later, let things settle.

Per round:

* **election_s**: from the SIGKILL until a fresh metadata request shows a live leader for
  every partition of the worker's topics the dead node led (or, for `coordinator`, until
  FindCoordinator names another node): Kafka's own time, mostly the controller waiting
  broker.session.timeout.ms for heartbeats before it fences the node.
* **stall_s**: the longest time without a decision (a charge line or alert; their Kafka
  CreateTime, set by the worker's producer) from 1 s before the kill to the restart.
* **beyond_s** = stall_s - election_s: what the worker adds on top of Kafka.
* **error_lines**: ERROR/CRITICAL lines the worker logged during the round.

Also the longest gap in a fault-free window before the first kill (the normal cadence)
and the load average. Prints a table, then a last line of JSON. No thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from stream_app.devtools.generate import generate_stream  # noqa: E402
from stream_app.topics import apply_topics  # noqa: E402
from stream_app.vocabulary import INPUT_TOPICS as INPUTS  # noqa: E402
from stream_app.vocabulary import TOPIC_CHARGE_LINES, TOPIC_CORRECTION_ALERTS  # noqa: E402

CLUSTER_SH = ROOT / "deploy" / "kafka-local" / "cluster.sh"
PROBE = ROOT / "deploy" / "kafka-local" / "probe.py"

DECISIONS = (TOPIC_CHARGE_LINES, TOPIC_CORRECTION_ALERTS)
ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) |\[(ERROR|CRITICAL)\]")
LOG_TIME = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


class Cluster:
    def __init__(self, base: int):
        self.base = base
        self.env = {**os.environ, "KAFKA_CLUSTER_PORT": str(base)}
        self.bootstrap = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        self.data = ROOT / "deploy" / "kafka-local" / "data" / f"cluster-{base}"

    def run(self, *args: str) -> None:
        r = subprocess.run(["bash", str(CLUSTER_SH), *args], env=self.env, capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"cluster.sh {' '.join(args)} failed:\n{r.stdout}{r.stderr}")

    def answers(self, node: int) -> bool:
        return subprocess.run([sys.executable, str(PROBE), f"127.0.0.1:{self.base + node - 1}",
                               "2"], capture_output=True).returncode == 0


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    return admin


async def leaders(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    admin = await _admin(bootstrap)
    try:
        return {(d["topic"], p["partition"]): p["leader"]
                for d in await admin.describe_topics(topics) for p in d["partitions"]}
    finally:
        await admin.close()


async def coordinator(bootstrap: str, group: str) -> int:
    admin = await _admin(bootstrap)
    try:
        return await admin.find_coordinator(group)
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Feed:
    """Sends the generated stream at `rate` events/s, every 50 ms a slice, never waiting
    for a slice to be acknowledged before sending the next."""

    def __init__(self, bootstrap: str, messages, rate: float):
        self.bootstrap, self.messages, self.rate = bootstrap, messages, rate
        self.sent = 0
        self.futures: list = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                             enable_idempotence=True, linger_ms=5, request_timeout_ms=60000)
        await p.start()
        try:
            t0 = time.monotonic()
            while not self.stop.is_set() and self.sent < len(self.messages):
                due = min(len(self.messages), int((time.monotonic() - t0) * self.rate))
                for topic, key, value in self.messages[self.sent:due]:
                    k = key if key is None or isinstance(key, bytes) else str(key).encode()
                    v = value if isinstance(value, bytes) else str(value).encode()
                    self.futures.append(await p.send(topic, v, key=k))
                self.sent = max(self.sent, due)
                await asyncio.sleep(0.05)
            await asyncio.gather(*self.futures, return_exceptions=True)
        finally:
            await p.stop()


async def read_decisions(bootstrap: str, topics: list[str], out: list[float],
                         stop: asyncio.Event) -> None:
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, metadata_max_age_ms=2000)
    await c.start()
    try:
        while not stop.is_set():
            for msgs in (await c.getmany(timeout_ms=300)).values():
                out.extend(m.timestamp / 1000.0 for m in msgs)
    finally:
        await c.stop()


def longest_gap(ts: list[float], start: float, stop: float) -> float:
    points = [start, *sorted(t for t in ts if start <= t <= stop), stop]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


def log_lines_between(path: Path, start: float, stop: float) -> list[str]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1e3
        if start <= t <= stop:
            out.append(line)
    return out


async def bench(args) -> dict:
    cluster = Cluster(args.cluster_port)
    started = False
    if not all(cluster.answers(n) for n in (1, 2, 3)):
        shutil.rmtree(cluster.data, ignore_errors=True)
        cluster.run("up")
        started = True
    tmp = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    tag = uuid.uuid4().hex[:8]
    prefix, app_id = f"bfo-{tag}.", f"bfo-{tag}-app"
    bs = cluster.bootstrap
    worker = None
    rounds = []
    try:
        await apply_topics(bs, prefix, replication_factor=3)
        messages = generate_stream(11, records=int(args.rate * args.seconds_per_round
                                                   * (args.rounds + 1)),
                                   topic_prefix=prefix).messages
        log_path = tmp / "worker.log"
        metrics_port = free_port()
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "stream_app", "worker", "--broker", f"kafka://{bs}",
                 "--app-id", app_id, "--topic-prefix", prefix, "--store", "rocksdb://",
                 "--data-dir", str(tmp / "data"), "--settle-seconds", "1",
                 "--close-after-seconds", "0", "--tick-seconds", "0.5",
                 "--metrics-addr", f"127.0.0.1:{metrics_port}", "--replication-factor", "3",
                 *args.worker_args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz",
                                            timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("worker did not become ready:\n" + log_path.read_text()[-3000:])
            await asyncio.sleep(0.3)
        decided: list[float] = []
        stop_reader = asyncio.Event()
        reader = asyncio.ensure_future(read_decisions(bs, [prefix + t for t in DECISIONS],
                                                      decided, stop_reader))
        feed = Feed(bs, messages, args.rate)
        feeding = asyncio.ensure_future(feed.run())
        await asyncio.sleep(args.warmup)
        steady = (time.time() - args.warmup + 3, time.time())
        repartition = f"{app_id}-patient-records"
        topics = [prefix + t for t in INPUTS + DECISIONS] + [
            repartition, f"{app_id}-patient-state-changelog"]
        for i in range(args.rounds):
            if args.fault == "coordinator":
                victim = await coordinator(bs, app_id)
                led = []
            else:
                lead = await leaders(bs, topics)
                counts = {n: sum(1 for (t, _p), ld in lead.items()
                                 if ld == n and t == repartition) for n in (1, 2, 3)}
                victim = max(counts, key=lambda n: (counts[n], n == (i % 3) + 1))
                led = [tp for tp, ld in lead.items() if ld == victim]
            t_kill = time.time()
            cluster.run("kill", str(victim))
            while True:
                try:
                    if args.fault == "coordinator":
                        done = await coordinator(bs, app_id) != victim
                    else:
                        lead = await leaders(bs, topics)
                        done = all(lead.get(tp, -1) not in (-1, victim) for tp in led)
                except Exception:  # noqa: BLE001 - asked a node that is going away
                    done = False
                if done:
                    break
                await asyncio.sleep(0.1)
            election = time.time() - t_kill
            await asyncio.sleep(max(0.0, t_kill + args.hold - time.time()))
            t_restart = time.time()
            cluster.run("start", str(victim))
            await asyncio.sleep(args.settle)
            rounds.append({"victim": victim, "partitions_led": len(led), "t_kill": t_kill,
                           "t_restart": t_restart, "election_s": round(election, 2)})
        feed.stop.set()
        await feeding
        await asyncio.sleep(5)
        stop_reader.set()
        await reader
        for r in rounds:
            r["stall_s"] = round(longest_gap(decided, r["t_kill"] - 1, r["t_restart"]), 2)
            r["beyond_s"] = round(r["stall_s"] - r["election_s"], 2)
            lines = log_lines_between(log_path, r["t_kill"] - 1, r["t_restart"] + args.settle)
            r["error_lines"] = sum(1 for ln in lines if ERROR_LINE.search(ln))
            r["timer_overlap_s"] = max([float(x) for ln in lines for x in
                                        re.findall(r"is overlapping .*runtime=([\d.]+)", ln)]
                                       or [0.0])
            del r["t_kill"], r["t_restart"]
        return {
            "fault": args.fault, "rate_eps": args.rate, "hold_s": args.hold,
            "decisions": len(decided),
            "steady_longest_gap_s": round(longest_gap(decided, *steady), 2),
            "rounds": rounds,
            "max_stall_s": max(r["stall_s"] for r in rounds),
            "max_beyond_s": max(r["beyond_s"] for r in rounds),
            "max_election_s": max(r["election_s"] for r in rounds),
            "error_lines": sum(r["error_lines"] for r in rounds),
            "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "worker_log": str(log_path),
        }
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
        for n in (1, 2, 3):
            if not cluster.answers(n):
                cluster.run("start", str(n))
        if started:
            cluster.run("down")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fault", choices=("leader", "coordinator"), default="leader")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=150.0, help="input events per second")
    ap.add_argument("--hold", type=float, default=20.0,
                    help="seconds between the SIGKILL and the restart")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after the restart")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--cluster-port", type=int,
                    default=int(os.environ.get("KAFKA_CLUSTER_PORT", "19092")))
    ap.add_argument("--worker-arg", dest="worker_args", action="append", default=[],
                    help="extra worker flag (repeatable), e.g. --worker-arg=--batch-size=500")
    args = ap.parse_args(argv)
    # the harness's own clients (feed, reader, admin) retry through the faults by design
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    args.seconds_per_round = args.hold + args.settle + 5
    res = asyncio.run(bench(args))
    print(f"{'round':>5} {'node':>4} {'led':>4} {'election_s':>10} {'stall_s':>8} "
          f"{'beyond_s':>8} {'errors':>6} {'timer_overlap_s':>15}")
    for i, r in enumerate(res["rounds"], 1):
        print(f"{i:>5} {r['victim']:>4} {r['partitions_led']:>4} {r['election_s']:>10} "
              f"{r['stall_s']:>8} {r['beyond_s']:>8} {r['error_lines']:>6} "
              f"{r['timer_overlap_s']:>15}")
    print(f"steady longest gap {res['steady_longest_gap_s']} s; load average "
          f"{res['loadavg_1m']} on {res['cpus']} cpus")
    print(orjson.dumps(res).decode())
    return res


if __name__ == "__main__":
    main()
