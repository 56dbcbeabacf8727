"""FHIR R4 -> canonical records: every mapping rule, in the order of ehr-mapping.md §3.

Read this module beside the spec: each block is headed by its section and each canonical
field by its table row (`# §3.4 | drug.ndc / drug.hcpcs`). Code maps, payer classes, places
of service and time zones are site data (`site.py`, §6), never literals here; the literals
here are FHIR's own systems, URLs and status codes.

Conventions (§1): an element that is absent, unknown-coded or unresolvable gives an
absent canonical field and, where the reader should know why, a warning in
`source.warnings`; only the hard fields (`event_id`, `record_id`, `patient_id`,
`occurred_at`) and wrong JSON types refuse the resource (`Refusal`).

Where each spec row lives:

    §3.1 units, Bundle types, limits ....... BUNDLE_TYPES, MAX_DEPTH, ...; adapter.py
    §3.2 event_id / record_id / recorded_at  record_identity, event_id
         patient_id / encounter_id ......... patient_id, encounter_id
         facility_timezone, times .......... read_tz, read_time
    §3.3 status ............................ STATUS, status_of
    §3.4 occurred_at / ended_at ............ map_medication_administration
         route, site ....................... route_and_site
         drug.name / ndc / hcpcs ........... medication_of, drug_name, drug_codes
         drug.dose, dose_unit .............. dose
         drug.lot_number ................... lot_number
         category / container / waste ...... drug_attributes
         performer_id / credential ......... performer, credential_of
         rendering / supervising NPI ....... npi_by_role, npi_of
         order_id, diagnosis_codes ......... order_id, diagnosis_codes
         charge_code, charge_modifiers ..... charge_link, linked_charge_items
         Immunization ...................... map_immunization
    §3.5 MedicationDispense ................ map_medication_dispense
    §3.6 ChargeItem / Procedure (E/M) ...... em_code, map_em_service, charge_modifiers
    §3.7 Encounter ......................... map_encounter, _place_of_service, _payer_class
    §3.8 code maps ......................... site_data/code_map.csv (site.py)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from stream_app.adapters.fhir._model import (
    Found,
    Instant,
    Refusal,
    Scope,
    arr,
    boolean,
    codings,
    concept_text,
    extensions,
    invalid,
    literal_type_id,
    number,
    obj,
    objects,
    parse_datetime,
    reference_id,
    string,
    tz_code,
    version_ref,
)
from stream_app.adapters.site import SiteConfig
from stream_app.engine import ndc_to_11, normalize_route, zone
from stream_app.vocabulary import (
    ADMINISTRATION,
    COMPLETED,
    DISPENSE,
    EM_SERVICE,
    ENCOUNTER_UPDATED,
    ENTERED_IN_ERROR,
    FHIR_NOT_BILLABLE,
    FHIR_REFERENCE_UNRESOLVED,
    FHIR_STATUS_NOT_FINAL,
    FHIR_UNSUPPORTED_RESOURCE,
)

if TYPE_CHECKING:
    from stream_app.adapters.fhir.bulk import BulkIndex

SOURCE = "fhir"  # the site tables' `source` for this adapter

# =============================================================================== systems

SYS_NDC = "http://hl7.org/fhir/sid/ndc"
SYS_HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
SYS_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SYS_CVX = "http://hl7.org/fhir/sid/cvx"
SYS_CPT = "http://www.ama-assn.org/go/cpt"
SYS_ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SYS_NPI = "http://hl7.org/fhir/sid/us-npi"
SYS_UCUM = "http://unitsofmeasure.org"
SYS_SOPT = "https://nahdo.org/sopt"
SYS_POS = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
SYS_V2_0360 = "http://terminology.hl7.org/CodeSystem/v2-0360"
SYS_V2_0443 = "http://terminology.hl7.org/CodeSystem/v2-0443"
SYS_CARE_TEAM_ROLE = "http://terminology.hl7.org/CodeSystem/claimcareteamrole"
SYS_MED_ADMIN_FUNCTION = "http://terminology.hl7.org/CodeSystem/med-admin-perform-function"
SYS_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SYS_COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
TZ_CODE_URL = "http://hl7.org/fhir/StructureDefinition/tz-code"
DEFAULT_EXTENSION_BASE = "https://chargecap.example.org/fhir/StructureDefinition/"

# HCPCS Level II shape (§3.4 `drug.hcpcs`).
_HCPCS_LEVEL_II = re.compile(r"[A-V][0-9]{4}", re.ASCII)

# =============================================================================== code sets
# §3.6: E/M CPT set (default 99202-99499, verify yearly). §3.4: administration CPT set of
# a ChargeItem linked to an administration.
EM_CODES = frozenset(str(c) for c in range(99202, 99500))
ADMIN_CODES = frozenset(str(c) for c in (*range(96360, 96380), 96401, 96402,
                                         *range(90471, 90475), *range(95115, 95118)))

# =============================================================================== §3.1 units

BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "history", "searchset",
                          "subscription-notification"})
# Notification status entries (R4B/R5 notifications; R4 backport `history` Bundles).
NOTIFICATION_STATUS_TYPES = frozenset({"Parameters", "SubscriptionStatus"})
DEFAULT_MAX_ENTRIES = 10_000
MAX_DEPTH = 100

# Types mapped to a record, and the context types a record reads (Bulk Data index scope).
PRIMARY_TYPES = ("MedicationAdministration", "MedicationDispense", "ChargeItem", "Procedure",
                 "Immunization", "Encounter")
CONTEXT_TYPES = frozenset({"Patient", "Practitioner", "PractitionerRole", "Organization",
                           "Location", "Medication", "MedicationRequest", "Condition",
                           "Coverage", "Account", "ChargeItem"})

# FHIR R4 (4.0.1) and R4B resource types: any other `resourceType` is not FHIR (§5
# FHIR_INVALID); a known type that is not mapped is FHIR_UNSUPPORTED_RESOURCE.
KNOWN_TYPES = frozenset("""
Account ActivityDefinition AdministrableProductDefinition AdverseEvent AllergyIntolerance
Appointment AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct
BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
ChargeItemDefinition Citation Claim ClaimResponse ClinicalImpression ClinicalUseDefinition
CodeSystem Communication CommunicationRequest CompartmentDefinition Composition ConceptMap
Condition Consent Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse
DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement
DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter
Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
EvidenceReport EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory
Flag Goal GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy
Immunization ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide
Ingredient InsurancePlan Invoice Library Linkage List Location ManufacturedItemDefinition
Measure MeasureReport Media Medication MedicationAdministration MedicationDispense
MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductDefinition
MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction
MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical
MedicinalProductUndesirableEffect MessageDefinition MessageHeader MolecularSequence
NamingSystem NutritionOrder NutritionProduct Observation ObservationDefinition
OperationDefinition OperationOutcome Organization OrganizationAffiliation
PackagedProductDefinition Parameters Patient PaymentNotice PaymentReconciliation Person
PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire
QuestionnaireResponse RegulatedAuthorization RelatedPerson RequestGroup ResearchDefinition
ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
SpecimenDefinition StructureDefinition StructureMap Subscription SubscriptionStatus
SubscriptionTopic Substance SubstanceDefinition SubstanceNucleicAcid SubstancePolymer
SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial
SubstanceSpecification SupplyDelivery SupplyRequest Task TerminologyCapabilities
TestReport TestScript ValueSet VerificationResult VisionPrescription
""".split())

# =============================================================================== §3.3 status
# resource type -> FHIR status -> canonical status, plus the pending flag (§2 `in_progress`).
# A status absent from its row is FHIR_STATUS_NOT_FINAL (`unknown`, `planned`, ...).
_C, _E = COMPLETED, ENTERED_IN_ERROR
STATUS: dict[str, dict[str, tuple[str, bool]]] = {
    "MedicationAdministration": {
        "completed": (_C, False), "stopped": (_C, False),   # stopped: partly given, billed
        "entered-in-error": (_E, False), "not-done": (_E, False),
        "in-progress": (_C, True), "on-hold": (_C, True),   # pending until a final version
    },
    "MedicationDispense": {
        "completed": (_C, False), "in-progress": (_C, False), "preparation": (_C, False),
        "on-hold": (_C, False),                              # product and NDC are known
        "entered-in-error": (_E, False), "cancelled": (_E, False), "declined": (_E, False),
        "stopped": (_E, False),
    },
    "ChargeItem": {
        "billable": (_C, False), "billed": (_C, False),
        "entered-in-error": (_E, False), "not-billable": (_E, False), "aborted": (_E, False),
    },
    "Procedure": {"completed": (_C, False), "entered-in-error": (_E, False),
                  "not-done": (_E, False)},
    "Immunization": {"completed": (_C, False), "entered-in-error": (_E, False),
                     "not-done": (_E, False)},
}


def status_of(rtype: str, resource: dict, path: str) -> tuple[str, bool]:
    raw = string(resource.get("status"), f"{path}.status")
    if rtype == "Encounter":  # every status gives context; only entered-in-error withdraws
        return (_E if raw == "entered-in-error" else _C), False
    mapped = STATUS[rtype].get(raw or "")
    if mapped is None:
        raise Refusal(FHIR_STATUS_NOT_FINAL,
                      f"{rtype} status is not final (mapped once a later version is)",
                      f"{path}.status")
    return mapped


# =============================================================================== context

@dataclass(slots=True)
class UnitContext:
    """What a resource's mapping may read besides itself: the unit's entries (for linked
    ChargeItems and Coverages), the reference scope, the site tables."""

    site: SiteConfig
    default_tz: str
    scope: Scope
    entries: list[tuple[str, dict]]                     # (path, resource) of the unit
    last_modified: dict[int, str] = field(default_factory=dict)  # id(resource) -> response.lastModified
    bulk: BulkIndex | None = None
    # Built on first use, so a Bundle of n administrations costs O(n), not O(n^2).
    _by_type: dict[str, list[tuple[str, dict]]] | None = None
    _charges_by_target: dict[object, list[tuple[str, dict]]] | None = None

    def of_type(self, rtype: str) -> list[tuple[str, dict]]:
        """The unit's entries of one resource type, in entry order."""
        if self._by_type is None:
            self._by_type = {}
            for path, res in self.entries:
                self._by_type.setdefault(res.get("resourceType"), []).append((path, res))
        return self._by_type.get(rtype, [])

    def charges_referring_to(self, target: object) -> list[tuple[str, dict]]:
        """ChargeItems of the unit whose `service` names `target`: a literal (type, id) or a
        fullUrl string."""
        if self._charges_by_target is None:
            self._charges_by_target = {}
            for path, ci in self.of_type("ChargeItem"):
                for spath, service in objects(ci.get("service"), f"{path}.service"):
                    text = string(service.get("reference"), f"{spath}.reference")
                    if not text:
                        continue
                    keys = {text, literal_type_id(text)} - {None}
                    for key in keys:
                        bucket = self._charges_by_target.setdefault(key, [])
                        if not bucket or bucket[-1][1] is not ci:
                            bucket.append((path, ci))
        return self._charges_by_target.get(target, [])

    _settings: dict[tuple[str, date | None], str | None] = field(default_factory=dict)

    def setting(self, name: str, on: date | None = None) -> str | None:
        key = (name, on)
        if key not in self._settings:
            self._settings[key] = self.site.setting(SOURCE, name, on)
        return self._settings[key]

    def ext(self, name: str) -> str:
        return (self.setting("extension_base") or DEFAULT_EXTENSION_BASE) + name


