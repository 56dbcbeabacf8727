"""Engine transitions (contract.md §2 common fields, §3 decisions, "Settling and closing"):
amendments, entered-in-error, redelivery, void/resolved, revisions, close, late records,
retention, deterministic keys."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from stream_app import vocabulary as V
from stream_app.vocabulary import ALERT, LINE
from tests.engine.builders import (
    DROP,
    Result,
    admin,
    admin_raw,
    at,
    dispense_raw,
    em,
    em_raw,
    engine,
    parse,
    run,
)

# End of 2025-03-14 in America/Chicago (CDT, UTC-5) + close_after_seconds (86400)
END_OF_DAY = datetime(2025, 3, 15, tzinfo=ZoneInfo("America/Chicago")).timestamp()
CLOSE_AT = END_OF_DAY + 86400
RETENTION = 30 * 86400


def _j0696_units(res) -> int:
    return res.line("J0696")["units"]


# ---------------------------------------------------------------- amendments


def test_newer_recorded_at_wins_whatever_the_arrival_order():
    v1 = admin_raw(record_id="mar-1", event_id="ev-1", recorded_at=at("10:00"))
    v2 = {**v1, "event_id": "ev-0", "recorded_at": at("11:00"),
          "drug": {**v1["drug"], "dose": 1000}}  # 1000 mg -> 4 units of 250 mg
    a, b = run([v1, v2]), run([v2, v1])
    assert _j0696_units(a) == _j0696_units(b) == 4
    assert a.line("J0696")["source_event_ids"] == ["ev-0"]
    assert a.line("J0696")["line_id"] == b.line("J0696")["line_id"]


def test_older_version_arriving_in_a_later_batch_changes_nothing():
    eng = engine()
    v1 = admin_raw(record_id="mar-1", event_id="ev-1", recorded_at=at("10:00"))
    v2 = {**v1, "event_id": "ev-2", "recorded_at": at("11:00"),
          "drug": {**v1["drug"], "dose": 1000}}
    state, _ = eng.ingest(None, [parse(v2)], 0.0)
    state, out = eng.ingest(state, [parse(v1)], 1.0)
    assert out.decisions == []


def test_recorded_at_tie_goes_to_the_larger_event_id():
    v1 = admin_raw(record_id="mar-1", event_id="ev-b", recorded_at=at("10:00"),
                   drug={"dose": 1000})
    v2 = {**v1, "event_id": "ev-a", "drug": {**v1["drug"], "dose": 500}}
    assert _j0696_units(run([v1, v2])) == _j0696_units(run([v2, v1])) == 4


def test_event_ids_compare_as_strings():
    # code-point order: "ev-9" > "ev-10"
    v1 = admin_raw(record_id="mar-1", event_id="ev-9", recorded_at=at("10:00"),
                   drug={"dose": 1000})
    v2 = {**v1, "event_id": "ev-10", "drug": {**v1["drug"], "dose": 500}}
    assert _j0696_units(run([v2, v1])) == 4


def test_recorded_at_defaults_to_occurred_at():
    v1 = admin_raw(record_id="mar-1", event_id="ev-1", time="09:20", recorded_at=at("12:00"),
                   drug={"dose": 1000})
    v2 = {**v1, "event_id": "ev-2", "drug": {**v1["drug"], "dose": 500}}
    del v2["recorded_at"]  # = occurred_at 09:20, older than v1's 12:00
    assert _j0696_units(run([v1, v2])) == 4


def test_amendment_to_another_record_type_with_same_record_id_is_separate():
    # the key is event_type + record_id
    res = run([admin_raw(record_id="X1"), em_raw(record_id="X1", modifiers=["25"])])
    assert sorted(res.codes()) == ["96372", "99213", "J0696"]


def test_amendment_moving_a_record_to_another_day_voids_the_old_days_lines():
    eng = engine()
    res = Result()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"), site=DROP)
    state, out = eng.ingest(None, [parse(a)], 0.0)
    res.keep(out)
    moved = {**a, "event_id": "ev-moved", "occurred_at": at("09:20", "2025-03-13"),
             "recorded_at": at("10:00"), "site": "left deltoid"}
    state, out = eng.ingest(state, [parse(moved)], 1.0)
    res.keep(out)
    assert res.alerts == []  # the 03-14 MISSING_DOCUMENTATION is resolved
    assert [v["reason_code"] for v in res.alerts_by_key.values()] == [V.MISSING_DOCUMENTATION]
    assert {ln["service_date"] for ln in res.lines} == {"2025-03-13"}
    assert sorted(res.codes()) == ["96372", "J0696"]


# ---------------------------------------------------------------- entered-in-error


def test_entered_in_error_voids_previously_active_lines():
    eng = engine()
    res = Result()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"))
    state, out = eng.ingest(None, [parse(a)], 0.0)
    res.keep(out)
    active = {ln["line_id"]: ln["revision"] for ln in res.lines}
    assert len(active) == 2
    wd = {**a, "event_id": "ev-wd", "status": "entered-in-error", "recorded_at": at("10:00")}
    state, out = eng.ingest(state, [parse(wd)], 5.0)
    res.keep(out)
    assert res.lines == []
    assert {d.key for d in out.decisions} == set(active)
    for d in out.decisions:
        assert d.kind == LINE and d.value["state"] == "void"
        assert d.value["revision"] > active[d.key]


def test_entered_in_error_resolves_the_records_alerts():
    eng = engine()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"), site=DROP)
    state, out = eng.ingest(None, [parse(a)], 0.0)
    (alert,) = [d for d in out.decisions if d.kind == ALERT]
    assert alert.value["reason_code"] == V.MISSING_DOCUMENTATION
    wd = {**a, "event_id": "ev-wd", "status": "entered-in-error", "recorded_at": at("10:00")}
    state, out = eng.ingest(state, [parse(wd)], 5.0)
    assert [(d.key, d.value["state"]) for d in out.decisions] == [(alert.key, "resolved")]
    assert out.decisions[0].value["revision"] > alert.value["revision"]


def test_older_entered_in_error_does_not_withdraw_a_newer_version():
    a = admin_raw(record_id="mar-1", recorded_at=at("10:00"))
    wd = {**a, "event_id": "ev-wd", "status": "entered-in-error", "recorded_at": at("09:50")}
    res = run([a, wd])
    assert sorted(res.codes()) == ["96372", "J0696"]


def test_a_line_becoming_held_is_voided_and_released_when_fixed():
    eng = engine()
    res = Result()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"))
    state, out = eng.ingest(None, [parse(a)], 0.0)
    res.keep(out)
    ids = {ln["line_id"] for ln in res.lines}
    bad = {**a, "event_id": "ev-bad", "diagnosis_codes": [], "recorded_at": at("10:00")}
    state, out = eng.ingest(state, [parse(bad)], 1.0)
    res.keep(out)
    assert {v["line_id"] for v in res.void_lines()} == ids
    assert res.reasons() == [V.MISSING_DIAGNOSIS]
    good = {**a, "event_id": "ev-good", "recorded_at": at("11:00")}
    state, out = eng.ingest(state, [parse(good)], 2.0)
    res.keep(out)
    assert {ln["line_id"] for ln in res.lines} == ids
    assert res.alerts == []
    assert [v["state"] for v in res.alerts_by_key.values()] == ["resolved"]


# ---------------------------------------------------------------- redelivery


def test_redelivered_event_id_is_ignored():
    eng = engine()
    a = admin_raw(event_id="ev-same")
    state, out = eng.ingest(None, [parse(a)], 0.0)
    assert out.duplicates == 0 and out.decisions
    changed = {**{k: v for k, v in a.items() if k != "site"},
               "recorded_at": at("23:00")}  # same event_id: ignored
    state, out = eng.ingest(state, [parse(a), parse(changed)], 1.0)
    assert out.duplicates == 2
    assert out.decisions == []


def test_redelivery_within_one_batch():
    eng = engine()
    a = parse(admin_raw(event_id="ev-same"))
    _, out = eng.ingest(None, [a, a], 0.0)
    assert out.duplicates == 1
    assert sorted(d.value["code"] for d in out.decisions) == ["96372", "J0696"]


# ---------------------------------------------------------------- revisions


def test_unchanged_decisions_are_not_re_emitted():
    eng = engine()
    state, out = eng.ingest(None, [admin(record_id="mar-1")], 0.0)
    first = {d.key for d in out.decisions}
    # an E/M with 25 on the same day adds its line only
    state, out = eng.ingest(state, [em()], 1.0)
    assert [d.value["code"] for d in out.decisions] == ["99213"]
    # a record on another day does not touch this day's keys
    state, out = eng.ingest(state, [admin(day="2025-03-20", drug="ketorolac")], 2.0)
    assert not {d.key for d in out.decisions} & first
    assert {d.value["service_date"] for d in out.decisions} == {"2025-03-20"}
    # nothing due, nothing emitted
    state, out = eng.advance(state, 3.0)
    assert out.decisions == []


def test_identical_amendment_with_new_event_id_is_a_new_revision():
    # the content is the same but source_event_ids change, so each line is re-emitted
    eng = engine()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"))
    state, out = eng.ingest(None, [parse(a)], 0.0)
    revs = {d.key: d.value["revision"] for d in out.decisions}
    b = {**a, "event_id": "ev-again", "recorded_at": at("09:45")}
    state, out = eng.ingest(state, [parse(b)], 1.0)
    assert {d.key for d in out.decisions} == set(revs)
    for d in out.decisions:
        assert d.value["revision"] > revs[d.key]
        assert d.value["source_event_ids"] == ["ev-again"]


def test_revisions_strictly_increase_per_key_along_a_busy_history():
    eng = engine()
    seen: dict[str, list[int]] = defaultdict(list)

    def keep(out):
        for d in out.decisions:
            seen[d.key].append(d.value["revision"])

    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"), drug={"ndc": DROP})
    state, out = eng.ingest(None, [parse(a)], 0.0)
    keep(out)
    state, out = eng.advance(state, 1000.0)  # MISSING_NDC opens, lines void
    keep(out)
    fixed = {**a, "event_id": "ev-fix", "recorded_at": at("10:00"),
             "drug": {**a["drug"], "ndc": "0409-7332-01"}}
    state, out = eng.ingest(state, [parse(fixed)], 1100.0)
    keep(out)
    state, out = eng.advance(state, CLOSE_AT + 1)
    keep(out)
    assert seen
    for key, revs in seen.items():
        assert revs == sorted(revs) and len(set(revs)) == len(revs), (key, revs)
    assert any(len(r) >= 3 for r in seen.values())


def test_rev_floor_lifts_revisions():
    eng = engine()
    _, out = eng.ingest(None, [admin()], 0.0, rev_floor=1_000_000)
    assert all(d.value["revision"] >= 1_000_000 for d in out.decisions)


# ---------------------------------------------------------------- close, late, retention


def _history():
    """A day with an active line, a void line, an open and a resolved alert."""
    eng = engine()
    res = Result()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"), site=DROP)
    b = admin_raw(record_id="mar-2", time="11:00", drug="ketorolac", recorded_at=at("11:05"))
    state, out = eng.ingest(None, [parse(a), parse(b)], 0.0)
    res.keep(out)
    fixed = {**a, "event_id": "ev-fix", "site": "left deltoid", "recorded_at": at("10:00")}
    bad_b = {**b, "event_id": "ev-bad-b", "diagnosis_codes": [], "recorded_at": at("12:00")}
    state, out = eng.ingest(state, [parse(fixed), parse(bad_b)], 10.0)
    res.keep(out)
    state, out = eng.advance(state, 2000.0)
    res.keep(out)
    return eng, state, res


def test_close_re_emits_every_key_with_final_true():
    eng, state, res = _history()
    before = {**{k: v for k, v in res.lines_by_key.items()},
              **{k: v for k, v in res.alerts_by_key.items()}}
    states = sorted(v["state"] for v in before.values())
    assert {"active", "void", "open", "resolved"} <= set(states)
    state, out = eng.advance(state, CLOSE_AT - 1)
    assert out.closed_days == 0 and out.decisions == []
    state, out = eng.advance(state, CLOSE_AT)
    assert out.closed_days == 1
    assert {d.key for d in out.decisions} == set(before)
    for d in out.decisions:
        assert d.value["final"] is True
        assert d.value["state"] == before[d.key]["state"]
        assert d.value["revision"] > before[d.key]["revision"]
        assert {k: v for k, v in d.value.items() if k not in ("final", "revision")} == \
            {k: v for k, v in before[d.key].items() if k not in ("final", "revision")}
    # closing again emits nothing
    state, out = eng.advance(state, CLOSE_AT + 10)
    assert out.decisions == [] and out.closed_days == 0


def test_close_after_seconds_is_configurable():
    eng = engine(close_after_seconds=3600.0)
    state, _ = eng.ingest(None, [admin()], 0.0)
    state, out = eng.advance(state, END_OF_DAY + 3600)
    assert out.closed_days == 1
    assert all(d.value["final"] for d in out.decisions)


def test_late_record_after_close_is_processed_final_and_counted():
    eng, state, res = _history()
    state, _ = eng.advance(state, CLOSE_AT)
    late = admin(record_id="mar-late", time="15:00", drug="dexamethasone")
    state, out = eng.ingest(state, [late], CLOSE_AT + 100)
    assert out.late == 1
    codes = sorted(d.value["code"] for d in out.decisions if d.kind == LINE)
    assert codes == ["96372", "J1100"]
    assert all(d.value["final"] is True for d in out.decisions)
    assert all(d.value["state"] == "active" for d in out.decisions)


def test_late_withdrawal_after_close_voids_with_final_true():
    eng = engine()
    a = admin_raw(record_id="mar-1", recorded_at=at("09:30"))
    state, out = eng.ingest(None, [parse(a)], 0.0)
    keys = {d.key for d in out.decisions}
    state, _ = eng.advance(state, CLOSE_AT)
    wd = {**a, "event_id": "ev-wd", "status": "entered-in-error", "recorded_at": at("23:00")}
    state, out = eng.ingest(state, [parse(wd)], CLOSE_AT + 5)
    assert out.late == 1
    assert {d.key for d in out.decisions} == keys
    assert all(d.value["state"] == "void" and d.value["final"] for d in out.decisions)


def test_retention_drops_the_day_after_retention_days():
    eng = engine()
    state, _ = eng.ingest(None, [admin()], 0.0)
    state, out = eng.advance(state, CLOSE_AT)
    assert out.closed_days == 1
    state, out = eng.advance(state, CLOSE_AT + RETENTION - 1)
    assert state is not None and out.dropped_days == 0
    state, out = eng.advance(state, CLOSE_AT + RETENTION)
    assert out.dropped_days == 1
    assert state is None
    assert out.decisions == []


def test_retention_drops_only_the_expired_day():
    eng = engine()
    state, _ = eng.ingest(None, [admin(), admin(day="2025-04-20", drug="ketorolac")], 0.0)
    state, _ = eng.advance(state, CLOSE_AT)
    state, out = eng.advance(state, CLOSE_AT + RETENTION)
    assert out.dropped_days == 1
    assert list(state.days) == ["2025-04-20"]


def test_finish_settles_then_closes_every_day():
    eng = engine()
    state, _ = eng.ingest(None, [admin(drug={"ndc": DROP}),
                                 admin(day="2025-03-20", drug="ketorolac")], 0.0)
    state, out = eng.finish(state, 0.0)
    assert out.closed_days == 2
    last = {d.key: d.value for d in out.decisions}  # settle, then close: last per key
    alerts = [v for v in last.values() if "alert_id" in v]
    assert [a["reason_code"] for a in alerts] == [V.MISSING_NDC]
    assert all(v["final"] for v in last.values())
    assert {d.value["service_date"] for d in out.decisions if d.kind == LINE} == \
        {"2025-03-14", "2025-03-20"}


def test_close_waits_for_settle_on_historical_days():
    # Engine choice (spec silent): a day whose close time is already past closes only
    # once it has settled (settle_seconds after its last message), not mid-burst.
    eng = engine()
    now = CLOSE_AT + 10 * 86400
    state, out = eng.ingest(None, [admin()], now)
    assert out.decisions and not any(d.value["final"] for d in out.decisions)
    state, out = eng.advance(state, now + 899)
    assert out.closed_days == 0
    state, out = eng.advance(state, now + 900)
    assert out.closed_days == 1


# ---------------------------------------------------------------- deterministic keys


def test_line_and_alert_ids_are_deterministic_across_runs_and_orders():
    recs = [admin_raw(record_id="a", time="09:00", site=DROP, event_id="e1"),
            admin_raw(record_id="b", time="10:00", drug="ketorolac", event_id="e2"),
            admin_raw(record_id="c", time="10:02", drug="ketorolac", event_id="e3"),
            em_raw(record_id="n", modifiers=[], event_id="e4")]
    r1, r2 = run(recs), run(list(reversed(recs)))

    def strip(vs):
        return sorted(({k: x for k, x in v.items() if k != "revision"} for v in vs),
                      key=lambda v: v.get("line_id") or v.get("alert_id"))

    assert strip(r1.lines) == strip(r2.lines)
    assert strip(r1.alerts) == strip(r2.alerts)
    assert len(r1.alerts) == 3  # MISSING_DOCUMENTATION, DUPLICATE_SERVICE, EM_MISSING_MODIFIER_25


def test_line_id_survives_amendment_and_differs_per_patient():
    v1 = admin_raw(record_id="mar-1", recorded_at=at("09:30"))
    v2 = {**v1, "event_id": "ev-v2", "recorded_at": at("10:30"), "site": "left deltoid"}
    other = {**v1, "patient_id": "P200", "event_id": "ev-p200"}
    ids1 = {ln["code"]: ln["line_id"] for ln in run([v1]).lines}
    ids2 = {ln["code"]: ln["line_id"] for ln in run([v1, v2]).lines}
    ids3 = {ln["code"]: ln["line_id"] for ln in run([other]).lines}
    assert ids1 == ids2
    assert not set(ids1.values()) & set(ids3.values())


def test_service_date_uses_the_facility_timezone():
    # 23:30 at UTC-5 on 03-14 is 04:30 UTC on 03-15: the Chicago date is 03-14
    late_evening = "2025-03-14T23:30:00-05:00"
    res = run([admin_raw(occurred_at=late_evening)])
    assert {ln["service_date"] for ln in res.lines} == {"2025-03-14"}
    res = run([admin_raw(occurred_at=late_evening, facility_timezone="UTC")])
    assert {ln["service_date"] for ln in res.lines} == {"2025-03-15"}
    res = run([admin_raw(occurred_at=late_evening, facility_timezone=DROP)])  # default UTC
    assert {ln["service_date"] for ln in res.lines} == {"2025-03-15"}



def test_entered_in_error_em_voids_its_line():
    e = em_raw(record_id="note-1", recorded_at=at("09:10"))
    wd = {**e, "event_id": "ev-wd-e", "status": "entered-in-error", "recorded_at": at("12:00")}
    eng = engine()
    res = Result()
    state, out = eng.ingest(None, [parse(e)], 0.0)
    res.keep(out)
    assert res.codes() == ["99213"]
    state, out = eng.ingest(state, [parse(wd)], 1.0)
    res.keep(out)
    assert res.lines == [] and [v["code"] for v in res.void_lines()] == ["99213"]


def test_entered_in_error_dispense_unmatches_it():
    d = dispense_raw(record_id="disp-1", order_id="ORD-1", recorded_at=at("09:06"))
    wd = {**d, "event_id": "ev-wd-d", "status": "entered-in-error", "recorded_at": at("12:00")}
    res = run([admin_raw(order_id="ORD-1", drug={"ndc": DROP}), d, wd])
    assert res.reasons() == [V.MISSING_NDC]
