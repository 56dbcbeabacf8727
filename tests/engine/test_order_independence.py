"""Property: for generated multi-record patient-days with amendments, withdrawals,
redeliveries, dispenses and encounter.updated versions (whose context records inherit,
ehr-mapping.md §2, including a zone that moves the service date), any arrival order and
any batching gives the same settled view (contract.md §3), and every void line / resolved
alert was preceded by its active / open revision of the same key, with revisions strictly
increasing per key."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.engine import DeadLetter, Engine, EngineSettings, parse_record
from stream_app.replay import settled_view
from stream_app.rules import load_rules

RULES = load_rules()
ENGINE = Engine(RULES, EngineSettings(settle_seconds=900))

DRUGS = [
    {"name": "ceftriaxone", "hcpcs": "J0696", "ndc": "0409-7332-01", "dose": 500, "dose_unit": "mg"},
    {"name": "ketorolac", "hcpcs": "J1885", "ndc": None, "dose": 30, "dose_unit": "mg"},
    {"name": "cyanocobalamin", "hcpcs": "J3420", "ndc": "0517-0031-25", "dose": 1000, "dose_unit": "mcg"},
    {"name": "influenza vaccine", "hcpcs": None, "ndc": None, "dose": 0.5, "dose_unit": "mL",
     "category": "vaccine"},
]
NPIS = ["1234567893", "1245319599", "1234567890"]  # the last fails the check digit
# Context a record may leave to its encounter (ehr-mapping.md §2). Kiritimati (UTC+14)
# moves a 09:xx-05:00 record to the next day; without any zone the default (UTC) applies.
CONTEXT_FIELDS = ("place_of_service", "payer_class", "facility_timezone", "rendering_npi")
ZONES = ["America/Chicago", "Pacific/Kiritimati"]


def _encounters(draw, patient: str, day: int) -> list[dict]:
    """0-3 versions of the patient-day's encounter, any of them maybe withdrawing it."""
    out = []
    for v in range(draw(st.integers(0, 3))):
        rec = {
            "event_type": "encounter.updated", "event_id": f"enc-{patient}-{day}-v{v}",
            "record_id": f"E-{patient}-{day}", "encounter_id": f"E-{patient}-{day}",
            "patient_id": patient, "occurred_at": f"2025-03-{10 + day:02d}T08:00:00-05:00",
            "recorded_at": f"2025-03-{10 + day:02d}T11:{draw(st.integers(0, 3)):02d}:00-05:00",
        }
        for name, values in (("place_of_service", ["11", "22"]),
                             ("payer_class", ["medicare", "commercial"]),
                             ("facility_timezone", ZONES), ("rendering_npi", NPIS[:2])):
            if draw(st.booleans()):
                rec[name] = draw(st.sampled_from(values))
        if draw(st.integers(0, 4)) == 0:
            rec["status"] = "entered-in-error"
        out.append(rec)
    return out


def _leave_to_encounter(draw, rec: dict) -> dict:
    """Drop some context fields (the record then inherits them); maybe flag in progress."""
    for name in CONTEXT_FIELDS:
        if draw(st.integers(0, 2)) == 0:
            rec.pop(name, None)
    if draw(st.integers(0, 5)) == 0:
        rec["in_progress"] = True
    return rec