@dataclass(slots=True)
class Draft:
    """One record being built: the fields, its warnings, the other resources copied in."""

    rtype: str
    resource: dict
    path: str
    fields: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    copied: set[str] = field(default_factory=set)

    def copy_from(self, found: Found | None) -> None:
        """Mark a non-contained resource whose data the record uses (§3.2 event_id)."""
        if found is not None and not found.contained and found.rtype:
            self.copied.add(version_ref(found.rtype, found.resource, found.rid or "_"))


def _zone_for_dates(ctx: UnitContext, tz_name: str | None):
    """The zone a date-only value is read in: the record's tz-code, the site default for
    FHIR, then the configured zone (§3.2 times)."""
    def pick(day: date):
        for name in (tz_name, ctx.site.timezone(SOURCE, None, day), ctx.default_tz, "UTC"):
            z = zone(name) if name else None
            if z is not None:
                return z
        raise AssertionError("UTC is always a zone")
    return pick


def read_time(d: Draft, ctx: UnitContext, value: object, path: str, tz_name: str | None
              ) -> Instant | None:
    inst = parse_datetime(value, path, _zone_for_dates(ctx, tz_name))
    if inst is not None and inst.date_only:
        d.warnings.append(f"date_only:{path.rsplit('.', 1)[-1]}")
    return inst


def read_tz(d: Draft, element: object, path: str) -> str | None:
    """§3.2 | facility_timezone: the tz-code extension on the occurrence element."""
    name = tz_code(obj(element, path), path, TZ_CODE_URL)
    if name is not None and zone(name) is None:
        d.warnings.append("tz_code_unknown")
        return None
    return name


# =============================================================================== §3.2 identity

def record_identity(d: Draft, ctx: UnitContext, *, procedure: bool = False) -> None:
    """§3.2 | record_id, recorded_at (event_id is built last, once `copied` is known)."""
    r, p = d.resource, d.path
    rid = string(r.get("id"), f"{p}.id")
    if rid is not None:
        record_id = f"Procedure/{rid}" if procedure else rid
    else:
        record_id = None
        for ipath, ident in objects(r.get("identifier"), f"{p}.identifier"):
            value = string(ident.get("value"), f"{ipath}.value")
            if value:
                record_id = f"{string(ident.get('system'), f'{ipath}.system') or ''}|{value}"
                break
        if record_id is None:
            raise invalid(f"{p}.id", "is missing and no identifier has a value")
    d.fields["record_id"] = _prefixed(ctx, record_id)
    meta = obj(r.get("meta"), f"{p}.meta")
    last = None
    if meta is not None:
        last = read_time(d, ctx, meta.get("lastUpdated"), f"{p}.meta.lastUpdated", None)
    if last is None and id(r) in ctx.last_modified:  # history Bundle entry.response
        entry_path = p.removesuffix(".resource")
        last = read_time(d, ctx, ctx.last_modified[id(r)], f"{entry_path}.response.lastModified", None)
    if last is None and d.rtype == "ChargeItem":     # §3.6 | recorded_at: else enteredDate
        last = read_time(d, ctx, r.get("enteredDate"), f"{p}.enteredDate", None)
    if last is not None:
        d.fields["recorded_at"] = last.text


def event_id(d: Draft, ctx: UnitContext, own: str) -> str:
    """§3.2 | event_id: this version (`own`), then `+` each other resource copied in, sorted."""
    return _prefixed(ctx, own + "".join(f"+{ref}" for ref in sorted(d.copied - {own})))


def _prefixed(ctx: UnitContext, value: str) -> str:
    source_id = ctx.setting("source_id")
    return f"{source_id}:{value}" if source_id else value


