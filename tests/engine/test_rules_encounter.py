"""`encounter.updated` in the engine (ehr-mapping.md §2): parsing, the context rule, the
merge into administrations, E/M services and dispenses, pending records, and
ENCOUNTER_CONTEXT_MISSING with each of its causes.

Expected values come from the mapping's text and its worked example (§7: the office visit
settles to 99213-25; 96372; J0696 x 2 with NDC 00409733201, N4, 1 UN, and no open alert).
"""

from __future__ import annotations

import itertools
from datetime import datetime

import orjson
import pytest

from stream_app import vocabulary as V
from stream_app.engine import DeadLetter, PatientState, parse_record
from stream_app.engine.encounters import context_of, needed_versions
from tests.engine.builders import (
    DROP,
    NPI,
    NPI_2,
    PATIENT,
    SETTLED_NOW,
    Result,
    admin_raw,
    dispense_raw,
    em_raw,
    engine,
    parse,
)

E100 = "E100"


def enc_raw(event_id: str = "enc-v1", recorded: str = "2025-03-14T09:30:00-05:00",
            **over) -> dict:
    base = {
        "event_type": "encounter.updated", "event_id": event_id, "record_id": E100,
        "encounter_id": E100, "patient_id": PATIENT,
        "occurred_at": "2025-03-14T09:00:00-05:00", "recorded_at": recorded,
        "facility_timezone": "America/Chicago", "place_of_service": "11",
        "payer_class": "commercial", "rendering_npi": NPI,
    }
    for k, v in over.items():
        if v is DROP:
            base.pop(k, None)
        else:
            base[k] = v
    return base


# Context fields a record of the visit lacks, to be inherited from E100.
NO_CONTEXT = {"place_of_service": DROP, "payer_class": DROP, "facility_timezone": DROP,
              "rendering_npi": DROP}


def office_visit_records() -> list[dict]:
    """office-visit.ndjson's records with place of service, payer class, zone and (on the
    administration) rendering NPI left to the encounter, as the FHIR and HL7 forms send them."""
    return [
        dispense_raw(event_id="ev-d-1", record_id="disp-1", order_id="ORD-1",
                     facility_timezone=DROP),
        admin_raw(event_id="ev-a-1", record_id="mar-1", order_id="ORD-1", charge_code="96372",
                  drug={"ndc": DROP}, **NO_CONTEXT),
        em_raw(event_id="ev-e-1", record_id="note-1", **{**NO_CONTEXT, "rendering_npi": NPI}),
    ]


def replay_like(raws: list[dict], eng=None) -> Result:
    """Store everything with the clock standing still, then settle and close (replay)."""
    eng = eng or engine()
    res = Result()
    state, out = eng.ingest(None, [parse(r) for r in raws], 0.0, evaluate=False)
    res.keep(out)
    state, out = eng.finish(state, 0.0)
    res.keep(out)
    res.state = state
    return res


def worker_like(batches: list[list[dict]], eng=None, *, start: float = 0.0,
                step: float = 10.0) -> Result:
    """One ingest per batch, the clock moving `step` seconds between batches (nothing
    settles in between at the default settle_seconds), then settle (days stay open)."""
    eng = eng or engine()
    res = Result()
    state = None
    now = start
    for batch in batches:
        state, out = eng.ingest(state, [parse(r) for r in batch], now)
        res.keep(out)
        now += step
    state, out = eng.advance(state, now + SETTLED_NOW)
    res.keep(out)
    res.state = state
    return res


def settled(res: Result):
    strip = [{k: v for k, v in x.items() if k not in ("revision", "final")} for x in res.lines]
    alerts = sorted((a["alert_id"], a["reason_code"], orjson.dumps(a["details"]))
                    for a in res.alerts)
    return sorted(strip, key=lambda v: v["line_id"]), alerts


# --------------------------------------------------------------------------- parsing


