"""Helpers for the fault tests (docs/reliability.md).

The worker subprocess, producer, output reader and replay comparison are the shared
harness (tests/support/worker.py); this module adds what the fault tests need on top: a
private broker that can be stopped and started, RSS sampling, the "every input got a
decision" audit, and timing/count records.

Every address is 127.0.0.1. Nothing here prints a patient id: the audit reports counts
and event ids are only compared, never logged.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from stream_app.devtools.generate import generate_stream
from stream_app.engine import DeadLetter, parse_record
from stream_app.vocabulary import INPUT_TOPICS
from tests.support.paths import KAFKA_DATA, KAFKA_SH
from tests.support.worker import ALERTS, DEAD, LINES, OutputReader, uncommitted_inputs

__all__ = ["INPUT_TOPICS", "Audit", "PrivateBroker", "audit", "free_port_pair", "record_result",
           "revision_faults", "rss_mb", "wait_path"]
PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- broker


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port P with P and P+1 free (broker and controller) and no old data dir."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p < 65000 and _port_free(p + 1) and not (KAFKA_DATA / str(p)).exists():
            return p
    raise RuntimeError("no free port pair for a private broker")


class PrivateBroker:
    """A Kafka broker of our own (deploy/kafka-local/kafka.sh on its own port), so a test
    can stop and start it without touching the broker the other tests use."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port_pair()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "KAFKA_PORT": str(self.port),
                    "KAFKA_CONTROLLER_PORT": str(self.port + 1),
                    "KAFKA_HEAP_OPTS": "-Xmx384m -Xms128m"}
        self.data = KAFKA_DATA / str(self.port)

    def _run(self, cmd: str, timeout: float = 180) -> float:
        t0 = time.monotonic()
        r = subprocess.run(["bash", str(KAFKA_SH), cmd], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"kafka.sh {cmd} on {self.port} failed:\n{r.stdout}\n{r.stderr}")
        return time.monotonic() - t0

    def up(self) -> float:
        return self._run("up")

    def down(self) -> float:
        """Stops only this broker (its pid file); the data folder is kept."""
        return self._run("down")

    def remove(self) -> None:
        """down, then delete the data folder (end of test)."""
        try:
            self.down()
        finally:
            shutil.rmtree(self.data, ignore_errors=True)


# ----------------------------------------------------------------------------- process


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (/proc/<pid>/statm, second field)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / (1024 * 1024)


# ----------------------------------------------------------------------------- audit


@dataclass
class Audit:
    """What happened to every produced input message (see docs/reliability.md)."""

    produced: int = 0
    malformed: int = 0  # in-process parse gives a dead letter
    valid: int = 0
    redeliveries: int = 0  # an event_id already sent earlier
    superseded: int = 0  # a version of a record that a newer version replaces
    withdrawn: int = 0  # the winning version is entered-in-error
    live: int = 0  # winning, non-withdrawn versions
    decided: int = 0  # live versions named in some output's source_event_ids
    no_line_by_rule: int = 0  # live versions replay also derives nothing from
    no_line_by_type: dict = field(default_factory=dict)  # ... per event_type
    undecided: list[str] = field(default_factory=list)  # live, replay decided, worker not
    dead_letters_missing: int = 0  # malformed messages without a dead letter
    dead_letters_unexpected: int = 0  # dead letters for a message that parses
    dead_letter_duplicates: int = 0  # extra copies (at-least-once redelivery of stage 1)
    dead_letter_code_mismatch: int = 0

    def ok(self) -> bool:
        return not (self.undecided or self.dead_letters_missing or self.dead_letters_unexpected
                    or self.dead_letter_code_mismatch)

    def summary(self) -> dict:
        d = dict(self.__dict__)
        d["undecided"] = len(self.undecided)
        return d


def _source_ids(values) -> set[str]:
    ids: set[str] = set()
    for v in values:
        ids.update(v.get("source_event_ids") or ())
    return ids


