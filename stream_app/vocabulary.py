"""The contract's vocabulary, defined once (contract.md §1-§3, §7; ehr-mapping.md §2, §5).

Every module that names a topic, an event type, a reason code, a payer class, a work
queue, an output kind, an administration route or a dead-letter code imports it from
here; tests check that the rule data (rules/reason_codes.csv) and the JSON Schemas in
topics/ agree with these tuples. This module imports nothing from the project, so any
layer may use it.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- topics (§1)

TOPIC_MEDICATION_ADMINISTRATIONS = "ehr.medication-administrations"
TOPIC_EM_SERVICES = "ehr.em-services"
TOPIC_DISPENSES = "pharmacy.dispenses"
TOPIC_CHARGE_LINES = "billing.charge-lines"
TOPIC_CORRECTION_ALERTS = "billing.correction-alerts"
TOPIC_DEAD_LETTERS = "billing.dead-letters"
# ehr-mapping.md §2: encounter.updated from canonical producers.
TOPIC_ENCOUNTERS = "ehr.encounters"

INPUT_TOPICS = (TOPIC_MEDICATION_ADMINISTRATIONS, TOPIC_EM_SERVICES, TOPIC_DISPENSES)
OUTPUT_TOPICS = (TOPIC_CHARGE_LINES, TOPIC_CORRECTION_ALERTS, TOPIC_DEAD_LETTERS)

# ehr-mapping.md §1: EHR formats the worker adapts in-process (stream_app/adapters/) and
# then treats like the canonical input topics.
TOPIC_FHIR = "ehr.fhir"
TOPIC_HL7V2 = "ehr.hl7v2"
EHR_FORMAT_TOPICS = (TOPIC_FHIR, TOPIC_HL7V2)
# Every topic the worker consumes. A record's position here is its origin index in the
# repartition topic's frames (streaming/codecs.py), which outlive a worker: append only.
WORKER_INPUT_TOPICS = (*INPUT_TOPICS, *EHR_FORMAT_TOPICS, TOPIC_ENCOUNTERS)


def repartition_topic(app_id: str) -> str:
    """The worker's internal topic that carries valid records keyed by patient."""
    return f"{app_id}-patient-records"


def changelog_topic(app_id: str) -> str:
    """The changelog of the worker's patient-state table (Faust's naming)."""
    return f"{app_id}-patient-state-changelog"


# --------------------------------------------------------------------------- records (§2)

ADMINISTRATION = "medication.administered"
EM_SERVICE = "em.service"
DISPENSE = "drug.dispensed"
EVENT_TYPES = (ADMINISTRATION, EM_SERVICE, DISPENSE)

EVENT_TYPE_TOPICS = {
    ADMINISTRATION: TOPIC_MEDICATION_ADMINISTRATIONS,
    EM_SERVICE: TOPIC_EM_SERVICES,
    DISPENSE: TOPIC_DISPENSES,
}

# EHR input (ehr-mapping.md §2): the encounter context record the FHIR and HL7 v2
# adapters produce and canonical producers may send on `ehr.encounters`.
ENCOUNTER_UPDATED = "encounter.updated"
EHR_EVENT_TYPES = (*EVENT_TYPES, ENCOUNTER_UPDATED)

COMPLETED = "completed"
ENTERED_IN_ERROR = "entered-in-error"

PAYER_CLASSES = ("medicare", "medicaid", "commercial", "workers_comp", "self_pay")

# Administration routes (contract §2 `route`); synonyms are in engine/normalise.py.
IM = "IM"
SC = "SC"
IV_PUSH = "IV_PUSH"
IV_INFUSION = "IV_INFUSION"
IV = "IV"
INTRA_ARTERIAL = "INTRA_ARTERIAL"
INTRADERMAL = "INTRADERMAL"
INTRA_ARTICULAR = "INTRA_ARTICULAR"
ORAL = "ORAL"
OTHER_ROUTE = "OTHER"
ROUTES = (IM, SC, IV_PUSH, IV_INFUSION, IV, INTRA_ARTERIAL, INTRADERMAL, INTRA_ARTICULAR,
          ORAL, OTHER_ROUTE)

DRUG_CATEGORIES = ("therapeutic", "prophylactic", "diagnostic", "vaccine",
                   "allergen_immunotherapy", "antineoplastic", "hormonal_antineoplastic",
                   "procedural")
CONTAINERS = ("single_dose", "multi_dose", "unknown")
DOSE_UNITS = ("mg", "mcg", "g", "mL", "units")
NDC_UNITS = ("UN", "ML", "GR", "ME", "F2")

# --------------------------------------------------------------------------- decisions (§3)

# Output kinds: what the engine decides and the shell produces.
LINE = "line"
ALERT = "alert"
DEAD = "dead"
OUTPUT_KINDS = (LINE, ALERT, DEAD)

LINE_STATES = ("active", "void")
ALERT_STATES = ("open", "resolved")
SEVERITIES = ("block", "warn")
BLOCK = "block"
WARN = "warn"

WORK_QUEUES = ("coding", "clinical_documentation", "pharmacy", "facility_billing",
               "compliance")

