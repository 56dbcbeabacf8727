"""Documentation, identifiers and setting (contract.md §3; billing-rules.md §3, §4, §7, §8):
MISSING_DOCUMENTATION, MISSING_DIAGNOSIS, INVALID_DIAGNOSIS_CODE, INVALID_NPI,
MISSING_SUPERVISION, FACILITY_SETTING."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import DROP, NPI_2, admin_raw, at, run

# ---------------------------------------------------------------- MISSING_DOCUMENTATION


@pytest.mark.parametrize("over, field", [
    ({"drug": {"dose": DROP}}, "drug.dose"),
    ({"drug": {"dose_unit": DROP}}, "drug.dose_unit"),
    ({"route": DROP}, "route"),
    ({"site": DROP}, "site"),
    ({"drug": {"lot_number": DROP}}, "drug.lot_number"),
    ({"performer_id": DROP}, "performer_id"),
    ({"rendering_npi": DROP}, "rendering_npi"),
])
def test_missing_documentation_names_the_dotted_field(over, field):
    res = run([admin_raw(charge_code="96372", **over)])
    alert = res.alert(V.MISSING_DOCUMENTATION)
    assert alert["details"]["missing_fields"] == [field]
    assert alert["severity"] == "block"
    assert alert["work_queue"] == "clinical_documentation"
    assert res.lines == []  # administration and drug lines of the record held


def test_missing_documentation_lists_every_missing_field():
    res = run([admin_raw(site=DROP, performer_id=DROP, drug={"lot_number": DROP})])
    fields = res.alert(V.MISSING_DOCUMENTATION)["details"]["missing_fields"]
    assert sorted(fields) == ["drug.lot_number", "performer_id", "site"]


def test_iv_infusion_missing_ended_at_and_lot():
    res = run([admin_raw(route="IV_INFUSION", drug={"lot_number": DROP})])
    fields = res.alert(V.MISSING_DOCUMENTATION)["details"]["missing_fields"]
    assert sorted(fields) == ["drug.lot_number", "ended_at"]


def test_complete_record_has_no_missing_documentation():
    res = run([admin_raw(route="IV_INFUSION", ended_at=at("10:30"), drug="ondansetron")])
    assert V.MISSING_DOCUMENTATION not in res.reasons()


def test_performer_credential_and_supervising_npi_are_not_documentation_fields():
    res = run([admin_raw(performer_credential=DROP, performer_id="dr-1",
                         supervising_npi=NPI_2)])
    assert V.MISSING_DOCUMENTATION not in res.reasons()


def test_documentation_alert_resolves_when_the_record_is_amended():
    a = admin_raw(record_id="mar-d", site=DROP, recorded_at=at("09:30"))
    fixed = {**a, "event_id": "ev-fixed", "site": "left deltoid", "recorded_at": at("10:30")}
    res = run([a, fixed])
    assert res.alerts == []
    assert sorted(res.codes()) == ["96372", "J0696"]


# ---------------------------------------------------------------- diagnosis


@pytest.mark.parametrize("dx", [DROP, []])
def test_missing_diagnosis(dx):
    res = run([admin_raw(diagnosis_codes=dx)])
    alert = res.alert(V.MISSING_DIAGNOSIS)
    assert alert["predicted_denial"] == {"carc": "CO-16", "rarc": "M76"}
    assert res.lines == []


@pytest.mark.parametrize("dx", ["5A4.9", "J18.", "J18.12345", "J1", "J18-9", "J1X9.9"])
def test_invalid_diagnosis_code_shape(dx):
    res = run([admin_raw(diagnosis_codes=["Z23", dx])])
    alert = res.alert(V.INVALID_DIAGNOSIS_CODE)
    assert alert["severity"] == "block" and alert["work_queue"] == "coding"
    assert res.lines == []


@pytest.mark.parametrize("dx", [["J18.9"], ["M54.50"], ["Z23"], ["A54.9", "Z79.899"]])
def test_icd10cm_shaped_codes_are_fine(dx):
    res = run([admin_raw(diagnosis_codes=dx)])
    assert res.alerts == []
    assert res.line("96372")["diagnosis_codes"] == dx


# ---------------------------------------------------------------- NPI


@pytest.mark.parametrize("field", ["rendering_npi", "supervising_npi"])
def test_invalid_npi_check_digit(field):
    res = run([admin_raw(**{field: "1234567890"})])
    alert = res.alert(V.INVALID_NPI)
    assert alert["details"]["fields"] == [field]
    assert alert["predicted_denial"] == {"carc": "CO-16", "rarc": "N290"}
    assert alert["work_queue"] == "compliance"
    assert res.lines == []


@pytest.mark.parametrize("bad", ["123456789", "12345678931", "abcdefghij"])
def test_malformed_npi_is_invalid(bad):
    res = run([admin_raw(rendering_npi=bad)])
    assert V.INVALID_NPI in res.reasons()


def test_valid_npis_pass():
    res = run([admin_raw(rendering_npi=NPI_2, supervising_npi="1234567893")])
    assert res.alerts == []


# ---------------------------------------------------------------- MISSING_SUPERVISION


def test_ma_at_office_without_supervising_npi():
    res = run([admin_raw(performer_credential="MA", supervising_npi=DROP)])
    alert = res.alert(V.MISSING_SUPERVISION)
    assert alert["work_queue"] == "compliance" and alert["severity"] == "block"
    assert res.lines == []


@pytest.mark.parametrize("cred", ["RN", "LPN", "MA", None])
def test_non_qhp_without_supervising_npi_is_missing_supervision(cred):
    res = run([admin_raw(performer_credential=cred if cred else DROP, supervising_npi=DROP)])
    assert res.reasons() == [V.MISSING_SUPERVISION]


def test_rn_with_supervising_npi_is_fine():
    res = run([admin_raw(performer_credential="RN", supervising_npi=NPI_2)])
    assert res.alerts == []


@pytest.mark.parametrize("cred", ["MD", "DO", "NP", "PA", "CNS", "CNM", "md"])
def test_physician_or_qhp_needs_no_supervisor(cred):
    res = run([admin_raw(performer_credential=cred, supervising_npi=DROP)])
    assert res.alerts == []


def test_facility_pos_does_not_raise_missing_supervision():
    res = run([admin_raw(performer_credential="MA", supervising_npi=DROP,
                         place_of_service="22", payer_class="medicare")])
    assert res.reasons() == [V.FACILITY_SETTING]


# ---------------------------------------------------------------- FACILITY_SETTING


@pytest.mark.parametrize("pos", ["22", "21", "23", "19", "02"])
def test_medicare_facility_pos_is_facility_setting(pos):
    res = run([admin_raw(place_of_service=pos, payer_class="medicare")])
    alert = res.alert(V.FACILITY_SETTING)
    assert alert["code"] == "96372"
    assert alert["work_queue"] == "facility_billing"
    assert alert["predicted_denial"] == {"carc": "CO-5", "rarc": None}
    assert res.lines == []


@pytest.mark.parametrize("pos", ["11", "12", "20", "54"])
def test_non_facility_pos_for_medicare(pos):
    res = run([admin_raw(place_of_service=pos, payer_class="medicare")])
    assert V.FACILITY_SETTING not in res.reasons()


@pytest.mark.parametrize("pos", ["54", "25", "32", "62", "65", "22"])
def test_commercial_facility_set_adds_its_own_pos(pos):
    res = run([admin_raw(place_of_service=pos, payer_class="commercial")])
    assert res.reasons() == [V.FACILITY_SETTING]


def test_facility_setting_applies_to_infusion_and_chemo_codes():
    res = run([admin_raw(place_of_service="22", payer_class="medicare", route="IV_INFUSION",
                         ended_at=at("10:30"), drug="ondansetron"),
               admin_raw(time="11:00", place_of_service="22", payer_class="medicare",
                         route="SC", drug={"category": "antineoplastic"})])
    alerts = [a for a in res.alerts if a["reason_code"] == V.FACILITY_SETTING]
    assert sorted(a["code"] for a in alerts) == ["96365", "96401"]


def test_facility_pos_does_not_restrict_em_or_vaccine_codes():
    # billing-rules.md §4 names 96360-96379 and 96401-96549 only
    res = run([admin_raw(place_of_service="22", payer_class="medicare",
                         drug={"category": "vaccine"})])
    assert V.FACILITY_SETTING not in res.reasons()
    assert res.codes() == ["90471"]


def test_missing_drug_name_is_missing_documentation():
    # Engine choice (contract lists it as required but not as a hard requirement and
    # names no alert for it): reported as MISSING_DOCUMENTATION with the dotted path
    res = run([admin_raw(drug={"name": DROP})])
    assert "drug.name" in res.alert(V.MISSING_DOCUMENTATION)["details"]["missing_fields"]
    assert res.lines == []


@pytest.mark.parametrize("field", ["place_of_service", "payer_class"])
def test_missing_pos_or_payer_is_encounter_context_missing_not_documentation(field):
    # ehr-mapping.md §2: once settled, a record still lacking place of service or payer
    # class raises ENCOUNTER_CONTEXT_MISSING instead of a MISSING_DOCUMENTATION entry
    res = run([admin_raw(**{field: DROP})])
    assert V.MISSING_DOCUMENTATION not in res.reasons()
    assert res.alert(V.ENCOUNTER_CONTEXT_MISSING)["details"]["missing_fields"] == [field]
    assert res.lines == []
