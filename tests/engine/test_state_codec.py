"""PatientState.to_bytes / from_bytes (the worker's table value): a round trip preserves
every decision the engine would take next."""

from __future__ import annotations

import pytest

from stream_app.engine import STATE_LAYOUT, PatientState
from tests.engine.builders import (
    DROP,
    admin,
    admin_raw,
    at,
    dispense,
    em,
    engine,
    parse,
)

CLOSE_AT_0314 = 1742014800.0 + 86400  # 2025-03-15T00:00-05:00 + close_after_seconds


def _rich_state():
    """Several days, amendments, a withdrawal, a dispense, an open and a resolved alert,
    a void line, a closed day, every optional field shape (None, tuples, nested drug)."""
    eng = engine()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"), site=DROP, order_id="ORD-1",
                  drug={"ndc": DROP}, charge_modifiers=["JZ"], ended_at=at("09:25"))
    recs = [parse(a),
            admin(record_id="mar-2", time="11:00", drug="ketorolac", charge_code="96372"),
            em(modifiers=[]),
            dispense(order_id="ORD-1"),
            admin(record_id="mar-old", day="2025-03-01", drug="b12", payer_class="medicare",
                  performer_credential=DROP, diagnosis_codes=DROP)]
    state, _ = eng.ingest(None, recs, 0.0)
    fixed = {**a, "event_id": "ev-fix", "site": "left deltoid", "recorded_at": at("10:00")}
    wd = {**admin_raw(record_id="mar-2", time="11:00", drug="ketorolac"),
          "event_id": "ev-wd", "status": "entered-in-error", "recorded_at": at("12:00")}
    state, _ = eng.ingest(state, [parse(fixed), parse(wd)], 50.0)
    state, _ = eng.advance(state, 2000.0)
    state, _ = eng.advance(state, 1740895200.0 + 86400 + 5)  # closes 2025-03-01 only
    return eng, state


def _as_tuple(state: PatientState):
    return (state.patient_id, state.records, state.seen,
            {k: (d.last_input_at, d.end_ts, d.settled_evaluated, d.closed_at,
                 {key: (e.rev, e.kind, e.value) for key, e in d.emitted.items()})
             for k, d in state.days.items()})


def test_round_trip_is_lossless():
    _, state = _rich_state()
    data = state.to_bytes()
    back = PatientState.from_bytes(data)
    assert _as_tuple(back) == _as_tuple(state)
    assert back.to_bytes() == data
    assert sum(1 for d in back.days.values() if d.closed_at is not None) == 1
    assert back.open_days == state.open_days == 1


def test_round_trip_preserves_the_next_decisions():
    eng, state = _rich_state()
    copy = PatientState.from_bytes(state.to_bytes())
    nxt = [admin(record_id="mar-3", time="14:00", drug="dexamethasone"),
           em(record_id="note-x", code="99211", modifiers=[], separately_identifiable=False,
              time="15:00")]
    s1, out1 = eng.ingest(state, nxt, 3000.0)
    s2, out2 = eng.ingest(copy, nxt, 3000.0)
    assert out1.decisions == out2.decisions and out1.decisions
    s1, c1 = eng.advance(s1, CLOSE_AT_0314)
    s2, c2 = eng.advance(PatientState.from_bytes(s2.to_bytes()), CLOSE_AT_0314)
    assert c1.decisions == c2.decisions and c1.closed_days == c2.closed_days == 1
    assert all(d.value["final"] for d in c1.decisions)


def test_round_trip_preserves_redelivery_and_late_detection():
    eng, state = _rich_state()
    copy = PatientState.from_bytes(state.to_bytes())
    redelivered = next(r for r in state.records.values() if r.event_type == "drug.dispensed")
    late = admin(record_id="mar-old", day="2025-03-01", drug="b12", payer_class="medicare",
                 event_id="ev-late-new")
    _, out = eng.ingest(copy, [redelivered, late], 4000.0)
    assert out.duplicates == 1
    assert out.late == 1


def test_round_trip_preserves_revisions_and_final_flags():
    eng, state = _rich_state()
    copy = PatientState.from_bytes(state.to_bytes())
    _, a = eng.reemit(state, 5000.0, 0)
    _, b = eng.reemit(copy, 5000.0, 0)
    assert a.decisions == b.decisions
    finals = {d.value["service_date"]: d.value["final"] for d in a.decisions}
    assert finals == {"2025-03-01": True, "2025-03-14": False}


@pytest.mark.parametrize("layout", [1, 9])
def test_an_unknown_layout_is_refused(layout):
    # A value in any other layout is refused, never guessed at.
    _, state = _rich_state()
    assert layout != STATE_LAYOUT
    with pytest.raises(ValueError, match=f"layout {layout}"):
        PatientState.from_bytes(state.to_bytes(), layout=layout)


def test_a_loaded_state_re_evaluated_unchanged_emits_nothing():
    # Loaded messages are compared as bytes with the freshly rendered ones: an unchanged
    # decision must not be re-emitted (contract.md §3).
    eng, state = _rich_state()
    loaded = PatientState.from_bytes(state.to_bytes())
    redelivered = next(r for r in state.records.values() if r.event_type == "drug.dispensed")
    other_day = admin(record_id="mar-9", day="2025-03-20", drug="b12", payer_class="medicare")
    _, out = eng.ingest(loaded, [redelivered, other_day], 6000.0)
    assert out.duplicates == 1
    assert out.decisions
    assert {d.value["service_date"] for d in out.decisions} == {"2025-03-20"}


def test_the_table_header_names_the_state_layout():
    from stream_app.streaming import codecs

    assert codecs.STATE_VERSION == STATE_LAYOUT
    value = codecs.encode_state(None, 1, 0, b"")
    assert codecs.state_version(value) == STATE_LAYOUT
