"""Rule data (contract.md §4, billing-rules.md): packaged values, effective dating,
operator overrides, CMS drop-in files and fail-fast validation."""

from __future__ import annotations

import csv
import json
from datetime import date

import pytest

from stream_app import vocabulary as V
from stream_app.engine import BillingUnit, Mue, PayerProfile, RuleDataError, RuleSet
from stream_app.engine.ruledata import REQUIRED_CODE_SETS
from stream_app.rules import DERIVATION_FILE, RULE_FILES, TABLES, load_rules
from tests.engine.builders import RULES_DIR

D = date(2025, 3, 14)
PAYERS = ("medicare", "medicaid", "commercial", "workers_comp", "self_pay")

# contract.md §3 reason-code table: code -> (severity, work queue, carc, rarc)
CONTRACT_REASONS = {
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
    "MUE_EXCEEDED": ("warn", "coding", "CO-151", None),
    "FREQUENCY_LIMIT": ("warn", "coding", "CO-119", None),
    "WASTE_MODIFIER_MISSING": ("block", "pharmacy", "CO-4", None),
    "DRUG_UNITS_UNKNOWN": ("warn", "pharmacy", None, None),
    "ADDON_WITHOUT_PRIMARY": ("block", "coding", "CO-97", None),
    "FACILITY_ONLY_CODE": ("block", "coding", None, None),
    # ehr-mapping.md §2; its M77 is added per alert (POS missing), not in the row
    "ENCOUNTER_CONTEXT_MISSING": ("block", "facility_billing", "CO-16", None),
    # extensions raised with imported CMS data (docs/rule-data.md "Rules from CMS data")
    "WASTE_UNITS_MISMATCH": ("block", "pharmacy", "CO-4", None),
    "PTP_BUNDLED": ("block", "coding", "CO-97", None),
    "PTP_MODIFIER_REQUIRED": ("block", "coding", "CO-97", None),
}


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules()


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- packaged data


def test_packaged_data_loads_every_file(rules):
    # the CMS tables written by `rules import` are read only from an operator directory
    packaged = {name for name, spec in TABLES.items() if not spec.imported}
    assert set(rules.files) == {*packaged, DERIVATION_FILE}
    assert set(RULE_FILES) - packaged == {"asp_payment_limits.csv", "pfs_rvu.csv",
                                          "pfs_gpci.csv", "opps_addendum_b.csv", "ncci_ptp.csv"}
    assert rules.derivation.push.initial == "96374"  # billing-rules.md §2
    for name in REQUIRED_CODE_SETS:
        assert rules.code_set(name, D), name


def test_reason_codes_match_contract_table(rules):
    assert set(CONTRACT_REASONS) <= rules.reason_codes()
    for code, (severity, queue, carc, rarc) in CONTRACT_REASONS.items():
        info = rules.reason(code)
        assert (info.severity, info.work_queue, info.carc, info.rarc) == (
            severity, queue, carc, rarc), code
        if severity == "block":
            assert 0.9 <= info.risk_weight <= 1.0, code
    weights = {c: rules.reason(c).risk_weight for c in
               ("NDC_MISMATCH", "DRUG_UNITS_UNKNOWN", "MUE_EXCEEDED", "FREQUENCY_LIMIT")}
    assert weights == {"NDC_MISMATCH": 0.3, "DRUG_UNITS_UNKNOWN": 0.2, "MUE_EXCEEDED": 0.5,
                       "FREQUENCY_LIMIT": 0.6}
    with pytest.raises(KeyError):
        rules.reason("NO_SUCH_REASON")


def test_mue_values_from_billing_rules(rules):
    assert rules.mue("96372", D) == Mue(4, 1)
    assert rules.mue("96360", D).value == 1
    assert rules.mue("96361", D).value == 8
    assert rules.mue("96376", D).value == 0
    assert rules.mue("96374", D).value == 1
    assert rules.mue("96365", D).value == 1
    assert rules.mue("99999", D) is None


