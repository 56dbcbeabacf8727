"""Synthetic, realistic EHR event stream for chargecap (`python -m stream_app generate`).

Everything here is deterministic for a seed: one `random.Random` per concern, no wall
clock, no hash randomisation, dicts built in a fixed field order and serialised with
orjson. The same arguments always give byte-identical output.

Public API (used by the demo, the benchmarks and the end-to-end tests):

* `generate_stream(seed, ...) -> GeneratedStream`: everything, with labels.
* `generate_events(seed, ...) -> list[dict]`: the valid input records in arrival order
  (amendments, withdrawals, redeliveries and out-of-order arrival included; malformed
  messages are not records and are never part of this list).
* `generate_messages(seed, ..., topic_prefix="") -> list[(topic, key, value)]`: what a
  producer sends, keys varied on purpose (patient, encounter, record id or None),
  malformed messages interleaved when `malformed_rate > 0`.
* `add_arguments(parser)` / `run(args) -> int`: the `generate` command.

The simulated world: clinics in a few US time zones with physicians/NPs/PAs (valid NPIs)
and RN/LPN/MA staff; patients with a payer class (medicare ~40 %, commercial ~35 %,
medicaid ~15 %, workers' comp, self-pay) who visit on some days; office (POS 11, 12, 20)
and facility (POS 22, 19, 21) encounters; E/M visits; IM/SC injections, IV pushes, IV
infusions, vaccines, allergen immunotherapy and oral medications of billing-rules.md §6
with consistent name / HCPCS / NDC / dose; pharmacy dispenses before or after the
administration, with or without `order_id`.

Injected problems (`ERROR_KINDS`, one per affected encounter; `error_rate` is the share
of encounters that carry one, `error_mix` the relative weight of each kind) are what a
correct validator should flag (`EXPECTED_REASON`). Valid encounters are built so that
they should raise no block alert. Records of a valid encounter are never mutated.

Nothing here prints or logs patient, encounter or record ids.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import math
import os
import random
import sys
from bisect import bisect
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import accumulate
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from stream_app.config import add_settings_arguments, settings_from_args
from stream_app.engine import normalise
from stream_app.vocabulary import EVENT_TYPE_TOPICS

ADMINISTRATION = "medication.administered"
EM_SERVICE = "em.service"
DISPENSE = "drug.dispensed"

Message = tuple[str, bytes | None, bytes]

# -- error kinds ------------------------------------------------------------------------

ERROR_KINDS: tuple[str, ...] = (
    "em_missing_modifier_25",  # E/M on an injection day, separately identifiable, no 25
    "em_99211_with_injection",  # 99211 the same day as a 96372
    "em_not_separately_identifiable",  # E/M with 25 but separately_identifiable false
    "iv_push_coded_96372",  # IV push with charge_code 96372
    "missing_ndc",  # no NDC on the administration and no dispense
    "malformed_ndc",  # unhyphenated 10-digit NDC
    "facility_pos_96372",  # 96372 proposed at a facility POS
    "duplicate_administration",  # same drug documented by a second provider within 5 min
    "missing_lot_number",
    "missing_site",
    "repeat_same_drug",  # same drug injected again later the same day (validator adds 76/77)
    "invalid_npi",  # rendering or supervising NPI with a wrong check digit
    "missing_diagnosis",
    "invalid_diagnosis",  # diagnosis code not ICD-10-CM shaped
    "missing_supervision",  # MA at POS 11 without supervising_npi
    "medicare_waste_missing",  # Medicare single-dose container without wasted_amount
    "modifier_25_on_96372",  # charge_modifiers ["25"] proposed on a 96372
)

# The reason code a correct validator raises for each kind (None: no alert, the
# validator derives the right modifier itself).
EXPECTED_REASON: dict[str, str | None] = {
    "em_missing_modifier_25": "EM_MISSING_MODIFIER_25",
    "em_99211_with_injection": "EM_99211_SAME_DAY",
    "em_not_separately_identifiable": "EM_NOT_SEPARATELY_IDENTIFIABLE",
    "iv_push_coded_96372": "WRONG_ADMIN_CODE",
    "missing_ndc": "MISSING_NDC",
    "malformed_ndc": "INVALID_NDC",
    "facility_pos_96372": "FACILITY_SETTING",
    "duplicate_administration": "DUPLICATE_SERVICE",
    "missing_lot_number": "MISSING_DOCUMENTATION",
    "missing_site": "MISSING_DOCUMENTATION",
    "repeat_same_drug": None,
    "invalid_npi": "INVALID_NPI",
    "missing_diagnosis": "MISSING_DIAGNOSIS",
    "invalid_diagnosis": "INVALID_DIAGNOSIS_CODE",
    "missing_supervision": "MISSING_SUPERVISION",
    "medicare_waste_missing": "WASTE_MODIFIER_MISSING",
    "modifier_25_on_96372": "MODIFIER_NOT_ALLOWED",
}

# Malformed message kinds and the dead-letter error code a correct parser gives them.
MALFORMED_KINDS: dict[str, str] = {
    "invalid_json": "INVALID_JSON",
    "empty_value": "INVALID_JSON",
    "not_an_object": "NOT_AN_OBJECT",
    "missing_field": "MISSING_FIELD",
    "wrong_type": "WRONG_TYPE",
    "invalid_timestamp": "INVALID_TIMESTAMP",
    "unknown_event_type": "UNKNOWN_EVENT_TYPE",
    "binary_garbage": "INVALID_ENCODING",
}

# -- reference data -----------------------------------------------------------------------

PAYER_MIX = (
    ("medicare", 40),
    ("commercial", 35),
    ("medicaid", 15),
    ("workers_comp", 5),
    ("self_pay", 5),
)
TIMEZONES = (
    ("America/New_York", 35),
    ("America/Chicago", 30),
    ("America/Denver", 12),
    ("America/Phoenix", 6),
    ("America/Los_Angeles", 17),
)
FACILITY_POS = ("22", "19", "21")
# (place_of_service, weight) of an encounter without a forced setting.
SETTINGS = (("11", 62), ("20", 10), ("12", 4), ("22", 15), ("19", 6), ("21", 3))

IM_SITES = (
    "left deltoid", "right deltoid", "left ventrogluteal", "right ventrogluteal",
    "left vastus lateralis", "right vastus lateralis", "left dorsogluteal",
    "right dorsogluteal",
)
SC_SITES = (
    "abdomen left lower quadrant", "abdomen right lower quadrant", "left upper arm posterior",
    "right upper arm posterior", "left anterior thigh", "right anterior thigh",
)
IV_SITES = (
    "left antecubital", "right antecubital", "left forearm", "right forearm",
    "left hand dorsal", "right hand dorsal",
)
DELTOID = ("left deltoid", "right deltoid")
KNEE = ("left knee", "right knee")
INVALID_DIAGNOSES = ("J18-9", "189.0", "JJ8.9", "J1", "J18.90000", "PNEUMONIA")
CHRONIC_DX = ("I10", "E11.9", "E78.5", "J44.9", "F41.1", "K21.9", "N18.3", "M17.11")
ROUTE_SPELLINGS = {
    "IM": (("IM", 85), ("intramuscular", 8), ("im", 7)),
    "SC": (("SC", 70), ("SQ", 10), ("subcutaneous", 10), ("SUBQ", 5), ("sc", 5)),
    "IV_PUSH": (("IV_PUSH", 80), ("IVP", 12), ("iv push", 8)),
    "IV_INFUSION": (("IV_INFUSION", 65), ("IV", 35)),
    "ORAL": (("ORAL", 85), ("PO", 15)),
    "INTRA_ARTICULAR": (("INTRA_ARTICULAR", 100),),
}


@dataclass(frozen=True, slots=True)
class Product:
    ndc: str  # package-label form, hyphenated 4-4-2 / 5-3-2 / 5-4-1 (or 5-4-2)
    container: str  # single_dose / multi_dose / unknown
    amount: float  # drug per container, in the drug's base unit
    ml: float  # volume per container


@dataclass(frozen=True, slots=True)
class DrugSpec:
    name: str
    hcpcs: str | None  # None: no HCPCS drug code (vaccines, allergen extracts, oral)
    category: str
    routes: tuple[tuple[str, int], ...]  # canonical route, weight
    unit: str  # base dose unit
    doses: tuple[tuple[float, int], ...]  # dose in base unit, weight
    products: tuple[Product, ...]
    dx: tuple[str, ...]
    weight: int = 10
    hcpcs_by_dose: tuple[tuple[float, str], ...] = ()  # overrides hcpcs for a dose

    def code_for(self, dose: float) -> str | None:
        for d, code in self.hcpcs_by_dose:
            if d == dose:
                return code
        return self.hcpcs


def _P(ndc: str, container: str, amount: float, ml: float) -> Product:  # noqa: N802
    return Product(ndc, container, amount, ml)


SD, MD, UNK = "single_dose", "multi_dose", "unknown"

# IM / SC injections (96372 family).
IMSC_DRUGS: tuple[DrugSpec, ...] = (
    DrugSpec("ceftriaxone", "J0696", "therapeutic", (("IM", 1),), "mg",
             ((500, 5), (1000, 3), (250, 2)),
             (_P("0409-7332-01", SD, 500, 1), _P("0409-7333-01", SD, 1000, 1),
              _P("0409-7331-01", SD, 250, 1), _P("60505-0750-4", SD, 2000, 1)),
             ("N39.0", "J18.9", "A54.9", "J01.90", "H66.90"), 14),
    DrugSpec("methylprednisolone acetate", "J1030", "therapeutic", (("IM", 1),), "mg",
             ((40, 5), (80, 5)),
             (_P("0009-3073-01", SD, 40, 1), _P("0009-3475-01", SD, 80, 1),
              _P("0009-0306-12", MD, 400, 5)),
             ("M54.50", "J45.909", "L30.9", "M25.561", "J30.9"), 14,
             ((80, "J1040"),)),
    DrugSpec("triamcinolone acetonide", "J3301", "therapeutic", (("IM", 1),), "mg",
             ((40, 8), (60, 1), (80, 1)),
             (_P("0003-0293-05", MD, 40, 1), _P("0003-0293-28", MD, 400, 10)),
             ("J30.2", "L20.9", "M54.16", "L40.0"), 9),
    DrugSpec("dexamethasone sodium phosphate", "J1100", "therapeutic", (("IM", 1),), "mg",
             ((4, 3), (6, 2), (8, 3), (10, 4)),
             (_P("63323-165-01", SD, 4, 1), _P("63323-506-01", SD, 10, 1),
              _P("63323-165-30", MD, 120, 30)),
             ("J45.41", "J02.9", "L50.9", "J05.0", "J45.901"), 9),
    DrugSpec("ketorolac tromethamine", "J1885", "therapeutic", (("IM", 1),), "mg",
             ((30, 6), (60, 4)),
             (_P("0409-3795-01", SD, 30, 1), _P("0409-3796-01", SD, 60, 2)),
             ("M54.50", "N23", "G43.909", "M25.511", "R51.9"), 12),
    DrugSpec("promethazine hydrochloride", "J2550", "therapeutic", (("IM", 1),), "mg",
             ((25, 8), (12.5, 2)),
             (_P("0641-6082-25", SD, 25, 1), _P("0641-6083-25", SD, 50, 1)),
             ("R11.2", "R11.0", "T75.3XXA"), 7),
    DrugSpec("cyanocobalamin", "J3420", "therapeutic", (("IM", 8), ("SC", 2)), "mcg",
             ((1000, 1),),
             (_P("63323-044-01", SD, 1000, 1), _P("0143-9620-30", MD, 30000, 30)),
             ("D51.0", "D51.9", "E53.8", "K90.9"), 12),
    DrugSpec("enoxaparin sodium", "J1650", "prophylactic", (("SC", 1),), "mg",
             ((40, 7), (30, 1), (60, 1), (80, 1)),
             (_P("0075-0624-30", SD, 30, 0.3), _P("0075-0624-40", SD, 40, 0.4),
              _P("0075-0621-60", SD, 60, 0.6), _P("0075-0622-80", SD, 80, 0.8)),
             ("Z79.01", "I82.409", "Z86.718", "I26.99"), 6),
    DrugSpec("medroxyprogesterone acetate", "J1050", "therapeutic", (("IM", 1),), "mg",
             ((150, 1),), (_P("0009-0746-30", SD, 150, 1), _P("59762-4538-1", SD, 150, 1)),
             ("Z30.42", "Z30.013"), 7),
    DrugSpec("depo-subq provera 104", "J1050", "therapeutic", (("SC", 1),), "mg",
             ((104, 1),), (_P("0009-4709-13", SD, 104, 0.65),), ("Z30.42",), 2),
    DrugSpec("diphenhydramine hydrochloride", "J1200", "therapeutic", (("IM", 1),), "mg",
             ((25, 4), (50, 6)), (_P("63323-664-01", SD, 50, 1),),
             ("T78.40XA", "L50.9", "T78.3XXA"), 5),
    DrugSpec("heparin sodium", "J1644", "prophylactic", (("SC", 1),), "units",
             ((5000, 1),), (_P("63323-262-01", SD, 5000, 1),), ("Z79.01", "Z86.718"), 2),
    DrugSpec("leuprolide acetate", "J9217", "hormonal_antineoplastic", (("SC", 1),), "mg",
             ((7.5, 3), (22.5, 5), (45, 2)),
             (_P("62935-0753-60", SD, 7.5, 0.25), _P("62935-0223-50", SD, 22.5, 0.375),
              _P("62935-0453-50", SD, 45, 0.375)),
             ("C61",), 2),
)
IMSC_BY_NAME = {d.name: d for d in IMSC_DRUGS}
REPEATABLE = ("ketorolac tromethamine", "promethazine hydrochloride",
              "dexamethasone sodium phosphate", "diphenhydramine hydrochloride")

# IV pushes (96374 / 96375).
PUSH_DRUGS: tuple[DrugSpec, ...] = (
    DrugSpec("ondansetron", "J2405", "therapeutic", (("IV_PUSH", 1),), "mg", ((4, 9), (8, 1)),
             (_P("0409-4755-03", SD, 4, 2), _P("0409-4759-01", MD, 40, 20)),
             ("R11.2", "R11.10", "R11.0"), 12),
    DrugSpec("ketorolac tromethamine", "J1885", "therapeutic", (("IV_PUSH", 1),), "mg",
             ((15, 5), (30, 5)),
             (_P("0409-3793-01", SD, 15, 1), _P("0409-3795-01", SD, 30, 1)),
             ("M54.50", "N23", "G43.909", "R51.9"), 9),
    DrugSpec("dexamethasone sodium phosphate", "J1100", "therapeutic", (("IV_PUSH", 1),),
             "mg", ((4, 3), (10, 4)),
             (_P("63323-165-01", SD, 4, 1), _P("63323-506-01", SD, 10, 1)),
             ("J45.41", "G43.909", "R11.2"), 6),
    DrugSpec("diphenhydramine hydrochloride", "J1200", "therapeutic", (("IV_PUSH", 1),), "mg",
             ((25, 7), (50, 3)), (_P("63323-664-01", SD, 50, 1),),
             ("T78.40XA", "L50.9", "G43.909"), 5),
    DrugSpec("metoclopramide hydrochloride", "J2765", "therapeutic", (("IV_PUSH", 1),), "mg",
             ((10, 1),), (_P("0409-3414-01", SD, 10, 2),), ("R11.2", "G43.909", "K30"), 5),
    DrugSpec("morphine sulfate", "J2270", "therapeutic", (("IV_PUSH", 1),), "mg",
             ((2, 3), (4, 7)), (_P("0409-1890-01", SD, 4, 1),), ("R52", "N23", "S82.201A"), 3),
    DrugSpec("methylprednisolone sodium succinate", "J2930", "therapeutic", (("IV_PUSH", 1),),
             "mg", ((125, 1),), (_P("0009-0047-22", SD, 125, 2),),
             ("J45.901", "T78.3XXA", "J44.1"), 3),
)

# IV infusions (96365 / +96366); ended_at 40-200 minutes after occurred_at.
INFUSION_DRUGS: tuple[DrugSpec, ...] = (
    DrugSpec("ceftriaxone", "J0696", "therapeutic", (("IV_INFUSION", 1),), "mg",
             ((1000, 7), (2000, 3)),
             (_P("0409-7333-01", SD, 1000, 1), _P("60505-0750-4", SD, 2000, 1)),
             ("J18.9", "N39.0", "A41.9"), 8),
    DrugSpec("infliximab", "J1745", "therapeutic", (("IV_INFUSION", 1),), "mg",
             ((300, 3), (400, 4), (500, 3)), (_P("57894-0030-01", SD, 100, 10),),
             ("K50.90", "M05.79", "L40.50", "K51.90"), 5),
    DrugSpec("iron sucrose", "J1756", "therapeutic", (("IV_INFUSION", 1),), "mg",
             ((200, 7), (300, 3)), (_P("0517-2340-01", SD, 100, 5),), ("D50.9", "N18.4"), 5),
    DrugSpec("zoledronic acid", "J3489", "therapeutic", (("IV_INFUSION", 1),), "mg",
             ((5, 1),), (_P("0078-0435-61", SD, 5, 100),), ("M81.0",), 3),
)

# Vaccines: category vaccine, no HCPCS drug code (the product is a CPT code).
VACCINES: tuple[DrugSpec, ...] = (
    DrugSpec("influenza vaccine quadrivalent", None, "vaccine", (("IM", 1),), "mL",
             ((0.5, 1),), (_P("49281-0424-50", SD, 0.5, 0.5),), ("Z23",), 12),
    DrugSpec("tdap vaccine", None, "vaccine", (("IM", 1),), "mL", ((0.5, 1),),
             (_P("58160-0842-11", SD, 0.5, 0.5),), ("Z23",), 5),
    DrugSpec("pneumococcal 20-valent conjugate vaccine", None, "vaccine", (("IM", 1),), "mL",
             ((0.5, 1),), (_P("0005-2000-10", SD, 0.5, 0.5),), ("Z23",), 5),
    DrugSpec("hepatitis b vaccine", None, "vaccine", (("IM", 1),), "mL", ((1.0, 1),),
             (_P("58160-0821-11", SD, 1.0, 1.0),), ("Z23",), 3),
    DrugSpec("zoster vaccine recombinant", None, "vaccine", (("IM", 1),), "mL", ((0.5, 1),),
             (_P("58160-0823-11", SD, 0.5, 0.5),), ("Z23",), 4),
)

ALLERGENS: tuple[DrugSpec, ...] = (
    DrugSpec("allergenic extract mixed pollens", None, "allergen_immunotherapy",
             (("SC", 1),), "mL", ((0.05, 2), (0.1, 3), (0.2, 3), (0.3, 2), (0.5, 2)),
             (_P("49288-0251-3", MD, 10, 10),), ("J30.1", "J30.2"), 5),
    DrugSpec("allergenic extract dust mite", None, "allergen_immunotherapy",
             (("SC", 1),), "mL", ((0.1, 3), (0.2, 3), (0.4, 2)),
             (_P("49288-0433-2", MD, 10, 10),), ("J30.81", "J30.89"), 3),
)

ORAL_DRUGS: tuple[DrugSpec, ...] = (
    DrugSpec("acetaminophen", None, "therapeutic", (("ORAL", 1),), "mg", ((650, 4), (1000, 6)),
             (_P("0904-6734-61", UNK, 500, 0),), ("R50.9", "M79.1", "R51.9"), 8),
    DrugSpec("ibuprofen", None, "therapeutic", (("ORAL", 1),), "mg", ((600, 4), (800, 6)),
             (_P("0904-5855-61", UNK, 800, 0),), ("M79.1", "M54.50", "M25.561"), 6),
    DrugSpec("ondansetron odt", None, "therapeutic", (("ORAL", 1),), "mg", ((4, 1),),
             (_P("0904-6502-61", UNK, 4, 0),), ("R11.2", "R11.0"), 4),
    DrugSpec("prednisone", None, "therapeutic", (("ORAL", 1),), "mg", ((20, 4), (40, 6)),
             (_P("0904-6592-61", UNK, 20, 0),), ("J45.901", "L50.9", "J44.1"), 4),
)

TRIAMCINOLONE_JOINT = DrugSpec(
    "triamcinolone acetonide", "J3301", "therapeutic", (("INTRA_ARTICULAR", 1),), "mg",
    ((40, 8), (80, 2)), (_P("0003-0293-05", MD, 40, 1),), ("M17.11", "M17.12", "M25.561"), 1)

# Encounter scenarios of a non-facility encounter (no forced error).
SCENARIOS = (
    ("imsc", 52), ("vaccine", 11), ("allergen", 5), ("push", 8), ("infusion", 5),
    ("imsc_vaccine", 4), ("joint", 2), ("oral", 6), ("em_only", 7),
)

# Errors that need a particular encounter shape: (scenario, needs E/M, forced POS or None).
_ERROR_SHAPE: dict[str, tuple[str, bool, str | None]] = {
    "em_missing_modifier_25": ("imsc", True, None),
    "em_99211_with_injection": ("imsc", True, None),
    "em_not_separately_identifiable": ("imsc", True, None),
    "iv_push_coded_96372": ("push", False, None),
    "facility_pos_96372": ("imsc", True, "facility"),
    "missing_supervision": ("imsc", False, "11"),
    "invalid_npi": ("any", False, None),
}
_MEDICARE_ONLY = ("medicare_waste_missing",)

# -- small helpers -----------------------------------------------------------------------


# The generator draws NPIs with the validator's own check digit (billing-rules.md §8).
npi_check_digit = normalise.npi_check_digit
npi_is_valid = normalise.npi_valid


def ndc_label_to_11(label: str) -> str:
    """Hyphenated 10-digit (4-4-2, 5-3-2, 5-4-1) or 5-4-2 label NDC -> 11 digits."""
    a, b, c = label.split("-")
    return a.zfill(5) + b.zfill(4) + c.zfill(2)


class _Weighted:
    """Fast weighted choice with a given Random (cumulative weights + bisect)."""

    __slots__ = ("items", "cum", "total")

    def __init__(self, pairs):
        pairs = list(pairs)
        self.items = [p[0] for p in pairs]
        self.cum = list(accumulate(p[1] for p in pairs))
        self.total = self.cum[-1]

    def pick(self, rng: random.Random):
        return self.items[bisect(self.cum, rng.random() * self.total)]


def _weighted_drugs(drugs) -> _Weighted:
    return _Weighted((d, d.weight) for d in drugs)


_W_PAYER = _Weighted(PAYER_MIX)
_W_TZ = _Weighted(TIMEZONES)
_W_SETTING = _Weighted(SETTINGS)
_W_SCENARIO = _Weighted(SCENARIOS)
_W_IMSC = _weighted_drugs(IMSC_DRUGS)
_W_IMSC_NO_MEDROXY = _weighted_drugs(d for d in IMSC_DRUGS if d.hcpcs != "J1050")
# 96372 drugs only (error encounters need one to host the problem)
_W_IMSC_96372 = _weighted_drugs(d for d in IMSC_DRUGS if d.category in (
    "therapeutic", "prophylactic") and d.hcpcs != "J1050")
_W_IMSC_SINGLE = _weighted_drugs(
    d for d in IMSC_DRUGS if any(p.container == SD for p in d.products)
    and d.hcpcs != "J1050" and d.category in ("therapeutic", "prophylactic"))
_W_PUSH = _weighted_drugs(PUSH_DRUGS)
_W_INFUSION = _weighted_drugs(INFUSION_DRUGS)
_W_VACCINE = _weighted_drugs(VACCINES)
_W_ALLERGEN = _weighted_drugs(ALLERGENS)
_W_ORAL = _weighted_drugs(ORAL_DRUGS)
_W_ROUTE_SPELLING = {k: _Weighted(v) for k, v in ROUTE_SPELLINGS.items()}
_W_DOSES: dict[int, _Weighted] = {}  # id(DrugSpec) -> doses, filled lazily
_W_ROUTES: dict[int, _Weighted] = {}  # id(DrugSpec) -> routes, filled lazily


@dataclass(slots=True)
class _Staff:
    staff_id: str
    credential: str
    npi: str | None


@dataclass(slots=True)
class _Clinic:
    tz: int  # index into the generator's zone table
    tz_name: str
    providers: list[_Staff]  # MD/DO/NP/PA, each with an NPI
    physicians: list[_Staff]  # MD/DO subset (supervisors)
    nurses: list[_Staff]  # RN/LPN
    assistants: list[_Staff]  # MA


@dataclass(slots=True)
class _Version:
    """One message-to-be: a record version with its arrival time."""

    arrival: float  # seconds since start-date midnight UTC
    seq: int
    record: dict
    label: str | None = None  # the error kind the record carries (for tests), if any


class GeneratedStream:
    """Result of `generate_stream`.

    `events`: the valid records in arrival order (a redelivery is the same dict again).
    `messages` / `iter_messages()`: (topic, key, value) in send order, malformed ones
    interleaved; values are serialised lazily (orjson) so that callers who only want the
    records don't pay for it. `labels`: (event_type, record_id) -> error kind of the
    record hosting an injected problem (its other versions may fix it). `fixed`: keys of
    those fixed later by an amendment or a withdrawal. `malformed`: kind of each malformed
    message, in order. `stats`: counts by category, safe to print (no ids).
    """

    def __init__(self, events, plan, labels, fixed, malformed, stats) -> None:
        self.events: list[dict] = events
        self._plan: list[tuple[str, bytes | None, dict | bytes]] = plan
        self.labels: dict[tuple[str, str], str] = labels
        self.fixed: set[tuple[str, str]] = fixed
        self.malformed: list[str] = malformed
        self.stats: Counter = stats
        self._messages: list[Message] | None = None

    def iter_messages(self) -> Iterator[Message]:
        dumps = orjson.dumps
        for topic, key, payload in self._plan:
            yield topic, key, payload if type(payload) is bytes else dumps(payload)

    def iter_labeled_messages(self) -> Iterator[tuple[str, bytes | None, bytes, str | None]]:
        """(topic, key, value, malformed kind or None) in send order."""
        bad = iter(self.malformed)
        dumps = orjson.dumps
        for topic, key, payload in self._plan:
            if type(payload) is bytes:
                yield topic, key, payload, next(bad)
            else:
                yield topic, key, dumps(payload), None

    @property
    def messages(self) -> list[Message]:
        if self._messages is None:
            self._messages = list(self.iter_messages())
        return self._messages

    def iter_ndjson(self, include_malformed: bool = False) -> Iterator[bytes]:
        """One line (without newline) per record, or per message if include_malformed."""
        dumps = orjson.dumps
        for _topic, _key, payload in self._plan:
            if type(payload) is bytes:
                if include_malformed:
                    yield payload
            else:
                yield dumps(payload)


# -- the generator -------------------------------------------------------------------------


class _Generator:
    def __init__(
        self,
        seed: int,
        *,
        patients: int | None,
        records: int | None,
        days: int,
        start_date: str | date,
        error_rate: float,
        error_mix: dict[str, float] | None,
        amend_rate: float,
        withdraw_rate: float,
        redeliver_rate: float,
        fix_rate: float,
        visit_rate: float,
    ) -> None:
        if days < 1:
            raise ValueError("days must be >= 1")
        for name, value in (("error_rate", error_rate), ("amend_rate", amend_rate),
                            ("withdraw_rate", withdraw_rate),
                            ("redeliver_rate", redeliver_rate), ("fix_rate", fix_rate),
                            ("visit_rate", visit_rate)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        self.seed = seed
        self.rng = random.Random(f"chargecap-generate:{seed}")
        self.tag = hashlib.blake2b(str(seed).encode(), digest_size=3).hexdigest()
        self.patients = patients
        self.records = records
        self.days = days
        self.start = date.fromisoformat(start_date) if isinstance(start_date, str) else start_date
        self.error_rate = error_rate
        self.amend_rate = amend_rate
        self.withdraw_rate = withdraw_rate
        self.redeliver_rate = redeliver_rate
        self.fix_rate = fix_rate
        self.visit_rate = visit_rate
        mix = dict.fromkeys(ERROR_KINDS, 1.0) if error_mix is None else dict(error_mix)
        unknown = set(mix) - set(ERROR_KINDS)
        if unknown:
            raise ValueError(f"unknown error kinds: {', '.join(sorted(unknown))}")
        if any(v < 0 for v in mix.values()):
            raise ValueError("error_mix weights must be >= 0")
        share_medicare = dict(PAYER_MIX)["medicare"] / sum(w for _, w in PAYER_MIX)
        # Medicare-only kinds are compensated so that their overall share matches the mix.
        medicare_w = [(k, mix.get(k, 0.0) / (share_medicare if k in _MEDICARE_ONLY else 1.0))
                      for k in ERROR_KINDS]
        other_w = [(k, 0.0 if k in _MEDICARE_ONLY else mix.get(k, 0.0)) for k in ERROR_KINDS]
        self._w_err_medicare = (_Weighted(medicare_w)
                                if sum(w for _, w in medicare_w) > 0 else None)
        self._w_err_other = _Weighted(other_w) if sum(w for _, w in other_w) > 0 else None
        self._given: set[str] = set()  # HCPCS codes the current patient already received
        self.n_event = 0
        self.n_record = 0
        self.n_staff = 0
        self.n_encounter = 0
        self.n_order = 0
        self.seq = 0
        self.versions: list[_Version] = []
        self.labels: dict[tuple[str, str], str] = {}
        self.fixed: set[tuple[str, str]] = set()
        self.stats: Counter = Counter()
        self._tz_names = [name for name, _ in TIMEZONES]
        self._zones = [ZoneInfo(name) for name in self._tz_names]
        self._offsets: dict[tuple[int, int], tuple[int, str]] = {}
        self._dates: dict[int, str] = {}
        self._build_clinics()

    # ids -------------------------------------------------------------------------------
    def _event_id(self) -> str:
        self.n_event += 1
        return f"ev-{self.tag}-{self.n_event:09d}"

    def _record_id(self, prefix: str) -> str:
        self.n_record += 1
        return f"{prefix}-{self.tag}-{self.n_record:09d}"

    def _staff(self, credential: str, with_npi: bool) -> _Staff:
        self.n_staff += 1
        npi = None
        if with_npi:
            first9 = str(self.rng.choice("12")) + "".join(
                str(self.rng.randrange(10)) for _ in range(8))
            npi = first9 + npi_check_digit(first9)
        return _Staff(f"stf-{self.tag}-{self.n_staff:05d}", credential, npi)

    def _build_clinics(self) -> None:
        rng = self.rng
        if self.patients is not None:
            est = self.patients
        else:
            est = int((self.records or 0) / (1.6 * self.days)) + 1
        n = max(3, min(80, est // 300 + 3))
        self.clinics: list[_Clinic] = []
        for _ in range(n):
            tz_name = _W_TZ.pick(rng)
            physicians = [self._staff(rng.choice(("MD", "MD", "MD", "DO")), True)
                          for _ in range(rng.randint(2, 5))]
            apps = [self._staff(rng.choice(("NP", "NP", "PA")), True)
                    for _ in range(rng.randint(0, 2))]
            nurses = [self._staff(rng.choice(("RN", "RN", "RN", "LPN")), False)
                      for _ in range(rng.randint(2, 5))]
            assistants = [self._staff("MA", False) for _ in range(rng.randint(1, 4))]
            self.clinics.append(_Clinic(self._tz_names.index(tz_name), tz_name,
                                        physicians + apps, physicians, nurses, assistants))

    # time ------------------------------------------------------------------------------
    # Times are local seconds since start-date midnight in the clinic's zone.
    def _offset(self, tz: int, day: int) -> tuple[int, str]:
        key = (tz, day)
        got = self._offsets.get(key)
        if got is None:
            noon = datetime.combine(self.start + timedelta(days=day), datetime.min.time())
            noon = noon.replace(hour=12, tzinfo=self._zones[tz])
            secs = int(noon.utcoffset().total_seconds())
            sign = "-" if secs < 0 else "+"
            h, m = divmod(abs(secs) // 60, 60)
            got = (secs, f"{sign}{h:02d}:{m:02d}")
            self._offsets[key] = got
        return got

    def _date(self, day: int) -> str:
        got = self._dates.get(day)
        if got is None:
            got = self._dates[day] = (self.start + timedelta(days=day)).isoformat()
        return got

    def _ts(self, tz: int, s: int, millis: int | None = None) -> str:
        day, sod = divmod(s, 86400)
        h, r = divmod(sod, 3600)
        m, sec = divmod(r, 60)
        frac = f".{millis:03d}" if millis is not None else ""
        return f"{self._date(day)}T{h:02d}:{m:02d}:{sec:02d}{frac}{self._offset(tz, day)[1]}"

    def _utc(self, tz: int, s: int) -> int:
        return s - self._offset(tz, s // 86400)[0]

    def _ts_utc(self, utc_s: int) -> str:
        day, sod = divmod(utc_s, 86400)
        h, r = divmod(sod, 3600)
        m, sec = divmod(r, 60)
        return f"{self._date(day)}T{h:02d}:{m:02d}:{sec:02d}Z"

    # versions --------------------------------------------------------------------------
    def _emit(self, rec: dict, tz: int, recorded_s: int, label: str | None = None) -> None:
        rng = self.rng
        self.seq += 1
        arrival = self._utc(tz, recorded_s) + rng.random() * 30.0
        self.versions.append(_Version(arrival, self.seq, rec, label))
        self.stats[rec["event_type"]] += 1

    def _new_version(self, rec: dict, tz: int, recorded_s: int) -> dict:
        new = dict(rec)
        if "drug" in new:
            new["drug"] = dict(new["drug"])
        new["event_id"] = self._event_id()
        new["recorded_at"] = self._ts(tz, recorded_s, self.rng.randrange(1000))
        return new

    def _later(self) -> int:
        r = self.rng.random()
        if r < 0.70:
            return self.rng.randint(600, 4 * 3600)
        if r < 0.95:
            return self.rng.randint(4 * 3600, 86400)
        return self.rng.randint(86400, 3 * 86400)

    def _finish(self, rec: dict, valid: dict | None, tz: int, recorded_s: int,
                label: str | None, withdraw_fix: bool = False) -> None:
        """Emit a record and maybe its amendment / fix / withdrawal versions."""
        rng = self.rng
        self._emit(rec, tz, recorded_s, label)
        last = recorded_s
        key = (rec["event_type"], rec["record_id"])
        if label is not None and rng.random() < self.fix_rate and (valid or withdraw_fix):
            last = recorded_s + self._later()
            if withdraw_fix:
                fix = self._new_version(rec, tz, last)
                fix["status"] = "entered-in-error"
                self.stats["withdrawal"] += 1
            else:
                fix = self._new_version(valid, tz, last)
                self.stats["amendment"] += 1
            self.stats["fix"] += 1
            self.fixed.add(key)
            self._emit(fix, tz, last, label)
            return
        if rng.random() < self.amend_rate:
            last = recorded_s + self._later()
            amended = self._new_version(rec, tz, last)
            self._amend(amended)
            self.stats["amendment"] += 1
            self._emit(amended, tz, last, label)
        if rng.random() < self.withdraw_rate:
            last = last + self._later()
            gone = self._new_version(rec, tz, last)
            gone["status"] = "entered-in-error"
            self.stats["withdrawal"] += 1
            self._emit(gone, tz, last, label)

    def _amend(self, rec: dict) -> None:
        """A benign change (never introduces or fixes an error); always changes something."""
        rng = self.rng
        et = rec["event_type"]

        def swap_site() -> bool:
            site = rec.get("site")
            if not site or ("left" not in site and "right" not in site):
                return False
            rec["site"] = (site.replace("left", "right") if "left" in site
                           else site.replace("right", "left"))
            return True

        def add_dx() -> bool:
            dx = rec.get("diagnosis_codes")
            if not dx:
                return False
            extra = [d for d in CHRONIC_DX if d not in dx]
            if not extra:
                return False
            rec["diagnosis_codes"] = [*dx, extra[rng.randrange(len(extra))]]
            return True

        def new_lot() -> bool:
            holder = rec["drug"] if et == ADMINISTRATION else rec
            if not holder.get("lot_number"):
                return False
            holder["lot_number"] = self._lot()
            return True

        def bump_code() -> bool:
            code = rec.get("code")
            if code not in ("99212", "99213", "99214"):
                return False
            rec["code"] = str(int(code) + 1)
            return True

        if et == ADMINISTRATION:
            changes = [swap_site, add_dx, new_lot]
        elif et == EM_SERVICE:
            changes = [bump_code, add_dx]
        else:
            changes = [new_lot]
        k = rng.randrange(len(changes))
        for change in changes[k:] + changes[:k]:
            if change():
                return

    def _lot(self) -> str:
        rng = self.rng
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        style = rng.randrange(3)
        if style == 0:
            return f"{rng.choice(letters)}{rng.choice(letters)}{rng.randrange(1000, 99999)}"
        if style == 1:
            return f"{rng.randrange(10)}{rng.choice(letters)}{rng.randrange(100, 999)}" \
                   f"{rng.choice(letters)}"
        return f"LT{rng.randrange(1000, 9999)}"

    # NDC ---------------------------------------------------------------------------------
    def _ndc_form(self, label: str, for_dispense: bool = False) -> str:
        r = self.rng.random()
        n11 = ndc_label_to_11(label)
        if for_dispense:
            return n11 if r < 0.7 else label
        if r < 0.6:
            return label
        if r < 0.75:
            return f"{n11[:5]}-{n11[5:9]}-{n11[9:]}"
        return n11

    # patients and encounters ---------------------------------------------------------
    def run(self) -> list[_Version]:
        rng = self.rng
        target = None
        if self.records is not None:
            target = max(1, int(self.records / (1.0 + self.redeliver_rate)))
        p = 0
        while True:
            if self.patients is not None and p >= self.patients:
                break
            if target is not None and len(self.versions) >= target:
                break
            p += 1
            patient_id = f"pt-{self.tag}-{p:07d}"
            payer = _W_PAYER.pick(rng)
            clinic = self.clinics[rng.randrange(len(self.clinics))]
            self.stats["patients"] += 1
            self._given: set[str] = set()
            for day in range(self.days):
                if rng.random() < self.visit_rate:
                    self._encounter(patient_id, payer, clinic, day)
        return self.versions

    def _pick_error(self, payer: str) -> str | None:
        if self.error_rate <= 0 or self.rng.random() >= self.error_rate:
            return None
        w = self._w_err_medicare if payer == "medicare" else self._w_err_other
        if w is None:
            return None
        kind = w.pick(self.rng)
        return kind

    def _encounter(self, patient_id: str, payer: str, clinic: _Clinic, day: int) -> None:
        rng = self.rng
        error = self._pick_error(payer)
        if error is None:
            needs_em = False
            pos = _W_SETTING.pick(rng)
            scenario = "any"
        else:
            scenario, needs_em, forced_pos = _ERROR_SHAPE.get(error, ("imsc", False, None))
            if forced_pos == "facility":
                pos = rng.choice(FACILITY_POS)
            elif forced_pos is not None:
                pos = forced_pos
            elif scenario == "any":
                pos = _W_SETTING.pick(rng)
            else:
                pos = "11" if rng.random() < 0.85 else "20"
        if scenario == "any":
            if pos in FACILITY_POS:
                scenario = "facility"
            elif pos == "12":
                scenario = "home"
            else:
                scenario = _W_SCENARIO.pick(rng)

        self.n_encounter += 1
        self.stats["encounters"] += 1
        encounter_id = f"enc-{self.tag}-{self.n_encounter:08d}"
        tz = clinic.tz
        latest_start = 13 * 3600 if error == "repeat_same_drug" else 16 * 3600 + 1800
        start = day * 86400 + rng.randint(7 * 3600 + 1800, latest_start)
        provider = rng.choice(clinic.providers)
        common = {"patient_id": patient_id, "encounter_id": encounter_id,
                  "tz": tz, "pos": pos, "payer": payer, "provider": provider,
                  "clinic": clinic}

        # --- administrations --------------------------------------------------------
        admins: list[dict] = []  # each: {"rec", "spec", "product", "recorded"}
        t = start + rng.randint(10, 35) * 60
        n_imsc = 0
        if scenario in ("imsc", "imsc_vaccine"):
            w = _W_IMSC_NO_MEDROXY if payer == "medicare" else _W_IMSC
            if error is not None:
                w = _W_IMSC_96372
            if error == "medicare_waste_missing":
                w = _W_IMSC_SINGLE
            r = rng.random()
            n_imsc = 1 if r < 0.72 else (2 if r < 0.94 else 3)
            if error == "repeat_same_drug":
                n_imsc = 1
            chosen: list[DrugSpec] = []
            for _ in range(n_imsc * 4):
                spec = IMSC_BY_NAME[rng.choice(REPEATABLE)] if (
                    error == "repeat_same_drug") else w.pick(rng)
                if spec.hcpcs in self._given and error != "repeat_same_drug":
                    continue  # a drug given to this patient on an earlier day: rarely again
                if all(spec.hcpcs != c.hcpcs for c in chosen):
                    chosen.append(spec)
                if len(chosen) == n_imsc:
                    break
            for spec in chosen:
                admins.append(self._admin(common, spec, t, force_single=(
                    error == "medicare_waste_missing" and not admins)))
                t += rng.randint(1, 8) * 60 + rng.randrange(60)
        if scenario in ("vaccine", "imsc_vaccine"):
            n_vax = 1 if rng.random() < 0.7 else 2
            chosen = []
            for _ in range(8):
                spec = _W_VACCINE.pick(rng)
                if spec not in chosen:
                    chosen.append(spec)
                if len(chosen) == n_vax:
                    break
            for i, spec in enumerate(chosen):
                a = self._admin(common, spec, t)
                if rng.random() < 0.3:
                    a["rec"]["charge_code"] = "90471" if i == 0 else "90472"
                admins.append(a)
                t += rng.randint(1, 5) * 60 + rng.randrange(60)
        if scenario == "allergen":
            chosen = [_W_ALLERGEN.pick(rng)]
            if rng.random() < 0.4:
                other = [s for s in ALLERGENS if s is not chosen[0]]
                chosen.append(other[0])
            for spec in chosen:
                admins.append(self._admin(common, spec, t))
                t += rng.randint(1, 3) * 60
        if scenario == "push":
            n_push = 1 if rng.random() < 0.65 else 2
            chosen = []
            for _ in range(8):
                spec = _W_PUSH.pick(rng)
                if all(spec.hcpcs != c.hcpcs for c in chosen):
                    chosen.append(spec)
                if len(chosen) == n_push:
                    break
            for i, spec in enumerate(chosen):
                a = self._admin(common, spec, t, iv_staff=True)
                rec = a["rec"]
                if rng.random() < 0.6:
                    rec["ended_at"] = self._ts(tz, t + rng.randint(30, 300))
                if rng.random() < 0.5:
                    rec["charge_code"] = "96374" if i == 0 else "96375"
                admins.append(a)
                t += rng.randint(4, 14) * 60 + rng.randrange(60)
        if scenario == "infusion":
            spec = _W_INFUSION.pick(rng)
            a = self._admin(common, spec, t, iv_staff=True)
            a["rec"]["ended_at"] = self._ts(tz, t + rng.randint(40, 200) * 60)
            if rng.random() < 0.5:
                a["rec"]["charge_code"] = "96365"
            admins.append(a)
        if scenario == "joint":
            admins.append(self._admin(common, TRIAMCINOLONE_JOINT, t, physician=True))
        if scenario in ("oral", "facility") and (scenario == "oral" or rng.random() < 0.5):
            admins.append(self._admin(common, _W_ORAL.pick(rng), t))
        if scenario == "home":
            spec = IMSC_BY_NAME[rng.choice(("cyanocobalamin", "enoxaparin sodium",
                                            "ceftriaxone", "heparin sodium"))]
            if spec.hcpcs not in self._given:
                admins.append(self._admin(common, spec, t))

        injection_day = any(a["injection"] for a in admins)
        for a in admins:
            if a["spec"].hcpcs:
                self._given.add(a["spec"].hcpcs)

        # --- E/M ----------------------------------------------------------------------
        em = None
        if scenario == "facility" or scenario == "em_only":
            want_em = True
        elif scenario == "home" or scenario == "allergen":
            want_em = needs_em or rng.random() < 0.1
        else:
            want_em = needs_em or rng.random() < (0.85 if pos == "20" else 0.6)
        if want_em:
            em = self._em(common, start, admins, injection_day, scenario)

        # --- error injection -----------------------------------------------------------
        host_valid: dict | None = None
        host: dict | None = None
        withdraw_fix = False
        extra: list[tuple[dict, int]] = []
        if error is not None:
            host, host_valid, withdraw_fix, extra = self._inject(error, common, admins, em)
            if host is None:  # could not inject (should not happen): count as valid
                error = None
            else:
                self.labels[(host["event_type"], host["record_id"])] = error
                self.stats["error:" + error] += 1

        # --- dispenses ----------------------------------------------------------------
        for a in admins:
            self._dispense(common, a)

        # --- emit ---------------------------------------------------------------------
        if em is not None:
            rec, rs = em
            self._finish(rec, host_valid if rec is host else None, tz, rs,
                         error if rec is host else None)
        for a in admins:
            rec = a["rec"]
            is_host = rec is host
            self._finish(rec, host_valid if is_host else None, tz, a["recorded"],
                         error if is_host else None, withdraw_fix and is_host)
            if a.get("dispense") is not None:
                d, ds = a["dispense"]
                self._finish(d, None, tz, ds, None)
        for rec, rs in extra:
            self._finish(rec, None, tz, rs, None)

    def _admin(self, c: dict, spec: DrugSpec, t: int, *, iv_staff: bool = False,
               physician: bool = False, force_single: bool = False) -> dict:
        rng = self.rng
        clinic: _Clinic = c["clinic"]
        tz = c["tz"]
        if len(spec.routes) == 1:
            route = spec.routes[0][0]
        else:
            wr = _W_ROUTES.get(id(spec))
            if wr is None:
                wr = _W_ROUTES[id(spec)] = _Weighted(spec.routes)
            route = wr.pick(rng)
        wd = _W_DOSES.get(id(spec))
        if wd is None:
            wd = _W_DOSES[id(spec)] = _Weighted(spec.doses)
        dose = wd.pick(rng)
        products = spec.products
        if force_single:
            products = tuple(p for p in products if p.container == SD) or products
        fitting = [p for p in products if p.amount >= dose] or list(products)
        if len(fitting) > 1 and rng.random() < 0.75:
            exact = [p for p in fitting if p.amount == dose]
            product = exact[0] if exact else min(fitting, key=lambda p: p.amount)
        else:
            product = fitting[rng.randrange(len(fitting))]
        if force_single and product.container != SD:
            product = next(p for p in products if p.container == SD)

        # performer
        provider: _Staff = c["provider"]
        pos = c["pos"]
        if physician or (route != "ORAL" and rng.random() < 0.07):
            performer = provider
        elif iv_staff or pos in FACILITY_POS or pos == "12":
            performer = rng.choice(clinic.nurses)
        else:
            pool = clinic.nurses + clinic.assistants
            performer = pool[rng.randrange(len(pool))]
        supervising = None
        if performer.npi is None:
            supervising = provider.npi if provider.credential in ("MD", "DO") \
                or rng.random() < 0.5 else rng.choice(clinic.physicians).npi

        occurred = self._ts(tz, t)
        rec: dict[str, Any] = {
            "event_type": ADMINISTRATION,
            "event_id": self._event_id(),
            "record_id": self._record_id("mar"),
            "patient_id": c["patient_id"],
        }
        if rng.random() < 0.97:
            rec["encounter_id"] = c["encounter_id"]
        if rng.random() < 0.25:
            rec["status"] = "completed"
        rec["occurred_at"] = occurred
        recorded = t + rng.randint(60, 1800)
        rec["recorded_at"] = self._ts(tz, recorded, rng.randrange(1000)
                                      if rng.random() < 0.3 else None)
        rec["facility_timezone"] = clinic.tz_name
        rec["place_of_service"] = pos
        rec["payer_class"] = c["payer"]
        rec["route"] = _W_ROUTE_SPELLING[route].pick(rng)
        if route == "IM":
            site = rng.choice(DELTOID if spec.category == "vaccine" else IM_SITES)
        elif route == "SC":
            site = rng.choice(SC_SITES)
        elif route in ("IV_PUSH", "IV_INFUSION"):
            site = rng.choice(IV_SITES)
        elif route == "INTRA_ARTICULAR":
            site = rng.choice(KNEE)
        else:
            site = "mouth"
        rec["site"] = site

        unit = spec.unit
        shown_dose: float = dose
        shown_unit = unit
        if unit == "mg" and dose >= 1000 and dose % 1000 == 0 and rng.random() < 0.5:
            shown_dose, shown_unit = dose / 1000, "g"
        if shown_dose == int(shown_dose):
            shown_dose = int(shown_dose)
        drug: dict[str, Any] = {"name": spec.name}
        has_ndc = rng.random() < 0.9
        if has_ndc:
            drug["ndc"] = self._ndc_form(product.ndc)
        hcpcs = spec.code_for(dose)
        if hcpcs is not None:
            drug["hcpcs"] = hcpcs
        drug["dose"] = shown_dose
        drug["dose_unit"] = shown_unit
        if spec.category != "therapeutic" or rng.random() < 0.8:
            drug["category"] = spec.category
        drug["container"] = product.container
        if product.container == SD:
            n = math.ceil(dose / product.amount - 1e-9)
            waste = n * product.amount - dose
            if c["payer"] == "medicare" or spec.category == "vaccine" or rng.random() < 0.7:
                w = waste / 1000 if shown_unit == "g" else waste
                drug["wasted_amount"] = int(w) if w == int(w) else round(w, 3)
        lot = self._lot()
        drug["lot_number"] = lot
        rec["drug"] = drug
        rec["performer_id"] = performer.staff_id
        rec["performer_credential"] = performer.credential
        rec["rendering_npi"] = provider.npi
        if supervising is not None:
            rec["supervising_npi"] = supervising
        dx = [rng.choice(spec.dx)]
        if rng.random() < 0.25:
            extra = rng.choice(CHRONIC_DX)
            if extra not in dx:
                dx.append(extra)
        rec["diagnosis_codes"] = dx
        injection = route in ("IM", "SC") and spec.category in ("therapeutic", "prophylactic",
                                                                "diagnostic")
        if injection and rng.random() < 0.8:
            rec["charge_code"] = "96372"
        if spec.category == "hormonal_antineoplastic" and rng.random() < 0.5:
            rec["charge_code"] = "96402"
        return {"rec": rec, "spec": spec, "product": product, "recorded": recorded,
                "t": t, "lot": lot, "has_ndc": has_ndc, "dose": dose,
                "injection": injection or route in ("IV_PUSH", "IV_INFUSION"),
                "imsc": injection, "dispense": None, "no_dispense": False,
                "performer": performer}

    def _em(self, c: dict, start: int, admins: list[dict], injection_day: bool,
            scenario: str) -> tuple[dict, int]:
        rng = self.rng
        tz = c["tz"]
        pos = c["pos"]
        t = start + rng.randint(0, 8) * 60
        if pos == "21":
            code = rng.choice(("99231", "99232", "99232", "99233"))
        elif scenario in ("em_only", "oral") and rng.random() < 0.35:
            code = "99211"
        else:
            code = rng.choice(("99212", "99213", "99213", "99213", "99214", "99214", "99215"))
        procedure_day = any(a["spec"].routes[0][0] != "ORAL" for a in admins)
        if injection_day:
            modifiers = ["25"]
            separately = True
        else:
            modifiers = ["25"] if procedure_day and code != "99211" else []
            separately = rng.random() < 0.7 if not procedure_day else True
        dx: list[str] = []
        for a in admins:
            for d in a["rec"]["diagnosis_codes"]:
                if d not in dx:
                    dx.append(d)
        if not dx:
            dx.append(rng.choice(("I10", "E11.9", "J06.9", "M54.50", "R05.9", "Z00.00")))
        if rng.random() < 0.4:
            extra = rng.choice(CHRONIC_DX)
            if extra not in dx:
                dx.append(extra)
        rec: dict[str, Any] = {
            "event_type": EM_SERVICE,
            "event_id": self._event_id(),
            "record_id": self._record_id("emn"),
            "patient_id": c["patient_id"],
            "encounter_id": c["encounter_id"],
            "occurred_at": self._ts(tz, t),
        }
        recorded = t + rng.randint(15 * 60, 6 * 3600)
        rec["recorded_at"] = self._ts(tz, recorded)
        rec["facility_timezone"] = c["clinic"].tz_name
        rec["code"] = code
        if modifiers or rng.random() < 0.5:
            rec["modifiers"] = modifiers
        if separately or rng.random() < 0.5:
            rec["separately_identifiable"] = separately
        rec["place_of_service"] = pos
        rec["payer_class"] = c["payer"]
        rec["rendering_npi"] = c["provider"].npi
        rec["diagnosis_codes"] = dx
        return rec, recorded

    def _dispense(self, c: dict, a: dict) -> None:
        rng = self.rng
        rec = a["rec"]
        spec: DrugSpec = a["spec"]
        if a["no_dispense"]:
            return
        need = "ndc" not in rec["drug"]
        if not need and rng.random() >= 0.72:
            return
        tz = c["tz"]
        t = a["t"]
        if rng.random() < 0.7:
            dt = t - rng.randint(5 * 60, 30 * 60)
        else:
            dt = t + rng.randint(2 * 60, 90 * 60)
        with_order = rng.random() < 0.85
        d: dict[str, Any] = {
            "event_type": DISPENSE,
            "event_id": self._event_id(),
            "record_id": self._record_id("rx"),
            "patient_id": c["patient_id"],
        }
        if rng.random() < 0.5:
            d["encounter_id"] = c["encounter_id"]
        if with_order:
            self.n_order += 1
            order_id = f"ord-{self.tag}-{self.n_order:08d}"
            d["order_id"] = order_id
            rec["order_id"] = order_id
        if rng.random() < 0.4:
            d["occurred_at"] = self._ts_utc(self._utc(tz, dt))
        else:
            d["occurred_at"] = self._ts(tz, dt)
        recorded = dt + rng.randint(0, 120)
        if rng.random() < 0.5:  # else it defaults to occurred_at
            d["recorded_at"] = self._ts(tz, recorded)
        else:
            recorded = dt
        d["facility_timezone"] = c["clinic"].tz_name
        d["ndc"] = self._ndc_form(a["product"].ndc, for_dispense=True)
        name = spec.name
        d["drug_name"] = name if rng.random() < 0.8 else name.title()
        product: Product = a["product"]
        if product.container == SD:
            d["quantity"] = max(1, math.ceil(a["dose"] / product.amount - 1e-9))
            d["quantity_unit"] = "UN"
        elif product.ml > 0:
            ml = round(a["dose"] / product.amount * product.ml, 2)
            d["quantity"] = int(ml) if ml == int(ml) else ml
            d["quantity_unit"] = "ML"
        else:
            d["quantity"] = 1
            d["quantity_unit"] = "UN"
        d["lot_number"] = a["lot"]
        a["dispense"] = (d, recorded)

    # error injection -------------------------------------------------------------------
    def _inject(self, kind: str, c: dict, admins: list[dict], em: tuple[dict, int] | None):
        """Mutate one record; returns (host, valid copy or None, withdraw_fix, extra)."""
        rng = self.rng
        imsc = [a for a in admins if a["imsc"]]
        first = imsc[0] if imsc else None

        def snapshot(rec: dict) -> dict:
            s = dict(rec)
            if "drug" in s:
                s["drug"] = dict(s["drug"])
            return s

        if kind in ("em_missing_modifier_25", "em_99211_with_injection",
                    "em_not_separately_identifiable"):
            if em is None or first is None:
                return None, None, False, []
            rec = em[0]
            valid = snapshot(rec)
            if kind == "em_missing_modifier_25":
                rec["modifiers"] = []
                rec["separately_identifiable"] = True
            elif kind == "em_99211_with_injection":
                rec["code"] = "99211"
                rec["modifiers"] = ["25"] if rng.random() < 0.5 else []
            else:
                rec["modifiers"] = ["25"]
                rec["separately_identifiable"] = False
            return rec, valid, False, []
        if kind == "iv_push_coded_96372":
            pushes = [a for a in admins if a["spec"].routes[0][0] == "IV_PUSH"]
            if not pushes:
                return None, None, False, []
            rec = pushes[0]["rec"]
            valid = snapshot(rec)
            valid.pop("charge_code", None)
            rec["charge_code"] = "96372"
            return rec, valid, False, []
        if kind == "invalid_npi":
            # only records that derive a line (not oral meds) can carry a billable NPI
            candidates = [a["rec"] for a in admins if a["spec"].routes[0][0] != "ORAL"]
            candidates += [em[0]] if em else []
            if not candidates:
                return None, None, False, []
            rec = candidates[rng.randrange(len(candidates))]
            valid = snapshot(rec)
            field_name = "supervising_npi" if "supervising_npi" in rec and rng.random() < 0.3 \
                else "rendering_npi"
            npi = rec[field_name]
            wrong = str((int(npi[9]) + rng.randint(1, 9)) % 10)
            rec[field_name] = npi[:9] + wrong
            return rec, valid, False, []
        if first is None:
            return None, None, False, []
        rec = first["rec"]
        valid = snapshot(rec)
        if kind == "missing_ndc":
            if "ndc" not in rec["drug"]:
                valid["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            rec["drug"].pop("ndc", None)
            rec.pop("order_id", None)
            first["no_dispense"] = True
        elif kind == "malformed_ndc":
            label = first["product"].ndc
            valid["drug"]["ndc"] = label
            n11 = ndc_label_to_11(label)
            # the 10 digits of the label without hyphens (ambiguous, hence invalid)
            rec["drug"]["ndc"] = label.replace("-", "") if len(label) == 12 else n11[1:]
            first["no_dispense"] = True
        elif kind == "facility_pos_96372":
            rec["charge_code"] = "96372"
            return rec, None, False, []
        elif kind == "missing_lot_number":
            rec["drug"].pop("lot_number", None)
        elif kind == "missing_site":
            rec.pop("site", None)
        elif kind == "missing_diagnosis":
            if rng.random() < 0.5:
                rec.pop("diagnosis_codes", None)
            else:
                rec["diagnosis_codes"] = []
        elif kind == "invalid_diagnosis":
            rec["diagnosis_codes"] = [rng.choice(INVALID_DIAGNOSES)] + rec["diagnosis_codes"][1:]
        elif kind == "missing_supervision":
            clinic: _Clinic = c["clinic"]
            ma = rng.choice(clinic.assistants)
            for r in (rec, valid):
                r["performer_id"] = ma.staff_id
                r["performer_credential"] = "MA"
            valid["supervising_npi"] = c["provider"].npi if c["provider"].credential in (
                "MD", "DO") else clinic.physicians[0].npi
            rec.pop("supervising_npi", None)
            # keep field order stable: supervising_npi after rendering_npi
            valid = _reorder_like(valid, rec, "supervising_npi", "rendering_npi")
        elif kind == "medicare_waste_missing":
            if rec["drug"].get("container") != SD:
                return None, None, False, []
            rec["drug"].pop("wasted_amount", None)
        elif kind == "modifier_25_on_96372":
            rec["charge_code"] = "96372"
            valid["charge_code"] = "96372"
            rec["charge_modifiers"] = ["25"]
        elif kind == "duplicate_administration":
            clinic = c["clinic"]
            if "ndc" not in rec["drug"]:  # keep dispense matching unambiguous
                rec["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            dup = snapshot(rec)
            dup["event_id"] = self._event_id()
            dup["record_id"] = self._record_id("mar")
            dup.pop("order_id", None)
            t = first["t"] + rng.randint(60, 280)
            dup["occurred_at"] = self._ts(c["tz"], t)
            recorded = t + rng.randint(60, 1800)
            dup["recorded_at"] = self._ts(c["tz"], recorded)
            others = [s for s in clinic.nurses if s is not first["performer"]] or clinic.nurses
            nurse = others[rng.randrange(len(others))]
            dup["performer_id"] = nurse.staff_id
            dup["performer_credential"] = nurse.credential
            other_providers = [p for p in clinic.providers if p is not c["provider"]]
            second = other_providers[0] if other_providers else c["provider"]
            dup["rendering_npi"] = second.npi
            dup["supervising_npi"] = second.npi if second.credential in ("MD", "DO") \
                else clinic.physicians[0].npi
            dup["drug"]["lot_number"] = rec["drug"].get("lot_number", self._lot())
            # the duplicate hosts the error: it has the later occurred_at
            admins.append({"rec": dup, "spec": first["spec"], "product": first["product"],
                           "recorded": recorded, "t": t, "lot": first["lot"],
                           "has_ndc": "ndc" in dup["drug"], "dose": first["dose"],
                           "injection": True, "imsc": True, "dispense": None,
                           "no_dispense": "ndc" in dup["drug"], "performer": nurse})
            return dup, None, True, []
        elif kind == "repeat_same_drug":
            clinic = c["clinic"]
            if "ndc" not in rec["drug"]:  # else its dispense could match the repeat by NDC
                rec["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            rep = snapshot(rec)
            rep["event_id"] = self._event_id()
            rep["record_id"] = self._record_id("mar")
            rep.pop("order_id", None)
            t = first["t"] + rng.randint(2 * 3600, 6 * 3600)
            rep["occurred_at"] = self._ts(c["tz"], t)
            recorded = t + rng.randint(60, 1800)
            rep["recorded_at"] = self._ts(c["tz"], recorded)
            rep["drug"]["lot_number"] = self._lot()
            if rng.random() < 0.5:  # different rendering provider: 77, else 76
                other_providers = [p for p in clinic.providers if p is not c["provider"]]
                if other_providers:
                    second = other_providers[rng.randrange(len(other_providers))]
                    rep["rendering_npi"] = second.npi
                    if "supervising_npi" in rep:
                        rep["supervising_npi"] = second.npi if second.credential in (
                            "MD", "DO") else clinic.physicians[0].npi
            if "ndc" not in rep["drug"]:
                rep["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            admins.append({"rec": rep, "spec": first["spec"], "product": first["product"],
                           "recorded": recorded, "t": t, "lot": rep["drug"]["lot_number"],
                           "has_ndc": True, "dose": first["dose"], "injection": True,
                           "imsc": True, "dispense": None, "no_dispense": False,
                           "performer": first["performer"]})
            return rep, None, False, []
        else:  # pragma: no cover
            raise AssertionError(kind)
        return rec, valid, False, []


def _reorder_like(valid: dict, _rec: dict, key: str, after: str) -> dict:
    """Move `key` right after `after` (deterministic field order in amendments)."""
    value = valid.pop(key)
    out: dict = {}
    for k, v in valid.items():
        out[k] = v
        if k == after:
            out[key] = value
    if key not in out:
        out[key] = value
    return out


# -- arrival order, keys, malformed ---------------------------------------------------------


def _arrival_order(versions: list[_Version], seed: int, shuffle_window: int,
                   redeliver_rate: float) -> list[tuple[_Version, bool]]:
    """Sort by arrival time, shuffle locally within `shuffle_window` positions, insert
    redeliveries (exact duplicates) a little later. Returns (version, is_redelivery)."""
    rng = random.Random(f"chargecap-arrival:{seed}")
    ordered = sorted(versions, key=lambda v: (v.arrival, v.seq))
    window = max(0, shuffle_window)
    keyed: list[tuple[float, int, _Version, bool]] = []
    n = 0
    for i, v in enumerate(ordered):
        pos = i + (rng.random() * window if window else 0.0)
        keyed.append((pos, n, v, False))
        n += 1
        if redeliver_rate > 0 and rng.random() < redeliver_rate:
            keyed.append((pos + rng.randint(1, 200) + rng.random(), n, v, True))
            n += 1
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [(v, dup) for _, _, v, dup in keyed]


def _choose_key(rng: random.Random, rec: dict) -> bytes | None:
    r = rng.random()
    if r < 0.45:
        return rec["patient_id"].encode()
    if r < 0.65:
        enc = rec.get("encounter_id")
        return (enc or rec["patient_id"]).encode()
    if r < 0.85:
        return rec["record_id"].encode()
    return None


def _malformed(rng: random.Random, tag: str, n: int, start: date) -> tuple[str, bytes]:
    kinds = tuple(MALFORMED_KINDS)
    kind = kinds[rng.randrange(len(kinds))]
    base = {
        "event_type": rng.choice((ADMINISTRATION, EM_SERVICE, DISPENSE)),
        "event_id": f"ev-{tag}-bad-{n:07d}",
        "record_id": f"bad-{tag}-{n:07d}",
        "patient_id": f"pt-{tag}-bad-{n:05d}",
        "occurred_at": f"{start.isoformat()}T10:{rng.randrange(60):02d}:00-05:00",
        "place_of_service": "11",
        "payer_class": "commercial",
        "code": "99213",
    }
    if kind == "invalid_json":
        raw = orjson.dumps(base)
        cut = rng.randrange(1, len(raw) - 1)
        variant = rng.randrange(3)
        if variant == 0:
            return kind, raw[:cut]
        if variant == 1:
            return kind, raw.replace(b'":', b'"=', 1)
        return kind, b"{'event_type': 'em.service', " + raw[1:cut]
    if kind == "empty_value":
        return kind, b""
    if kind == "not_an_object":
        return kind, rng.choice((b"[1, 2, 3]", b'"medication.administered"', b"42", b"null",
                                 b"true", orjson.dumps([base])))
    if kind == "missing_field":
        drop = rng.choice(("event_type", "event_id", "record_id", "patient_id", "occurred_at"))
        base.pop(drop)
        return kind, orjson.dumps(base)
    if kind == "wrong_type":
        which = rng.randrange(4)
        if which == 0:
            base["patient_id"] = rng.randrange(10_000, 99_999)
        elif which == 1:
            base["occurred_at"] = 1741600000 + rng.randrange(86400)
        elif which == 2:
            base["event_id"] = {"id": n}
        else:
            base["record_id"] = [n]
        return kind, orjson.dumps(base)
    if kind == "invalid_timestamp":
        base["occurred_at"] = rng.choice((
            f"{start.isoformat()} 10:00", f"{start.isoformat()}T10:00:00",
            "yesterday", "2025-13-45T99:00:00Z", "10:00 AM"))
        return kind, orjson.dumps(base)
    if kind == "unknown_event_type":
        base["event_type"] = rng.choice(("medication.ordered", "lab.result", "EM.SERVICE",
                                         "drug.returned"))
        return kind, orjson.dumps(base)
    # binary garbage: not UTF-8 (0xff never appears in UTF-8), no newline bytes
    size = rng.randint(8, 512)
    body = bytes(b if b not in (0x0A, 0x0D) else 0xFF for b in rng.randbytes(size))
    return kind, b"\xff\xfe" + body


def generate_stream(
    seed: int,
    patients: int = 200,
    days: int = 3,
    start_date: str | date = "2025-03-10",
    error_rate: float = 0.15,
    error_mix: dict[str, float] | None = None,
    amend_rate: float = 0.05,
    withdraw_rate: float = 0.02,
    redeliver_rate: float = 0.03,
    shuffle_window: int = 20,
    malformed_rate: float = 0.0,
    *,
    records: int | None = None,
    fix_rate: float = 0.2,
    visit_rate: float = 0.4,
    topic_prefix: str = "",
) -> GeneratedStream:
    """The whole synthetic stream, deterministic for its arguments.

    `error_rate`: share of encounters carrying one injected problem; `error_mix`: relative
    weights per `ERROR_KINDS` (default: all equal; kinds left out get weight 0).
    `fix_rate`: share of injected problems later fixed by an amendment (or, for duplicate
    administrations, a withdrawal). `records`: when given, the patient count is ignored
    and patients are added until about that many records (valid messages) exist.
    `malformed_rate`: per valid message, chance of a malformed message next to it; it uses
    its own random stream, so the valid records are identical whatever its value.
    """
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError("malformed_rate must be between 0 and 1")
    gen = _Generator(seed, patients=None if records is not None else patients,
                     records=records, days=days, start_date=start_date,
                     error_rate=error_rate, error_mix=error_mix, amend_rate=amend_rate,
                     withdraw_rate=withdraw_rate, redeliver_rate=redeliver_rate,
                     fix_rate=fix_rate, visit_rate=visit_rate)
    was_enabled = gc.isenabled()
    gc.disable()  # millions of small containers: the cyclic GC only costs time here
    try:
        versions = gen.run()
        order = _arrival_order(versions, seed, shuffle_window, redeliver_rate)
    finally:
        if was_enabled:
            gc.enable()
    key_rng = random.Random(f"chargecap-keys:{seed}")
    bad_rng = random.Random(f"chargecap-malformed:{seed}")
    topics = {et: topic_prefix + name for et, name in EVENT_TYPE_TOPICS.items()}
    input_topics = tuple(topics.values())
    events: list[dict] = []
    plan: list[tuple[str, bytes | None, dict | bytes]] = []
    malformed: list[str] = []
    stats = gen.stats
    first_key: dict[int, bytes | None] = {}  # seq -> key (a redelivery repeats it exactly)
    was_enabled = gc.isenabled()
    gc.disable()  # millions of small containers: the cyclic GC only costs time here
    try:
        for v, is_dup in order:
            rec = v.record
            events.append(rec)
            if is_dup:
                key = first_key[v.seq]
                stats["redelivery"] += 1
            else:
                key = first_key[v.seq] = _choose_key(key_rng, rec)
            plan.append((topics[rec["event_type"]], key, rec))
            if malformed_rate > 0 and bad_rng.random() < malformed_rate:
                kind, raw = _malformed(bad_rng, gen.tag, len(malformed) + 1, gen.start)
                malformed.append(kind)
                stats["malformed:" + kind] += 1
                key = None if bad_rng.random() < 0.5 else f"k-{bad_rng.randrange(10**6)}".encode()
                plan.append((input_topics[bad_rng.randrange(3)], key, raw))
    finally:
        if was_enabled:
            gc.enable()
    stats["records"] = len(events)
    stats["messages"] = len(plan)
    return GeneratedStream(events, plan, gen.labels, gen.fixed, malformed, stats)


def generate_events(seed: int, *args: Any, **kwargs: Any) -> list[dict]:
    """The valid input records in arrival order; takes `generate_stream`'s arguments.

    Malformed messages are raw bytes, not records: they are never in this list. Don't
    mutate the dicts: a redelivery is the same dict object twice.
    """
    kwargs.pop("malformed_rate", None)
    if len(args) >= 10:  # malformed_rate given positionally
        args = args[:9] + (0.0,) + args[10:]
    return generate_stream(seed, *args, **kwargs).events


def generate_messages(seed: int, *args: Any, **kwargs: Any) -> list[Message]:
    """(topic, key, value) per message in send order; takes `generate_stream`'s arguments."""
    return generate_stream(seed, *args, **kwargs).messages