def test_encounter_updated_parses_with_its_context_fields():
    rec = parse(enc_raw())
    assert rec.event_type == V.ENCOUNTER_UPDATED
    assert (rec.encounter_id, rec.place_of_service, rec.payer_class, rec.facility_timezone,
            rec.rendering_npi) == (E100, "11", "commercial", "America/Chicago", NPI)


def test_encounter_record_id_must_equal_encounter_id():
    dl = parse_record(orjson.dumps(enc_raw(record_id="E999")))
    assert isinstance(dl, DeadLetter)
    assert (dl.error_code, dl.field) == (V.INCONSISTENT_FIELD, "encounter_id")
    assert "E999" not in dl.error and E100 not in dl.error  # no values in the error


def test_encounter_without_encounter_id_is_missing_field():
    dl = parse_record(orjson.dumps(enc_raw(encounter_id=DROP)))
    assert isinstance(dl, DeadLetter) and (dl.error_code, dl.field) == (V.MISSING_FIELD,
                                                                        "encounter_id")


def test_in_progress_must_be_a_boolean():
    dl = parse_record(orjson.dumps(admin_raw(in_progress="yes")))
    assert isinstance(dl, DeadLetter) and (dl.error_code, dl.field) == (V.WRONG_TYPE,
                                                                        "in_progress")


# --------------------------------------------------------------------------- the context rule


def _versions(*specs):
    """(event_id, minute of recorded_at, overrides) -> parsed encounter versions."""
    return [parse(enc_raw(event_id=eid, recorded=f"2025-03-14T10:{m:02d}:00-05:00", **over))
            for eid, m, over in specs]


def test_context_takes_each_field_from_the_newest_version_carrying_it():
    # An A08 without IN1 (no payer class) keeps the payer class of the earlier version.
    vs = _versions(("v1", 0, {}), ("v2", 5, {"payer_class": DROP, "place_of_service": "22"}))
    for perm in itertools.permutations(vs):
        ctx = context_of(list(perm))
        assert (ctx.place_of_service, ctx.payer_class) == ("22", "commercial")
        assert context_of(needed_versions(list(perm))) == ctx


def test_entered_in_error_hides_every_older_version():
    vs = _versions(("v1", 0, {}), ("v2", 5, {"status": "entered-in-error"}),
                   ("v3", 9, {"payer_class": DROP, "place_of_service": DROP,
                              "rendering_npi": DROP, "facility_timezone": DROP}))
    for perm in itertools.permutations(vs):
        ctx = context_of(list(perm))
        assert ctx.live and ctx.payer_class is None and ctx.place_of_service is None
    assert context_of(vs[:2]).status == "encounter_withdrawn"


def test_same_recorded_at_orders_by_event_id():
    vs = _versions(("v-a", 0, {"payer_class": "medicare"}), ("v-b", 0, {"payer_class": "medicaid"}))
    assert context_of(vs).payer_class == context_of(vs[::-1]).payer_class == "medicaid"


# --------------------------------------------------------------------------- merge: the office visit


def test_office_visit_with_context_from_the_encounter_gives_the_three_spec_lines():
    res = replay_like([enc_raw(), *office_visit_records()])
    assert res.alerts == []
    assert [(ln["code"], ln["modifiers"], ln["units"]) for ln in res.lines] == [
        ("96372", [], 1), ("99213", ["25"], 1), ("J0696", [], 2)]
    drug = res.line("J0696")
    assert (drug["ndc"], drug["ndc_qualifier"], drug["ndc_quantity"], drug["ndc_unit"]) == (
        "00409733201", "N4", 1, "UN")
    for ln in res.lines:
        assert (ln["place_of_service"], ln["payer_class"], ln["rendering_npi"],
                ln["service_date"], ln["encounter_id"]) == ("11", "commercial", NPI,
                                                            "2025-03-14", E100)
        # inherited values stay out of source_event_ids
        assert "enc-v1" not in ln["source_event_ids"]


