"""Expected values taken from the contract (contract.md §1), shared by several tests."""

from __future__ import annotations

DAY_MS = 24 * 3600 * 1000
CONTRACT_TOPICS = {
    # name: (direction, cleanup.policy, retention.ms or None)
    "ehr.medication-administrations": ("in", "delete", 7 * DAY_MS),
    "ehr.em-services": ("in", "delete", 7 * DAY_MS),
    "pharmacy.dispenses": ("in", "delete", 7 * DAY_MS),
    "ehr.encounters": ("in", "delete", 7 * DAY_MS),  # ehr-mapping.md §2
    "billing.charge-lines": ("out", "compact", None),
    "billing.correction-alerts": ("out", "compact", None),
    "billing.dead-letters": ("out", "delete", 30 * DAY_MS),
}

# ehr-mapping.md §1: the EHR-format input topics (values are FHIR or HL7 v2, not records).
EHR_FORMAT_TOPICS = {
    "ehr.fhir": ("in", "delete", 7 * DAY_MS),
    "ehr.hl7v2": ("in", "delete", 7 * DAY_MS),
}
ALL_TOPICS = {**CONTRACT_TOPICS, **EHR_FORMAT_TOPICS}