# -- command line ---------------------------------------------------------------------------


def _parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.partition("=")
        if name.strip() not in ERROR_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown error kind {name.strip()!r}; known: {', '.join(ERROR_KINDS)}")
        try:
            mix[name.strip()] = float(weight) if sep else 1.0
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from exc
    return mix


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `generate` (and the broker/topic-prefix settings of config.py)."""
    g = parser.add_argument_group("stream")
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument("--patients", type=int, default=200, help="number of patients (200)")
    g.add_argument("--records", type=int, default=None, metavar="N",
                   help="instead of --patients: add patients until about N records")
    g.add_argument("--days", type=int, default=3, help="service days (3)")
    g.add_argument("--start-date", default="2025-03-10", help="first service date")
    g.add_argument("--error-rate", type=_fraction, default=0.15,
                   help="share of encounters with an injected problem (0.15)")
    g.add_argument("--error-mix", type=_parse_mix, default=None, metavar="KIND=W,...",
                   help="relative weight per error kind (default: equal); kinds: "
                        + ", ".join(ERROR_KINDS))
    g.add_argument("--amend-rate", type=_fraction, default=0.05)
    g.add_argument("--withdraw-rate", type=_fraction, default=0.02)
    g.add_argument("--redeliver-rate", type=_fraction, default=0.03)
    g.add_argument("--fix-rate", type=_fraction, default=0.2,
                   help="share of injected problems fixed later by an amendment")
    g.add_argument("--shuffle-window", type=int, default=20,
                   help="out-of-order arrival within this many positions (20)")
    g.add_argument("--malformed-rate", type=_fraction, default=0.0,
                   help="chance of a malformed message after each record (0)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default="-", metavar="FILE",
                   help="NDJSON file of the records in arrival order ('-' = stdout)")
    o.add_argument("--include-malformed", action="store_true",
                   help="also write malformed messages to the NDJSON output")
    o.add_argument("--produce", action="store_true", help="send to Kafka instead of NDJSON")
    o.add_argument("--rate", type=float, default=0.0, metavar="EVENTS_PER_SEC",
                   help="messages per second when producing (0 = as fast as possible)")
    o.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop producing after this long")
    o.add_argument("--summary", action="store_true",
                   help="print counts by kind to stderr (no ids)")
    known = {a for action in parser._actions for a in action.option_strings}  # noqa: SLF001 - argparse has no public list of flags
    if "--broker" not in known:
        add_settings_arguments(parser)


def _settings(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(bootstrap servers, topic prefix, aiokafka security kwargs) from flags/env."""
    s = settings_from_args(args)
    return s.bootstrap_servers, s.topic_prefix, s.aiokafka_security_kwargs()


