"""EHR input adapters: FHIR R4 and HL7 v2 units → canonical records (ehr-mapping.md §1).

An adapter is a pure function *input unit → records + dead letters*: no clock, network or
state between units. Both adapters return the same `Adapted` shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdapterDeadLetter:
    error_code: str                # the mapping's FHIR_* / HL7_* code, or a contract code
    error: str                     # no field values (PHI)
    field: str | None              # FHIR path or HL7 position, e.g. "RXA[1]-5.1"
    raw: bytes                     # the unit or refused entry


@dataclass(frozen=True, slots=True)
class Adapted:
    records: list[dict]            # canonical records (contract §2 + encounter.updated), JSON-ready,
                                   # each with a "source" object {"format", "ref", "warnings"}
    dead_letters: list[AdapterDeadLetter]