def audit(messages, metas, reader, replay_result, *, default_tz: str = "UTC",
          max_message_bytes: int = 1_048_576) -> Audit:
    """Every input got a decision or a dead letter.

    `messages`: (topic, key, value) in send order; `metas`: their RecordMetadata (for the
    dead letters' topic/partition/offset); `reader`: the OutputReader after settling;
    `replay_result`: `replay`'s result for the same values.

    A valid message "got a decision" when it is a redelivery (its event_id was sent
    before), a superseded version (another version of its record wins by recorded_at,
    then event_id), a withdrawn record (its winning version is entered-in-error), or its
    event_id appears in the source_event_ids of an output message (any revision, any
    state) — unless replay, too, derives nothing from it (an oral drug without a code,
    an unmatched dispense: rules that by design raise nothing); those are counted.
    A malformed message got exactly what it should when a dead letter names its topic,
    partition and offset with the error code the parser gives in-process.
    """
    a = Audit(produced=len(messages))
    coord_code: dict[tuple[str, int, int], str] = {}
    seen: set[str] = set()
    winners: dict[tuple[str, str], tuple] = {}
    versions: list[tuple[str, tuple[str, str]]] = []  # first sight of each event_id
    for (topic, _k, value), meta in zip(messages, metas, strict=True):
        value = value if isinstance(value, bytes) else str(value).encode()
        if len(value) > max_message_bytes:
            rec = DeadLetter("TOO_LARGE", "", None)
        else:
            rec = parse_record(value, default_tz=default_tz)
        if isinstance(rec, DeadLetter):
            a.malformed += 1
            coord_code[(topic, meta.partition, meta.offset)] = rec.error_code
            continue
        a.valid += 1
        if rec.event_id in seen:
            a.redeliveries += 1
            continue
        seen.add(rec.event_id)
        rk = (rec.event_type, rec.record_id)
        versions.append((rec.event_id, rk))
        order = (rec.recorded_at, rec.event_id, rec.status)
        if rk not in winners or order[:2] > winners[rk][:2]:
            winners[rk] = order
    worker_ids = _source_ids(orjson.loads(v) for t in (LINES, ALERTS)
                             for _p, _o, _k, v, _h in reader.messages[t])
    replay_ids = _source_ids(list(replay_result.lines.values())
                             + list(replay_result.alerts.values()))
    for event_id, rk in versions:
        win = winners[rk]
        if win[1] != event_id:
            a.superseded += 1
        elif win[2] == "entered-in-error":
            a.withdrawn += 1
        else:
            a.live += 1
            if event_id in worker_ids:
                a.decided += 1
            elif event_id not in replay_ids:
                a.no_line_by_rule += 1
                a.no_line_by_type[rk[0]] = a.no_line_by_type.get(rk[0], 0) + 1
            else:
                a.undecided.append(event_id)
    got: dict[tuple[str, int, int], int] = {}
    for _p, _o, _k, value, _h in reader.messages[DEAD]:
        d = orjson.loads(value)
        c = (d.get("topic"), d.get("partition"), d.get("offset"))
        got[c] = got.get(c, 0) + 1
        if c not in coord_code:
            a.dead_letters_unexpected += 1
        elif d.get("error_code") != coord_code[c]:
            a.dead_letter_code_mismatch += 1
    a.dead_letters_missing = sum(1 for c in coord_code if c not in got)
    a.dead_letter_duplicates = sum(n - 1 for n in got.values())
    return a


def revision_faults(reader) -> list[str]:
    """Keys whose revision does not strictly increase in topic order, classified:
    `duplicate` (the same message again: same revision and value, e.g. a producer retry),
    `equal` (same revision, different value) or `backwards` (lower revision). Keys are
    line/alert ids (hashes), never patient ids."""
    bad = []
    for topic in (LINES, ALERTS):
        last: dict[bytes, tuple[int, bytes, int, int]] = {}
        for p, o, key, value, _h in reader.messages[topic]:
            rev = orjson.loads(value)["revision"]
            prev = last.get(key)
            if prev is not None and rev <= prev[0]:
                kind = ("backwards" if rev < prev[0] else
                        "duplicate" if value == prev[1] else "equal")
                bad.append(f"{kind} {topic}[{p}] {key.decode(errors='replace')}: "
                           f"offset {prev[2]} rev {prev[0]} -> offset {o} rev {rev}")
            last[key] = (rev, value, o, p)
    return bad


# ----------------------------------------------------------------------------- report


