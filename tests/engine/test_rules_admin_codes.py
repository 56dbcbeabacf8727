"""Administration codes (billing-rules.md §1; contract.md §3 "Lines the validator derives")
and the reason codes about a proposed charge_code: WRONG_ADMIN_CODE,
NOT_SEPARATELY_BILLABLE, NON_INJECTION_ROUTE, FACILITY_ONLY_CODE, ADDON_WITHOUT_PRIMARY."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import DROP, admin_raw, at, em_raw, run


def _admin_codes(res) -> list[tuple[str, int]]:
    """(code, units) of active administration lines (J-codes excluded), by code."""
    return sorted((ln["code"], ln["units"]) for ln in res.lines if not ln["code"].startswith("J"))


def _iv(time: str, minutes: int | None, drug: str = "ondansetron", route: str = "IV", **kw):
    h, m = map(int, time.split(":"))
    extra = {}
    if minutes is not None:
        end = h * 60 + m + minutes
        extra["ended_at"] = at(f"{end // 60:02d}:{end % 60:02d}")
    return admin_raw(time=time, route=route, drug=drug, **extra, **kw)


# ---------------------------------------------------------------- SC / IM


@pytest.mark.parametrize("route", ["IM", "SC", "intramuscular", "subcutaneous", "SQ", "subq"])
@pytest.mark.parametrize("category", ["therapeutic", "prophylactic", "diagnostic"])
def test_sc_im_injection_is_96372_units_1(route, category):
    res = run([admin_raw(route=route, drug={"category": category})])
    assert _admin_codes(res) == [("96372", 1)]
    assert res.alerts == []


def test_one_96372_line_per_drug():
    res = run([admin_raw(time="09:00", drug="ceftriaxone"),
               admin_raw(time="09:30", drug="ketorolac")])
    assert _admin_codes(res) == [("96372", 1), ("96372", 1)]


# ---------------------------------------------------------------- IV push / infusion


def test_first_iv_push_is_96374_new_drug_pushed_later_is_96375():
    res = run([_iv("09:00", None, route="IV_PUSH", drug="ondansetron"),
               _iv("09:10", None, route="IV_PUSH", drug="morphine")])
    assert _admin_codes(res) == [("96374", 1), ("96375", 1)]
    assert res.alerts == []


def test_ivp_synonym_is_a_push():
    res = run([_iv("09:00", None, route="IVP")])
    assert _admin_codes(res) == [("96374", 1)]


@pytest.mark.parametrize("gap, expected_reasons", [(10, []), (29, [])])
def test_same_drug_pushed_again_within_30_min_is_part_of_the_first(gap, expected_reasons):
    res = run([_iv("09:00", None, route="IV_PUSH"),
               _iv(f"09:{gap:02d}", None, route="IV_PUSH")])
    assert _admin_codes(res) == [("96374", 1)]
    assert res.reasons() == expected_reasons


def test_the_push_line_names_the_repeats_it_includes():
    # 09:00 initial push; 09:10 and 09:35 (25 min after the last one) are part of it;
    # 10:10 is >= 30 min after the last push: 96376, facility only, not part of the line,
    # and 10:20 is part of that facility-only push, not of the professional line.
    res = run([_iv(t, None, route="IV_PUSH", event_id=f"ev-{t}", record_id=f"mar-{t}")
               for t in ("09:00", "09:10", "09:35", "10:10", "10:20")])
    assert _admin_codes(res) == [("96374", 1)]
    assert res.line("96374")["source_event_ids"] == ["ev-09:00", "ev-09:10", "ev-09:35"]


@pytest.mark.parametrize("gap", [30, 45])
def test_same_drug_pushed_again_30_min_or_later_derives_no_line(gap):
    # would be 96376, which professional claims do not carry: no line, and no alert
    # unless 96376 was proposed
    res = run([_iv("09:00", None, route="IV_PUSH"),
               _iv(f"09:{gap:02d}", None, route="IV_PUSH")])
    assert _admin_codes(res) == [("96374", 1)]
    assert "96376" not in res.codes()
    assert res.reasons() == []


def test_proposed_96376_gets_facility_only_code_and_no_line():
    res = run([_iv("09:00", None, route="IV_PUSH"),
               _iv("09:40", None, route="IV_PUSH", charge_code="96376", record_id="again")])
    alert = res.alert(V.FACILITY_ONLY_CODE)
    assert alert["code"] == "96376"
    assert alert["severity"] == "block"
    assert "96376" not in res.codes()


def test_proposed_96375_for_the_new_drug_push_is_accepted():
    # near miss for FACILITY_ONLY_CODE / WRONG_ADMIN_CODE: the correct add-on was proposed
    res = run([_iv("09:00", None, route="IV_PUSH", charge_code="96374"),
               _iv("09:10", None, route="IV_PUSH", drug="morphine", charge_code="96375")])
    assert _admin_codes(res) == [("96374", 1), ("96375", 1)]
    assert res.alerts == []


@pytest.mark.parametrize("minutes", [5, 15])
def test_iv_of_15_minutes_or_less_is_a_push(minutes):
    res = run([_iv("09:00", minutes)])
    assert _admin_codes(res) == [("96374", 1)]


@pytest.mark.parametrize("route", ["IV", "IV_INFUSION"])
def test_iv_longer_than_15_minutes_is_an_infusion(route):
    res = run([_iv("09:00", 16, route=route)])
    assert _admin_codes(res) == [("96365", 1)]
    assert res.alerts == []


def test_iv_infusion_of_15_minutes_is_coded_as_a_push():
    res = run([_iv("09:00", 15, route="IV_INFUSION")])
    assert _admin_codes(res) == [("96374", 1)]


@pytest.mark.parametrize("minutes, extra_hours", [(60, 0), (90, 0), (91, 1), (95, 1),
                                                  (150, 1), (151, 2), (211, 3)])
def test_infusion_additional_hours_96366(minutes, extra_hours):
    res = run([_iv("08:00", minutes, route="IV_INFUSION")])
    expected = [("96365", 1)] + ([("96366", extra_hours)] if extra_hours else [])
    assert _admin_codes(res) == expected
    assert res.alerts == []


def test_96366_line_is_a_separate_line_of_the_same_record():
    res = run([_iv("08:00", 151, route="IV_INFUSION")])
    first, extra = res.line("96365"), res.line("96366")
    assert extra["units"] == 2 and first["units"] == 1
    assert first["line_id"] != extra["line_id"]
    assert first["source_event_ids"] == extra["source_event_ids"]


@pytest.mark.parametrize("route", ["IV", "IV_INFUSION"])
def test_iv_without_ended_at_is_missing_documentation(route):
    res = run([admin_raw(route=route, drug="ondansetron")])
    alert = res.alert(V.MISSING_DOCUMENTATION)
    assert alert["details"]["missing_fields"] == ["ended_at"]
    assert alert["severity"] == "block"
    assert res.lines == []  # uncodable: nothing active


def test_iv_push_without_ended_at_is_fine():
    res = run([admin_raw(route="IV_PUSH", drug="ondansetron")])
    assert res.alerts == []
    assert _admin_codes(res) == [("96374", 1)]


def test_iv_without_ended_at_and_a_proposed_code_keeps_a_held_line_released_by_amendment():
    # Engine choice (spec silent): the proposed code is kept as the line so it is released
    # (active) once ended_at is documented.
    rec = admin_raw(route="IV", drug="ondansetron", charge_code="96374", record_id="mar-iv",
                    recorded_at=at("09:00"))
    res = run([rec])
    assert res.reasons() == [V.MISSING_DOCUMENTATION]
    assert res.lines == []
    fixed = {**rec, "event_id": "ev-fix", "ended_at": at("09:25"), "recorded_at": at("10:00")}
    res2 = run([rec, fixed])
    assert res2.alerts == []
    assert _admin_codes(res2) == [("96374", 1)]


# ---------------------------------------------------------------- other routes / categories


def test_intra_arterial_is_96373():
    res = run([admin_raw(route="INTRA_ARTERIAL")])
    assert _admin_codes(res) == [("96373", 1)]


def test_vaccines_are_90471_then_90472_with_no_drug_line():
    res = run([admin_raw(time="09:00", drug={"name": "flu vaccine", "category": "vaccine",
                                             "hcpcs": DROP, "ndc": DROP}),
               admin_raw(time="09:10", drug={"name": "tdap", "category": "vaccine",
                                             "hcpcs": DROP, "ndc": DROP})])
    assert res.codes() == ["90471", "90472"]
    assert res.alerts == []  # no DRUG_UNITS_UNKNOWN, no MISSING_NDC for vaccines


def test_vaccine_with_a_hcpcs_code_still_gets_no_drug_line():
    res = run([admin_raw(drug={"category": "vaccine"})])
    assert res.codes() == ["90471"]
    assert V.DRUG_UNITS_UNKNOWN not in res.reasons()


def test_single_allergen_injection_is_95115():
    res = run([admin_raw(drug={"name": "allergen extract", "category": "allergen_immunotherapy",
                               "hcpcs": DROP, "ndc": DROP})])
    assert _admin_codes(res) == [("95115", 1)]
    assert "96372" not in res.codes()


def test_two_allergen_injections_are_one_95117_line():
    ag = {"name": "allergen extract", "category": "allergen_immunotherapy", "hcpcs": DROP,
          "ndc": DROP}
    res = run([admin_raw(time="09:00", drug=ag),
               admin_raw(time="09:15", drug={**ag, "name": "mold extract"}),
               admin_raw(time="09:30", drug={**ag, "name": "dust mite extract"})])
    assert _admin_codes(res) == [("95117", 1)]


def test_the_95117_line_names_every_allergen_injection_it_reports():
    # One line for the day's allergen injections: a coder tracing it back must find each
    # of them, and each injection's event is decided when the line is (not only once the
    # first injection is withdrawn and the next one gets a line of its own).
    ag = {"name": "allergen extract", "category": "allergen_immunotherapy", "hcpcs": DROP,
          "ndc": DROP}
    recs = [admin_raw(time="09:00", drug=ag, event_id="ev-a1", record_id="mar-a1"),
            admin_raw(time="09:15", drug={**ag, "name": "mold extract"}, event_id="ev-a2",
                      record_id="mar-a2"),
            admin_raw(time="09:20", route="IM", drug={"name": "ketorolac"}, event_id="ev-k",
                      record_id="mar-k")]
    res = run(recs)
    assert res.line("95117")["source_event_ids"] == ["ev-a1", "ev-a2"]
    assert res.line("96372")["source_event_ids"] == ["ev-k"]
    withdrawn = {**recs[0], "event_id": "ev-a1-wd", "status": "entered-in-error",
                 "recorded_at": at("12:00")}
    res = run([*recs, withdrawn])
    assert res.line("95115")["source_event_ids"] == ["ev-a2"]


def test_antineoplastic_sc_im_is_96401():
    res = run([admin_raw(route="SC", drug={"category": "antineoplastic"})])
    assert _admin_codes(res) == [("96401", 1)]


def test_hormonal_antineoplastic_sc_im_is_96402():
    res = run([admin_raw(route="IM", drug={"category": "hormonal_antineoplastic"})])
    assert _admin_codes(res) == [("96402", 1)]


@pytest.mark.parametrize("route", ["INTRADERMAL", "INTRA_ARTICULAR"])
def test_intradermal_and_intra_articular_derive_no_administration_line(route):
    res = run([admin_raw(route=route, drug="ketorolac")])
    assert _admin_codes(res) == []
    assert res.alerts == []


@pytest.mark.parametrize("route", ["INTRADERMAL", "INTRA_ARTICULAR"])
def test_proposed_96372_for_intradermal_or_intra_articular_is_wrong_admin_code(route):
    res = run([admin_raw(route=route, charge_code="96372")])
    alert = res.alert(V.WRONG_ADMIN_CODE)
    assert alert["details"]["suggested_code"] is None
    assert alert["code"] == "96372"
    assert "96372" not in res.codes()


# ---------------------------------------------------------------- WRONG_ADMIN_CODE


@pytest.mark.parametrize("raw, proposed, suggested", [
    (dict(route="IM"), "96374", "96372"),
    (dict(route="SC", drug={"category": "antineoplastic"}), "96372", "96401"),
    (dict(route="IM", drug={"category": "vaccine"}), "96372", "90471"),
    (dict(route="IV", ended_at=at("09:30")), "96365", "96374"),  # 10 min: a push
    (dict(route="IV", ended_at=at("10:00")), "96374", "96365"),  # 40 min: an infusion
])
def test_wrong_admin_code_suggests_the_derived_code(raw, proposed, suggested):
    res = run([admin_raw(time="09:20", charge_code=proposed, **raw)])
    alert = res.alert(V.WRONG_ADMIN_CODE)
    assert alert["details"]["suggested_code"] == suggested
    assert alert["code"] == proposed
    assert alert["severity"] == "block" and alert["work_queue"] == "coding"
    assert res.lines == []  # the record's lines are held


@pytest.mark.parametrize("raw, proposed", [
    (dict(route="IM"), "96372"),
    (dict(route="SC", drug={"category": "antineoplastic"}), "96401"),
    (dict(route="IV", ended_at=at("09:30")), "96374"),
    (dict(route="IV", ended_at=at("10:00")), "96365"),
])
def test_correct_proposed_code_is_not_wrong_admin_code(raw, proposed):
    res = run([admin_raw(time="09:20", charge_code=proposed, **raw)])
    assert res.alerts == []
    assert proposed in res.codes()


# ---------------------------------------------------------------- procedural / oral


def test_procedural_injection_with_charge_code_is_not_separately_billable():
    res = run([admin_raw(charge_code="96372", drug={"name": "lidocaine", "category": "procedural",
                                                    "hcpcs": DROP, "ndc": DROP})])
    alert = res.alert(V.NOT_SEPARATELY_BILLABLE)
    assert alert["predicted_denial"]["carc"] == "CO-97"
    assert res.lines == []


def test_procedural_injection_without_charge_code_is_silently_not_billed():
    res = run([admin_raw(drug={"name": "lidocaine", "category": "procedural", "hcpcs": DROP,
                               "ndc": DROP})])
    assert res.alerts == [] and res.lines == []


@pytest.mark.parametrize("route", ["ORAL", "oral", "OTHER"])
def test_oral_or_other_route_with_charge_code_is_non_injection_route(route):
    res = run([admin_raw(route=route, charge_code="96372")])
    assert res.reasons() == [V.NON_INJECTION_ROUTE]
    assert "96372" not in res.codes()


def test_oral_route_without_charge_code_has_no_administration_line_and_no_alert():
    res = run([admin_raw(route="ORAL", drug={"hcpcs": DROP, "ndc": DROP, "name": "amoxicillin"})])
    assert res.alerts == [] and res.lines == []


# ---------------------------------------------------------------- ADDON_WITHOUT_PRIMARY


@pytest.mark.parametrize("addon", ["96366", "96375"])
def test_addon_proposed_without_primary_the_same_day(addon):
    res = run([admin_raw(charge_code=addon)])  # an IM injection: 96372 is no primary
    alert = res.alert(V.ADDON_WITHOUT_PRIMARY)
    assert alert["code"] == addon
    assert alert["predicted_denial"]["carc"] == "CO-97"
    assert res.lines == []


def test_addon_with_its_primary_the_same_day_is_fine():
    res = run([_iv("08:00", 151, route="IV_INFUSION", charge_code="96365"),
               _iv("11:00", None, route="IV_PUSH", drug="morphine", charge_code="96375")])
    assert res.alerts == []
    assert _admin_codes(res) == [("96365", 1), ("96366", 2), ("96375", 1)]


def test_em_only_day_has_no_administration_lines():
    res = run([em_raw(modifiers=[], separately_identifiable=False)])
    assert res.codes() == ["99213"]
    assert res.alerts == []


# ---------------------------------------------------------------- push / infusion interplay


def test_two_infusions_are_initial_then_sequential_96367():
    # Spec names only 96365/96366; engine choice from the add-on table: a second infusion
    # the same day is the sequential infusion 96367 (one initial service per day)
    res = run([_iv("08:00", 40, route="IV_INFUSION"),
               _iv("10:00", 40, route="IV_INFUSION", drug="morphine")])
    assert _admin_codes(res) == [("96365", 1), ("96367", 1)]
    assert res.alerts == []


def test_push_on_an_infusion_day_is_sequential_even_when_given_first():
    # Engine choice (spec silent on push + infusion the same day): CPT hierarchy, the
    # infusion is the initial service and every push is 96375
    res = run([_iv("08:00", None, route="IV_PUSH", drug="morphine"),
               _iv("09:00", 40, route="IV_INFUSION")])
    assert _admin_codes(res) == [("96365", 1), ("96375", 1)]
    assert res.alerts == []


def test_iv_push_route_is_a_push_whatever_its_duration():
    res = run([_iv("08:00", 45, route="IV_PUSH")])
    assert _admin_codes(res) == [("96374", 1)]