def test_facility_pos_per_payer_class(rules):
    medicare = rules.facility_pos("medicare", D)
    assert "21" in medicare and "11" not in medicare
    assert medicare == frozenset(
        "02 19 21 22 23 24 26 31 34 41 42 51 52 53 56 61".split())
    for payer in PAYERS:
        assert ("54" in rules.facility_pos(payer, D)) == (payer == "commercial")
    assert {"25", "32", "54", "62", "65"} <= rules.facility_pos("commercial", D)
    assert rules.facility_pos("unknown_payer", D) == medicare


def test_fee_schedule(rules):
    expected = {"medicare": 14.50, "medicaid": 10.00, "commercial": 20.00,
                "workers_comp": 23.00, "self_pay": 27.50}
    for payer, amount in expected.items():
        assert rules.fee("96372", payer, D) == amount
    assert rules.fee("99213", "medicare", D) is not None
    ratio = rules.fee("99213", "commercial", D) / rules.fee("99213", "medicare", D)
    assert ratio == pytest.approx(20.00 / 14.50, rel=1e-3)
    assert rules.fee("00000", "medicare", D) is None
    assert rules.fee("96372", "unknown_payer", D) is None


def test_billing_units(rules):
    assert rules.billing_unit("J1885", D) == BillingUnit(
        "J1885", 15.0, "mg", "Injection, ketorolac tromethamine, per 15 mg")
    assert rules.billing_unit("J0696", D).amount == 250
    assert rules.billing_unit("J3420", D).unit == "mcg"
    assert rules.billing_unit("J1644", D).unit == "units"
    assert rules.billing_unit("J3490", D) is None  # unclassified: DRUG_UNITS_UNKNOWN
    assert rules.billing_unit("J9999", D) is None
    for code in ("J0696 J1030 J1040 J1020 J2920 J2930 J3301 J1100 J1885 J2550 J1200 J2405 "
                 "J2270 J2765 J3420 J1644 J1650 J0585").split():
        assert rules.billing_unit(code, D) is not None, code


def test_ndc_crosswalk(rules):
    assert rules.hcpcs_for_ndc("00409733201", D) == "J0696"
    assert rules.hcpcs_for_ndc("00409-7332-01", D) == "J0696"
    assert rules.hcpcs_candidates_for_ndc("00409733201", D) == ("J0696",)
    assert rules.hcpcs_for_ndc("99999999999", D) is None


def test_payer_profiles(rules):
    assert rules.payer_profile("medicare", D) == PayerProfile(
        "medicare", "59", True, date(2023, 7, 1))
    for payer in PAYERS[1:]:
        assert rules.payer_profile(payer, D) == PayerProfile(payer, "59", True, None)
    assert rules.payer_profile("mystery", D) == PayerProfile("mystery", "59", True, None)


def test_code_sets(rules):
    assert rules.code_set("admin", D) == frozenset(
        "96365 96366 96367 96372 96373 96374 96375 96376 90471 90472 95115 95117 96401 96402"
        .split())
    assert rules.code_set("injection_day", D) == frozenset(str(c) for c in range(96360, 96380))
    restricted = rules.code_set("facility_restricted_admin", D)
    assert {"96360", "96379", "96401", "96549"} <= restricted and "96380" not in restricted
    assert rules.code_set("initial_iv", D) == {"96360", "96365", "96374", "96409", "96413"}
    assert rules.code_set("facility_only", D) == {"96376"}
    assert rules.code_set("distinct_modifiers", D) == {"59", "XE", "XS", "XP", "XU"}
    assert rules.code_set("x_modifiers", D) == {"XE", "XS", "XP", "XU"}
    assert rules.code_set("supervision_exempt_credentials", D) == {
        "MD", "DO", "NP", "PA", "CNS", "CNM"}
    em = rules.code_set("em", D)
    assert {"99202", "99205", "99211", "99215", "99242", "99245"} <= em
    assert "99201" not in em and "99201" in rules.code_set("em", date(2020, 6, 1))
    with pytest.raises(KeyError):
        rules.code_set("no_such_set", D)