def test_office_visit_lines_equal_the_canonical_example_s():
    canonical = replay_like([
        dispense_raw(event_id="ev-d-1", record_id="disp-1", order_id="ORD-1"),
        admin_raw(event_id="ev-a-1", record_id="mar-1", order_id="ORD-1", charge_code="96372",
                  drug={"ndc": DROP}),
        em_raw(event_id="ev-e-1", record_id="note-1")])
    inherited = replay_like([*office_visit_records(), enc_raw()])
    assert settled(inherited) == settled(canonical)


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_settled_view_is_the_same_wherever_the_encounter_comes(position):
    records = office_visit_records()
    order = [*records[:position], enc_raw(), *records[position:]]
    first = replay_like([enc_raw(), *records])
    assert settled(replay_like(order)) == settled(first)
    # one message per batch, as a worker sees them, then settle and close
    res = worker_like([[r] for r in order])
    eng = engine()
    _, out = eng.finish(res.state, 100_000.0)
    res.keep(out)
    assert settled(res) == settled(first)


def test_own_value_always_wins_over_the_encounter_s():
    res = replay_like([enc_raw(place_of_service="22"),
                       admin_raw(place_of_service="11", payer_class=DROP,
                                 rendering_npi=NPI_2)])
    ln = res.line("96372")
    assert (ln["place_of_service"], ln["payer_class"], ln["rendering_npi"]) == (
        "11", "commercial", NPI_2)


def test_dispense_takes_only_the_zone():
    # 04:30 UTC on the 15th is the 14th in Chicago: the dispense moves to the 14th,
    # matches the administration there, and no MISSING_NDC is raised.
    res = replay_like([enc_raw(), admin_raw(drug={"ndc": DROP}, order_id="ORD-1"),
                       dispense_raw(order_id="ORD-1", encounter_id=E100, facility_timezone=DROP,
                                    occurred_at="2025-03-15T04:30:00Z")])
    assert V.MISSING_NDC not in res.reasons()
    assert res.line("J0696")["ndc"] == "00409733201"


# --------------------------------------------------------------------------- ENCOUNTER_CONTEXT_MISSING


def _context_alert(res: Result) -> dict:
    alert = res.alert(V.ENCOUNTER_CONTEXT_MISSING)
    assert res.lines == []  # it holds the record's lines
    assert alert["severity"] == "block" and alert["work_queue"] == "facility_billing"
    assert V.MISSING_DOCUMENTATION not in res.reasons()
    return alert


def test_encounter_never_received():
    alert = _context_alert(replay_like([admin_raw(place_of_service=DROP, payer_class=DROP)]))
    assert alert["details"] == {"missing_fields": ["place_of_service", "payer_class"],
                                "encounter_id": E100, "cause": "encounter_not_received"}
    assert alert["predicted_denial"] == {"carc": "CO-16", "rarc": "M77"}


def test_encounter_withdrawn():
    res = replay_like([enc_raw(), enc_raw(event_id="enc-v2", status="entered-in-error",
                                          recorded="2025-03-14T11:00:00-05:00"),
                       admin_raw(payer_class=DROP)])
    alert = _context_alert(res)
    assert alert["details"]["cause"] == "encounter_withdrawn"
    assert alert["details"]["missing_fields"] == ["payer_class"]
    assert alert["predicted_denial"] == {"carc": "CO-16", "rarc": None}


def test_encounter_lacks_field():
    res = replay_like([enc_raw(payer_class=DROP), admin_raw(payer_class=DROP)])
    assert _context_alert(res)["details"]["cause"] == "encounter_lacks_field"


def test_no_encounter_id():
    res = replay_like([em_raw(encounter_id=DROP, place_of_service=DROP)])
    alert = _context_alert(res)
    assert alert["details"] == {"missing_fields": ["place_of_service"], "encounter_id": None,
                                "cause": "no_encounter_id"}