# Reason codes (contract §3 "Reason codes"). The rule that raises each one is found by
# searching engine/ for its constant; severity, queue, CARC/RARC and risk weight are
# rule data (rules/reason_codes.csv).
WRONG_ADMIN_CODE = "WRONG_ADMIN_CODE"
NOT_SEPARATELY_BILLABLE = "NOT_SEPARATELY_BILLABLE"
NON_INJECTION_ROUTE = "NON_INJECTION_ROUTE"
FACILITY_SETTING = "FACILITY_SETTING"
EM_99211_SAME_DAY = "EM_99211_SAME_DAY"
EM_MISSING_MODIFIER_25 = "EM_MISSING_MODIFIER_25"
EM_NOT_SEPARATELY_IDENTIFIABLE = "EM_NOT_SEPARATELY_IDENTIFIABLE"
MODIFIER_NOT_ALLOWED = "MODIFIER_NOT_ALLOWED"
MISSING_NDC = "MISSING_NDC"
INVALID_NDC = "INVALID_NDC"
NDC_MISMATCH = "NDC_MISMATCH"
MISSING_DOCUMENTATION = "MISSING_DOCUMENTATION"
# ehr-mapping.md §2: a settled administration or E/M record still lacks place of service
# or payer class (its own, and its encounter did not supply it).
ENCOUNTER_CONTEXT_MISSING = "ENCOUNTER_CONTEXT_MISSING"
MISSING_DIAGNOSIS = "MISSING_DIAGNOSIS"
INVALID_DIAGNOSIS_CODE = "INVALID_DIAGNOSIS_CODE"
INVALID_NPI = "INVALID_NPI"
MISSING_SUPERVISION = "MISSING_SUPERVISION"
DUPLICATE_SERVICE = "DUPLICATE_SERVICE"
MUE_EXCEEDED = "MUE_EXCEEDED"
FREQUENCY_LIMIT = "FREQUENCY_LIMIT"
WASTE_MODIFIER_MISSING = "WASTE_MODIFIER_MISSING"
DRUG_UNITS_UNKNOWN = "DRUG_UNITS_UNKNOWN"
ADDON_WITHOUT_PRIMARY = "ADDON_WITHOUT_PRIMARY"
FACILITY_ONLY_CODE = "FACILITY_ONLY_CODE"
# Extensions (docs/rule-data.md "Rules from CMS data"): raised only with the CMS tables
# `chargecap rules import` writes (crosswalk BILLUNITS, NCCI PTP edits).
WASTE_UNITS_MISMATCH = "WASTE_UNITS_MISMATCH"
PTP_BUNDLED = "PTP_BUNDLED"
PTP_MODIFIER_REQUIRED = "PTP_MODIFIER_REQUIRED"

REASON_CODES = (
    WRONG_ADMIN_CODE, NOT_SEPARATELY_BILLABLE, NON_INJECTION_ROUTE, FACILITY_SETTING,
    EM_99211_SAME_DAY, EM_MISSING_MODIFIER_25, EM_NOT_SEPARATELY_IDENTIFIABLE,
    MODIFIER_NOT_ALLOWED, MISSING_NDC, INVALID_NDC, NDC_MISMATCH, MISSING_DOCUMENTATION,
    MISSING_DIAGNOSIS, INVALID_DIAGNOSIS_CODE, INVALID_NPI, MISSING_SUPERVISION,
    DUPLICATE_SERVICE, MUE_EXCEEDED, FREQUENCY_LIMIT, WASTE_MODIFIER_MISSING,
    DRUG_UNITS_UNKNOWN, ADDON_WITHOUT_PRIMARY, FACILITY_ONLY_CODE, ENCOUNTER_CONTEXT_MISSING,
    WASTE_UNITS_MISMATCH, PTP_BUNDLED, PTP_MODIFIER_REQUIRED,
)

# Reasons whose severity is decided per case (MAI; a frequency-limit row); every other
# reason has the one severity of its reason_codes.csv row.
VARIABLE_SEVERITY_REASONS = (MUE_EXCEEDED, FREQUENCY_LIMIT)

# --------------------------------------------------------------------------- dead letters (§3)

INVALID_JSON = "INVALID_JSON"
NOT_AN_OBJECT = "NOT_AN_OBJECT"
MISSING_FIELD = "MISSING_FIELD"
WRONG_TYPE = "WRONG_TYPE"
INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
UNKNOWN_EVENT_TYPE = "UNKNOWN_EVENT_TYPE"
TOO_LARGE = "TOO_LARGE"
INVALID_ENCODING = "INVALID_ENCODING"
# The worker's own: a record the parser or the engine failed on (never a sender error
# by itself; the record is kept as a dead letter rather than stopping the worker).
PROCESSING_ERROR = "PROCESSING_ERROR"

DEAD_LETTER_CODES = (INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE,
                     INVALID_TIMESTAMP, UNKNOWN_EVENT_TYPE, TOO_LARGE, INVALID_ENCODING,
                     PROCESSING_ERROR)

