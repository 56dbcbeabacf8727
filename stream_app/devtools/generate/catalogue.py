"""The simulated world's reference data: payer mix, time zones, places of service, sites,
and the drugs of billing-rules.md §6 with consistent name / HCPCS / NDC / dose; weighted
choice over them."""

from __future__ import annotations

import random
from bisect import bisect
from dataclasses import dataclass
from itertools import accumulate

from stream_app.engine import npi_check_digit, npi_valid

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


# The generator draws NPIs with the validator's own check digit (billing-rules.md §8).
npi_check_digit = npi_check_digit
npi_is_valid = npi_valid


def ndc_label_to_11(label: str) -> str:
    """Hyphenated 10-digit (4-4-2, 5-3-2, 5-4-1) or 5-4-2 label NDC -> 11 digits."""
    a, b, c = label.split("-")
    return a.zfill(5) + b.zfill(4) + c.zfill(2)


class Weighted:
    """Fast weighted choice with a given Random (cumulative weights + bisect)."""

    __slots__ = ("items", "cum", "total")

    def __init__(self, pairs):
        pairs = list(pairs)
        self.items = [p[0] for p in pairs]
        self.cum = list(accumulate(p[1] for p in pairs))
        self.total = self.cum[-1]

    def pick(self, rng: random.Random):
        return self.items[bisect(self.cum, rng.random() * self.total)]


def weighted_drugs(drugs) -> Weighted:
    return Weighted((d, d.weight) for d in drugs)


W_PAYER = Weighted(PAYER_MIX)
W_TZ = Weighted(TIMEZONES)
W_SETTING = Weighted(SETTINGS)
W_SCENARIO = Weighted(SCENARIOS)
W_IMSC = weighted_drugs(IMSC_DRUGS)
W_IMSC_NO_MEDROXY = weighted_drugs(d for d in IMSC_DRUGS if d.hcpcs != "J1050")
# 96372 drugs only (error encounters need one to host the problem)
W_IMSC_96372 = weighted_drugs(d for d in IMSC_DRUGS if d.category in (
    "therapeutic", "prophylactic") and d.hcpcs != "J1050")
W_IMSC_SINGLE = weighted_drugs(
    d for d in IMSC_DRUGS if any(p.container == SD for p in d.products)
    and d.hcpcs != "J1050" and d.category in ("therapeutic", "prophylactic"))
W_PUSH = weighted_drugs(PUSH_DRUGS)
W_INFUSION = weighted_drugs(INFUSION_DRUGS)
W_VACCINE = weighted_drugs(VACCINES)
W_ALLERGEN = weighted_drugs(ALLERGENS)
W_ORAL = weighted_drugs(ORAL_DRUGS)
W_ROUTE_SPELLING = {k: Weighted(v) for k, v in ROUTE_SPELLINGS.items()}
W_DOSES: dict[int, Weighted] = {}  # id(DrugSpec) -> doses, filled lazily
W_ROUTES: dict[int, Weighted] = {}  # id(DrugSpec) -> routes, filled lazily


@dataclass(slots=True)
class Staff:
    staff_id: str
    credential: str
    npi: str | None


@dataclass(slots=True)
class Clinic:
    tz: int  # index into the generator's zone table
    tz_name: str
    providers: list[Staff]  # MD/DO/NP/PA, each with an NPI
    physicians: list[Staff]  # MD/DO subset (supervisors)
    nurses: list[Staff]  # RN/LPN
    assistants: list[Staff]  # MA