def patient_id(d: Draft, ctx: UnitContext, element: str = "subject") -> str:
    """§3.2 | patient_id: `subject` (Coverage: `beneficiary`) -> Patient id, or with the
    setting `patient_identifier_system`, that system's identifier value."""
    path = f"{d.path}.{element}"
    ref = obj(d.resource.get(element), path)
    pid, found = reference_id(ref, path, ctx.scope, d.resource, d.path, "Patient")
    system = ctx.setting("patient_identifier_system")
    if system:
        candidates = []
        if ref is not None:
            candidates.append((obj(ref.get("identifier"), f"{path}.identifier"), f"{path}.identifier"))
        if found is not None and found.rtype == "Patient":
            candidates += [(i, ip) for ip, i in objects(found.resource.get("identifier"),
                                                        f"{found.path}.identifier")]
        for ident, ipath in candidates:
            if ident is not None and string(ident.get("system"), f"{ipath}.system") == system:
                value = string(ident.get("value"), f"{ipath}.value")
                if value:
                    return _prefixed(ctx, value)
        raise Refusal(FHIR_REFERENCE_UNRESOLVED,
                      f"{path} has no Patient identifier of the configured system", path)
    if pid is None:
        raise Refusal(FHIR_REFERENCE_UNRESOLVED, f"{path} does not resolve to a Patient id", path)
    return _prefixed(ctx, pid)


def encounter_id(d: Draft, ctx: UnitContext, element: str) -> None:
    """§3.2 | encounter_id: `context` / `encounter` -> Encounter id; EpisodeOfCare -> absent."""
    path = f"{d.path}.{element}"
    eid, _ = reference_id(obj(d.resource.get(element), path), path, ctx.scope, d.resource,
                          d.path, "Encounter")
    if eid is not None:
        d.fields["encounter_id"] = _prefixed(ctx, eid)
    elif d.resource.get(element) is not None:
        ref = obj(d.resource.get(element), path) or {}
        text = string(ref.get("reference"), f"{path}.reference") or ""
        if not (literal_type_id(text) or ("", ""))[0] == "EpisodeOfCare":
            d.warnings.append(f"reference_unresolved:{element}")


# =============================================================================== shared readers

def npi_of(ctx: UnitContext, d: Draft, actor: dict | None, path: str) -> str | None:
    """NPI: the reference's `identifier` of system us-npi, else the resolved Practitioner's
    (PractitionerRole -> its practitioner: the second hop)."""
    if actor is None:
        return None
    ident = obj(actor.get("identifier"), f"{path}.identifier")
    if ident is not None and string(ident.get("system"), f"{path}.identifier.system") == SYS_NPI:
        value = string(ident.get("value"), f"{path}.identifier.value")
        if value:
            return value
    found = ctx.scope.resolve(actor, path, d.resource, d.path)
    if found is not None and found.rtype == "PractitionerRole":
        role = found
        rpath = f"{role.path}.practitioner"
        found = ctx.scope.resolve(obj(role.resource.get("practitioner"), rpath), rpath,
                                  role.holder, role.holder_path)
        if found is not None:
            d.copy_from(role)
    if found is None or found.rtype != "Practitioner":
        return None
    for ipath, ident in objects(found.resource.get("identifier"), f"{found.path}.identifier"):
        if string(ident.get("system"), f"{ipath}.system") == SYS_NPI:
            value = string(ident.get("value"), f"{ipath}.value")
            if value:
                d.copy_from(found)
                return value
    return None


def has_coding(concept: dict | None, path: str, system: str, code: str) -> bool:
    return any(s == system and c == code for s, c, _ in codings(concept, path))


def icd10cm_codes(concepts: list[tuple[str, dict]]) -> list[str]:
    """ICD-10-CM codings of CodeableConcepts, in order (other systems ignored)."""
    out = []
    for cpath, concept in concepts:
        for system, code, _ in codings(concept, cpath):
            if system == SYS_ICD10CM and code:
                out.append(code)
    return out


def diagnosis_codes(d: Draft, ctx: UnitContext, reason_code: str, reason_ref: str | None) -> None:
    """§3.4 | diagnosis_codes: reasonCode ICD-10-CM codings, then reasonReference ->
    Condition.code of the same system; in order, de-duplicated."""
    r, p = d.resource, d.path
    codes = icd10cm_codes(objects(r.get(reason_code), f"{p}.{reason_code}"))
    if reason_ref is not None:
        for rpath, ref in objects(r.get(reason_ref), f"{p}.{reason_ref}"):
            found = ctx.scope.resolve(ref, rpath, r, p)
            if found is None:
                d.warnings.append(f"reference_unresolved:{reason_ref}")
            elif found.rtype == "Condition":
                cpath = f"{found.path}.code"
                got = icd10cm_codes([(cpath, obj(found.resource.get("code"), cpath))])
                if got:
                    d.copy_from(found)
                codes += got
    if codes:
        d.fields["diagnosis_codes"] = list(dict.fromkeys(codes))


def quantity(q: dict | None, path: str) -> tuple[float | int | None, str | None, str | None]:
    """(value, system, code-or-unit) of a Quantity."""
    if q is None:
        return None, None, None
    value = number(q.get("value"), f"{path}.value")
    system = string(q.get("system"), f"{path}.system")
    code = string(q.get("code"), f"{path}.code") or string(q.get("unit"), f"{path}.unit")
    return value, system, code


def _day(inst: Instant | None) -> date | None:
    return inst.at.date() if inst is not None else None


# =============================================================================== §3.4 medication

@dataclass(slots=True)
class Medication:
    concept: dict | None          # the Medication's code (CodeableConcept)
    concept_path: str
    resource: dict | None         # the Medication resource when referenced
    resource_path: str
    fallback_name: str | None     # reference.display, else the literal reference


def medication_of(d: Draft, ctx: UnitContext) -> Medication:
    """Medication = `medicationCodeableConcept` or the resolved `medicationReference`
    (`#id`, Bundle); unresolved -> `reference.display`, else the literal reference + warning."""
    r, p = d.resource, d.path
    concept = obj(r.get("medicationCodeableConcept"), f"{p}.medicationCodeableConcept")
    if concept is not None:
        return Medication(concept, f"{p}.medicationCodeableConcept", None, "", None)
    ref = obj(r.get("medicationReference"), f"{p}.medicationReference")
    found = ctx.scope.resolve(ref, f"{p}.medicationReference", r, p)
    if found is not None and found.rtype == "Medication":
        d.copy_from(found)
        mpath = found.path
        return Medication(obj(found.resource.get("code"), f"{mpath}.code"), f"{mpath}.code",
                          found.resource, mpath, None)
    name = None
    if ref is not None:
        name = (string(ref.get("display"), f"{p}.medicationReference.display")
                or string(ref.get("reference"), f"{p}.medicationReference.reference"))
        d.warnings.append("reference_unresolved:medicationReference")
    return Medication(None, "", None, "", name)


def drug_name(med: Medication) -> str | None:
    """§3.4 | drug.name: `text`, else the RxNorm display, else any display."""
    if med.concept is None:
        return med.fallback_name
    text = concept_text(med.concept, med.concept_path)
    if text:
        return text
    coded = codings(med.concept, med.concept_path)
    for system, _, display in coded:
        if system == SYS_RXNORM and display:
            return display
    for _, _, display in coded:
        if display:
            return display
    return med.fallback_name


def drug_codes(med: Medication) -> dict[str, str]:
    """§3.4 | drug.ndc / drug.hcpcs (and the RxNorm / CVX codes used for drug attributes):
    NDC as written (the engine makes the 11 digits); HCPCS of Level II shape."""
    out: dict[str, str] = {}
    for system, code, _ in codings(med.concept, med.concept_path):
        if not code:
            continue
        if system == SYS_NDC:
            out.setdefault("ndc", code)
        elif system == SYS_HCPCS and _HCPCS_LEVEL_II.fullmatch(code):
            out.setdefault("hcpcs", code)
        elif system == SYS_RXNORM:
            out.setdefault("rxnorm", code)
        elif system == SYS_CVX:
            out.setdefault("cvx", code)
    return out


