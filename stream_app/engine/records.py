"""Input records of contract.md §2, parsed and validated.

`parse_record(raw, default_tz=...)` turns the bytes of one message into either a typed
record (`Administration`, `EMService`, `Dispense`) or a `DeadLetter`. It never raises:
hard failures (bad JSON, missing ids, wrong types, unknown event type, unparseable
timestamps, oversized or non-UTF-8 values) become dead letters naming the field; soft
gaps (missing site, lot, NDC, diagnosis, ...) are kept as `None` and the rules raise
documentation alerts for them.

Field values are kept as the EHR sent them (after type checks); normalisation (routes,
NDC, NPI, ICD-10-CM shape) lives in `normalise.py` so the rules can report the raw value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import ClassVar

from stream_app.vocabulary import (
    ADMINISTRATION,
    COMPLETED,
    DISPENSE,
    EM_SERVICE,
    ENCOUNTER_UPDATED,
    ENTERED_IN_ERROR,
)

# A message value larger than this is a TOO_LARGE dead letter (contract.md §3).
MAX_RECORD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error_code: str
    error: str  # human-readable; never contains field *values* (they may be PHI)
    field: str | None  # dotted path of the offending field, e.g. "drug.dose"


@dataclass(frozen=True, slots=True)
class Drug:
    name: str | None = None
    ndc: str | None = None  # raw, as sent
    hcpcs: str | None = None  # upper-cased
    dose: float | None = None
    dose_unit: str | None = None  # one of mg, mcg, g, mL, units
    category: str = "therapeutic"
    container: str = "unknown"
    wasted_amount: float | None = None
    lot_number: str | None = None


@dataclass(frozen=True, slots=True)
class _Common:
    event_id: str
    record_id: str
    patient_id: str
    occurred_at: datetime  # timezone-aware
    recorded_at: datetime  # timezone-aware; defaults to occurred_at
    service_date: date  # local date of occurred_at in `timezone`
    timezone: str  # IANA name actually used (record's facility_timezone or the default)
    status: str = COMPLETED
    encounter_id: str | None = None
    # False when `timezone` is the configured default (the record sent no zone): such a
    # record takes its encounter's zone (ehr-mapping.md §2).
    timezone_given: bool = True

    @property
    def withdrawn(self) -> bool:
        return self.status == ENTERED_IN_ERROR


@dataclass(frozen=True, slots=True)
class Administration(_Common):
    ended_at: datetime | None = None
    place_of_service: str | None = None
    payer_class: str | None = None
    route: str | None = None  # raw; see normalise.normalize_route
    site: str | None = None
    drug: Drug = Drug()
    performer_id: str | None = None
    performer_credential: str | None = None
    rendering_npi: str | None = None
    supervising_npi: str | None = None
    order_id: str | None = None
    diagnosis_codes: tuple[str, ...] | None = None
    charge_code: str | None = None
    charge_modifiers: tuple[str, ...] = ()
    in_progress: bool = False  # ehr-mapping.md §2 (b): still running, pending

    event_type: ClassVar[str] = ADMINISTRATION


@dataclass(frozen=True, slots=True)
class EMService(_Common):
    code: str | None = None
    modifiers: tuple[str, ...] = ()
    separately_identifiable: bool = False
    place_of_service: str | None = None
    payer_class: str | None = None
    rendering_npi: str | None = None
    diagnosis_codes: tuple[str, ...] | None = None
    in_progress: bool = False  # ehr-mapping.md §2 (b): still running, pending

    event_type: ClassVar[str] = EM_SERVICE


@dataclass(frozen=True, slots=True)
class Dispense(_Common):
    ndc: str | None = None
    drug_name: str | None = None
    order_id: str | None = None
    quantity: float | None = None
    quantity_unit: str | None = None
    lot_number: str | None = None

    event_type: ClassVar[str] = DISPENSE


@dataclass(frozen=True, slots=True)
class Encounter(_Common):
    """One version of an `encounter.updated` record (ehr-mapping.md §2): the visit's
    context. `record_id` == `encounter_id`; `timezone`/`service_date` are those of the
    period start, `facility_timezone` the zone the version itself carries (None if absent)."""

    ended_at: datetime | None = None
    place_of_service: str | None = None
    payer_class: str | None = None
    facility_timezone: str | None = None
    rendering_npi: str | None = None

    event_type: ClassVar[str] = ENCOUNTER_UPDATED


InputRecord = Administration | EMService | Dispense | Encounter

