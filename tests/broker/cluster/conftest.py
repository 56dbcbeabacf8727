"""The three-node cluster for the cluster fault tests (docs/reliability.md, "Replicated
cluster").

``kafka_cluster`` (session): a `Cluster` on KAFKA_CLUSTER_PORT (default 19092..19094,
controllers on +100). When all three nodes already answer there (`make kafka-cluster-up`)
it is reused and left running; otherwise this session starts it on a fresh data folder
and stops it at the end. Either way the topics this session created are deleted.
A test that kills nodes starts them again before it ends; the fixture checks that all
three answer before handing the cluster to the next test.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.broker.cluster.cluster import NODES, Cluster


@pytest.fixture(scope="session")
def kafka_cluster():
    from tests.support.kafka import delete_topics_matching

    cluster = Cluster()
    started = False
    if not cluster.all_answer():
        if cluster.any_answers():
            pytest.fail(f"a cluster on {cluster.bootstrap} answers only in part; "
                        "`make kafka-cluster-down` and run again")
        try:
            cluster.up(fresh=True)
        except RuntimeError as exc:
            pytest.fail(f"could not start the three-node cluster: {exc}")
        started = True
    marker = f"-{os.getpid()}-"
    try:
        yield cluster
    finally:
        try:
            for n in NODES:  # a failed test may have left a node down
                if not cluster.answers(n):
                    cluster.start(n)
            asyncio.run(delete_topics_matching(cluster.bootstrap, lambda t: marker in t))
        finally:
            if started:
                cluster.down()


@pytest.fixture
def cluster(kafka_cluster):
    """The session's cluster with all three nodes answering (a test that died with a node
    down is repaired here, not inherited by the next test)."""
    for n in NODES:
        if not kafka_cluster.answers(n):
            kafka_cluster.start(n)
    return kafka_cluster