def route_and_site(d: Draft, ctx: UnitContext, route: dict | None, route_path: str,
                   site: dict | None, site_path: str, on: date | None) -> None:
    """§3.4 | route, site: the first route coding in the route map; only `text` -> the
    contract's synonyms; else absent + warning `route_unmapped:{system}|{code}`. Site:
    `text`, else the first coding's display, else its code."""
    if route is not None:
        coded = codings(route, route_path)
        mapped = None
        for system, code, _ in coded:
            if code:
                hit = ctx.site.code("route", system, code, on)
                if hit is not None and hit[0]:
                    mapped = hit[0]
                    break
        if mapped is None and not coded:
            text = concept_text(route, route_path)
            mapped = normalize_route(text) if text else None
            if mapped is None and text:
                d.warnings.append("route_unmapped:text")
        elif mapped is None:
            system, code, _ = coded[0]
            d.warnings.append(f"route_unmapped:{system or ''}|{code or ''}")
        if mapped is not None:
            d.fields["route"] = mapped
    if site is not None:
        text = concept_text(site, site_path)
        if not text:
            coded = codings(site, site_path)
            text = next((disp for _, _, disp in coded if disp), None)
            if text is None:
                text = next((code for _, code, _ in coded if code), None)
        if text:
            d.fields["site"] = text


def dose(d: Draft, ctx: UnitContext, drug: dict, q: dict | None, path: str, on: date | None) -> None:
    """§3.4 | drug.dose, drug.dose_unit: UCUM via the dose unit map (with its factor);
    unmapped (`mg/kg`) -> both absent + warning; `rateQuantity` ignored."""
    value, system, code = quantity(q, path)
    if value is None and code is None:
        return
    hit = ctx.site.code("dose_unit", system, code, on) if code else None
    if hit is None or not hit[0]:
        d.warnings.append(f"dose_unit_unmapped:{code or ''}")
        return
    if value is None or value <= 0:
        d.warnings.append("dose_not_positive")
        return
    drug["dose"] = _scaled(value, hit[1])
    drug["dose_unit"] = hit[0]


def _scaled(value: int | float, factor: float) -> int | float:
    if factor == 1:
        return value
    result = value * factor
    return int(result) if float(result).is_integer() else round(result, 9)


def drug_attributes(d: Draft, ctx: UnitContext, drug: dict, med: Medication, codes: dict[str, str],
                    on: date | None) -> None:
    """§3.4 | drug.category / drug.container / drug.wasted_amount."""
    r, p = d.resource, d.path
    holders = [(r, p)] + ([(med.resource, med.resource_path)] if med.resource is not None else [])
    category = container = None
    for holder, hpath in holders:
        for epath, ext in extensions(holder, hpath, (ctx.ext("drug-category"),)):
            category = category or string(ext.get("valueCode"), f"{epath}.valueCode")
        for epath, ext in extensions(holder, hpath, (ctx.ext("drug-container"),)):
            container = container or string(ext.get("valueCode"), f"{epath}.valueCode")
    if category is None and "cvx" in codes:   # a CVX coding -> vaccine
        category = "vaccine"
    if category is None or container is None:  # else drug_attributes (§6)
        keys = []
        ndc11 = ndc_to_11(codes.get("ndc"))
        if ndc11:
            keys.append(("ndc11", ndc11))
        keys += [(kt, codes[kt]) for kt in ("hcpcs", "rxnorm", "cvx") if kt in codes]
        for key_type, key in keys:
            cat, cont = ctx.site.drug_attributes(key_type, key, on)
            category = category or cat
            container = container or cont
    if category:
        drug["category"] = category
    if container:
        drug["container"] = container
    for epath, ext in extensions(r, p, (ctx.ext("wasted-amount"),)):
        value, system, code = quantity(obj(ext.get("valueQuantity"), f"{epath}.valueQuantity"),
                                       f"{epath}.valueQuantity")
        hit = ctx.site.code("dose_unit", system, code, on) if code else None
        ratio = _unit_ratio(hit[0], drug.get("dose_unit")) if hit and hit[0] else None
        if value is None or value < 0 or ratio is None:
            d.warnings.append("wasted_amount_unconverted")
        else:  # waste in the dose's unit
            drug["wasted_amount"] = _scaled(value, hit[1] * ratio)
        break


# Contract dose units by dimension, in the dimension's smallest unit: only these convert.
_UNIT_SIZE = {"mcg": ("mass", 1), "mg": ("mass", 1_000), "g": ("mass", 1_000_000),
              "mL": ("volume", 1), "units": ("units", 1)}


def _unit_ratio(unit: str, into: str | None) -> float | None:
    """How many `into` one `unit` is (mg -> g: 0.001); None across dimensions."""
    a, b = _UNIT_SIZE.get(unit), _UNIT_SIZE.get(into or "")
    if a is None or b is None or a[0] != b[0]:
        return None
    return a[1] / b[1]


def lot_number(d: Draft, ctx: UnitContext, med: Medication) -> str | None:
    """§3.4 | drug.lot_number: Medication `batch.lotNumber`, else extension `…/lot-number`."""
    if med.resource is not None:
        batch = obj(med.resource.get("batch"), f"{med.resource_path}.batch")
        if batch is not None:
            lot = string(batch.get("lotNumber"), f"{med.resource_path}.batch.lotNumber")
            if lot:
                return lot
    for epath, ext in extensions(d.resource, d.path, (ctx.ext("lot-number"),)):
        return string(ext.get("valueString"), f"{epath}.valueString")
    return None


def credential_of(d: Draft, ctx: UnitContext, practitioner: Found, on: date | None) -> str | None:
    """§3.4 | performer_credential: the Practitioner's `qualification.code` (v2-0360, any
    version, or text) via the credential map; unknown codes upper-cased; a dropped code (v2-0360
    MA, Master of Arts) -> absent + warning."""
    texts = []
    for qpath, qual in objects(practitioner.resource.get("qualification"),
                               f"{practitioner.path}.qualification"):
        concept = obj(qual.get("code"), f"{qpath}.code")
        for system, code, _ in codings(concept, f"{qpath}.code"):
            if code and system and system.startswith(SYS_V2_0360):
                hit = ctx.site.code("credential", SYS_V2_0360, code, on)
                if hit is None:
                    return code.upper()
                if not hit[0]:
                    d.warnings.append("credential_dropped")
                    return None
                return hit[0]
        text = concept_text(concept, f"{qpath}.code")
        if text:
            texts.append(text)
    for text in texts:
        hit = ctx.site.code("credential", None, text.upper(), on)
        return hit[0] if hit is not None and hit[0] else text.upper()
    return None


