"""An ORAL/OTHER-route administration with an HCPCS code and no charge_code derives a drug
supply line, so it is billable: every record check applies to it and its lines are held
like any other (contract.md §3: a charge line only for a line that passes every blocking
check). Regression tests for a bug where those lines skipped every check."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import DROP, admin_raw, run


@pytest.mark.parametrize("route", ["ORAL", "OTHER"])
def test_non_injection_drug_line_without_diagnosis_is_held(route):
    # contract.md §3: "a charge line for each line that passes every blocking check";
    # MISSING_DIAGNOSIS: "no ICD-10-CM code on the administration" (block)
    res = run([admin_raw(route=route, diagnosis_codes=DROP)])
    assert V.MISSING_DIAGNOSIS in res.reasons()
    assert "J0696" not in res.codes()


@pytest.mark.parametrize("route", ["ORAL", "OTHER"])
def test_non_injection_drug_line_with_invalid_npi_is_held(route):
    # INVALID_NPI: "rendering or supervising NPI fails the check digit" (block)
    res = run([admin_raw(route=route, rendering_npi="1234567890")])
    assert V.INVALID_NPI in res.reasons()
    assert "J0696" not in res.codes()


def test_non_injection_drug_line_without_ndc_is_held_once_settled():
    # MISSING_NDC: "no NDC from the administration or a matched dispense once settled"
    res = run([admin_raw(route="ORAL", drug={"ndc": DROP})])
    assert V.MISSING_NDC in res.reasons()
    assert "J0696" not in res.codes()


def test_non_injection_medicare_single_dose_drug_line_needs_jw_jz():
    # Drug supply lines: Medicare, single-dose, >= 2023-07-01 -> JZ when nothing was
    # wasted; WASTE_MODIFIER_MISSING when wasted_amount is absent
    res = run([admin_raw(route="ORAL", payer_class="medicare", drug={"wasted_amount": DROP})])
    assert V.WASTE_MODIFIER_MISSING in res.reasons()
