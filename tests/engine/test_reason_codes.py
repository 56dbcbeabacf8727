"""Every reason code of contract.md §3: one scenario that raises it, checked against the
contract table (severity, work queue, CARC/RARC) and the holding rules (a block alert
holds the lines it concerns; a warn alert lists itself in the lines' warnings and
denial_risk = 1 - prod(1 - weight), weights from rules/reason_codes.csv).

Focused behaviour and near-miss tests per code live in test_rules_<area>.py.
"""

from __future__ import annotations

import csv

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import (
    DROP,
    NPI_2,
    RULES_DIR,
    admin_raw,
    dispense_raw,
    em_raw,
    risk,
    run,
)
from tests.support.cms_rules import imported_rules_dir, with_ptp_examples

# contract.md §3 reason-code table: code -> (severity, work queue, CARC, RARC)
CONTRACT = {
    "WRONG_ADMIN_CODE": ("block", "coding", None, None),
    "NOT_SEPARATELY_BILLABLE": ("block", "coding", "CO-97", None),
    "NON_INJECTION_ROUTE": ("block", "coding", None, None),
    "FACILITY_SETTING": ("block", "facility_billing", "CO-5", None),
    "EM_99211_SAME_DAY": ("block", "coding", "CO-97", None),
    "EM_MISSING_MODIFIER_25": ("block", "coding", "CO-97", None),
    "EM_NOT_SEPARATELY_IDENTIFIABLE": ("block", "clinical_documentation", "CO-97", None),
    "MODIFIER_NOT_ALLOWED": ("block", "coding", "CO-4", None),
    "MISSING_NDC": ("block", "pharmacy", "CO-16", "M119"),
    "INVALID_NDC": ("block", "pharmacy", "CO-16", "M119"),
    "NDC_MISMATCH": ("warn", "pharmacy", "CO-16", "M119"),
    "MISSING_DOCUMENTATION": ("block", "clinical_documentation", "CO-16", None),
    "MISSING_DIAGNOSIS": ("block", "clinical_documentation", "CO-16", "M76"),
    "INVALID_DIAGNOSIS_CODE": ("block", "coding", "CO-16", "M76"),
    "INVALID_NPI": ("block", "compliance", "CO-16", "N290"),
    "MISSING_SUPERVISION": ("block", "compliance", "CO-16", None),
    "DUPLICATE_SERVICE": ("block", "coding", "CO-18", None),
    "MUE_EXCEEDED": ("warn", "coding", "CO-151", None),  # MAI 1 (96372) -> warn
    "FREQUENCY_LIMIT": ("warn", "coding", "CO-119", None),  # medicare J3420 row says warn
    "WASTE_MODIFIER_MISSING": ("block", "pharmacy", "CO-4", None),
    "DRUG_UNITS_UNKNOWN": ("warn", "pharmacy", None, None),
    "ADDON_WITHOUT_PRIMARY": ("block", "coding", "CO-97", None),
    "FACILITY_ONLY_CODE": ("block", "coding", None, None),
    # ehr-mapping.md §2 (extension): + M77 when the place of service is the missing field
    "ENCOUNTER_CONTEXT_MISSING": ("block", "facility_billing", "CO-16", "M77"),
    # extensions raised with imported CMS data (docs/rule-data.md "Rules from CMS data")
    "WASTE_UNITS_MISMATCH": ("block", "pharmacy", "CO-4", None),
    "PTP_BUNDLED": ("block", "coding", "CO-97", None),
    "PTP_MODIFIER_REQUIRED": ("block", "coding", "CO-97", None),
}


def _weights() -> dict[str, float]:
    with open(RULES_DIR / "reason_codes.csv", newline="") as fh:
        return {r["reason_code"]: float(r["risk_weight"]) for r in csv.DictReader(fh)}


WEIGHTS = _weights()
SUBJ = "subj"  # record_id of the record each scenario is about
FIVE = ["ceftriaxone", "ketorolac", "dexamethasone", "promethazine", "b12"]