def performer(d: Draft, ctx: UnitContext, on: date | None, *, function_system: str,
              function_code: str) -> None:
    """§3.4 | performer_id, performer_credential: the performer whose `function` is absent or
    `{function_system}#{function_code}`. id: actor `identifier.value`, else the resolved
    Practitioner's NPI, first identifier or id, else the reference's id."""
    r, p = d.resource, d.path
    for ppath, perf in objects(r.get("performer"), f"{p}.performer"):
        fn = obj(perf.get("function"), f"{ppath}.function")
        if fn is not None and not has_coding(fn, f"{ppath}.function", function_system, function_code):
            continue
        actor = obj(perf.get("actor"), f"{ppath}.actor")
        if actor is None:
            continue
        ident = obj(actor.get("identifier"), f"{ppath}.actor.identifier")
        pid = string(ident.get("value"), f"{ppath}.actor.identifier.value") if ident else None
        found = ctx.scope.resolve(actor, f"{ppath}.actor", r, p)
        if found is not None and found.rtype == "PractitionerRole":
            rpath = f"{found.path}.practitioner"
            inner = ctx.scope.resolve(obj(found.resource.get("practitioner"), rpath), rpath,
                                      found.holder, found.holder_path)
            d.copy_from(found)
            found = inner
        practitioner = found if found is not None and found.rtype == "Practitioner" else None
        if pid is None and practitioner is not None:
            idents = objects(practitioner.resource.get("identifier"), f"{practitioner.path}.identifier")
            npis = [string(i.get("value"), f"{ip}.value") for ip, i in idents
                    if string(i.get("system"), f"{ip}.system") == SYS_NPI]
            firsts = [string(i.get("value"), f"{ip}.value") for ip, i in idents]
            pid = next((v for v in npis + firsts if v), None) or practitioner.rid
        if pid is None:
            text = string(actor.get("reference"), f"{ppath}.actor.reference")
            lit = literal_type_id(text) if text else None
            pid = lit[1] if lit else (text[1:] if text and text.startswith("#") else None)
            if found is None and text:
                d.warnings.append("reference_unresolved:performer.actor")
        if pid:
            d.fields["performer_id"] = pid
        if practitioner is not None:
            d.copy_from(practitioner)
            cred = credential_of(d, ctx, practitioner, on)
            if cred:
                d.fields["performer_credential"] = cred
        return


def npi_by_role(d: Draft, ctx: UnitContext, role: str) -> str | None:
    """§3.4 | rendering_npi / supervising_npi: performer with `function` claimcareteamrole
    `primary` / `supervisor`."""
    for ppath, perf in objects(d.resource.get("performer"), f"{d.path}.performer"):
        fn = obj(perf.get("function"), f"{ppath}.function")
        if has_coding(fn, f"{ppath}.function", SYS_CARE_TEAM_ROLE, role):
            npi = npi_of(ctx, d, obj(perf.get("actor"), f"{ppath}.actor"), f"{ppath}.actor")
            if npi:
                return npi
    return None


def order_id(d: Draft, ctx: UnitContext, ref: dict | None, path: str) -> None:
    """§3.4 | order_id: MedicationRequest id, else `request.identifier.value`."""
    if ref is None:
        return
    oid, _ = reference_id(ref, path, ctx.scope, d.resource, d.path, "MedicationRequest")
    if oid is None:
        ident = obj(ref.get("identifier"), f"{path}.identifier")
        oid = string(ident.get("value"), f"{path}.identifier.value") if ident else None
    if oid is not None:
        d.fields["order_id"] = oid


def charge_modifiers(ctx: UnitContext, resource: dict, path: str) -> list[str]:
    """§3.6 | modifiers: extension `…/charge-modifier` (and the setting's URLs), 0..*, in order:
    valueCoding.code, valueCode or valueString."""
    urls = {ctx.ext("charge-modifier"), *(ctx.setting("modifier_extension_urls") or "").split()}
    out = []
    for epath, ext in extensions(resource, path, frozenset(urls)):
        coding = obj(ext.get("valueCoding"), f"{epath}.valueCoding")
        value = (string(coding.get("code"), f"{epath}.valueCoding.code") if coding else None) \
            or string(ext.get("valueCode"), f"{epath}.valueCode") \
            or string(ext.get("valueString"), f"{epath}.valueString")
        if value:
            out.append(value.upper())
    return out


def linked_charge_items(ctx: UnitContext, rtype: str, rid: str | None, full_url: str | None
                        ) -> list[tuple[str, dict]]:
    """ChargeItems of the unit (Bulk Data: of the export) whose `service` references it."""
    found: list[tuple[str, dict]] = []
    if rid is not None:
        found += ctx.charges_referring_to((rtype, rid))
    if full_url is not None:
        found += ctx.charges_referring_to(full_url)
    if ctx.bulk is not None and rid is not None:
        found += [("ChargeItem", ci) for ci in ctx.bulk.charge_items_for(rtype, rid)]
    seen: set[int] = set()
    out = []
    for path, ci in found:
        if id(ci) not in seen:
            seen.add(id(ci))
            out.append((path, ci))
    return out


def charge_link(d: Draft, ctx: UnitContext, drug: dict, full_url: str | None, on: date | None) -> None:
    """§3.4 | charge_code, charge_modifiers: a ChargeItem of the same unit whose `service`
    references this administration, with a CPT code of the administration set: its code and
    modifiers (several: newest lastUpdated, then id). A linked HCPCS drug code fills an
    absent drug.hcpcs."""
    rid = string(d.resource.get("id"), f"{d.path}.id")
    admin: list[tuple[str, str, str, dict]] = []
    for path, ci in linked_charge_items(ctx, d.rtype, rid, full_url):
        status = string(ci.get("status"), f"{path}.status")
        if STATUS["ChargeItem"].get(status or "", (None,))[0] != COMPLETED:
            continue  # a withdrawn or unfinished charge proposes nothing
        meta = obj(ci.get("meta"), f"{path}.meta") or {}
        updated = string(meta.get("lastUpdated"), f"{path}.meta.lastUpdated") or ""
        for system, code, _ in codings(obj(ci.get("code"), f"{path}.code"), f"{path}.code"):
            if system == SYS_CPT and code in ADMIN_CODES:
                admin.append((updated, string(ci.get("id"), f"{path}.id") or "", code, ci))
            elif system == SYS_HCPCS and code and _HCPCS_LEVEL_II.fullmatch(code) \
                    and "hcpcs" not in drug:
                drug["hcpcs"] = code
                d.copied.add(version_ref("ChargeItem", ci, string(ci.get("id"), "ChargeItem.id") or "_"))
    if admin:
        # Newest lastUpdated (instants compared as written: one EHR writes one offset), then id.
        admin.sort(key=lambda t: (t[0], t[1]))
        _, cid, code, ci = admin[-1]
        d.fields["charge_code"] = code
        mods = charge_modifiers(ctx, ci, "ChargeItem")
        if mods:
            d.fields["charge_modifiers"] = mods
        d.copied.add(version_ref("ChargeItem", ci, cid or "_"))


