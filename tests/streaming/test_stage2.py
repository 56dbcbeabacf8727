"""Stage 2's batch without a broker (stage2.Stage2Batches): repartition bundles in,
charge lines, alerts, dead letters and table writes out, with the real engine. An engine
failure on one patient must not cost the others their outputs nor stop the worker."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from stream_app.config import Settings
from stream_app.engine import PatientState
from stream_app.runtime import build_engine
from stream_app.streaming import codecs
from stream_app.streaming.processor import Stage2, TableAccess, patient_key
from stream_app.streaming.stage2 import Stage2Batches
from stream_app.vocabulary import DEAD, INPUT_TOPICS, PROCESSING_ERROR

EXAMPLE = Path(__file__).resolve().parents[2].parent / "shared/spec/examples/office-visit.ndjson"
TOPICS = tuple(f"t.{name}" for name in INPUT_TOPICS)
ORIGIN = {"drug.dispensed": 2, "medication.administered": 0, "em.service": 1}


class FailsFor:
    """The real engine, raising in `ingest` while `failing` for one patient's records."""

    def __init__(self, engine, patient_id: str):
        self.engine, self.patient_id, self.failing = engine, patient_id, False

    def ingest(self, state, records, now, rev_floor):
        if self.failing and any(r.patient_id == self.patient_id for r in records):
            raise RuntimeError("engine bug")
        return self.engine.ingest(state, records, now, rev_floor)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class DictTable(TableAccess):
    def __init__(self, data: dict, changelog: list, partition: int):
        self.data, self.changelog, self.partition = data, changelog, partition

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value):
        self.data[key] = value
        self.changelog.append(("changelog", self.partition, key, value, None))

    def delete(self, key):
        self.data.pop(key, None)
        self.changelog.append(("changelog", self.partition, key, None, None))


def _records(patient: str, suffix: str) -> list[bytes]:
    out = []
    for raw in EXAMPLE.read_bytes().splitlines():
        rec = orjson.loads(raw)
        rec["patient_id"] = patient
        rec["event_id"] = f"{rec['event_id']}-{patient}-{suffix}"
        rec["record_id"] = f"{rec['record_id']}-{patient}-{suffix}"
        out.append(orjson.dumps(rec))
    return out


def _event(frames, partition=0):
    msg = SimpleNamespace(partition=partition, headers=codecs.BUNDLE_HEADERS,
                          value=codecs.encode_bundle(frames)[0])
    return SimpleNamespace(message=msg)


def _frames(raws, first_offset):
    return [(ORIGIN[orjson.loads(r)["event_type"]], 1_741_961_000_000, 3, first_offset + i, r)
            for i, r in enumerate(raws)]


@pytest.fixture(scope="module")
def real_engine():
    return build_engine(Settings(store="memory://"))


def _batches(engine):
    return Stage2Batches(Stage2(engine, PatientState), input_topics=TOPICS, timezone="UTC",
                         clock=lambda: 1_741_961_000.0)


def test_an_engine_failure_on_one_patient_dead_letters_only_its_records(real_engine):
    engine = FailsFor(real_engine, "P-FAIL")
    batches = _batches(engine)
    data: dict = {}

    def table_for(p, event, changelog):
        return DictTable(data, changelog, p)

    # batch 1: both patients fine
    first = batches.decide([_event(_frames(_records("P-OK", "1") + _records("P-FAIL", "1"),
                                           100))], None, table_for)
    assert first.dead_letters == [] and first.outputs
    state_before = data[patient_key("P-FAIL")]

    # batch 2: the engine raises on P-FAIL's records
    engine.failing = True
    fail_raws = _records("P-FAIL", "2")
    batch = batches.decide([_event(_frames(_records("P-OK", "2"), 200)
                                   + _frames(fail_raws, 300))], None, table_for)

    # P-OK decided as if P-FAIL were not there (control: a fresh run without P-FAIL)
    control = _batches(real_engine)
    control_data: dict = {}
    control.decide([_event(_frames(_records("P-OK", "1"), 100))], None,
                   lambda p, e, c: DictTable(control_data, c, p))
    expected = control.decide([_event(_frames(_records("P-OK", "2"), 200))], None,
                              lambda p, e, c: DictTable(control_data, c, p))
    assert expected.outputs
    assert [(o.kind, o.key) for o in batch.outputs] == [(o.kind, o.key) for o in expected.outputs]

    # P-FAIL's records are PROCESSING_ERROR dead letters carrying where they came from
    assert [d.kind for d in batch.dead_letters] == [DEAD] * len(fail_raws)
    bodies = [orjson.loads(d.value) for d in batch.dead_letters]
    assert {b["error_code"] for b in bodies} == {PROCESSING_ERROR}
    assert [b["raw"].encode() for b in bodies] == fail_raws
    assert [(b["topic"], b["partition"], b["offset"]) for b in bodies] == [
        (TOPICS[ORIGIN[orjson.loads(r)["event_type"]]], 3, 300 + i)
        for i, r in enumerate(fail_raws)]
    # its state is unchanged and nothing of it reaches the changelog
    assert data[patient_key("P-FAIL")] == state_before
    assert patient_key("P-FAIL") not in {key for _t, _p, key, _v, _h in batch.changelog}
    assert batch.touched == [0]

    # the worker goes on: the next batch of the same patient is decided normally
    engine.failing = False
    later = batches.decide([_event(_frames(_records("P-FAIL", "3"), 400))], None, table_for)
    assert later.dead_letters == [] and later.outputs
    assert data[patient_key("P-FAIL")] != state_before


def test_a_partition_no_longer_owned_is_left_alone(real_engine):
    batches = _batches(real_engine)
    data: dict = {}
    batch = batches.decide([_event(_frames(_records("P-1", "1"), 0), partition=4)], {0, 1},
                           lambda p, e, c: DictTable(data, c, p))
    assert batch.touched == [] and batch.outputs == [] and batch.changelog == []
    assert data == {}


def test_a_damaged_bundle_keeps_the_records_before_the_damage(real_engine):
    batches = _batches(real_engine)
    raws = _records("P-1", "1")
    value = codecs.encode_bundle(_frames(raws, 0))[0]
    cut = value[:-5]  # the last record is truncated
    ev = SimpleNamespace(message=SimpleNamespace(partition=0, headers=codecs.BUNDLE_HEADERS,
                                                 value=cut))
    decoded = batches.decode([ev])
    assert sum(len(items) for items in decoded.groups[0].values()) == len(raws) - 1
    [dead] = decoded.dead_letters
    assert orjson.loads(dead.value)["error_code"] == PROCESSING_ERROR


def test_a_message_that_is_neither_bundle_nor_tick_is_a_dead_letter(real_engine):
    batches = _batches(real_engine)
    raw = _records("P-1", "1")[0]
    ev = SimpleNamespace(message=SimpleNamespace(partition=0, headers=[], value=raw))
    decoded = batches.decode([ev])
    assert decoded.groups == {}
    [dead] = decoded.dead_letters
    assert orjson.loads(dead.value)["error_code"] == PROCESSING_ERROR