def _scenario(code: str) -> tuple[list[dict], list[str], dict[str, list[str]]]:
    """(records, active codes expected after settling, {code: warnings} for warned lines).
    The record with record_id SUBJ is the one the alert is about."""
    a = admin_raw
    if code == V.WRONG_ADMIN_CODE:  # IM injection proposed as an IV push
        return [a(record_id=SUBJ, charge_code="96374")], [], {}
    if code == V.NOT_SEPARATELY_BILLABLE:
        return [a(record_id=SUBJ, charge_code="96372",
                  drug={"name": "lidocaine", "category": "procedural", "hcpcs": DROP,
                        "ndc": DROP})], [], {}
    if code == V.NON_INJECTION_ROUTE:
        return [a(record_id=SUBJ, route="ORAL", charge_code="96372")], [], {}
    if code == V.FACILITY_SETTING:
        return [a(record_id=SUBJ, place_of_service="22", payer_class="medicare")], [], {}
    if code == V.EM_99211_SAME_DAY:  # only the 99211 line is held
        return ([a(), em_raw(record_id=SUBJ, code="99211", modifiers=[],
                             separately_identifiable=False)], ["96372", "J0696"], {})
    if code == V.EM_MISSING_MODIFIER_25:
        return [a(), em_raw(record_id=SUBJ, modifiers=[])], ["96372", "J0696"], {}
    if code == V.EM_NOT_SEPARATELY_IDENTIFIABLE:
        return ([a(), em_raw(record_id=SUBJ, separately_identifiable=False)],
                ["96372", "J0696"], {})
    if code == V.MODIFIER_NOT_ALLOWED:  # 25 proposed on an injection
        return [a(record_id=SUBJ, charge_code="96372", charge_modifiers=["25"])], [], {}
    if code == V.MISSING_NDC:
        return [a(record_id=SUBJ, drug={"ndc": DROP})], [], {}
    if code == V.INVALID_NDC:  # unhyphenated 10 digits: ambiguous
        return [a(record_id=SUBJ, drug={"ndc": "0409733201"})], [], {}
    if code == V.NDC_MISMATCH:  # warn: both lines stay active with the warning
        return ([a(record_id=SUBJ, order_id="ORD-9"),
                 dispense_raw(order_id="ORD-9", ndc="0409-3795-01")],
                ["96372", "J0696"], {"96372": [code], "J0696": [code]})
    if code == V.MISSING_DOCUMENTATION:
        return [a(record_id=SUBJ, site=DROP)], [], {}
    if code == V.MISSING_DIAGNOSIS:
        return [a(record_id=SUBJ, diagnosis_codes=DROP)], [], {}
    if code == V.INVALID_DIAGNOSIS_CODE:
        return [a(record_id=SUBJ, diagnosis_codes=["5A4.9"])], [], {}
    if code == V.INVALID_NPI:
        return [a(record_id=SUBJ, rendering_npi="1234567890")], [], {}
    if code == V.MISSING_SUPERVISION:
        return [a(record_id=SUBJ, performer_credential="MA", supervising_npi=DROP)], [], {}
    if code == V.DUPLICATE_SERVICE:  # second provider documents the same drug 4 min later
        return ([a(record_id="first", time="09:20"),
                 a(record_id=SUBJ, time="09:24", rendering_npi=NPI_2)], ["96372", "J0696"], {})
    if code == V.MUE_EXCEEDED:  # 5 x 96372, MUE 4, MAI 1: warn on the fifth line only
        recs = [a(record_id=f"r{i}", time=f"09:{10 * i:02d}", drug=d)
                for i, d in enumerate(FIVE[:4])]
        recs.append(a(record_id=SUBJ, time="09:50", drug=FIVE[4]))
        return (recs, sorted(["96372"] * 5 + ["J0696", "J1885", "J1100", "J2550", "J3420"]),
                {"96372": []})  # checked specially below
    if code == V.FREQUENCY_LIMIT:  # medicare J3420 1 per 30 days (warn): later drug line
        b12 = {"drug": "b12", "payer_class": "medicare"}
        return ([a(record_id="first", day="2025-03-01", **b12),
                 a(record_id=SUBJ, day="2025-03-14", **b12)],
                ["96372", "96372", "J3420", "J3420"], {})
    if code == V.WASTE_MODIFIER_MISSING:
        return ([a(record_id=SUBJ, payer_class="medicare", drug={"wasted_amount": DROP})],
                [], {})
    if code == V.DRUG_UNITS_UNKNOWN:  # no HCPCS, NDC not in the crosswalk: warn, no drug line
        return ([a(record_id=SUBJ, drug={"name": "mysterymab", "hcpcs": DROP,
                                         "ndc": "12345-6789-01"})],
                ["96372"], {"96372": [code]})
    if code == V.ADDON_WITHOUT_PRIMARY:  # add-on proposed with no primary on the day
        return [a(record_id=SUBJ, charge_code="96366")], [], {}
    if code == V.WASTE_UNITS_MISMATCH:  # 500 mg from the 1 g vial, waste documented as 0
        return ([a(record_id=SUBJ, payer_class="medicare", drug={"wasted_amount": 0})],
                ["96372"], {})
    if code in (V.PTP_BUNDLED, V.PTP_MODIFIER_REQUIRED):  # IV push, then an IM injection
        return ([a(record_id="first", time="09:00", route="IV_PUSH", drug="ondansetron"),
                 a(record_id=SUBJ, time="09:20")], ["96374", "J2405", "J0696"], {})
    if code == V.FACILITY_ONLY_CODE:  # same drug pushed again 40 min later, proposed 96376
        push = {"route": "IV_PUSH", "drug": "ondansetron"}
        return ([a(record_id="first", time="09:00", **push),
                 a(record_id=SUBJ, time="09:40", charge_code="96376", **push)],
                ["96374", "J2405"], {})
    if code == V.ENCOUNTER_CONTEXT_MISSING:  # no POS of its own and no encounter to lend one
        return [a(record_id=SUBJ, place_of_service=DROP, encounter_id=DROP)], [], {}
    raise AssertionError(code)