def map_medication_administration(d: Draft, ctx: UnitContext, full_url: str | None) -> None:
    r, p = d.resource, d.path
    status, pending = status_of(d.rtype, r, p)
    d.fields["status"] = status
    if pending:
        d.fields["in_progress"] = True
    # §3.4 | occurred_at / ended_at
    if "effectiveDateTime" in r:
        tz = read_tz(d, r.get("_effectiveDateTime"), f"{p}._effectiveDateTime")
        start = read_time(d, ctx, r.get("effectiveDateTime"), f"{p}.effectiveDateTime", tz)
        end = None
    else:
        period = obj(r.get("effectivePeriod"), f"{p}.effectivePeriod")
        if period is None:
            raise invalid(f"{p}.effective[x]", "is missing")
        tz = read_tz(d, period.get("_start"), f"{p}.effectivePeriod._start")
        start = read_time(d, ctx, period.get("start"), f"{p}.effectivePeriod.start", tz)
        end = read_time(d, ctx, period.get("end"), f"{p}.effectivePeriod.end", tz)
    if start is None:
        raise invalid(f"{p}.effective[x]", "has no start")
    d.fields["occurred_at"] = start.text
    if end is not None and end.at > start.at:
        d.fields["ended_at"] = end.text
    if tz:
        d.fields["facility_timezone"] = tz
    on = _day(start)
    encounter_id(d, ctx, "context")
    dosage = obj(r.get("dosage"), f"{p}.dosage") or {}
    route_and_site(d, ctx, obj(dosage.get("route"), f"{p}.dosage.route"), f"{p}.dosage.route",
                   obj(dosage.get("site"), f"{p}.dosage.site"), f"{p}.dosage.site", on)
    med = medication_of(d, ctx)
    codes = drug_codes(med)
    drug: dict = {}
    name = drug_name(med)
    if name:
        drug["name"] = name
    for key in ("ndc", "hcpcs"):
        if key in codes:
            drug[key] = codes[key]
    dose(d, ctx, drug, obj(dosage.get("dose"), f"{p}.dosage.dose"), f"{p}.dosage.dose", on)
    charge_link(d, ctx, drug, full_url, on)
    drug_attributes(d, ctx, drug, med, {**codes, **({"hcpcs": drug["hcpcs"]} if "hcpcs" in drug else {})}, on)
    lot = lot_number(d, ctx, med)
    if lot:
        drug["lot_number"] = lot
    if drug:
        d.fields["drug"] = drug
    performer(d, ctx, on, function_system=SYS_MED_ADMIN_FUNCTION, function_code="performer")
    for role, key in (("primary", "rendering_npi"), ("supervisor", "supervising_npi")):
        npi = npi_by_role(d, ctx, role)
        if npi:
            d.fields[key] = npi
    order_id(d, ctx, obj(r.get("request"), f"{p}.request"), f"{p}.request")
    diagnosis_codes(d, ctx, "reasonCode", "reasonReference")


def map_immunization(d: Draft, ctx: UnitContext, full_url: str | None) -> None:
    """§3.4 Immunization: mapped alike as a `vaccine`; `primarySource: false` (historical)
    -> FHIR_NOT_BILLABLE."""
    r, p = d.resource, d.path
    if boolean(r.get("primarySource"), f"{p}.primarySource") is False:
        raise Refusal(FHIR_NOT_BILLABLE, "historical immunization (primarySource false)",
                      f"{p}.primarySource")
    status, _ = status_of(d.rtype, r, p)
    d.fields["status"] = status
    tz = read_tz(d, r.get("_occurrenceDateTime"), f"{p}._occurrenceDateTime")
    start = read_time(d, ctx, r.get("occurrenceDateTime"), f"{p}.occurrenceDateTime", tz)
    if start is None:
        raise invalid(f"{p}.occurrence[x]", "has no dateTime")
    d.fields["occurred_at"] = start.text
    if tz:
        d.fields["facility_timezone"] = tz
    on = _day(start)
    encounter_id(d, ctx, "encounter")
    route_and_site(d, ctx, obj(r.get("route"), f"{p}.route"), f"{p}.route",
                   obj(r.get("site"), f"{p}.site"), f"{p}.site", on)
    med = Medication(obj(r.get("vaccineCode"), f"{p}.vaccineCode"), f"{p}.vaccineCode", None, "", None)
    codes = drug_codes(med)
    drug: dict = {}
    name = drug_name(med)
    if name:
        drug["name"] = name
    if "ndc" in codes:
        drug["ndc"] = codes["ndc"]
    dose(d, ctx, drug, obj(r.get("doseQuantity"), f"{p}.doseQuantity"), f"{p}.doseQuantity", on)
    charge_link(d, ctx, drug, full_url, on)
    drug_attributes(d, ctx, drug, med, codes, on)
    drug["category"] = "vaccine"
    lot = string(r.get("lotNumber"), f"{p}.lotNumber")
    if lot:
        drug["lot_number"] = lot
    d.fields["drug"] = drug
    performer(d, ctx, on, function_system=SYS_V2_0443, function_code="AP")
    diagnosis_codes(d, ctx, "reasonCode", "reasonReference")


# =============================================================================== §3.5 dispense

def map_medication_dispense(d: Draft, ctx: UnitContext, full_url: str | None) -> None:
    r, p = d.resource, d.path
    status, _ = status_of(d.rtype, r, p)
    d.fields["status"] = status
    # occurred_at: whenHandedOver, else whenPrepared (neither -> FHIR_INVALID)
    element = "whenHandedOver" if r.get("whenHandedOver") is not None else "whenPrepared"
    tz = read_tz(d, r.get(f"_{element}"), f"{p}._{element}")
    start = read_time(d, ctx, r.get(element), f"{p}.{element}", tz)
    if start is None:
        raise invalid(f"{p}.whenHandedOver", "and whenPrepared are missing")
    d.fields["occurred_at"] = start.text
    if tz:
        d.fields["facility_timezone"] = tz
    on = _day(start)
    encounter_id(d, ctx, "context")
    # ndc, drug_name, lot_number from the Medication as in §3.4
    med = medication_of(d, ctx)
    codes = drug_codes(med)
    if "ndc" in codes:
        d.fields["ndc"] = codes["ndc"]
    name = drug_name(med)
    if name:
        d.fields["drug_name"] = name
    # order_id from authorizingPrescription[0]
    prescriptions = arr(r.get("authorizingPrescription"), f"{p}.authorizingPrescription")
    if prescriptions:
        order_id(d, ctx, obj(prescriptions[0], f"{p}.authorizingPrescription[0]"),
                 f"{p}.authorizingPrescription[0]")
    # quantity (> 0), quantity_unit via the quantity unit map (unmapped -> absent + warning)
    value, system, code = quantity(obj(r.get("quantity"), f"{p}.quantity"), f"{p}.quantity")
    if value is not None:
        if value > 0:
            d.fields["quantity"] = value
        else:
            d.warnings.append("quantity_not_positive")
    if code is not None:
        hit = ctx.site.code("quantity_unit", system, code, on)
        if hit is not None and hit[0]:
            d.fields["quantity_unit"] = hit[0]
        else:
            d.warnings.append(f"quantity_unit_unmapped:{code}")
    lot = lot_number(d, ctx, med)
    if lot:
        d.fields["lot_number"] = lot


# =============================================================================== §3.6 E/M

def em_code(concept: dict | None, path: str) -> str | None:
    """The CPT coding of `code` in the E/M set (codings are translations, never modifiers)."""
    for system, code, _ in codings(concept, path):
        if system == SYS_CPT and code in EM_CODES:
            return code
    return None


def _administration_in_scope(ctx: UnitContext, resource: dict, path: str) -> bool:
    """Whether a ChargeItem's `service` references an administration of the unit (or export)."""
    for spath, service in objects(resource.get("service"), f"{path}.service"):
        found = ctx.scope.resolve(service, spath, resource, path)
        if found is not None and found.rtype in ("MedicationAdministration", "Immunization"):
            return True
        text = string(service.get("reference"), f"{spath}.reference")
        lit = literal_type_id(text) if text else None
        if lit and ctx.bulk is not None and ctx.bulk.has_primary(*lit):
            return True
    return False


class LinkedCharge(Exception):  # noqa: N818 - a ChargeItem that only enriches an administration
    pass