def test_missing_rendering_npi_after_settle_is_missing_documentation():
    res = replay_like([enc_raw(rendering_npi=DROP), admin_raw(rendering_npi=DROP)])
    assert res.alert(V.MISSING_DOCUMENTATION)["details"]["missing_fields"] == ["rendering_npi"]
    assert V.ENCOUNTER_CONTEXT_MISSING not in res.reasons()


def test_resolves_when_the_encounter_arrives_after_close():
    eng = engine()
    res = replay_like([admin_raw(**NO_CONTEXT)], eng)
    # rendering_npi missing too: MISSING_DOCUMENTATION, as today (§2)
    assert res.reasons() == [V.ENCOUNTER_CONTEXT_MISSING, V.MISSING_DOCUMENTATION]
    state, out = eng.ingest(res.state, [parse(enc_raw())], 200_000.0)
    res.keep(out)
    assert res.alerts == [] and res.codes() == ["96372", "J0696"]
    assert all(ln["final"] for ln in res.lines)


# --------------------------------------------------------------------------- pending


def test_record_awaiting_its_encounter_emits_nothing_until_settle():
    eng = engine()
    res = Result()
    state, out = eng.ingest(None, [parse(admin_raw(**NO_CONTEXT))], 0.0)
    assert res.keep(out).decisions == []  # lines held, own alerts (MISSING_DOCUMENTATION...) wait
    assert eng.next_due(state) == 900.0  # it must be evaluated again at settle
    state, out = eng.advance(state, 900.0)
    res.keep(out)
    assert res.reasons() == [V.ENCOUNTER_CONTEXT_MISSING, V.MISSING_DOCUMENTATION]
    assert res.lines == []
    state, out = eng.ingest(state, [parse(enc_raw())], 1000.0)
    res.keep(out)
    assert res.alerts == [] and res.codes() == ["96372", "J0696"]


def test_pending_record_counts_in_the_day_s_derivations():
    # The E/M without modifier 25 is on an injection day because of the pending injection.
    # Before settle, the E/M's own alert is raised at once, the injection's wait.
    eng = engine()
    _, out = eng.ingest(None, [parse(admin_raw(**NO_CONTEXT)), parse(em_raw(modifiers=[]))], 0.0)
    assert [(d.kind, d.value["reason_code"]) for d in out.decisions] == [
        ("alert", V.EM_MISSING_MODIFIER_25)]  # every line held: by that alert, by pending
    res = worker_like([[admin_raw(**NO_CONTEXT), em_raw(modifiers=[])]])
    assert res.reasons() == [V.EM_MISSING_MODIFIER_25, V.ENCOUNTER_CONTEXT_MISSING,
                             V.MISSING_DOCUMENTATION]


def test_in_progress_record_waits_for_a_version_without_the_flag():
    eng = engine()
    res = Result()
    first = admin_raw(record_id="mar-ip", event_id="ip-1", in_progress=True, site=DROP)
    state, out = eng.ingest(None, [parse(first)], 0.0)
    state, out2 = eng.advance(state, SETTLED_NOW)
    assert res.keep(out).decisions == [] and res.keep(out2).decisions == []
    done = {**first, "event_id": "ip-2", "in_progress": False,
            "recorded_at": "2025-03-14T10:00:00-05:00"}
    state, out = eng.ingest(state, [parse(done)], SETTLED_NOW + 1)
    res.keep(out)
    assert res.reasons() == [V.MISSING_DOCUMENTATION]  # its own alert (site) now shows


def test_in_progress_at_close_is_missing_documentation():
    res = replay_like([admin_raw(in_progress=True), em_raw(in_progress=True)])
    alerts = [a for a in res.alerts if a["reason_code"] == V.MISSING_DOCUMENTATION]
    assert len(alerts) == 2 and res.lines == []
    for a in alerts:
        assert a["details"]["cause"] == "still_in_progress"
        assert "ended_at" in a["details"]["missing_fields"]