def _scenario_rules(code: str, tmp_path):
    """Rule data of a scenario: the packaged tables, or for the rules that use CMS data
    the imported ../shared/cms files (plus EXAMPLE PTP edits, not CMS data)."""
    if code == V.WASTE_UNITS_MISMATCH:
        return imported_rules_dir()
    if code == V.PTP_BUNDLED:
        return with_ptp_examples(tmp_path / "rules", [("96374", "96372", 0)])
    if code == V.PTP_MODIFIER_REQUIRED:
        return with_ptp_examples(tmp_path / "rules", [("96374", "96372", 1)])
    return None


def test_contract_table_covers_every_reason_code_of_the_engine():
    assert set(CONTRACT) == set(V.REASON_CODES)
    assert len(CONTRACT) == 23 + 1 + 3


@pytest.mark.parametrize("code", sorted(CONTRACT))
def test_reason_code_raised_with_contract_metadata_and_holds(code, tmp_path):
    records, active_codes, warned = _scenario(code)
    res = run(records, rules_dir=_scenario_rules(code, tmp_path))
    raised = [x for x in res.alerts if x["reason_code"] == code]
    assert len(raised) == 1, (code, res.reasons())
    alert = raised[0]
    sev, queue, carc, rarc = CONTRACT[code]
    assert alert["severity"] == sev
    assert alert["work_queue"] == queue
    assert alert["predicted_denial"] == {"carc": carc, "rarc": rarc}
    assert alert["state"] == "open" and alert["final"] is False
    assert alert["patient_id"] == "P100"
    subj = next(r for r in records if r["record_id"] == SUBJ)
    assert alert["service_date"] == subj["occurred_at"][:10]
    assert subj["event_id"] in alert["source_event_ids"]
    assert alert["message"] and alert["suggested_fix"]
    # messages name codes and ids, never diagnoses (contract.md §3)
    for r in records:
        for dx in r.get("diagnosis_codes") or ():
            assert dx not in alert["message"] and dx not in alert["suggested_fix"]

    # no other alert opened by the scenario: each scenario is about one problem
    assert res.reasons() == [code]
    assert res.codes() == sorted(active_codes)

    if sev == "warn":
        weight = WEIGHTS[code]
        if code == V.MUE_EXCEEDED:
            fifth = [ln for ln in res.lines if ln["warnings"]]
            assert [ln["code"] for ln in fifth] == ["96372"]
            assert subj["event_id"] in fifth[0]["source_event_ids"]
            assert fifth[0]["denial_risk"] == risk(weight)
            assert alert["line_id"] == fifth[0]["line_id"]
        elif code == V.FREQUENCY_LIMIT:
            flagged = [ln for ln in res.lines if ln["warnings"]]
            assert [(ln["code"], ln["service_date"]) for ln in flagged] == [("J3420", "2025-03-14")]
            assert flagged[0]["warnings"] == [code]
            assert flagged[0]["denial_risk"] == risk(weight)
            assert alert["line_id"] == flagged[0]["line_id"]
        else:
            for ln in res.lines:
                assert ln["warnings"] == warned[ln["code"]]
                assert ln["denial_risk"] == (risk(weight) if warned[ln["code"]] else 0.0)
    else:
        # a held line is never active; what stays active carries no warning
        for ln in res.lines:
            assert ln["warnings"] == [] and ln["denial_risk"] == 0.0
            if code not in (V.EM_99211_SAME_DAY, V.EM_MISSING_MODIFIER_25,
                            V.EM_NOT_SEPARATELY_IDENTIFIABLE, V.WASTE_UNITS_MISMATCH,
                            V.PTP_BUNDLED, V.PTP_MODIFIER_REQUIRED):
                assert subj["event_id"] not in ln["source_event_ids"]