def map_em_service(d: Draft, ctx: UnitContext, full_url: str | None) -> None:
    """ChargeItem (and Procedure) -> em.service when `code` has a CPT coding in the E/M set.
    A non-E/M ChargeItem linked to an administration enriches it (yields nothing itself);
    any other -> FHIR_UNSUPPORTED_RESOURCE (lines are derived)."""
    r, p = d.resource, d.path
    is_procedure = d.rtype == "Procedure"
    code = em_code(obj(r.get("code"), f"{p}.code"), f"{p}.code")
    if code is None:
        if not is_procedure and _administration_in_scope(ctx, r, p):
            raise LinkedCharge
        raise Refusal(FHIR_UNSUPPORTED_RESOURCE,
                      f"{d.rtype} code has no E/M CPT coding (administration and drug lines are "
                      "derived from the administration)", f"{p}.code")
    status, _ = status_of(d.rtype, r, p)
    d.fields["status"] = status
    # §3.6 | occurred_at: occurrenceDateTime, occurrencePeriod.start or the first
    # occurrenceTiming.event (Procedure: performedDateTime / performedPeriod.start)
    prefix = "performed" if is_procedure else "occurrence"
    start, tz = None, None
    if r.get(f"{prefix}DateTime") is not None:
        tz = read_tz(d, r.get(f"_{prefix}DateTime"), f"{p}._{prefix}DateTime")
        start = read_time(d, ctx, r.get(f"{prefix}DateTime"), f"{p}.{prefix}DateTime", tz)
    elif r.get(f"{prefix}Period") is not None:
        period = obj(r.get(f"{prefix}Period"), f"{p}.{prefix}Period") or {}
        tz = read_tz(d, period.get("_start"), f"{p}.{prefix}Period._start")
        start = read_time(d, ctx, period.get("start"), f"{p}.{prefix}Period.start", tz)
    elif not is_procedure and r.get("occurrenceTiming") is not None:
        timing = obj(r.get("occurrenceTiming"), f"{p}.occurrenceTiming") or {}
        events = arr(timing.get("event"), f"{p}.occurrenceTiming.event")
        if events:
            start = read_time(d, ctx, events[0], f"{p}.occurrenceTiming.event[0]", None)
    if start is None:
        raise invalid(f"{p}.{prefix}[x]", "has no date and time")
    d.fields["occurred_at"] = start.text
    if tz:
        d.fields["facility_timezone"] = tz
    on = _day(start)
    encounter_id(d, ctx, "encounter" if is_procedure else "context")
    d.fields["code"] = code
    mods = charge_modifiers(ctx, r, p)
    if mods:
        d.fields["modifiers"] = mods
    # §3.6 | separately_identifiable: the extension, else the setting
    sep = None
    for epath, ext in extensions(r, p, (ctx.ext("em-separately-identifiable"),)):
        sep = boolean(ext.get("valueBoolean"), f"{epath}.valueBoolean")
    if sep is None and (ctx.setting("em_separately_identifiable_source", on) == "modifier_25"):
        sep = "25" in mods
    if sep is not None:
        d.fields["separately_identifiable"] = sep
    # §3.6 | rendering_npi: performer `primary`, else the only performer with an NPI
    npi = None if is_procedure else npi_by_role(d, ctx, "primary")
    if npi is None:
        npis = []
        for ppath, perf in objects(r.get("performer"), f"{p}.performer"):
            found = npi_of(ctx, d, obj(perf.get("actor"), f"{ppath}.actor"), f"{ppath}.actor")
            if found:
                npis.append(found)
        if len(set(npis)) == 1:
            npi = npis[0]
    if npi:
        d.fields["rendering_npi"] = npi
    # §3.6 | diagnosis_codes: reason (ChargeItem) / reasonCode (Procedure), ICD-10-CM
    diagnosis_codes(d, ctx, "reasonCode" if is_procedure else "reason",
                    "reasonReference" if is_procedure else None)


# =============================================================================== §3.7 encounter

def map_encounter(d: Draft, ctx: UnitContext, full_url: str | None) -> None:
    r, p = d.resource, d.path
    status, _ = status_of(d.rtype, r, p)
    d.fields["status"] = status
    # record_id = encounter_id = the encounter id
    d.fields["encounter_id"] = d.fields["record_id"]
    # §3.7 | occurred_at / ended_at: period.start / period.end (no start -> FHIR_INVALID)
    period = obj(r.get("period"), f"{p}.period")
    if period is None:
        raise invalid(f"{p}.period", "is missing")
    tz = read_tz(d, period.get("_start"), f"{p}.period._start")
    location_ids, location_found = _locations(d, ctx)
    service_provider, _ = reference_id(obj(r.get("serviceProvider"), f"{p}.serviceProvider"),
                                       f"{p}.serviceProvider", ctx.scope, r, p, "Organization")
    # §3.7 | facility_timezone: tz-code, else the site table by Location id, serviceProvider id,
    # source default (on the date written in period.start)
    raw_start = string(period.get("start"), f"{p}.period.start") or ""
    on_written = _written_date(raw_start)
    if tz is None:
        keys = [*location_ids, *([service_provider] if service_provider else []), None]
        tz = next((z for z in (ctx.site.timezone(SOURCE, k, on_written) for k in keys) if z), None)
    start = read_time(d, ctx, period.get("start"), f"{p}.period.start", tz)
    if start is None:
        raise invalid(f"{p}.period.start", "is missing")
    end = read_time(d, ctx, period.get("end"), f"{p}.period.end", tz)
    d.fields["occurred_at"] = start.text
    if end is not None and end.at > start.at:
        d.fields["ended_at"] = end.text
    on = _day(start)
    pos = _place_of_service(d, ctx, location_found, location_ids, on)
    if pos:
        d.fields["place_of_service"] = pos
    payer = _payer_class(d, ctx, start, on)
    if payer:
        d.fields["payer_class"] = payer
    if tz:
        d.fields["facility_timezone"] = tz
    # §3.7 | rendering_npi: participant type ATND, else PPRF -> individual NPI
    for wanted in ("ATND", "PPRF"):
        npi = None
        for ppath, part in objects(r.get("participant"), f"{p}.participant"):
            types = objects(part.get("type"), f"{ppath}.type")
            if any(has_coding(t, tp, SYS_PARTICIPATION_TYPE, wanted) for tp, t in types):
                npi = npi_of(ctx, d, obj(part.get("individual"), f"{ppath}.individual"),
                             f"{ppath}.individual")
                if npi:
                    break
        if npi:
            d.fields["rendering_npi"] = npi
            break


def _written_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _locations(d: Draft, ctx: UnitContext) -> tuple[list[str], list[tuple[Found | None, str | None]]]:
    """Each `location[].location`: its literal or resolved id, and the resolved Location."""
    ids: list[str] = []
    found_list: list[tuple[Found | None, str | None]] = []
    for lpath, loc in objects(d.resource.get("location"), f"{d.path}.location"):
        ref = obj(loc.get("location"), f"{lpath}.location")
        lid, found = reference_id(ref, f"{lpath}.location", ctx.scope, d.resource, d.path, "Location")
        if found is not None and found.rtype != "Location":
            found = None
        if lid is None and found is not None:
            lid = found.rid
        if ref is not None and found is None:
            d.warnings.append("reference_unresolved:location")
        if lid:
            ids.append(lid)
        found_list.append((found, lid))
    return ids, found_list


def _place_of_service(d: Draft, ctx: UnitContext, locations: list[tuple[Found | None, str | None]],
                      location_ids: list[str], on: date | None) -> str | None:
    """§3.7 | place_of_service: the first Location, in array order, whose `type` has a CMS POS
    coding; else `location_pos` by Location id, Location identifier, then encounter class."""
    for found, _ in locations:
        if found is None:
            continue
        for tpath, concept in objects(found.resource.get("type"), f"{found.path}.type"):
            for system, code, _ in codings(concept, tpath):
                if system == SYS_POS and code and re.fullmatch(r"\d{2}", code):
                    d.copy_from(found)
                    return code
    for lid in location_ids:
        pos = ctx.site.place_of_service(SOURCE, "fhir_location_id", lid, on)
        if pos:
            return pos
    for found, _ in locations:
        if found is None:
            continue
        for ipath, ident in objects(found.resource.get("identifier"), f"{found.path}.identifier"):
            value = string(ident.get("value"), f"{ipath}.value")
            pos = ctx.site.place_of_service(SOURCE, "fhir_location_identifier", value, on) if value else None
            if pos:
                d.copy_from(found)
                return pos
    klass = obj(d.resource.get("class"), f"{d.path}.class")
    code = string(klass.get("code"), f"{d.path}.class.code") if klass else None
    if code:
        return ctx.site.place_of_service(SOURCE, "fhir_encounter_class", code, on)
    return None