# ehr-mapping.md §5: the FHIR and HL7 v2 adapters' refusals. Those marked "not a sender
# error" refuse input that is valid but carries nothing billable yet.
FHIR_INVALID = "FHIR_INVALID"
FHIR_UNSUPPORTED_RESOURCE = "FHIR_UNSUPPORTED_RESOURCE"  # not a sender error
FHIR_UNSUPPORTED_BUNDLE_TYPE = "FHIR_UNSUPPORTED_BUNDLE_TYPE"
FHIR_REFERENCE_UNRESOLVED = "FHIR_REFERENCE_UNRESOLVED"
FHIR_STATUS_NOT_FINAL = "FHIR_STATUS_NOT_FINAL"  # not a sender error
FHIR_NOT_BILLABLE = "FHIR_NOT_BILLABLE"  # not a sender error
FHIR_DELETE_UNMAPPABLE = "FHIR_DELETE_UNMAPPABLE"  # not a sender error
HL7_INVALID = "HL7_INVALID"
HL7_UNSUPPORTED_MESSAGE = "HL7_UNSUPPORTED_MESSAGE"  # not a sender error
HL7_MISSING_FIELD = "HL7_MISSING_FIELD"
HL7_INVALID_TIMESTAMP = "HL7_INVALID_TIMESTAMP"
HL7_NOT_BILLABLE = "HL7_NOT_BILLABLE"  # not a sender error
INCONSISTENT_FIELD = "INCONSISTENT_FIELD"

ADAPTER_DEAD_LETTER_CODES = (
    FHIR_INVALID, FHIR_UNSUPPORTED_RESOURCE, FHIR_UNSUPPORTED_BUNDLE_TYPE,
    FHIR_REFERENCE_UNRESOLVED, FHIR_STATUS_NOT_FINAL, FHIR_NOT_BILLABLE, FHIR_DELETE_UNMAPPABLE,
    HL7_INVALID, HL7_UNSUPPORTED_MESSAGE, HL7_MISSING_FIELD, HL7_INVALID_TIMESTAMP,
    HL7_NOT_BILLABLE, INCONSISTENT_FIELD,
)
# Refusals of valid input that carries nothing billable (yet): counted apart from sender
# errors on dashboards.
NOT_SENDER_ERRORS = (FHIR_UNSUPPORTED_RESOURCE, FHIR_STATUS_NOT_FINAL, FHIR_NOT_BILLABLE,
                     FHIR_DELETE_UNMAPPABLE, HL7_UNSUPPORTED_MESSAGE, HL7_NOT_BILLABLE)

# --------------------------------------------------------------------------- reason routing (§3)

# The contract's reason-code table: the severities a reason can carry and its work queue.
# rules/reason_codes.csv holds the same per row (the engine reads it from there); the
# metrics pre-create one alert series per combination from this table, and a test checks
# the two agree.
REASON_ROUTING: dict[str, tuple[tuple[str, ...], str]] = {
    WRONG_ADMIN_CODE: ((BLOCK,), "coding"),
    NOT_SEPARATELY_BILLABLE: ((BLOCK,), "coding"),
    NON_INJECTION_ROUTE: ((BLOCK,), "coding"),
    FACILITY_SETTING: ((BLOCK,), "facility_billing"),
    EM_99211_SAME_DAY: ((BLOCK,), "coding"),
    EM_MISSING_MODIFIER_25: ((BLOCK,), "coding"),
    EM_NOT_SEPARATELY_IDENTIFIABLE: ((BLOCK,), "clinical_documentation"),
    MODIFIER_NOT_ALLOWED: ((BLOCK,), "coding"),
    MISSING_NDC: ((BLOCK,), "pharmacy"),
    INVALID_NDC: ((BLOCK,), "pharmacy"),
    NDC_MISMATCH: ((WARN,), "pharmacy"),
    MISSING_DOCUMENTATION: ((BLOCK,), "clinical_documentation"),
    MISSING_DIAGNOSIS: ((BLOCK,), "clinical_documentation"),
    INVALID_DIAGNOSIS_CODE: ((BLOCK,), "coding"),
    INVALID_NPI: ((BLOCK,), "compliance"),
    MISSING_SUPERVISION: ((BLOCK,), "compliance"),
    DUPLICATE_SERVICE: ((BLOCK,), "coding"),
    MUE_EXCEEDED: ((WARN, BLOCK), "coding"),
    FREQUENCY_LIMIT: ((WARN, BLOCK), "coding"),
    WASTE_MODIFIER_MISSING: ((BLOCK,), "pharmacy"),
    DRUG_UNITS_UNKNOWN: ((WARN,), "pharmacy"),
    ADDON_WITHOUT_PRIMARY: ((BLOCK,), "coding"),
    FACILITY_ONLY_CODE: ((BLOCK,), "coding"),
    ENCOUNTER_CONTEXT_MISSING: ((BLOCK,), "facility_billing"),
    WASTE_UNITS_MISMATCH: ((BLOCK,), "pharmacy"),
    PTP_BUNDLED: ((BLOCK,), "coding"),
    PTP_MODIFIER_REQUIRED: ((BLOCK,), "coding"),
}