def test_addons(rules):
    assert rules.addon_primaries("96375", D) == {"96374", "96365", "96409", "96413"}
    assert rules.addon_primaries("96376", D) == {"96374", "96365", "96409", "96413"}
    assert rules.addon_primaries("96366", D) == {"96365", "96367"}
    assert rules.addon_primaries("96367", D) == {"96365", "96374", "96409", "96413"}
    assert rules.addon_primaries("90472", D) == {"90471", "90460"}
    assert rules.addon_primaries("96372", D) == frozenset()
    assert rules.code_set("addon", D) == {"96375", "96376", "96366", "96367", "90472"}


def test_frequency_limits_examples(rules):
    limits = {(f.code, f.max_services, f.period_days, f.severity)
              for f in rules.frequency_limits("medicare", D)}
    assert ("J3420", 1, 30, "warn") in limits
    assert rules.frequency_limits("unknown_payer", D) == ()


# ------------------------------------------------------- operator directory, dating

MUE_HEADER = ("HCPCS/CPT Code,Practitioner Services MUE Values,MUE Adjudication Indicator,"
              "MUE Rationale,effective_from,effective_to\n")


def test_operator_file_overrides_and_others_fall_back(tmp_path, rules):
    write(tmp_path, "mue.csv", MUE_HEADER + "96372,2,3 Date of Service Edit: Clinical,x,,\n")
    custom = load_rules(tmp_path)
    assert custom.mue("96372", D) == Mue(2, 3)
    assert custom.mue("96361", D) is None  # the whole file is replaced, not merged
    assert custom.files["mue.csv"] == str(tmp_path / "mue.csv")
    assert custom.fee("96372", "medicare", D) == 14.50  # packaged fee schedule
    assert custom.files["fee_schedule.csv"] == rules.files["fee_schedule.csv"]


def test_effective_dating_picks_row_in_force(tmp_path):
    write(tmp_path, "mue.csv", MUE_HEADER
          + "96372,4,1 Line Edit,,2020-01-01,2024-12-31\n"
          + "96372,3,2 Date of Service Edit: Policy,,2025-01-01,\n")
    write(tmp_path, "fee_schedule.csv",
          "payer_class,code,amount,effective_from,effective_to\n"
          "medicare,96372,14.00,,2024-12-31\n"
          "medicare,96372,14.50,2025-01-01,2025-12-31\n")
    rules = load_rules(tmp_path)
    assert rules.mue("96372", date(2019, 12, 31)) is None
    assert rules.mue("96372", date(2020, 1, 1)) == Mue(4, 1)
    assert rules.mue("96372", date(2024, 12, 31)) == Mue(4, 1)
    assert rules.mue("96372", date(2025, 1, 1)) == Mue(3, 2)
    assert rules.mue("96372", date(2031, 1, 1)) == Mue(3, 2)
    assert rules.fee("96372", "medicare", date(2001, 5, 5)) == 14.00
    assert rules.fee("96372", "medicare", date(2025, 12, 31)) == 14.50
    assert rules.fee("96372", "medicare", date(2026, 1, 1)) is None


def test_dated_code_set_membership(tmp_path):
    packaged = (load_rules().files["code_sets.csv"])
    text = open(packaged, encoding="utf-8").read()
    text += "x_modifiers,XZ,,2030-01-01,2030-12-31,test\n"
    write(tmp_path, "code_sets.csv", text)
    rules = load_rules(tmp_path)
    assert "XZ" not in rules.code_set("x_modifiers", date(2029, 12, 31))
    assert "XZ" in rules.code_set("x_modifiers", date(2030, 6, 1))
    assert "XZ" not in rules.code_set("x_modifiers", date(2031, 1, 1))


def test_reason_dates_fall_back_to_nearest_row(tmp_path, rules):
    text = open(rules.files["reason_codes.csv"], encoding="utf-8").read()
    text = text.replace("NDC_MISMATCH,warn,pharmacy,CO-16,M119,0.3,2013-01-01,,",
                        "NDC_MISMATCH,warn,pharmacy,CO-16,M119,0.3,2013-01-01,2020-12-31,")
    text += "NDC_MISMATCH,block,pharmacy,CO-16,M119,0.95,2099-01-01,,future\n"
    write(tmp_path, "reason_codes.csv", text)
    custom = load_rules(tmp_path)
    assert custom.reason("NDC_MISMATCH").risk_weight == 0.3  # latest row started before today
    assert custom.reason_on("NDC_MISMATCH", date(2099, 2, 1)).severity == "block"
    assert custom.reason_on("NDC_MISMATCH", date(2000, 1, 1)).severity == "warn"


