"""Site configuration (ehr-mapping.md §6): packaged rows, merge, precedence, effective
dates, and 'FILE:LINE:COLUMN: message' errors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from stream_app.adapters.site import SiteConfig, SiteConfigError, load_site_config

EXAMPLE_SITE = Path(__file__).resolve().parents[2] / ".." / "shared" / "spec" / "examples" / "site"

SNOMED = "http://snomed.info/sct"
V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"
V2_0360 = "http://terminology.hl7.org/CodeSystem/v2-0360"
DAY = date(2025, 3, 14)


def _write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- packaged rows

@pytest.mark.parametrize(("system", "code", "route"), [
    # ehr-mapping §3.8, SNOMED CT
    (SNOMED, "78421000", "IM"), (SNOMED, "34206005", "SC"), (SNOMED, "47625008", "IV"),
    (SNOMED, "418114005", "IV"), (SNOMED, "419993007", "IV"), (SNOMED, "58100008", "INTRA_ARTERIAL"),
    (SNOMED, "372464004", "INTRADERMAL"), (SNOMED, "12130007", "INTRA_ARTICULAR"),
    (SNOMED, "26643006", "ORAL"), (SNOMED, "6064005", "OTHER"), (SNOMED, "447694001", "OTHER"),
    # v3 RouteOfAdministration
    (V3_ROUTE, "IM", "IM"), (V3_ROUTE, "SQ", "SC"), (V3_ROUTE, "IVPUSH", "IV_PUSH"),
    (V3_ROUTE, "IVC", "IV_INFUSION"), (V3_ROUTE, "IAINJ", "INTRA_ARTERIAL"),
    (V3_ROUTE, "IDINJ", "INTRADERMAL"), (V3_ROUTE, "IARTINJ", "INTRA_ARTICULAR"),
    (V3_ROUTE, "CHEW", "ORAL"), (V3_ROUTE, "SQINFUS", "OTHER"),
])
def test_packaged_route_codes(system: str, code: str, route: str) -> None:
    assert SiteConfig.packaged().code("route", system, code, DAY) == (route, 1.0)


def test_unknown_route_code_is_absent_not_other() -> None:
    site = SiteConfig.packaged()
    assert site.code("route", SNOMED, "999999", DAY) is None
    # v3 has no ID (intradermal is IDINJ); a SNOMED code is not a v3 code
    assert site.code("route", V3_ROUTE, "ID", DAY) is None
    assert site.code("route", V3_ROUTE, "78421000", DAY) is None


@pytest.mark.parametrize(("code", "unit", "factor"), [
    ("mg", "mg", 1.0), ("ug", "mcg", 1.0), ("ng", "mcg", 0.001), ("L", "mL", 1000.0),
    ("[iU]", "units", 1.0), ("U", "units", 1.0), ("{unit}", "units", 1.0),
])
def test_packaged_dose_units(code: str, unit: str, factor: float) -> None:
    assert SiteConfig.packaged().code("dose_unit", "http://unitsofmeasure.org", code, DAY) == (unit, factor)


def test_packaged_dose_unit_is_case_sensitive_ucum() -> None:
    assert SiteConfig.packaged().code("dose_unit", "http://unitsofmeasure.org", "mg/kg", DAY) is None


@pytest.mark.parametrize(("code", "unit"), [("{vial}", "UN"), ("1", "UN"), ("mL", "ML"),
                                            ("mg", "ME"), ("[iU]", "F2"), ("GR", "GR")])
def test_packaged_quantity_units(code: str, unit: str) -> None:
    assert SiteConfig.packaged().code("quantity_unit", None, code, DAY) == (unit, 1.0)


def test_credentials_and_master_of_arts() -> None:
    site = SiteConfig.packaged()
    assert site.code("credential", V2_0360 + "|2.7", "RN", DAY) == ("RN", 1.0)
    assert site.code("credential", None, "CNP", DAY) == ("NP", 1.0)
    assert site.code("credential", None, "CMA", DAY) == ("MA", 1.0)
    # v2-0360 MA is a Master of Arts: dropped (empty value), whatever the version suffix
    assert site.code("credential", V2_0360, "MA", DAY) == ("", 1.0)
    assert site.code("credential", V2_0360 + "|2.7", "MA", DAY) == ("", 1.0)
    # MA as free text is a medical assistant
    assert site.code("credential", None, "MA", DAY) == ("MA", 1.0)


@pytest.mark.parametrize(("sopt", "payer_class"), [
    ("1", "medicare"), ("11", "medicare"), ("121", "medicare"), ("2", "medicaid"),
    ("23", "medicaid"), ("5", "commercial"), ("51", "commercial"), ("6", "commercial"),
    ("7", "commercial"), ("95", "workers_comp"), ("951", "workers_comp"), ("81", "self_pay"),
    ("821", "self_pay"), ("3", None), ("311", None), ("4", None), ("9", None), ("9999", None),
])
def test_sopt_prefixes(sopt: str, payer_class: str | None) -> None:
    assert SiteConfig.packaged().payer_class("fhir", "sopt_prefix", sopt, DAY) == payer_class


# --------------------------------------------------------------------------- merge and precedence

def test_example_site_rows() -> None:
    site = load_site_config(EXAMPLE_SITE)
    assert site.timezone("hl7v2", "MAINCLINIC", DAY) == "America/Chicago"
    assert site.timezone("fhir", "MAINCLINIC", DAY) is None  # the row is for hl7v2 only
    assert site.place_of_service("hl7v2", "hl7_facility_poc", "MAINCLINIC/FM", DAY) == "11"
    assert site.payer_class("hl7v2", "hl7_plan_id", "ACMEPPO", DAY) == "commercial"
    assert site.setting("hl7v2", "supervising_npi_from") == "ORC-12"
    assert site.setting("fhir", "supervising_npi_from") is None
    # packaged rows are still there
    assert site.code("route", SNOMED, "78421000", DAY) == ("IM", 1.0)


def test_site_row_wins_over_packaged_row_of_same_key(tmp_path: Path) -> None:
    _write(tmp_path, "code_map.csv", "map,system,code,value,factor,effective_from,effective_to\n"
           f"route,{SNOMED},6064005,SC,,,\n")
    _write(tmp_path, "payer_class_map.csv",
           "source,key_type,key,payer_class,effective_from,effective_to\n"
           "*,sopt_prefix,3,medicare,,\n*,sopt_prefix,5,medicaid,2025-01-01,\n")
    site = load_site_config(tmp_path)
    assert site.code("route", SNOMED, "6064005", DAY) == ("SC", 1.0)
    assert site.payer_class("fhir", "sopt_prefix", "311", DAY) == "medicare"
    # the site's 5 replaces the packaged 5 entirely: before its start, no row at all
    assert site.payer_class("fhir", "sopt_prefix", "5", DAY) == "medicaid"
    assert site.payer_class("fhir", "sopt_prefix", "5", date(2024, 12, 31)) is None


def test_exact_source_wins_over_star() -> None:
    site = SiteConfig.from_rows(facility_timezone=[
        {"source": "*", "facility_key": "MAIN", "timezone": "America/New_York"},
        {"source": "fhir", "facility_key": "MAIN", "timezone": "America/Chicago"},
    ], adapter_settings=[
        {"source": "*", "setting": "source_id", "value": "ehr-a"},
        {"source": "hl7v2", "setting": "source_id", "value": "ehr-b"},
    ])
    assert site.timezone("fhir", "MAIN", DAY) == "America/Chicago"
    assert site.timezone("hl7v2", "MAIN", DAY) == "America/New_York"
    assert site.setting("fhir", "source_id") == "ehr-a"
    assert site.setting("hl7v2", "source_id") == "ehr-b"


def test_source_default_zone_is_the_star_key_and_no_fallback_between_keys() -> None:
    site = SiteConfig.from_rows(facility_timezone=[
        {"source": "fhir", "facility_key": "*", "timezone": "America/Denver"},
        {"source": "fhir", "facility_key": "LOC-1", "timezone": "America/Chicago"},
    ])
    assert site.timezone("fhir", None, DAY) == "America/Denver"
    assert site.timezone("fhir", "LOC-1", DAY) == "America/Chicago"
    assert site.timezone("fhir", "LOC-2", DAY) is None


def test_code_map_exact_system_before_any_system() -> None:
    site = SiteConfig.packaged().merged(SiteConfig.from_rows(code_map=[
        {"map": "dose_unit", "system": "urn:local", "code": "mg", "value": "mcg", "factor": "1000"},
    ]))
    assert site.code("dose_unit", "urn:local", "mg", DAY) == ("mcg", 1000.0)
    assert site.code("dose_unit", "http://unitsofmeasure.org", "mg", DAY) == ("mg", 1.0)


def test_drug_attributes_empty_cell_is_no_opinion() -> None:
    site = SiteConfig.from_rows(drug_attributes=[
        {"key_type": "ndc11", "key": "00409733201", "category": "", "container": "single_dose"},
        {"key_type": "cvx", "key": "140", "category": "vaccine", "container": ""},
    ])
    assert site.drug_attributes("ndc11", "00409733201", DAY) == (None, "single_dose")
    assert site.drug_attributes("cvx", "140", DAY) == ("vaccine", None)
    assert site.drug_attributes("hcpcs", "J0696", DAY) == (None, None)


# --------------------------------------------------------------------------- effective dates

def test_effective_dates_inclusive_and_undated_lookup() -> None:
    site = SiteConfig.from_rows(location_pos=[
        {"source": "fhir", "key_type": "fhir_location_id", "key": "L1", "place_of_service": "22",
         "effective_from": "2024-01-01", "effective_to": "2024-12-31"},
        {"source": "fhir", "key_type": "fhir_location_id", "key": "L1", "place_of_service": "11",
         "effective_from": "2025-01-01", "effective_to": ""},
        {"source": "fhir", "key_type": "fhir_location_id", "key": "L2", "place_of_service": "19",
         "effective_from": "2020-01-01", "effective_to": "2021-06-30"},
        {"source": "fhir", "key_type": "fhir_location_id", "key": "L2", "place_of_service": "22",
         "effective_from": "2019-01-01", "effective_to": "2019-12-31"},
    ])
    assert site.place_of_service("fhir", "fhir_location_id", "L1", date(2024, 12, 31)) == "22"
    assert site.place_of_service("fhir", "fhir_location_id", "L1", date(2025, 1, 1)) == "11"
    assert site.place_of_service("fhir", "fhir_location_id", "L1", date(2023, 12, 31)) is None
    # on=None: the open row, else the one ending latest
    assert site.place_of_service("fhir", "fhir_location_id", "L1", None) == "11"
    assert site.place_of_service("fhir", "fhir_location_id", "L2", None) == "19"


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("name", "text", "where", "message"), [
    ("facility_timezone.csv", "source,facility_key,timezone,effective_from,effective_to\n"
     "fhir,MAIN,America/Chicagoo,,\n", ":2:timezone:", "unknown IANA time zone"),
    ("facility_timezone.csv", "source,facility_key,timezone,effective_from\n",
     ":1:effective_to:", "missing column"),
    ("location_pos.csv", "source,key_type,key,place_of_service,effective_from,effective_to,note\n",
     ":1:note:", "unknown column"),
    ("location_pos.csv", "source,key_type,key,place_of_service,effective_from,effective_to\n\n"
     "fhir,fhir_location_id,L1,1,,\n", ":3:place_of_service:", "not 2 digits"),
    ("location_pos.csv", "source,key_type,key,place_of_service,effective_from,effective_to\n"
     "epic,fhir_location_id,L1,11,,\n", ":2:source:", "not one of"),
    ("payer_class_map.csv", "source,key_type,key,payer_class,effective_from,effective_to\n"
     "fhir,fhir_plan,P1,private,,\n", ":2:payer_class:", "not one of"),
    ("payer_class_map.csv", "source,key_type,key,payer_class,effective_from,effective_to\n"
     "fhir,fhir_plan,P1,commercial,2025-02-30,\n", ":2:effective_from:", "not a calendar date"),
    ("payer_class_map.csv", "source,key_type,key,payer_class,effective_from,effective_to\n"
     "fhir,fhir_plan,P1,commercial,2025-03-01,2025-02-01\n", ":2:effective_to:", "before"),
    ("payer_class_map.csv", "source,key_type,key,payer_class,effective_from,effective_to\n"
     "fhir,fhir_plan,P1,commercial,2025-01-01,\n"
     "fhir,fhir_plan,P1,medicare,2025-06-01,\n", ":3:effective_from:", "same dates"),
    ("code_map.csv", "map,system,code,value,factor,effective_from,effective_to\n"
     f"route,{SNOMED},1,INTRAVENOUS,,,\n", ":2:value:", "not one of"),
    ("code_map.csv", "map,system,code,value,factor,effective_from,effective_to\n"
     "dose_unit,,mg,mg,-1,,\n", ":2:factor:", "positive"),
    ("code_map.csv", "map,system,code,value,factor,effective_from,effective_to\n"
     "dose_unit,,mg,mg,1,,,extra\n", ":2:8:", "extra cell"),
    ("drug_attributes.csv", "key_type,key,category,container,effective_from,effective_to\n"
     "ndc11,0409-7332-01,vaccine,,,\n", ":2:key:", "11 digits"),
    ("adapter_settings.csv", "source,setting,value,effective_from,effective_to\n"
     "fhir,fhir_max_entries,lots,,\n", ":2:value:", "positive integer"),
    ("adapter_settings.csv", "source,setting,value,effective_from,effective_to\n"
     "fhir,max_entries,10,,\n", ":2:setting:", "not one of"),
    ("adapter_settings.csv", 'source,setting,value,effective_from,effective_to\n'
     'fhir,source_id,"unterminated\n', ":2:1:", "CSV syntax error"),
])
def test_malformed_files_name_file_line_column(tmp_path: Path, name: str, text: str, where: str,
                                                message: str) -> None:
    _write(tmp_path, name, text)
    with pytest.raises(SiteConfigError) as info:
        load_site_config(tmp_path)
    text_of_error = str(info.value)
    assert text_of_error.startswith(str(tmp_path / name) + where), text_of_error
    assert message in text_of_error


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match="not found"):
        load_site_config(tmp_path / "absent")


def test_other_files_in_rules_dir_are_not_read(tmp_path: Path) -> None:
    _write(tmp_path, "mue.csv", "this is the engine's file, not ours\n")
    assert load_site_config(tmp_path).code("route", SNOMED, "78421000", DAY) == ("IM", 1.0)


def test_from_rows_errors_name_the_argument_and_row() -> None:
    with pytest.raises(SiteConfigError) as info:
        SiteConfig.from_rows(location_pos=[
            {"source": "fhir", "key_type": "fhir_location_id", "key": "L1", "place_of_service": "11"},
            {"source": "fhir", "key_type": "room", "key": "L1", "place_of_service": "11"},
        ])
    assert str(info.value).startswith("<location_pos>:2:key_type:")
    with pytest.raises(SiteConfigError, match="unknown column"):
        SiteConfig.from_rows(code_map=[{"map": "route", "code": "x", "value": "IM", "sytem": ""}])