def _admin(i: int, patient: str, day: int, minute: int, drug: dict, route: str, payer: str,
           pos: str, npi: str, charge: str | None, end_minutes: int | None, order: str | None,
           lot: bool, version: int, withdrawn: bool) -> dict:
    occurred = f"2025-03-{10 + day:02d}T09:{minute:02d}:00-05:00"
    rec = {
        "event_type": "medication.administered", "event_id": f"a{i}-v{version}",
        "record_id": f"mar-{i}", "patient_id": patient, "encounter_id": f"E-{patient}-{day}",
        "occurred_at": occurred, "recorded_at": f"2025-03-{10 + day:02d}T10:{version:02d}:00-05:00",
        "facility_timezone": "America/Chicago", "place_of_service": pos, "payer_class": payer,
        "route": route, "site": "left deltoid",
        "drug": {**{k: v for k, v in drug.items() if v is not None}, "container": "single_dose",
                 "wasted_amount": 0, **({"lot_number": "L1"} if lot else {})},
        "performer_id": "rn-1", "performer_credential": "RN", "rendering_npi": npi,
        "supervising_npi": "1234567893", "diagnosis_codes": ["J18.9"],
    }
    if charge:
        rec["charge_code"] = charge
    if end_minutes is not None:
        rec["ended_at"] = f"2025-03-{10 + day:02d}T{9 + (minute + end_minutes) // 60:02d}:" \
                          f"{(minute + end_minutes) % 60:02d}:00-05:00"
    if order:
        rec["order_id"] = order
    if withdrawn:
        rec["status"] = "entered-in-error"
    return rec


@st.composite
def patient_days(draw):
    msgs: list[dict] = []
    n_admin = draw(st.integers(1, 5))
    for i in range(n_admin):
        patient = draw(st.sampled_from(["P1", "P2"]))
        day = draw(st.integers(0, 1))
        args = dict(
            minute=draw(st.integers(0, 50)), drug=draw(st.sampled_from(DRUGS)),
            route=draw(st.sampled_from(["IM", "SC", "IV_PUSH", "IV", "ORAL"])),
            payer=draw(st.sampled_from(["medicare", "commercial"])),
            pos=draw(st.sampled_from(["11", "22"])), npi=draw(st.sampled_from(NPIS)),
            charge=draw(st.sampled_from([None, "96372", "96374"])),
            end_minutes=draw(st.sampled_from([None, 10, 40, 100])),
            order=draw(st.sampled_from([None, f"ORD-{i}"])), lot=draw(st.booleans()),
        )
        versions = draw(st.integers(1, 3))
        for v in range(versions):
            # Amendments may change anything but the identity; the last may withdraw.
            if v:
                args["lot"] = draw(st.booleans())
                args["minute"] = draw(st.integers(0, 50))
            withdrawn = v == versions - 1 and v > 0 and draw(st.booleans())
            msgs.append(_leave_to_encounter(
                draw, _admin(i, patient, day, version=v, withdrawn=withdrawn, **args)))
        if args["order"] and draw(st.booleans()):
            msgs.append({
                "event_type": "drug.dispensed", "event_id": f"d{i}", "record_id": f"disp-{i}",
                "patient_id": patient, "occurred_at": f"2025-03-{10 + day:02d}T08:00:00-05:00",
                "order_id": args["order"], "ndc": draw(st.sampled_from(["0409-7332-01", "00517003125"])),
                "quantity": 1, "quantity_unit": "UN",
                **({"encounter_id": f"E-{patient}-{day}"} if draw(st.booleans()) else {}),
            })
    for j in range(draw(st.integers(0, 2))):
        patient = draw(st.sampled_from(["P1", "P2"]))
        day = draw(st.integers(0, 1))
        msgs.append(_leave_to_encounter(draw, {
            "event_type": "em.service", "event_id": f"e{j}", "record_id": f"note-{j}",
            "patient_id": patient, "encounter_id": f"E-{patient}-{day}",
            "occurred_at": f"2025-03-{10 + day:02d}T08:30:00-05:00",
            "code": draw(st.sampled_from(["99211", "99213"])),
            "modifiers": draw(st.sampled_from([[], ["25"], ["59"]])),
            "separately_identifiable": draw(st.booleans()), "place_of_service": "11",
            "payer_class": "medicare", "rendering_npi": "1234567893", "diagnosis_codes": ["J18.9"],
        }))
    for patient in ("P1", "P2"):
        for day in (0, 1):
            msgs.extend(_encounters(draw, patient, day))
    # Redeliveries: exact copies of some messages.
    for m in list(msgs):
        if draw(st.integers(0, 4)) == 0:
            msgs.append(dict(m))
    return msgs