def test_em_alert_revenue_at_risk_is_the_held_em_line_fee():
    # contract.md §3 example alert: EM_MISSING_MODIFIER_25 with revenue_at_risk of the E/M
    # line; commercial 99213 = 124.00 in rules/fee_schedule.csv
    res = run([admin_raw(), em_raw(modifiers=[])])
    alert = res.alert(V.EM_MISSING_MODIFIER_25)
    assert alert["code"] == "99213"
    assert alert["revenue_at_risk"] == 124.0
    assert alert["line_id"] is not None
    assert alert["line_id"] not in {ln["line_id"] for ln in res.lines}


def test_denial_risk_combines_several_warnings():
    # J3490 has no billing unit (DRUG_UNITS_UNKNOWN, warn) and the dispense NDC differs
    # (NDC_MISMATCH, warn): 1 - (1 - w1)(1 - w2) on every line of the record
    res = run([admin_raw(order_id="ORD-2", drug={"name": "compounded", "hcpcs": "J3490",
                                                 "ndc": "12345-6789-01"}),
               dispense_raw(order_id="ORD-2", ndc="0409-3795-01")])
    assert res.reasons() == sorted([V.DRUG_UNITS_UNKNOWN, V.NDC_MISMATCH])
    expected = risk(WEIGHTS[V.DRUG_UNITS_UNKNOWN], WEIGHTS[V.NDC_MISMATCH])
    assert expected == 0.44
    for ln in res.lines:
        assert ln["warnings"] == sorted([V.DRUG_UNITS_UNKNOWN, V.NDC_MISMATCH])
        assert ln["denial_risk"] == expected


def test_warn_alert_revenue_at_risk_is_the_warned_lines():
    recs = [admin_raw(record_id=f"r{i}", time=f"{9 + i:02d}:00", drug=d)
            for i, d in enumerate(FIVE)]
    alert = run(recs).alert(V.MUE_EXCEEDED)
    assert alert["revenue_at_risk"] == 20.0  # one commercial 96372 line
