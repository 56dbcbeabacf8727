"""NDC rules and dispense matching (contract.md §3 "Settling and closing", "Dispense
matching"; billing-rules.md §6): MISSING_NDC only once settled, INVALID_NDC, NDC_MISMATCH."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import (
    DROP,
    Result,
    admin,
    admin_raw,
    dispense,
    dispense_raw,
    em,
    engine,
    run,
)

NO_NDC = {"ndc": DROP}


# ---------------------------------------------------------------- MISSING_NDC and settling


def test_missing_ndc_waits_for_settle_then_holds_then_resolves_on_dispense():
    eng = engine()  # settle_seconds 900 (default)
    res = Result()
    state, out = eng.ingest(None, [admin(record_id="mar-n", drug=NO_NDC)], now=0.0)
    res.keep(out)
    # decisions about what is present are emitted at once; MISSING_NDC is not open yet
    assert res.alerts == []
    assert sorted(res.codes()) == ["96372", "J0696"]
    assert res.line("J0696")["ndc"] is None

    state, out = eng.advance(state, now=899.0)
    res.keep(out)
    assert out.decisions == [] and res.alerts == []

    state, out = eng.advance(state, now=1000.0)
    res.keep(out)
    alert = res.alert(V.MISSING_NDC)
    assert alert["severity"] == "block" and alert["work_queue"] == "pharmacy"
    assert alert["predicted_denial"] == {"carc": "CO-16", "rarc": "M119"}
    assert res.lines == []
    assert sorted(v["code"] for v in res.void_lines()) == ["96372", "J0696"]

    # the dispense arrives later (same date, same drug name, no order_id): resolved
    state, out = eng.ingest(state, [dispense(time="09:30", ndc="0409-7332-01")], now=2000.0)
    res.keep(out)
    assert res.alerts == []
    assert res.alerts_by_key[alert["alert_id"]]["state"] == "resolved"
    assert res.alerts_by_key[alert["alert_id"]]["revision"] > alert["revision"]
    assert sorted(res.codes()) == ["96372", "J0696"]
    assert res.line("J0696")["ndc"] == "00409733201"
    assert res.line("J0696")["ndc_qualifier"] == "N4"


def test_settle_counts_from_the_last_message_of_the_patient_day():
    eng = engine()
    state, _ = eng.ingest(None, [admin(drug=NO_NDC)], now=0.0)
    state, _ = eng.ingest(state, [em()], now=800.0)
    state, out = eng.advance(state, now=1000.0)  # only 200 s after the last message
    assert [d for d in out.decisions if d.value.get("reason_code") == V.MISSING_NDC] == []
    state, out = eng.advance(state, now=1700.0)
    assert [d.value["reason_code"] for d in out.decisions if d.kind == "alert"] == [V.MISSING_NDC]


def test_settle_seconds_is_configurable():
    eng = engine(settle_seconds=60.0)
    state, _ = eng.ingest(None, [admin(drug=NO_NDC)], now=0.0)
    state, out = eng.advance(state, now=61.0)
    assert [d.value["reason_code"] for d in out.decisions if d.kind == "alert"] == [V.MISSING_NDC]


def test_ndc_on_the_administration_needs_no_dispense():
    res = run([admin_raw()])
    assert res.alerts == []


def test_vaccine_without_ndc_is_not_missing_ndc():
    res = run([admin_raw(drug={"category": "vaccine", "ndc": DROP})])
    assert res.alerts == []


# ---------------------------------------------------------------- INVALID_NDC


@pytest.mark.parametrize("ndc", ["0409733201", "0409-7332-1", "409-7332-01", "ABCDE-1234-12",
                                 "00409-7332-011", "0040973320"])
def test_invalid_ndc(ndc):
    res = run([admin_raw(drug={"ndc": ndc})])
    alert = res.alert(V.INVALID_NDC)
    assert alert["predicted_denial"] == {"carc": "CO-16", "rarc": "M119"}
    assert res.lines == []
    assert V.MISSING_NDC not in res.reasons()


@pytest.mark.parametrize("ndc, ndc11", [
    ("0002-7597-01", "00002759701"),   # 4-4-2 (billing-rules.md §6 examples)
    ("50242-040-62", "50242004062"),   # 5-3-2
    ("60575-4112-1", "60575411201"),   # 5-4-1
    ("00409733201", "00409733201"),    # 11 digits without hyphens
])
def test_valid_ndc_forms(ndc, ndc11):
    res = run([admin_raw(drug={"ndc": ndc})])
    assert res.alerts == []
    assert res.line("J0696")["ndc"] == ndc11


def test_invalid_ndc_on_the_only_dispense():
    # Engine choice: an unconvertible dispense NDC (none on the administration) is
    # INVALID_NDC rather than MISSING_NDC
    res = run([admin_raw(order_id="ORD-3", drug=NO_NDC),
               dispense_raw(order_id="ORD-3", ndc="0409733201")])
    assert res.reasons() == [V.INVALID_NDC]
    assert res.alert(V.INVALID_NDC)["details"] == {"source": "dispense"}


# ---------------------------------------------------------------- NDC_MISMATCH


def test_ndc_mismatch_warns_and_keeps_lines_active():
    res = run([admin_raw(order_id="ORD-9"),
               dispense_raw(order_id="ORD-9", ndc="0409-3795-01")])
    alert = res.alert(V.NDC_MISMATCH)
    assert alert["severity"] == "warn"
    assert alert["details"] == {"administration_ndc": "00409733201",
                                "dispense_ndc": "00409379501"}
    assert sorted(res.codes()) == ["96372", "J0696"]
    for ln in res.lines:
        assert ln["warnings"] == [V.NDC_MISMATCH]
        assert ln["denial_risk"] == 0.3
    # Engine choice (spec silent): the drug line keeps the administration's NDC
    assert res.line("J0696")["ndc"] == "00409733201"


def test_same_ndc_in_another_format_is_no_mismatch():
    res = run([admin_raw(order_id="ORD-9", drug={"ndc": "0409-7332-01"}),
               dispense_raw(order_id="ORD-9", ndc="00409733201")])
    assert res.alerts == []


# ---------------------------------------------------------------- dispense matching


def test_dispense_matches_by_order_id_across_days():
    res = run([dispense_raw(day="2025-03-13", time="18:00", order_id="ORD-5", quantity=3,
                            quantity_unit="ML", drug_name="something else"),
               admin_raw(order_id="ORD-5", drug=NO_NDC)])
    line = res.line("J0696")
    assert line["ndc"] == "00409733201"
    assert (line["ndc_quantity"], line["ndc_unit"]) == (3, "ML")
    assert res.alerts == []


def test_dispense_with_other_order_id_does_not_match():
    res = run([dispense_raw(order_id="ORD-OTHER"), admin_raw(order_id="ORD-5", drug=NO_NDC)])
    assert res.reasons() == [V.MISSING_NDC]


def test_dispense_without_order_id_on_another_date_does_not_match():
    res = run([dispense_raw(day="2025-03-13", time="18:00"), admin_raw(drug=NO_NDC)])
    assert res.reasons() == [V.MISSING_NDC]


def test_dispense_without_order_id_matches_same_date_and_ndc():
    res = run([admin_raw(), dispense_raw(ndc="00409-7332-01", drug_name="other name",
                                         quantity=1, quantity_unit="UN")])
    assert (res.line("J0696")["ndc_quantity"], res.line("J0696")["ndc_unit"]) == (1, "UN")


def test_dispense_of_another_drug_does_not_match():
    res = run([admin_raw(), dispense_raw(ndc="0409-3795-01", drug_name="ketorolac",
                                         quantity=1, quantity_unit="UN")])
    # not matched: no mismatch, quantity from the administered dose (500 mg -> 500 ME)
    assert res.alerts == []
    assert (res.line("J0696")["ndc_quantity"], res.line("J0696")["ndc_unit"]) == (500, "ME")


def test_dispense_without_order_id_matches_by_drug_name_case_insensitive():
    res = run([admin_raw(drug={"name": "Ceftriaxone", "ndc": DROP}),
               dispense_raw(drug_name="CEFTRIAXONE ", ndc="0409-7332-01")])
    assert res.alerts == []
    assert res.line("J0696")["ndc"] == "00409733201"


def test_dispenses_match_the_earliest_unmatched_administration_first():
    recs = [admin_raw(record_id="late", time="13:00", drug=NO_NDC),
            admin_raw(record_id="early", time="09:00", drug=NO_NDC),
            dispense_raw(time="12:00", quantity=2, quantity_unit="UN"),
            dispense_raw(time="08:30", quantity=1, quantity_unit="UN")]
    res = run(recs)
    assert res.alerts == []
    ev = {r["record_id"]: r["event_id"] for r in recs[:2]}
    by_record = {}
    for ln in res.lines:
        if ln["code"] == "J0696":
            (rec,) = [k for k, e in ev.items() if e in ln["source_event_ids"]]
            by_record[rec] = ln["ndc_quantity"]
    assert by_record == {"early": 1, "late": 2}


def test_one_dispense_for_two_administrations_leaves_the_second_without_ndc():
    b = admin_raw(record_id="b", time="13:00", drug=NO_NDC)
    res = run([admin_raw(record_id="a", time="09:00", drug=NO_NDC), b,
               dispense_raw(time="08:30")])
    assert res.reasons() == [V.MISSING_NDC]
    assert res.alert(V.MISSING_NDC)["source_event_ids"] == [b["event_id"]]
    assert [ln["code"] for ln in res.lines if ln["code"].startswith("J")] == ["J0696"]


def test_dispense_with_order_id_does_not_fall_back_to_ndc_matching():
    # contract: NDC / name matching is for dispenses *without* order_id
    res = run([admin_raw(drug=NO_NDC), dispense_raw(order_id="ORD-NONE")])
    assert res.reasons() == [V.MISSING_NDC]


def test_open_missing_ndc_stays_open_when_unrelated_records_arrive():
    eng = engine()
    res = Result()
    state, out = eng.ingest(None, [admin(drug=NO_NDC)], now=0.0)
    res.keep(out)
    state, out = eng.advance(state, now=1000.0)
    res.keep(out)
    (alert,) = res.alerts
    state, out = eng.ingest(state, [em()], now=1100.0)  # not settled again yet
    res.keep(out)
    assert alert["alert_id"] not in {d.key for d in out.decisions}
    assert res.alerts == [alert]
    assert [ln["code"] for ln in res.lines] == ["99213"]