# ------------------------------------------------------------ CMS drop-in files

CMS_MUE = (
    "CPT codes, descriptions and other data only are copyright 2024 American Medical "
    "Association. All Rights Reserved. \u00a9\r\n"
    "\"Applicable FARS/HHSARS apply, see the license, for example, line 2 continues\r\n"
    "on a second physical line\"\r\n"
    "\r\n"
    "\"HCPCS/CPT Code\",\"Practitioner Services\r\nMUE Values\",\" MUE  Adjudication "
    "Indicator \",\"MUE Rationale\"\r\n"
    "\"96372\",\"4\",\"1 Line Edit\",\"Clinical: Data\"\r\n"
    "\"96376\",\"0\",\"2 Date of Service Edit: Policy\",\"CMS Policy\"\r\n"
    "\"96361\",\"8\",\"3 Date of Service Edit: Clinical\",\"Clinical: Data\"\r\n"
)


def test_cms_mue_file_with_preamble_drops_in(tmp_path):
    write(tmp_path, "mue.csv", CMS_MUE.encode("cp1252"))
    rules = load_rules(tmp_path)
    assert rules.mue("96372", D) == Mue(4, 1)
    assert rules.mue("96376", date(1999, 1, 1)) == Mue(0, 2)  # no effective columns: open
    assert rules.mue("96361", date(2099, 1, 1)) == Mue(8, 3)


def test_cms_mue_file_line_numbers_are_physical(tmp_path):
    # header spans lines 5-6; 96372 line 7, 96376 line 8, bad row line 9
    write(tmp_path, "mue.csv", CMS_MUE.replace(
        "\"96361\",\"8\"", "\"96361\",\"eight\"").encode("cp1252"))
    with pytest.raises(RuleDataError) as exc:
        load_rules(tmp_path)
    assert exc.value.line == 9
    assert exc.value.column == "value"


def test_cms_mue_without_header_is_rejected(tmp_path):
    write(tmp_path, "mue.csv", "some preamble\n96372,4,1 Line Edit,x\n")
    with pytest.raises(RuleDataError, match="no header row"):
        load_rules(tmp_path)


@pytest.mark.parametrize("code_header", ["_2024_CODE", "HCPCS", "hcpcs code"])
def test_cms_crosswalk_layout_drops_in(tmp_path, code_header):
    write(tmp_path, "ndc_hcpcs_crosswalk.csv",
          "ASP NDC-HCPCS Crosswalk, April 2025\n\n"
          f"{code_header},Short Description,LABELER NAME,NDC2,Drug Name,HCPCS dosage,"
          "PKG SIZE,PKG QTY,BILLUNITS,BILLUNITSPKG\n"
          "J1030,Methylprednisolone 40 MG inj,Pfizer,00009-3073-01,Depo-Medrol,40 MG,1,1,1,1\n"
          "J1020,Methylprednisolone 20 MG inj,Pfizer,00009-3073-01,Depo-Medrol,20 MG,1,1,2,2\n"
          "J0696,Ceftriaxone,Hospira,0409-7332-01,Ceftriaxone,250 MG,1,10,1,10\n")
    rules = load_rules(tmp_path)
    assert rules.hcpcs_for_ndc("00409733201", D) == "J0696"  # 4-4-2 padded to 5-4-2
    assert rules.hcpcs_candidates_for_ndc("00009307301", D) == ("J1020", "J1030")
    assert rules.hcpcs_for_ndc("00009307301", D) == "J1020"


def test_empty_frequency_limits_file_is_valid(tmp_path):
    write(tmp_path, "frequency_limits.csv", "")
    assert load_rules(tmp_path).frequency_limits("medicare", D) == ()
    write(tmp_path, "frequency_limits.csv",
          "payer_class,code,max_services,period_days,severity,effective_from,effective_to\n")
    assert load_rules(tmp_path).frequency_limits("medicare", D) == ()


