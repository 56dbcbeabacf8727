"""EHR input adapters (ehr-mapping.md §1): FHIR R4 and HL7 v2 input units -> canonical
records (contract.md §2 plus `encounter.updated`) and dead letters.

An adapter is a pure function of one input unit and the site configuration (`site.py`):
no clock, network or state between units. It never raises: what it cannot use becomes an
`AdapterDeadLetter` naming the mapping's code and the path of the offending element.
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


__all__ = ["Adapted", "AdapterDeadLetter"]
