"""The strict commit: never past a record that was not processed, unless Kafka confirms
there is no record there. Offsets follow Kafka's convention: the committed offset is the
next one to read."""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import NamedTuple

from stream_app.streaming.commits import StrictCommits, next_commit


class TP(NamedTuple):
    topic: str
    partition: int


TP0 = TP("ehr.em-services", 0)


# -------------------------------------------------------------------- next_commit


def test_an_unbroken_run_from_the_committed_offset_is_committed():
    assert next_commit([26, 27, 28], 26, []) == (29, None)


def test_the_offset_right_after_the_committed_one_missing_stops_the_commit():
    # Faust commits 30 here (it allows one missing offset for a transaction marker):
    # offset 26 was fetched during recovery, skipped, and never processed.
    assert next_commit([27, 28, 29], 26, []) == (None, (26, 27))


def test_a_hole_inside_the_run_stops_the_commit_at_the_hole():
    assert next_commit([26, 27, 30, 31], 26, []) == (28, (28, 30))


def test_a_hole_kafka_confirmed_empty_is_crossed():
    # offsets 28-29: a transaction's commit marker, no records
    assert next_commit([26, 27, 30, 31], 26, [(28, 30)]) == (32, None)
    # a confirmed range that only covers part of the hole does not open it
    assert next_commit([26, 27, 30, 31], 26, [(28, 29)]) == (28, (29, 30))


def test_offsets_acknowledged_again_below_the_committed_one_are_ignored():
    assert next_commit([20, 21, 26, 27], 26, []) == (28, None)


def test_nothing_committed_yet_starts_at_the_first_acknowledged_offset():
    assert next_commit([5, 6, 7], None, []) == (8, None)


def test_nothing_acknowledged_nothing_to_commit():
    assert next_commit([], 26, []) == (None, None)


# -------------------------------------------------------------------- StrictCommits


class Ledger:
    """A consumer's bookkeeping as StrictCommits reads it (the worker's consumer gives
    Faust's own through the same methods; tests/streaming/test_seam.py checks that
    against the real Faust consumer)."""

    def __init__(self, committed: int) -> None:
        self.acked = defaultdict(list)
        self.index = defaultdict(set)
        self.committed = {TP0: committed}
        self.seeks: list[tuple[TP, int]] = []

    def ack(self, *offsets: int) -> None:
        self.acked[TP0].extend(offsets)
        self.index[TP0].update(offsets)

    def acked_offsets(self, tp):
        return self.acked[tp]

    def acked_index(self, tp):
        return self.index[tp]

    def committed_offset(self, tp):
        return self.committed.get(tp)

    def assignment(self):
        return {TP0}

    async def seek(self, tp, offset: int) -> None:
        self.seeks.append((tp, offset))


def strict(consumer, kafka_holds):
    """StrictCommits whose audit answers from `kafka_holds`, the record offsets in the
    partition (None: the broker does not answer)."""
    audits = []

    async def audit(tp, start, stop):
        audits.append((start, stop))
        if kafka_holds is None:
            return None
        return [o for o in kafka_holds if start <= o < stop], stop

    return StrictCommits(audit).bind(consumer), audits


async def settle(commits: StrictCommits) -> None:
    while commits.tasks:
        await asyncio.gather(*list(commits.tasks))


async def test_a_missed_record_is_read_again_and_not_committed_past():
    consumer = Ledger(committed=26)
    commits, audits = strict(consumer, kafka_holds=range(0, 40))  # 26 is a record
    consumer.ack(27, 28, 29)
    assert commits.new_offset(TP0) is None
    await settle(commits)
    assert audits == [(26, 30)]
    assert consumer.seeks == [(TP0, 26)]
    assert commits.rereads == 1
    # the re-read delivers 26 (and 27-29 again); now the run is unbroken
    consumer.ack(26, 27, 28, 29)
    assert commits.new_offset(TP0) == 30
    assert consumer.acked[TP0] == [] and not consumer.index[TP0]


async def test_a_hole_without_records_is_confirmed_then_crossed():
    consumer = Ledger(committed=26)
    # 26 and 29 are transaction markers: no records there
    commits, audits = strict(consumer, kafka_holds=[27, 28, 30, 31])
    consumer.ack(27, 28, 30, 31)
    assert commits.new_offset(TP0) is None
    await settle(commits)
    assert consumer.seeks == [] and commits.holes_confirmed == 1
    assert audits == [(26, 32)]  # one audit clears both markers
    assert commits.new_offset(TP0) == 32


async def test_an_unanswered_audit_keeps_the_commit_back():
    consumer = Ledger(committed=26)
    commits, _ = strict(consumer, kafka_holds=None)  # the broker did not answer in time
    consumer.ack(27)
    assert commits.new_offset(TP0) is None
    await settle(commits)
    assert consumer.seeks == []
    assert commits.new_offset(TP0) is None


def test_confirmed_empty_is_the_complement_of_the_records_read():
    from stream_app.streaming.commits import confirmed_empty
    assert confirmed_empty(26, 32, [27, 28, 30, 31]) == [(26, 27), (29, 30)]
    assert confirmed_empty(26, 35, [27]) == [(26, 27), (28, 35)]
    assert confirmed_empty(26, 30, []) == [(26, 30)]
