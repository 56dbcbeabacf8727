"""Shared fixtures: a real Kafka broker for integration tests, unique names per test.

* ``kafka_bootstrap`` (session): ``host:port`` of a real broker. Uses ``KAFKA_BOOTSTRAP``
  when set; otherwise starts ``deploy/kafka-local/kafka.sh up`` on ``KAFKA_PORT`` (default
  9092), reuses a broker already answering there (and then never stops it), and stops
  the broker at the end of the session only if this session started it. If no broker can
  be had, the integration tests fail (they are never skipped silently).
* ``kafka_broker_url`` (session): the same as ``kafka://host:port`` (Faust, Settings).
* ``unique_name`` (function): ``unique_name("orders")`` → ``orders-<pid>-<random>``
  (``tests.support.kafka.make_unique_name``).
* ``topic_prefix`` (function): a unique ``CHARGECAP_TOPIC_PREFIX`` value for one test.
* ``kafka_topics`` (async, function): applies every topic of ``topics/`` under a fresh
  unique prefix and returns that prefix; deletes those topics afterwards.

Tests that talk to the broker live in ``tests/broker/`` and are marked
``@pytest.mark.integration``. Helpers are in ``tests/support/``; this file holds fixtures.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.kafka import (
    broker_answers,
    delete_topics_matching,
    delete_topics_with_prefix,
    make_unique_name,
)
from tests.support.paths import KAFKA_SH

# How the session got its broker, for the terminal summary ("ran against a real Kafka").
_BROKER_NOTE: list[str] = []


def pytest_report_header(config):
    if os.environ.get("KAFKA_BOOTSTRAP"):
        return f"kafka: KAFKA_BOOTSTRAP={os.environ['KAFKA_BOOTSTRAP']}"
    port = os.environ.get("KAFKA_PORT", "9092")
    return f"kafka: local Apache Kafka (deploy/kafka-local) on 127.0.0.1:{port}"


def pytest_terminal_summary(terminalreporter):
    if _BROKER_NOTE:
        terminalreporter.write_line(f"integration tests ran against {' '.join(_BROKER_NOTE)}")


def _delete_session_topics(bootstrap: str) -> None:
    """Delete every topic this session created (all names from ``make_unique_name`` carry
    ``-<pid>-``). Left behind, thousands of partitions pile up on a reused broker and make
    its start-up and every rebalance slow (docs/reliability.md)."""
    import asyncio

    marker = f"-{os.getpid()}-"
    try:
        n = asyncio.run(delete_topics_matching(bootstrap, lambda t: marker in t))
    except Exception as exc:  # noqa: BLE001 - clean-up must not fail the session
        _BROKER_NOTE.append(f"(could not delete this session's topics: {type(exc).__name__})")
        return
    if n:
        _BROKER_NOTE.append(f"(deleted the {n} topics this session created)")


@pytest.fixture(scope="session")
def kafka_bootstrap():
    env = os.environ.get("KAFKA_BOOTSTRAP")
    if env:
        bootstrap = ",".join(part.split("://")[-1] for part in env.split(","))
        if not broker_answers(bootstrap, timeout=10):
            pytest.fail(f"KAFKA_BOOTSTRAP={env} does not answer a Metadata request")
        _BROKER_NOTE.append(f"the Kafka broker at {bootstrap} (KAFKA_BOOTSTRAP)")
        yield bootstrap
        _delete_session_topics(bootstrap)
        return
    port = os.environ.get("KAFKA_PORT", "9092")
    bootstrap = f"127.0.0.1:{port}"
    if broker_answers(bootstrap):
        _BROKER_NOTE.append(f"the Kafka broker already running at {bootstrap} (reused, left running)")
        yield bootstrap  # someone else's broker: use it, never stop it
        _delete_session_topics(bootstrap)
        return
    script_env = {**os.environ, "KAFKA_PORT": port}
    started = subprocess.run(
        ["bash", str(KAFKA_SH), "up"],
        env=script_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if started.returncode != 0:
        pytest.fail(f"could not start the local Kafka ({KAFKA_SH} up):\n{started.stdout}\n{started.stderr}")
    _BROKER_NOTE.append(
        f"a real Apache Kafka broker started by this session at {bootstrap} (deploy/kafka-local)"
    )
    try:
        yield bootstrap
        _delete_session_topics(bootstrap)
    finally:
        subprocess.run(
            ["bash", str(KAFKA_SH), "down"],
            env=script_env,
            capture_output=True,
            timeout=180,
        )


@pytest.fixture(scope="session")
def kafka_broker_url(kafka_bootstrap: str) -> str:
    return ",".join(f"kafka://{server}" for server in kafka_bootstrap.split(","))


@pytest.fixture
def unique_name():
    return make_unique_name


@pytest.fixture
def topic_prefix() -> str:
    return make_unique_name("t") + "."


@pytest.fixture
async def kafka_topics(kafka_bootstrap: str, topic_prefix: str):
    from stream_app.topics import apply_topics

    await apply_topics(kafka_bootstrap, topic_prefix)
    yield topic_prefix
    await delete_topics_with_prefix(kafka_bootstrap, topic_prefix)