# ------------------------------------------------------------- malformed files

FEE_HEAD = "payer_class,code,amount,effective_from,effective_to\n"
OK_FEE = "medicare,96372,14.50,,\n"
FREQ_HEAD = "payer_class,code,max_services,period_days,severity,effective_from,effective_to\n"
REASON_HEAD = "reason_code,severity,work_queue,carc,rarc,risk_weight,effective_from,effective_to\n"

MALFORMED = [
    # (file, content, line, column, message fragment)
    ("fee_schedule.csv", FEE_HEAD + OK_FEE + "medicare,96373,15.85,2025-13-01,\n",
     3, "effective_from", "not a valid date"),
    ("fee_schedule.csv", FEE_HEAD + OK_FEE + "medicare,96373,15.85,01/01/2025,\n",
     3, "effective_from", "not an ISO date"),
    ("fee_schedule.csv", FEE_HEAD + "medicare,96373,15.85,2025-06-01,2025-01-01\n",
     2, "effective_to", "before effective_from"),
    ("fee_schedule.csv", FEE_HEAD + OK_FEE + OK_FEE + "medicare,96373,abc,,\n",
     4, "amount", "not a number"),
    ("fee_schedule.csv", FEE_HEAD + "medicare,96373,-1,,\n", 2, "amount", "negative"),
    ("fee_schedule.csv", FEE_HEAD + "medicare,96373,,,\n", 2, "amount", "required"),
    ("fee_schedule.csv", FEE_HEAD + "medcare,96373,1,,\n", 2, "payer_class", "unknown value"),
    ("fee_schedule.csv", "payer_class,code,amount,effective_from,effective_to,colour\n",
     1, "colour", "unknown column"),
    ("fee_schedule.csv", "payer_class,code,effective_from,effective_to\n",
     1, "amount", "missing column"),
    ("fee_schedule.csv", "payer_class,code,amount\n", 1, "effective_from", "missing column"),
    ("fee_schedule.csv", FEE_HEAD + "medicare,96373,1,,,extra\n", 2, 6, "extra cell"),
    ("fee_schedule.csv", FEE_HEAD + "medicare,96373\n", 2, "amount", "cells"),
    ("fee_schedule.csv", FEE_HEAD + OK_FEE + "\n" + "medicare,96372,15.00,2025-01-01,\n",
     4, "effective_from", "overlaps line 2"),
    ("fee_schedule.csv", "", 1, 1, "no header row"),
    ("frequency_limits.csv", FREQ_HEAD + "medicare,J3420,1,30,fatal,,\n",
     2, "severity", "unknown value"),
    ("frequency_limits.csv", FREQ_HEAD + "medicare,J3420,1.5,30,warn,,\n",
     2, "max_services", "not an integer"),
    ("frequency_limits.csv", FREQ_HEAD + "medicare,J3420,1,0,warn,,\n",
     2, "period_days", "greater than 0"),
    ("mue.csv", MUE_HEADER + "96372,4,4 Something,,,\n", 2, "mai", "adjudication indicator"),
    ("mue.csv", MUE_HEADER + "96372,-4,1 Line Edit,,,\n", 2, "value", "negative"),
    ("mue.csv", MUE_HEADER + "96372,4,1 Line Edit,,,2024-12-31\n"
     "96372,5,1 Line Edit,,2024-06-01,\n", 3, "effective_from", "overlaps line 2"),
    ("reason_codes.csv", REASON_HEAD + "MISSING_NDC,block,billing,CO-16,M119,0.9,,\n",
     2, "work_queue", "unknown value"),
    ("reason_codes.csv", REASON_HEAD + "MISSING_NDC,stop,pharmacy,CO-16,M119,0.9,,\n",
     2, "severity", "unknown value"),
    ("reason_codes.csv", REASON_HEAD + "MISSING_NDC,block,pharmacy,CO-16,M119,1.5,,\n",
     2, "risk_weight", "exceeds"),
    ("reason_codes.csv", REASON_HEAD + "MISSING_NDC,block,pharmacy,16,M119,0.9,,\n",
     2, "carc", "malformed CARC"),
    ("reason_codes.csv", REASON_HEAD + "MISSING_NDC,block,pharmacy,CO-16,M119,0.9,,\n",
     1, "reason_code", "no row for reason code"),
    ("code_sets.csv", "set_name,code,code_to,effective_from,effective_to\n"
     "em,99215,99211,,\n", 2, "code_to", "before its start"),
    ("code_sets.csv", "set_name,code,code_to,effective_from,effective_to\n"
     "em,99211,99215,,\nem,99213,,2025-01-01,\n", 3, "effective_from", "overlaps line 2"),
    ("code_sets.csv", "set_name,code,code_to,effective_from,effective_to\n"
     "em,99211,99215,,\n", 1, "set_name", "no row for code set"),
    ("hcpcs_units.csv", "hcpcs,description,billing_unit_amount,billing_unit,effective_from,"
     "effective_to\nJ1885,ketorolac,15,milligrams,,\n", 2, "billing_unit", "unknown value"),
    ("hcpcs_units.csv", "hcpcs,description,billing_unit_amount,billing_unit,effective_from,"
     "effective_to\nJ1885,ketorolac,15,,,\n", 2, "billing_unit", "both set or both empty"),
    ("hcpcs_units.csv", "hcpcs,description,billing_unit_amount,billing_unit,effective_from,"
     "effective_to\nJ1885,ketorolac,0,mg,,\n", 2, "billing_unit_amount", "greater than 0"),
    ("payer_profiles.csv", "payer_class,distinct_modifier,bundle_99211,jz_jw_required_from,"
     "effective_from,effective_to\nmedicare,59,yes,2023-07-01,,\n",
     2, "bundle_99211", "true/false"),
    ("payer_profiles.csv", "payer_class,distinct_modifier,bundle_99211,jz_jw_required_from,"
     "effective_from,effective_to\nmedicare,XX,true,2023-07-01,,\n",
     2, "distinct_modifier", "unknown value"),
    ("payer_profiles.csv", "payer_class,distinct_modifier,bundle_99211,jz_jw_required_from,"
     "effective_from,effective_to\nmedicare,59,true,2023-7-1,,\n",
     2, "jz_jw_required_from", "ISO date"),
    ("facility_pos.csv", "payer_class,pos,effective_from,effective_to\nmedicare,2,,\n",
     2, "pos", "2 digits"),
    ("ndc_hcpcs_crosswalk.csv", "_2025_CODE,NDC2\nJ0696,0409733201\n", 2, "ndc", "NDC"),
    ("ndc_hcpcs_crosswalk.csv", "_2025_CODE,NDC2,PKG QTY\nJ0696,00409-7332-01,ten\n",
     2, "pkg_qty", "not a number"),
    ("ndc_hcpcs_crosswalk.csv", "_2025_CODE,NDC2,Mystery\nJ0696,00409-7332-01,1\n",
     1, "Mystery", "unknown column"),
    ("addon_codes.csv", "addon_code,primary_code,effective_from,effective_to\n96375,96375,,\n",
     2, "primary_code", "own primary"),
]