def record_result(name: str, data: dict) -> None:
    """Print one test's counts and timings (shown with `pytest -s`) and, when
    CHARGECAP_RELIABILITY_REPORT names a file, merge them into that JSON file (used to
    write docs/reliability.md). Counts and timings only, never ids."""
    print(f"reliability {name}: {orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()}")
    target = os.environ.get("CHARGECAP_RELIABILITY_REPORT")
    if not target:
        return
    path = Path(target)
    try:
        all_ = orjson.loads(path.read_bytes()) if path.exists() else {}
    except orjson.JSONDecodeError:
        all_ = {}
    all_[name] = data
    path.write_bytes(orjson.dumps(all_, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def wait_path(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------ shared by the fault suites


def fault_stream(prefix: str, seed: int, records: int = 3000, malformed_rate: float = 0.02):
    """Generated input with redeliveries, amendments, withdrawals, local reordering and a
    few malformed messages (dead letters)."""
    return generate_stream(seed, records=records, redeliver_rate=0.05, amend_rate=0.08,
                           withdraw_rate=0.03, shuffle_window=40,
                           malformed_rate=malformed_rate, topic_prefix=prefix).messages


class Feeder:
    """Produces messages in chunks with a pause between chunks, in the background, so
    faults hit the worker while input is still arriving. Keeps every RecordMetadata (the
    dead-letter audit matches topic/partition/offset) and how many were sent so far."""

    def __init__(self, bootstrap: str, messages, *, chunk: int = 40, pause: float = 0.3,
                 max_request_size: int = 1_048_576):
        self.bootstrap, self.messages = bootstrap, messages
        self.chunk, self.pause, self.max_request_size = chunk, pause, max_request_size
        self.metas: list = []
        self.sent = 0
        self.task: asyncio.Task | None = None

    async def _run(self, start: int, stop: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                    max_request_size=self.max_request_size,
                                    enable_idempotence=True, request_timeout_ms=60000)
        await producer.start()
        try:
            for i in range(start, stop, self.chunk):
                batch = self.messages[i:min(i + self.chunk, stop)]
                futs = [await producer.send(t, v if isinstance(v, bytes) else str(v).encode(),
                                            key=k if k is None or isinstance(k, bytes)
                                            else str(k).encode())
                        for t, k, v in batch]
                self.metas.extend(await asyncio.gather(*futs))
                self.sent += len(batch)
                if self.pause:
                    await asyncio.sleep(self.pause)
        finally:
            await producer.stop()

    def start(self, start: int = 0, stop: int | None = None) -> Feeder:
        self.task = asyncio.ensure_future(self._run(start, len(self.messages)
                                                    if stop is None else stop))
        return self

    async def run(self, start: int = 0, stop: int | None = None) -> None:
        await self._run(start, len(self.messages) if stop is None else stop)

    async def wait(self) -> None:
        if self.task is not None:
            await self.task


def assert_same_view(reader: OutputReader, expected) -> dict:
    lines, alerts = reader.settled_view()
    exp_lines, exp_alerts = expected
    mismatches = (len({orjson.dumps(x) for x in lines} ^ {orjson.dumps(x) for x in exp_lines})
                  + len({orjson.dumps(x) for x in alerts}
                        ^ {orjson.dumps(x) for x in exp_alerts}))
    assert len(lines) == len(exp_lines), (len(lines), len(exp_lines))
    assert len(alerts) == len(exp_alerts), (len(alerts), len(exp_alerts))
    assert lines == exp_lines
    assert alerts == exp_alerts
    return {"active_lines": len(lines), "open_alerts": len(alerts), "mismatches": mismatches}


def assert_audit(messages, metas, reader, res) -> dict:
    a = audit(messages, metas, reader, res)
    s = a.summary()
    assert a.ok(), s
    assert a.malformed == 0 or len(reader.messages[DEAD]) >= a.malformed, s
    return s


async def assert_all_committed(bootstrap: str, prefix: str, app_id: str) -> None:
    topics = [prefix + t for t in INPUT_TOPICS] + [f"{app_id}-patient-records"]
    deadline = time.monotonic() + 30
    while (gaps := await uncommitted_inputs(bootstrap, app_id, topics)) and \
            time.monotonic() < deadline:
        await asyncio.sleep(1)
    assert gaps == {}, f"input not committed by the group: {gaps}"


def output_counts(reader: OutputReader) -> dict:
    return {"line_messages": len(reader.messages[LINES]),
            "alert_messages": len(reader.messages[ALERTS]),
            "dead_letter_messages": len(reader.messages[DEAD])}
