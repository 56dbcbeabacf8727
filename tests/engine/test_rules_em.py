"""E/M on an injection day (contract.md §3 "E/M lines"; billing-rules.md §3):
EM_99211_SAME_DAY, EM_MISSING_MODIFIER_25, EM_NOT_SEPARATELY_IDENTIFIABLE, and what an
"injection day" is (an administration line in 96360-96379, held or not, not withdrawn,
not a blocked duplicate)."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import DROP, admin_raw, at, em_raw, run

EM_REASONS = {V.EM_99211_SAME_DAY, V.EM_MISSING_MODIFIER_25, V.EM_NOT_SEPARATELY_IDENTIFIABLE}


def _em_reasons(res) -> list[str]:
    return [r for r in res.reasons() if r in EM_REASONS]


@pytest.mark.parametrize("payer", ["medicare", "medicaid", "commercial", "workers_comp", "self_pay"])
@pytest.mark.parametrize("mods", [[], ["25"]])
def test_99211_on_an_injection_day_holds_only_the_99211_line(payer, mods):
    res = run([admin_raw(payer_class=payer),
               em_raw(code="99211", modifiers=mods, separately_identifiable=True,
                      payer_class=payer)])
    alert = res.alert(V.EM_99211_SAME_DAY)
    assert alert["code"] == "99211"
    assert "99211" not in res.codes()
    assert "96372" in res.codes() and "J0696" in res.codes()
    assert _em_reasons(res) == [V.EM_99211_SAME_DAY]  # not also a modifier-25 alert


def test_99211_without_injection_is_fine():
    res = run([em_raw(code="99211", modifiers=[], separately_identifiable=False)])
    assert res.alerts == [] and res.codes() == ["99211"]


def test_em_with_25_and_separately_identifiable_is_billed_with_25():
    res = run([admin_raw(), em_raw(code="99214", modifiers=["25"], separately_identifiable=True)])
    assert res.alerts == []
    assert res.line("99214")["modifiers"] == ["25"]


def test_em_separately_identifiable_without_25_is_missing_modifier_25():
    res = run([admin_raw(), em_raw(modifiers=[], separately_identifiable=True)])
    alert = res.alert(V.EM_MISSING_MODIFIER_25)
    assert alert["code"] == "99213"
    assert "99213" not in res.codes()
    assert sorted(res.codes()) == ["96372", "J0696"]


@pytest.mark.parametrize("mods", [[], ["25"]])
def test_em_not_separately_identifiable(mods):
    res = run([admin_raw(), em_raw(modifiers=mods, separately_identifiable=False)])
    assert _em_reasons(res) == [V.EM_NOT_SEPARATELY_IDENTIFIABLE]
    assert res.alert(V.EM_NOT_SEPARATELY_IDENTIFIABLE)["work_queue"] == "clinical_documentation"
    assert "99213" not in res.codes()


def test_separately_identifiable_defaults_to_false():
    res = run([admin_raw(), em_raw(separately_identifiable=DROP)])
    assert _em_reasons(res) == [V.EM_NOT_SEPARATELY_IDENTIFIABLE]


@pytest.mark.parametrize("em_kw", [
    dict(modifiers=[], separately_identifiable=True),
    dict(modifiers=[], separately_identifiable=False),
    dict(code="99211", modifiers=[], separately_identifiable=False),
])
def test_em_on_a_day_without_injection_needs_nothing(em_kw):
    res = run([em_raw(**em_kw)])
    assert res.alerts == []
    assert len(res.lines) == 1


@pytest.mark.parametrize("drug", [
    {"category": "vaccine"},
    {"category": "antineoplastic"},
    {"category": "hormonal_antineoplastic"},
])
def test_vaccine_or_chemo_only_day_is_not_an_injection_day(drug):
    # contract: injection day = an administration line in 96360-96379 (90471, 96401 and
    # 96402 are outside it)
    res = run([admin_raw(drug=drug),
               em_raw(code="99211", modifiers=[], separately_identifiable=False, time="10:00"),
               em_raw(code="99213", modifiers=[], separately_identifiable=False, time="10:30")])
    assert _em_reasons(res) == []
    assert "99211" in res.codes() and "99213" in res.codes()


@pytest.mark.parametrize("route, extra, code", [
    ("IV_PUSH", {}, "96374"),
    ("IV_INFUSION", {"ended_at": at("10:00")}, "96365"),
    ("INTRA_ARTERIAL", {}, "96373"),
])
def test_push_infusion_and_intra_arterial_days_are_injection_days(route, extra, code):
    res = run([admin_raw(route=route, drug="ondansetron", **extra),
               em_raw(code="99211", modifiers=[], separately_identifiable=False)])
    assert code in res.codes()
    assert _em_reasons(res) == [V.EM_99211_SAME_DAY]


def test_intra_articular_day_without_admin_line_is_not_an_injection_day():
    res = run([admin_raw(route="INTRA_ARTICULAR", drug="ketorolac"),
               em_raw(code="99213", modifiers=[], separately_identifiable=False)])
    assert _em_reasons(res) == []


def test_held_injection_line_still_makes_an_injection_day():
    res = run([admin_raw(diagnosis_codes=DROP),
               em_raw(code="99211", modifiers=[], separately_identifiable=False)])
    assert sorted(res.reasons()) == sorted([V.MISSING_DIAGNOSIS, V.EM_99211_SAME_DAY])


def test_withdrawn_injection_does_not_make_an_injection_day():
    a = admin_raw(record_id="mar-x", recorded_at=at("09:21"))
    wd = {**a, "event_id": "ev-wd", "status": "entered-in-error", "recorded_at": at("11:00")}
    res = run([a, wd, em_raw(code="99211", modifiers=[], separately_identifiable=False)])
    assert res.alerts == []
    assert res.codes() == ["99211"]


def test_injection_on_another_day_does_not_make_an_injection_day():
    res = run([admin_raw(day="2025-03-13"),
               em_raw(code="99211", modifiers=[], separately_identifiable=False)])
    assert res.alerts == []


def test_em_alert_resolves_when_the_em_is_amended_with_25():
    e = em_raw(record_id="note-1", modifiers=[], recorded_at=at("09:30"))
    res = run([admin_raw(), e])
    assert _em_reasons(res) == [V.EM_MISSING_MODIFIER_25]
    fixed = {**e, "event_id": "ev-e-fix", "modifiers": ["25"], "recorded_at": at("12:00")}
    res2 = run([admin_raw(), e, fixed])
    assert res2.alerts == []
    assert res2.line("99213")["modifiers"] == ["25"]


def test_em_invalid_diagnosis_holds_the_em_line():
    res = run([em_raw(diagnosis_codes=["not-a-code"])])
    assert res.reasons() == [V.INVALID_DIAGNOSIS_CODE]
    assert res.lines == []


def test_em_without_diagnosis_is_not_missing_diagnosis():
    # contract: MISSING_DIAGNOSIS is about "no ICD-10-CM code on the administration"
    res = run([em_raw(diagnosis_codes=DROP)])
    assert res.alerts == []
    assert res.codes() == ["99213"]


def test_em_invalid_rendering_npi():
    res = run([em_raw(rendering_npi="1234567890")])
    assert res.reasons() == [V.INVALID_NPI]
    assert res.lines == []


def test_99211_bundling_payer_classes_are_configurable(tmp_path):
    from tests.engine.builders import rules_dir_with

    def commercial_pays_99211(rows):
        head = rows[0]
        ip, ib = head.index("payer_class"), head.index("bundle_99211")
        return [head] + [r[:ib] + (["false"] if r[ip] == "commercial" else [r[ib]]) + r[ib + 1:]
                         for r in rows[1:]]

    d = rules_dir_with(tmp_path, "payer_profiles.csv", commercial_pays_99211)
    com = run([admin_raw(), em_raw(code="99211", modifiers=["25"])], rules_dir=d)
    assert V.EM_99211_SAME_DAY not in com.reasons()
    assert com.line("99211")["modifiers"] == ["25"]
    mcr = run([admin_raw(payer_class="medicare"),
               em_raw(code="99211", modifiers=["25"], payer_class="medicare")], rules_dir=d)
    assert _em_reasons(mcr) == [V.EM_99211_SAME_DAY]