def test_in_progress_at_close_in_the_worker():
    eng = engine()
    res = Result()
    state, out = eng.ingest(None, [parse(admin_raw(in_progress=True))], 0.0)
    res.keep(out)
    state, out = eng.advance(state, SETTLED_NOW)
    res.keep(out)
    assert res.alerts == [] and res.lines == []  # settled but still in progress: waits
    close = eng.next_due(state)  # the day's close (2025-03-14 + close_after_seconds)
    assert close > SETTLED_NOW
    state, out = eng.advance(state, close)
    res.keep(out)
    alert = res.alert(V.MISSING_DOCUMENTATION)
    assert alert["final"] is True and alert["details"] == {"missing_fields": ["ended_at"],
                                                           "cause": "still_in_progress"}
    assert res.lines == []


# --------------------------------------------------------------------------- zone and dates


def test_zone_from_the_encounter_moves_the_service_date():
    # 03:30 UTC on the 15th: the 15th in the configured zone (UTC), the 14th in Chicago.
    late = admin_raw(occurred_at="2025-03-15T03:30:00Z", facility_timezone=DROP)
    res = worker_like([[late], [enc_raw()]])
    assert {ln["service_date"] for ln in res.lines} == {"2025-03-14"}
    # worker: the provisional date's key was never emitted (pending), so nothing to void;
    # withdrawing the encounter moves the record back to the 15th and voids the 14th's
    eng = engine()
    withdrawn = enc_raw(event_id="enc-v2", status="entered-in-error",
                        recorded="2025-03-15T11:00:00-05:00")
    state, out = eng.ingest(res.state, [parse(withdrawn)], SETTLED_NOW * 2)
    res.keep(out)
    state, out = eng.advance(state, SETTLED_NOW * 3)
    res.keep(out)
    assert {v["service_date"] for v in res.void_lines()} == {"2025-03-14"}
    # the record carries POS, payer and NPI itself: billed on the 15th (configured zone)
    assert {ln["service_date"] for ln in res.lines} == {"2025-03-15"}
    assert res.alerts == [] and "2025-03-15" in state.days


def test_record_s_own_zone_is_kept():
    late = admin_raw(occurred_at="2025-03-15T03:30:00Z", facility_timezone="UTC")
    res = replay_like([enc_raw(), late])
    assert {ln["service_date"] for ln in res.lines} == {"2025-03-15"}


# --------------------------------------------------------------------------- state


def test_state_round_trip_keeps_the_encounter_versions():
    res = worker_like([[enc_raw(), enc_raw(event_id="enc-v2", payer_class=DROP,
                                           recorded="2025-03-14T10:00:00-05:00")],
                       [admin_raw(**NO_CONTEXT)]])
    state = res.state
    again = PatientState.from_bytes(state.to_bytes())
    assert again.encounters == state.encounters and again.records == state.records
    assert [v.event_id for v in again.encounters[E100]] == ["enc-v1", "enc-v2"]


def test_encounter_state_lives_while_a_day_referring_to_it_is_retained():
    eng = engine(retention_days=1.0)
    state, _ = eng.ingest(None, [parse(enc_raw()), parse(admin_raw())], 0.0)
    closed_at = max(eng._close_at(ds) for ds in state.days.values())  # noqa: SLF001
    state, _ = eng.advance(state, closed_at)
    assert E100 in state.encounters
    state, _ = eng.advance(state, closed_at + 2 * 86400)
    assert state is None  # the day and with it the encounter are gone


def test_encounter_alone_gives_the_patient_a_day_that_closes():
    eng = engine()
    state, out = eng.ingest(None, [parse(enc_raw())], 0.0)
    assert out.decisions == [] and list(state.days) == ["2025-03-14"]
    assert eng.next_due(state) is not None
    assert isinstance(state.encounters[E100][0].recorded_at, datetime)