def _coverages(d: Draft, ctx: UnitContext) -> list[tuple[tuple, Found]]:
    """Candidate Coverages with their sort key: those of the Encounter's Accounts (by
    `priority`), then every other Coverage of the unit (Bulk Data: of the patient)."""
    r, p = d.resource, d.path
    out: list[tuple[tuple, Found]] = []
    seen: set[int] = set()
    for apath, aref in objects(r.get("account"), f"{p}.account"):
        account = ctx.scope.resolve(aref, apath, r, p)
        if account is None or account.rtype != "Account":
            continue
        d.copy_from(account)
        for cpath, cov in objects(account.resource.get("coverage"), f"{account.path}.coverage"):
            priority = number(cov.get("priority"), f"{cpath}.priority")
            found = ctx.scope.resolve(obj(cov.get("coverage"), f"{cpath}.coverage"), f"{cpath}.coverage",
                                      account.holder, account.holder_path)
            if found is not None and found.rtype == "Coverage" and id(found.resource) not in seen:
                seen.add(id(found.resource))
                out.append(((0, priority if priority is not None else float("inf")), found))
    pool = [res for _, res in ctx.of_type("Coverage")]
    if ctx.bulk is not None:
        subject = obj(r.get("subject"), f"{p}.subject") or {}
        literal = literal_type_id(string(subject.get("reference"), f"{p}.subject.reference") or "")
        if literal is not None and literal[0] == "Patient":
            pool += ctx.bulk.coverages_for(literal[1])
    for res in pool:
        if id(res) in seen:
            continue
        seen.add(id(res))
        out.append(((1, 0), ctx.scope.found(res)))
    return out


def _payer_class(d: Draft, ctx: UnitContext, start: Instant, on: date | None) -> str | None:
    """§3.7 | payer_class: the primary Coverage of the unit (`status` active, `beneficiary` =
    the patient, `period` covering period.start; by Account priority, else `order`, absent last,
    then id) -> its `type` (site `fhir_coverage_type`, SOPT longest prefix), then plan, then payor."""
    patient = d.fields.get("patient_id")
    usable: list[tuple[tuple, Found]] = []
    for key, found in _coverages(d, ctx):
        cov, cpath = found.resource, found.path
        if string(cov.get("status"), f"{cpath}.status") != "active":
            continue
        try:
            beneficiary = patient_id(Draft("Coverage", cov, cpath), ctx, "beneficiary")
        except Refusal:
            continue
        if beneficiary != patient:
            continue
        period = obj(cov.get("period"), f"{cpath}.period")
        if period is not None:
            pstart = parse_datetime(period.get("start"), f"{cpath}.period.start", _zone_for_dates(ctx, None))
            pend = parse_datetime(period.get("end"), f"{cpath}.period.end", _zone_for_dates(ctx, None))
            if pstart is not None and start.at < pstart.at:
                continue
            if pend is not None:
                # an end date covers its whole day
                if (pend.date_only and pend.at.date() < start.at.astimezone(pend.at.tzinfo).date()) or \
                        (not pend.date_only and start.at > pend.at):
                    continue
        order = number(cov.get("order"), f"{cpath}.order")
        rank = key if key[0] == 0 else (1, order if order is not None else float("inf"))
        usable.append(((rank, found.rid or ""), found))
    if not usable:
        return None
    usable.sort(key=lambda t: t[0])
    primary = usable[0][1]
    cov, cpath = primary.resource, primary.path
    d.copy_from(primary)
    coded = codings(obj(cov.get("type"), f"{cpath}.type"), f"{cpath}.type")
    for system, code, _ in coded:
        if system and code:
            pc = ctx.site.payer_class(SOURCE, "fhir_coverage_type", f"{system}|{code}", on)
            if pc:
                return pc
    for system, code, _ in coded:
        if system == SYS_SOPT and code:
            pc = ctx.site.payer_class(SOURCE, "sopt_prefix", code, on)
            if pc:
                return pc
    for kpath, klass in objects(cov.get("class"), f"{cpath}.class"):
        if has_coding(obj(klass.get("type"), f"{kpath}.type"), f"{kpath}.type", SYS_COVERAGE_CLASS, "plan"):
            value = string(klass.get("value"), f"{kpath}.value")
            pc = ctx.site.payer_class(SOURCE, "fhir_plan", value, on) if value else None
            if pc:
                return pc
    for ppath, payor in objects(cov.get("payor"), f"{cpath}.payor"):
        ident = obj(payor.get("identifier"), f"{ppath}.identifier")
        value = string(ident.get("value"), f"{ppath}.identifier.value") if ident else None
        if value is None:
            found = ctx.scope.resolve(payor, ppath, primary.holder, primary.holder_path)
            if found is not None:
                for ipath, i in objects(found.resource.get("identifier"), f"{found.path}.identifier"):
                    value = string(i.get("value"), f"{ipath}.value")
                    if value:
                        break
        pc = ctx.site.payer_class(SOURCE, "fhir_payor_id", value, on) if value else None
        if pc:
            return pc
    d.warnings.append("payer_class_unmapped")
    return None


# =============================================================================== dispatch

# resource type -> (event type, mapper, subject element)
MAPPERS = {
    "MedicationAdministration": (ADMINISTRATION, map_medication_administration),
    "Immunization": (ADMINISTRATION, map_immunization),
    "MedicationDispense": (DISPENSE, map_medication_dispense),
    "ChargeItem": (EM_SERVICE, map_em_service),
    "Procedure": (EM_SERVICE, map_em_service),
    "Encounter": (ENCOUNTER_UPDATED, map_encounter),
}

# Canonical field order of the records (contract §2, then the extensions).
FIELD_ORDER = ("event_type", "event_id", "record_id", "status", "in_progress", "recorded_at",
               "patient_id", "encounter_id", "order_id", "occurred_at", "ended_at",
               "facility_timezone", "place_of_service", "payer_class", "route", "site", "drug",
               "ndc", "drug_name", "quantity", "quantity_unit", "lot_number", "code", "modifiers",
               "separately_identifiable", "performer_id", "performer_credential",
               "rendering_npi", "supervising_npi", "diagnosis_codes", "charge_code",
               "charge_modifiers")


def map_resource(rtype: str, resource: dict, path: str, ctx: UnitContext,
                 full_url: str | None) -> dict:
    """One primary resource -> one canonical record (raises Refusal or LinkedCharge)."""
    event_type, mapper = MAPPERS[rtype]
    d = Draft(rtype, resource, path)
    record_identity(d, ctx, procedure=rtype == "Procedure")
    d.fields["patient_id"] = patient_id(d, ctx, "subject" if rtype != "Immunization" else "patient")
    mapper(d, ctx, full_url)
    d.fields["event_type"] = event_type
    local = string(resource.get("id"), f"{path}.id") or d.fields["record_id"]
    own = version_ref(rtype, resource, local)
    d.fields["event_id"] = event_id(d, ctx, own)
    record = {k: d.fields[k] for k in FIELD_ORDER if k in d.fields}
    record.update((k, v) for k, v in d.fields.items() if k not in record)
    record["source"] = {"format": "fhir", "ref": own, "warnings": d.warnings}
    return record