def stream_from_args(args: argparse.Namespace, topic_prefix: str = "") -> GeneratedStream:
    return generate_stream(
        args.seed, args.patients, args.days, args.start_date, args.error_rate,
        args.error_mix, args.amend_rate, args.withdraw_rate, args.redeliver_rate,
        args.shuffle_window, args.malformed_rate, records=args.records,
        fix_rate=args.fix_rate, topic_prefix=topic_prefix)


def _print_summary(stats: Counter, out=None) -> None:
    out = out or sys.stderr
    for name in sorted(stats):
        print(f"  {name:45s} {stats[name]:>9d}", file=out)


def run(args: argparse.Namespace) -> int:
    """The `generate` command. Exit status 0 on success, 2 on bad arguments."""
    prefix = ""
    security: dict[str, Any] = {}
    bootstrap = ""
    try:
        if args.produce:
            bootstrap, prefix, security = _settings(args)
        stream = stream_from_args(args, prefix)
    except ValueError as exc:  # includes config.ConfigError
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    if args.produce:
        try:
            sent = asyncio.run(produce(stream.messages, bootstrap, rate=args.rate,
                                       duration=args.duration, producer_kwargs=security))
        except KeyboardInterrupt:
            print("generate: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback with data
            print(f"generate: producing failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"generate: produced {sent} of {len(stream.messages)} messages", file=sys.stderr)
    else:
        try:
            _write_ndjson(stream, args.out, args.include_malformed)
        except BrokenPipeError:  # e.g. `generate | head`: not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
    if args.summary:
        _print_summary(stream.stats)
    return 0


def _write_ndjson(stream: GeneratedStream, path: str, include_malformed: bool) -> None:
    out = sys.stdout.buffer if path == "-" else open(path, "wb")  # noqa: SIM115
    try:
        buf: list[bytes] = []
        for line in stream.iter_ndjson(include_malformed):
            buf.append(line)
            if len(buf) >= 5000:
                buf.append(b"")
                out.write(b"\n".join(buf))
                buf.clear()
        if buf:
            buf.append(b"")
            out.write(b"\n".join(buf))
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()


async def produce(
    messages: list[Message],
    bootstrap_servers: str,
    *,
    rate: float = 0.0,
    duration: float | None = None,
    chunk: int = 2000,
    progress: bool = True,
    producer_kwargs: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send messages to Kafka in order; returns how many were acknowledged.

    `rate` > 0 paces the sends (messages per second); sends are batched: the futures of
    one chunk are gathered together, never one await per message. Progress goes to
    stderr once a second (counts only) unless `progress` is false; `on_progress(sent,
    total)` is called after every chunk (e.g. for the demo's live display). The producer
    is flushed and stopped at the end (also when cancelled).
    """
    from aiokafka import AIOKafkaProducer

    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "linger_ms": 20,
        "max_batch_size": 512 * 1024,
        "request_timeout_ms": 30000,
    }
    kwargs.update(producer_kwargs or {})
    producer = AIOKafkaProducer(**kwargs)
    await producer.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    next_report = t0 + 1.0
    sent = 0
    total = len(messages)
    if rate > 0:
        chunk = max(1, min(chunk, int(rate / 10) or 1))  # ~10 chunks per second
    try:
        i = 0
        while i < total:
            now = loop.time()
            if duration is not None and now - t0 >= duration:
                break
            if rate > 0:
                due = t0 + i / rate
                if due > now:
                    await asyncio.sleep(due - now)
            batch = messages[i:i + chunk]
            futures = []
            for topic, key, value in batch:
                futures.append(await producer.send(topic, value=value, key=key))
            await asyncio.gather(*futures)
            i += len(batch)
            sent = i
            if on_progress is not None:
                on_progress(sent, total)
            now = loop.time()
            if progress and now >= next_report:
                elapsed = now - t0
                print(f"generate: {sent}/{total} messages sent, "
                      f"{sent / elapsed:,.0f} msg/s, {elapsed:.0f} s", file=sys.stderr)
                next_report = now + 1.0
        await producer.flush()
    finally:
        await producer.stop()
    return sent