@pytest.mark.parametrize(("name", "content", "line", "column", "fragment"), MALFORMED,
                         ids=[f"{m[0]}:{m[2]}:{m[3]}:{m[4]}" for m in MALFORMED])
def test_malformed_file_is_rejected_with_location(tmp_path, name, content, line, column,
                                                  fragment):
    path = write(tmp_path, name, content)
    with pytest.raises(RuleDataError) as exc:
        load_rules(tmp_path)
    err = exc.value
    assert (err.file, err.line, err.column) == (str(path), line, column), str(err)
    assert fragment in err.message
    assert str(err).startswith(f"{path}:{line}:{column}: ")


def test_unknown_file_name_in_operator_directory_is_rejected(tmp_path):
    write(tmp_path, "MCR_MUE_PractitionerServices_Eff_01-01-2025.csv", CMS_MUE)
    with pytest.raises(RuleDataError, match="unknown rule file name"):
        load_rules(tmp_path)


def test_missing_operator_directory_is_rejected(tmp_path):
    with pytest.raises(RuleDataError, match="does not exist"):
        load_rules(tmp_path / "nope")


def test_rule_data_error_is_a_value_error():
    err = RuleDataError("f.csv", 3, "amount", "bad")
    assert isinstance(err, ValueError) and str(err) == "f.csv:3:amount: bad"


