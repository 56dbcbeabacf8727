"""Modifiers on 96372 lines (contract.md §3; billing-rules.md §2) and
MODIFIER_NOT_ALLOWED on proposed modifiers."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import NPI, NPI_2, admin_raw, em_raw, rules_dir_with, run


def _mods_by_record(records, res) -> dict[str, list[str]]:
    ev_to_rec = {r["event_id"]: r["record_id"] for r in records}
    out = {}
    for ln in res.lines:
        if ln["code"] == "96372":
            (ev,) = ln["source_event_ids"]
            out[ev_to_rec[ev]] = ln["modifiers"]
    return out


def test_first_96372_has_no_modifier_later_different_drugs_get_59():
    recs = [admin_raw(record_id="a", time="09:00", drug="ceftriaxone"),
            admin_raw(record_id="b", time="09:30", drug="ketorolac"),
            admin_raw(record_id="c", time="10:00", drug="dexamethasone")]
    res = run(recs)
    assert _mods_by_record(recs, res) == {"a": [], "b": ["59"], "c": ["59"]}
    assert res.alerts == []


def test_order_is_by_occurred_at_not_arrival_nor_record_id():
    recs = [admin_raw(record_id="a", time="10:00", drug="ceftriaxone"),
            admin_raw(record_id="b", time="09:00", drug="ketorolac")]
    res = run(list(reversed(recs)))
    assert _mods_by_record(recs, res) == {"b": [], "a": ["59"]}


def test_same_occurred_at_orders_by_record_id():
    recs = [admin_raw(record_id="r-2", time="09:00", drug="ceftriaxone"),
            admin_raw(record_id="r-1", time="09:00", drug="ketorolac")]
    res = run(recs)
    assert _mods_by_record(recs, res) == {"r-1": [], "r-2": ["59"]}


def test_same_drug_again_same_npi_gets_76():
    recs = [admin_raw(record_id="a", time="09:00"), admin_raw(record_id="b", time="13:00")]
    res = run(recs)
    assert _mods_by_record(recs, res) == {"a": [], "b": ["76"]}


def test_same_drug_again_different_npi_gets_77():
    recs = [admin_raw(record_id="a", time="09:00", rendering_npi=NPI),
            admin_raw(record_id="b", time="13:00", rendering_npi=NPI_2)]
    res = run(recs)
    assert _mods_by_record(recs, res) == {"a": [], "b": ["77"]}


def test_mixed_day_59_and_76():
    recs = [admin_raw(record_id="a", time="09:00", drug="ceftriaxone"),
            admin_raw(record_id="b", time="10:00", drug="ketorolac"),
            admin_raw(record_id="c", time="13:00", drug="ceftriaxone")]
    res = run(recs)
    assert _mods_by_record(recs, res) == {"a": [], "b": ["59"], "c": ["76"]}


def test_held_lines_count_in_the_ordering():
    # the first injection is held (no diagnosis) but still counts: the second gets 59
    recs = [admin_raw(record_id="a", time="09:00", drug="ceftriaxone", diagnosis_codes=[]),
            admin_raw(record_id="b", time="10:00", drug="ketorolac")]
    res = run(recs)
    assert res.reasons() == [V.MISSING_DIAGNOSIS]
    assert _mods_by_record(recs, res) == {"b": ["59"]}


def test_withdrawn_records_do_not_count_in_the_ordering():
    first = admin_raw(record_id="a", time="09:00", drug="ceftriaxone",
                      recorded_at="2025-03-14T09:01:00-05:00")
    wd = {**first, "event_id": "ev-wd", "status": "entered-in-error",
          "recorded_at": "2025-03-14T11:00:00-05:00"}
    second = admin_raw(record_id="b", time="10:00", drug="ketorolac")
    res = run([first, second, wd])
    assert _mods_by_record([first, second], res) == {"b": []}


def test_blocked_duplicate_does_not_count_in_the_ordering():
    # b duplicates a (same drug 3 min later) and is blocked; c (same drug, 4 h later, same
    # NPI as a) is the second counted 96372 line of that drug -> 76; d gets 59
    recs = [admin_raw(record_id="a", time="09:00"),
            admin_raw(record_id="b", time="09:03", rendering_npi=NPI_2),
            admin_raw(record_id="d", time="11:00", drug="ketorolac"),
            admin_raw(record_id="c", time="13:00")]
    res = run(recs)
    assert res.reasons() == [V.DUPLICATE_SERVICE]
    assert _mods_by_record(recs, res) == {"a": [], "d": ["59"], "c": ["76"]}


def test_drug_lines_and_other_admin_codes_get_no_distinct_modifier():
    recs = [admin_raw(record_id="a", time="09:00", route="IV_PUSH", drug="ondansetron"),
            admin_raw(record_id="b", time="09:30", drug="ketorolac")]
    res = run(recs)
    # 96374 is not a 96372 line; the 96372 is the day's first 96372 line
    assert res.line("96374")["modifiers"] == []
    assert res.line("96372")["modifiers"] == []
    assert res.line("J1885")["modifiers"] == []


def test_payer_profile_preferring_xu(tmp_path):
    def prefer_xu(rows):
        head = rows[0]
        i_payer, i_mod = head.index("payer_class"), head.index("distinct_modifier")
        return [head] + [r[:i_mod] + (["XU"] if r[i_payer] == "commercial" else [r[i_mod]])
                         + r[i_mod + 1:] for r in rows[1:]]

    d = rules_dir_with(tmp_path, "payer_profiles.csv", prefer_xu)
    recs = [admin_raw(record_id="a", time="09:00", drug="ceftriaxone"),
            admin_raw(record_id="b", time="09:30", drug="ketorolac"),
            admin_raw(record_id="c", time="10:00", drug="dexamethasone", payer_class="medicaid")]
    res = run(recs, rules_dir=d)
    assert _mods_by_record(recs, res) == {"a": [], "b": ["XU"], "c": ["59"]}
    assert res.alerts == []


# ---------------------------------------------------------------- MODIFIER_NOT_ALLOWED


@pytest.mark.parametrize("mods, flagged", [
    (["25"], ["25"]),
    (["91"], ["91"]),
    (["JW", "JZ"], ["JW+JZ"]),
    (["59", "XU"], ["59+X"]),
    (["59", "XS"], ["59+X"]),
])
def test_modifier_not_allowed_on_an_injection(mods, flagged):
    res = run([admin_raw(charge_code="96372", charge_modifiers=mods)])
    alert = res.alert(V.MODIFIER_NOT_ALLOWED)
    assert alert["code"] == "96372"
    assert alert["predicted_denial"] == {"carc": "CO-4", "rarc": None}
    # details name the offending modifiers (engine choice of labels for combinations)
    assert alert["details"]["modifiers"] == flagged
    assert res.lines == []  # every line of the record is held


@pytest.mark.parametrize("mods", [["59"], ["XU"], ["76"], ["JZ"]])
def test_allowed_proposed_modifiers_on_an_injection(mods):
    res = run([admin_raw(charge_code="96372", charge_modifiers=mods)])
    assert V.MODIFIER_NOT_ALLOWED not in res.reasons()


@pytest.mark.parametrize("mod", ["59", "XE", "XS", "XP", "XU"])
def test_distinct_modifier_on_an_em_is_not_allowed(mod):
    res = run([admin_raw(), em_raw(modifiers=["25", mod])])
    alert = res.alert(V.MODIFIER_NOT_ALLOWED)
    assert alert["code"] == "99213"
    assert alert["details"]["modifiers"] == [mod]
    assert "99213" not in res.codes()
    assert sorted(res.codes()) == ["96372", "J0696"]


def test_em_with_25_only_is_allowed():
    res = run([admin_raw(), em_raw(modifiers=["25"])])
    assert res.alerts == []
    assert res.line("99213")["modifiers"] == ["25"]


def test_third_injection_of_a_drug_compares_npi_with_the_first_line_of_that_drug():
    # Spec: 76 "same rendering_npi as the earlier one". Engine choice where there are
    # several earlier lines: compare with the day's first line of that drug.
    recs = [admin_raw(record_id="a", time="09:00", rendering_npi=NPI),
            admin_raw(record_id="b", time="12:00", rendering_npi=NPI_2),
            admin_raw(record_id="c", time="15:00", rendering_npi=NPI_2)]
    res = run(recs)
    assert _mods_by_record(recs, res) == {"a": [], "b": ["77"], "c": ["77"]}
