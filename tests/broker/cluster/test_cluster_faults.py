"""Fault tests on a replicated cluster (issue 24; method and figures in
docs/reliability.md, "Replicated cluster").

Three KRaft nodes (deploy/kafka-local/cluster.sh), replication factor 3 on every topic,
min.insync.replicas=2, unclean leader election off. Each test runs the worker as a
subprocess (`--replication-factor 3`, all three nodes as bootstrap), produces input while
it runs, injects one fault, and checks what the single-broker fault tests check: the
settled view equals replay's, no revision goes backwards, every input got a decision or
its exact dead letter, every input offset is committed, and the same worker process is
still up.

1. the node leading repartition partitions is SIGKILLed mid-stream and restarted;
2. the node hosting the worker's group coordinator is SIGKILLed and restarted;
3. two nodes are SIGKILLed at once (below min.insync.replicas and without a controller
   quorum): writes wait, the worker keeps running, nothing is lost once a node returns.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from stream_app.topics import apply_topics
from tests.broker.cluster.cluster import (
    TimedOutputReader,
    decision_gaps,
    group_coordinator,
    partition_leaders,
    wait_leaders_moved,
)
from tests.support.faults import (
    Feeder,
    assert_all_committed,
    assert_audit,
    assert_same_view,
    fault_stream,
    output_counts,
    record_result,
    revision_faults,
)
from tests.support.worker import WorkerProcess, replay_view

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

# The worker's default session timeout (the harness shortens it to 10 s): longer than any
# election (up to ~12 s when the active controller dies), so a failover does not also
# end the group session (docs/reliability.md, "Running the worker on a replicated cluster").
REPLICATED = ["--replication-factor", "3", "--session-timeout", "30"]
# A line the worker logs at ERROR or CRITICAL, in the worker's and in Faust's format.
ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) |\[(ERROR|CRITICAL)\]", re.MULTILINE)


def error_lines(worker: WorkerProcess) -> list[str]:
    text = worker.log_path.read_text(errors="replace")
    return [ln for ln in text.splitlines() if ERROR_LINE.search(ln)]


async def _failover_run(cluster, tmp_path, unique_name, name: str, seed: int, fault) -> dict:
    """Worker + feeder + reader on the cluster; `fault(ctx)` injects the fault while the
    feeder runs and returns its timings. Asserts the common outcome, returns the record."""
    started = time.monotonic()
    bs = cluster.bootstrap
    prefix = unique_name(f"cl-{name}") + "."
    app_id = unique_name(f"cl-{name}-app")
    messages = fault_stream(prefix, seed=seed, records=2500)
    expected, res = replay_view(tmp_path, messages)
    await apply_topics(bs, prefix, replication_factor=3)
    worker = WorkerProcess(tmp_path, bs, app_id, prefix, store="rocksdb://", extra=REPLICATED)
    worker.start()
    reader = TimedOutputReader(bs, prefix)
    info: dict = {}
    try:
        await asyncio.to_thread(worker.wait_ready, 120)
        pid = worker.proc.pid
        await reader.start()
        feeder = Feeder(bs, messages, chunk=40, pause=0.3).start()
        await asyncio.sleep(4)
        info["produced_at_fault"] = feeder.sent
        ctx = {"app_id": app_id, "repartition": f"{app_id}-patient-records",
               "worker": worker, "feeder": feeder}
        info.update(await fault(ctx))
        assert worker.proc.poll() is None, "worker stopped during the fault:\n" + worker.tail()
        t = time.monotonic()
        await feeder.wait()
        feed_done = time.time()
        await reader.wait_settled(timeout=180)
        info["settled_after_fault_s"] = round(time.monotonic() - t, 1)
        assert worker.proc.poll() is None and worker.proc.pid == pid, worker.tail()
        assert await asyncio.to_thread(worker.ready)
        view = assert_same_view(reader, expected)
        assert revision_faults(reader) == []
        aud = assert_audit(messages, feeder.metas, reader, res)
        await assert_all_committed(bs, prefix, app_id)
        if "fault_at" in info:
            start = info.pop("fault_at")
            # while input still arrives: the gap is the fault's, not the end of the feed
            info["longest_decision_gap_s"] = round(
                decision_gaps(reader.decided_at_ms, start - 2, min(start + 25, feed_done)), 1)
        errors = error_lines(worker)
        info["worker_error_lines"] = len(errors)
    finally:
        await reader.stop()
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()
    record = {"messages": len(messages), **info, **view, **aud, **output_counts(reader),
              "runtime_s": round(time.monotonic() - started, 1)}
    record_result(f"cluster_{name}", record)
    return record | {"errors": errors}


async def test_repartition_leader_killed(cluster, unique_name, tmp_path):
    """SIGKILL of the node leading the most repartition partitions mid-stream, restarted
    12 s later (leadership has moved by then: the worker ran on two nodes for a while).
    The failover itself logs no ERROR line."""

    async def fault(ctx):
        topic = ctx["repartition"]
        leaders = await partition_leaders(cluster.bootstrap, topic)
        counts = {n: sum(1 for ld in leaders.values() if ld == n) for n in set(leaders.values())}
        victim = max(counts, key=counts.get)
        out = {"killed_node": victim, "partitions_led": counts[victim], "fault_at": time.time()}
        t0 = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        await wait_leaders_moved(cluster.bootstrap, topic, {victim})
        out["leader_election_s"] = round(time.monotonic() - t0, 1)
        await asyncio.sleep(max(0.0, 12 - (time.monotonic() - t0)))
        out["restart_s"] = round(await asyncio.to_thread(cluster.start, victim), 1)
        return out

    rec = await _failover_run(cluster, tmp_path, unique_name, "leader", 81, fault)
    assert rec["partitions_led"] >= 1
    assert rec["errors"] == [], "\n".join(rec["errors"][:20])


async def test_group_coordinator_killed(cluster, unique_name, tmp_path):
    """SIGKILL of the node hosting the worker's group coordinator mid-stream, restarted
    12 s later: the group finds its new coordinator, commits go on, nothing is lost."""

    async def fault(ctx):
        victim = await group_coordinator(cluster.bootstrap, ctx["app_id"])
        out = {"killed_node": victim, "fault_at": time.time()}
        t0 = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        t1 = time.monotonic()
        while time.monotonic() - t1 < 60:
            try:
                if await group_coordinator(cluster.bootstrap, ctx["app_id"]) != victim:
                    break
            except Exception:  # noqa: BLE001 - no coordinator while the group moves
                pass
            await asyncio.sleep(0.2)
        out["coordinator_moved_s"] = round(time.monotonic() - t1, 1)
        await asyncio.sleep(max(0.0, 12 - (time.monotonic() - t0)))
        out["restart_s"] = round(await asyncio.to_thread(cluster.start, victim), 1)
        return out

    rec = await _failover_run(cluster, tmp_path, unique_name, "coordinator", 82, fault)
    assert rec["coordinator_moved_s"] < 60


async def test_two_nodes_down(cluster, unique_name, tmp_path):
    """Two of three nodes SIGKILLed at once: below min.insync.replicas=2 (and without a
    controller quorum) no write is acknowledged, so the feeder's and the worker's
    producers wait and retry; the worker must not give up. One node comes back after
    10 s and the rest of the run is on two nodes: everything produced is decided, nothing
    lost. The third node is started again at the end."""
    down: list[int] = []

    async def fault(ctx):
        leaders = await partition_leaders(cluster.bootstrap, ctx["repartition"])
        survivor = min(set(leaders.values()))
        victims = [n for n in (1, 2, 3) if n != survivor]
        out = {"killed_nodes": victims}
        for n in victims:
            await asyncio.to_thread(cluster.kill, n)
            down.append(n)
        sent = ctx["feeder"].sent
        await asyncio.sleep(10)
        out["produced_while_down"] = ctx["feeder"].sent - sent
        assert ctx["worker"].proc.poll() is None, ctx["worker"].tail()
        out["restart_s"] = round(await asyncio.to_thread(cluster.start, victims[0]), 1)
        down.remove(victims[0])
        return out

    try:
        rec = await _failover_run(cluster, tmp_path, unique_name, "two_down", 83, fault)
    finally:
        for n in down:
            await asyncio.to_thread(cluster.start, n)
    # acks=all with min.insync.replicas=2: nothing can have been acknowledged while only
    # one node was up (at most the sends already acknowledged before the kill completed)
    assert rec["produced_while_down"] <= 40