def _run(messages: list[dict], cuts: list[int]) -> tuple[list, list, list]:
    """Feed messages in order, handing the engine per-patient batches split at `cuts`;
    then settle and close everything (as replay does). Returns the settled view and the
    full sequence of emitted decisions."""
    states: dict = {}
    emitted: list = []
    batch: dict[str, list] = {}

    def flush():
        for pid, recs in batch.items():
            states[pid], out = ENGINE.ingest(states.get(pid), recs, 0.0)
            emitted.extend(out.decisions)
        batch.clear()

    for n, m in enumerate(messages):
        rec = parse_record(orjson.dumps(m))
        assert not isinstance(rec, DeadLetter), rec
        batch.setdefault(rec.patient_id, []).append(rec)
        if n in cuts:
            flush()
    flush()
    for pid in sorted(states):
        _, out = ENGINE.finish(states[pid], 0.0)
        emitted.extend(out.decisions)
    last: dict[str, dict] = {}
    for d in emitted:
        last[d.key] = d.value
    lines = [v for v in last.values() if "line_id" in v]
    alerts = [v for v in last.values() if "alert_id" in v]
    act, opn = settled_view(lines, alerts)
    return act, opn, emitted


def _check_history(emitted) -> None:
    seen: dict[str, list[dict]] = {}
    for d in emitted:
        hist = seen.setdefault(d.key, [])
        if hist:
            assert d.value["revision"] > hist[-1]["revision"], "revision must strictly increase"
        if d.value["state"] in ("void", "resolved"):
            want = "active" if d.value["state"] == "void" else "open"
            assert any(h["state"] == want for h in hist), f"{d.value['state']} without prior {want}"
        hist.append(d.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_and_batching_gives_the_same_settled_view(data):
    msgs = data.draw(patient_days())
    perm = data.draw(st.permutations(msgs))
    cuts = set(data.draw(st.lists(st.integers(0, len(msgs)), max_size=4)))
    base_act, base_open, base_hist = _run(msgs, cuts=set(range(len(msgs))))
    act, opn, hist = _run(perm, cuts=cuts)
    assert act == base_act
    assert opn == base_open
    _check_history(base_hist)
    _check_history(hist)
    # After closing, everything in the settled view is final.
    assert all(v["final"] for v in act + opn)


def test_generator_produces_voids_and_resolutions():
    """Guard against a vacuous property: a withdrawal after an active line yields a void."""
    a = _admin(1, "P1", 0, 5, DRUGS[0], "IM", "commercial", "11", NPIS[0], None, None, None,
               True, 0, False)
    w = _admin(1, "P1", 0, 5, DRUGS[0], "IM", "commercial", "11", NPIS[0], None, None, None,
               True, 1, True)
    act, opn, hist = _run([a, w], cuts={0})
    assert act == [] and opn == []
    voided = {d.key for d in hist if d.kind == "line" and d.value["state"] == "void"}
    activated = {d.key for d in hist if d.kind == "line" and d.value["state"] == "active"}
    assert len(activated) == 2 and voided == activated  # 96372 + J0696, both voided


def test_generator_s_encounters_lend_context_and_move_dates():
    """Guard against a vacuous property for encounters: a record without zone, POS and
    payer inherits them, and Kiritimati's zone moves it to the next day, in either order."""
    a = _admin(1, "P1", 0, 5, DRUGS[0], "IM", "commercial", "11", NPIS[0], None, None, None,
               True, 0, False)
    for name in ("facility_timezone", "place_of_service", "payer_class"):
        del a[name]
    enc = {"event_type": "encounter.updated", "event_id": "enc-1", "record_id": "E-P1-0",
           "encounter_id": "E-P1-0", "patient_id": "P1",
           "occurred_at": "2025-03-10T08:00:00-05:00", "facility_timezone": "Pacific/Kiritimati",
           "place_of_service": "11", "payer_class": "medicare"}
    first = _run([enc, a], cuts={0})
    assert _run([a, enc], cuts={0})[:2] == first[:2]
    act, opn, _ = first
    assert {(v["service_date"], v["place_of_service"], v["payer_class"]) for v in act} == {
        ("2025-03-11", "11", "medicare")}
