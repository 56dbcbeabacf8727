"""Drug supply lines (contract.md §3; billing-rules.md §6): HCPCS units, NDC 11 + N4,
quantity/unit, JZ/JW, WASTE_MODIFIER_MISSING, DRUG_UNITS_UNKNOWN, NDC->HCPCS crosswalk."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import DROP, admin_raw, dispense_raw, run


def _drug_lines(res) -> list[dict]:
    return [ln for ln in res.lines if ln["code"].startswith("J")]


@pytest.mark.parametrize("drug, expected_units", [
    ({"name": "ketorolac", "hcpcs": "J1885", "ndc": "0409-3795-01", "dose": 30, "dose_unit": "mg"}, 2),
    ({"name": "ketorolac", "hcpcs": "J1885", "ndc": "0409-3795-01", "dose": 15, "dose_unit": "mg"}, 1),
    ({"name": "ketorolac", "hcpcs": "J1885", "ndc": "0409-3795-01", "dose": 16, "dose_unit": "mg"}, 2),
    ({"hcpcs": "J0696", "dose": 500, "dose_unit": "mg"}, 2),
    ({"hcpcs": "J0696", "dose": 1, "dose_unit": "g"}, 4),
    ({"hcpcs": "J0696", "dose": 251, "dose_unit": "mg"}, 2),
    ({"name": "b12", "hcpcs": "J3420", "ndc": "0517-0031-25", "dose": 1000, "dose_unit": "mcg"}, 1),
    ({"name": "b12", "hcpcs": "J3420", "ndc": "0517-0031-25", "dose": 1, "dose_unit": "mg"}, 1),
    ({"name": "heparin", "hcpcs": "J1644", "ndc": "0409-2720-01", "dose": 5000, "dose_unit": "units"}, 5),
    ({"name": "ondansetron", "hcpcs": "J2405", "ndc": "0641-6078-25", "dose": 4, "dose_unit": "mg"}, 4),
])
def test_units_are_dose_over_billing_unit_rounded_up(drug, expected_units):
    res = run([admin_raw(drug=drug)])
    (line,) = _drug_lines(res)
    assert line["code"] == drug["hcpcs"]
    assert line["units"] == expected_units
    assert res.alerts == []


def test_drug_line_carries_ndc_11_with_n4_and_sits_beside_the_admin_line():
    res = run([admin_raw()])
    line = res.line("J0696")
    assert line["ndc"] == "00409733201"  # 4-4-2 -> leading zero on the labeler segment
    assert line["ndc_qualifier"] == "N4"
    assert res.line("96372")["ndc"] is None and res.line("96372")["ndc_qualifier"] is None


@pytest.mark.parametrize("raw_ndc, ndc11", [
    ("0409-7332-01", "00409733201"),
    ("00409-7332-01", "00409733201"),
    ("00409733201", "00409733201"),
])
def test_ndc_forms_convert_to_11_digits(raw_ndc, ndc11):
    res = run([admin_raw(drug={"ndc": raw_ndc})])
    assert res.line("J0696")["ndc"] == ndc11


@pytest.mark.parametrize("dose, unit, qty, qunit", [
    (500, "mg", 500, "ME"),
    (1000, "mcg", 1, "ME"),
    (1, "g", 1, "GR"),
    (2, "mL", 2, "ML"),
])
def test_quantity_and_unit_from_the_dose_without_dispense(dose, unit, qty, qunit):
    hcpcs = "J3420" if unit == "mcg" else "J0696"
    res = run([admin_raw(drug={"hcpcs": hcpcs, "dose": dose, "dose_unit": unit})])
    (line,) = _drug_lines(res)
    assert line["ndc_quantity"] == pytest.approx(qty)
    assert line["ndc_unit"] == qunit


def test_quantity_unit_units_to_un():
    res = run([admin_raw(drug={"name": "heparin", "hcpcs": "J1644", "ndc": "0409-2720-01",
                               "dose": 5000, "dose_unit": "units"})])
    line = res.line("J1644")
    assert (line["ndc_quantity"], line["ndc_unit"]) == (5000, "UN")


def test_quantity_and_unit_from_the_matched_dispense():
    res = run([admin_raw(order_id="ORD-1"),
               dispense_raw(order_id="ORD-1", quantity=2, quantity_unit="ML")])
    line = res.line("J0696")
    assert (line["ndc_quantity"], line["ndc_unit"]) == (2, "ML")
    assert line["units"] == 2  # units still from the administered dose
    assert len(line["source_event_ids"]) == 2  # administration and dispense


# ---------------------------------------------------------------- JZ / JW


def test_medicare_single_dose_nothing_wasted_gets_jz():
    res = run([admin_raw(payer_class="medicare", drug={"wasted_amount": 0})])
    assert [(ln["code"], ln["modifiers"]) for ln in _drug_lines(res)] == [("J0696", ["JZ"])]
    assert res.line("96372")["modifiers"] == []
    assert res.alerts == []


def test_medicare_single_dose_with_waste_gets_a_separate_jw_line():
    # 750 mg given (3 units of 250 mg), 250 mg discarded (1 unit)
    res = run([admin_raw(payer_class="medicare",
                         drug={"dose": 750, "wasted_amount": 250})])
    lines = sorted((ln["code"], ln["modifiers"], ln["units"]) for ln in _drug_lines(res))
    assert lines == [("J0696", [], 3), ("J0696", ["JW"], 1)]
    jw = res.line("J0696", modifiers=["JW"])
    assert jw["ndc"] == "00409733201" and jw["ndc_qualifier"] == "N4"
    assert res.alerts == []


def test_jw_units_round_up():
    res = run([admin_raw(payer_class="medicare", drug={"dose": 500, "wasted_amount": 100})])
    assert res.line("J0696", modifiers=["JW"])["units"] == 1


def test_medicare_single_dose_without_wasted_amount_is_waste_modifier_missing():
    res = run([admin_raw(payer_class="medicare", drug={"wasted_amount": DROP})])
    alert = res.alert(V.WASTE_MODIFIER_MISSING)
    assert alert["severity"] == "block" and alert["work_queue"] == "pharmacy"
    assert alert["predicted_denial"] == {"carc": "CO-4", "rarc": None}
    assert res.lines == []  # admin and drug lines of the record are held


@pytest.mark.parametrize("day", ["2023-07-01", "2024-01-02"])
def test_jz_from_2023_07_01(day):
    res = run([admin_raw(day=day, payer_class="medicare")])
    assert res.line("J0696")["modifiers"] == ["JZ"]


def test_no_jz_and_no_waste_alert_before_2023_07_01():
    res = run([admin_raw(day="2023-06-30", payer_class="medicare", drug={"wasted_amount": DROP})])
    assert res.line("J0696")["modifiers"] == []
    assert res.alerts == []


def test_no_jw_line_before_2023_07_01():
    res = run([admin_raw(day="2023-06-30", payer_class="medicare",
                         drug={"dose": 750, "wasted_amount": 250})])
    assert [ln["modifiers"] for ln in _drug_lines(res)] == [[]]


@pytest.mark.parametrize("payer", ["commercial", "medicaid", "self_pay"])
def test_no_jz_jw_policy_for_non_medicare(payer):
    res = run([admin_raw(payer_class=payer, drug={"wasted_amount": DROP}),
               admin_raw(time="11:00", payer_class=payer, drug={"name": "ketorolac",
                         "hcpcs": "J1885", "ndc": "0409-3795-01", "dose": 30,
                         "dose_unit": "mg", "wasted_amount": 15})])
    assert [ln["modifiers"] for ln in _drug_lines(res)] == [[], []]
    assert res.alerts == []


@pytest.mark.parametrize("container", ["multi_dose", "unknown"])
def test_no_jz_for_other_containers(container):
    res = run([admin_raw(payer_class="medicare", drug={"container": container,
                                                       "wasted_amount": DROP})])
    assert res.line("J0696")["modifiers"] == []
    assert res.alerts == []


# ---------------------------------------------------------------- DRUG_UNITS_UNKNOWN


def test_no_hcpcs_warns_drug_units_unknown_and_derives_no_drug_line():
    res = run([admin_raw(drug={"name": "mysterymab", "hcpcs": DROP, "ndc": "12345-6789-01"})])
    alert = res.alert(V.DRUG_UNITS_UNKNOWN)
    assert alert["severity"] == "warn"
    assert _drug_lines(res) == []
    assert res.line("96372")["warnings"] == [V.DRUG_UNITS_UNKNOWN]


def test_hcpcs_without_billing_unit_warns_drug_units_unknown():
    # J3490 unclassified has no billing unit (billing-rules.md §6)
    res = run([admin_raw(drug={"name": "compounded", "hcpcs": "J3490", "ndc": "12345-6789-01"})])
    alert = res.alert(V.DRUG_UNITS_UNKNOWN)
    assert alert["severity"] == "warn"
    # Engine choice (spec silent): the J3490 line is still derived (1 unit) and warned
    assert [ln["code"] for ln in _drug_lines(res)] == ["J3490"]


def test_ndc_hcpcs_crosswalk_finds_j0696():
    res = run([admin_raw(drug={"hcpcs": DROP, "ndc": "00409-7332-01"})])
    line = res.line("J0696")
    assert line["units"] == 2
    assert line["ndc"] == "00409733201"
    assert res.alerts == []


def test_crosswalk_via_the_dispense_ndc():
    res = run([admin_raw(order_id="ORD-7", drug={"hcpcs": DROP, "ndc": DROP}),
               dispense_raw(order_id="ORD-7", ndc="0409-7332-01")])
    assert res.line("J0696")["ndc"] == "00409733201"
    assert res.alerts == []


def test_expected_reimbursement_of_the_injection_line_from_the_fee_schedule():
    # billing-rules.md §9 midpoints in rules/fee_schedule.csv: medicare 14.50, commercial 20.00
    res = run([admin_raw(payer_class="medicare"),
               admin_raw(time="13:00", drug="ketorolac", payer_class="commercial")])
    fees = sorted(ln["expected_reimbursement"] for ln in res.lines if ln["code"] == "96372")
    assert fees == [14.5, 20.0]


def test_dose_unit_incompatible_with_the_billing_unit_warns_and_bills_one_unit():
    # J0696 is billed per 250 mg; a dose in mL cannot be converted. Engine choice (spec
    # silent on the fallback): DRUG_UNITS_UNKNOWN (warn) and 1 unit on the drug line.
    res = run([admin_raw(drug={"dose": 2, "dose_unit": "mL"})])
    alert = res.alert(V.DRUG_UNITS_UNKNOWN)
    assert alert["code"] == "J0696" and alert["severity"] == "warn"
    assert res.line("J0696")["units"] == 1
    assert res.line("J0696")["warnings"] == [V.DRUG_UNITS_UNKNOWN]