def test_reason_codes_csv_defines_exactly_the_vocabulary_with_contract_queue_and_severity():
    with open(RULES_DIR / "reason_codes.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["reason_code"] for r in rows) == sorted(V.REASON_CODES)
    for r in rows:
        severity, queue, _, _ = CONTRACT_REASONS[r["reason_code"]]
        assert (r["severity"], r["work_queue"]) == (severity, queue), r["reason_code"]


# ------------------------------------------------------------- derivation.json


def packaged_derivation() -> dict:
    return json.loads((RULES_DIR / DERIVATION_FILE).read_text(encoding="utf-8"))


def test_packaged_derivation_is_typed(rules):
    d = rules.derivation
    # billing-rules.md §1-§2: 96372 SC/IM, 96374 initial push, 96365/96366 infusion
    assert d.sc_im_codes.for_category("therapeutic") == "96372"
    assert d.sc_im_codes.for_category("vaccine") is None
    assert (d.push.initial, d.infusion.initial, d.infusion.additional_hour) == (
        "96374", "96365", "96366")
    assert d.modifiers.waste == "JW" and d.modifiers.no_waste == "JZ"
    assert d.dose_unit_scale["g"].unit == "mg" and d.dose_unit_scale["g"].factor == 1000
    assert "vaccine" in d.no_drug_line_categories.categories


def test_operator_derivation_overrides_the_packaged_one(tmp_path):
    data = packaged_derivation()
    data["push"]["initial"] = "99999"
    write(tmp_path, DERIVATION_FILE, json.dumps(data))
    custom = load_rules(tmp_path)
    assert custom.derivation.push.initial == "99999"
    assert custom.files[DERIVATION_FILE] == str(tmp_path / DERIVATION_FILE)
    assert custom.files["fee_schedule.csv"] != str(tmp_path / "fee_schedule.csv")


def _break(data: dict, path: str, value=None, delete: bool = False) -> dict:
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if delete:
        del node[leaf]
    else:
        node[leaf] = value
    return data


@pytest.mark.parametrize(("path", "value", "delete", "fragment"), [
    ("push.initial", None, True, "required setting 'push.initial' is missing"),
    ("push.initail", "96374", False, "unknown setting 'push.initail'"),
    ("duplicate_window_minutes", "5", False, "must be a number >= 0"),
    ("duplicate_window_minutes", -1, False, "must be a number >= 0"),
    ("modifiers.waste", 7, False, "must be a string"),
    ("dose_unit_scale.mg", ["mg"], False, "pair [unit, number >= 0]"),
    ("no_drug_line_categories.categories", "vaccine", False, "must be a list"),
    ("mystery_setting", 1, False, "unknown setting 'mystery_setting'"),
])
def test_malformed_derivation_is_rejected_with_key_path(tmp_path, path, value, delete, fragment):
    file = write(tmp_path, DERIVATION_FILE,
                 json.dumps(_break(packaged_derivation(), path, value, delete), indent=2))
    with pytest.raises(RuleDataError) as exc:
        load_rules(tmp_path)
    assert exc.value.file == str(file)
    assert exc.value.column == path
    assert fragment in exc.value.message
    assert str(exc.value).startswith(f"{file}:{exc.value.line}:{path}: ")


def test_derivation_comment_keys_are_allowed(tmp_path):
    data = packaged_derivation()
    data["_note"] = "operator's comment"
    data["push"]["_why"] = "comment inside a section"
    write(tmp_path, DERIVATION_FILE, json.dumps(data))
    assert load_rules(tmp_path).derivation.push.initial == "96374"


def test_derivation_syntax_error_names_line_and_column(tmp_path):
    file = write(tmp_path, DERIVATION_FILE, '{\n  "push_max_minutes": 15,\n  oops\n}\n')
    with pytest.raises(RuleDataError) as exc:
        load_rules(tmp_path)
    assert (exc.value.file, exc.value.line, exc.value.column) == (str(file), 3, 3)
