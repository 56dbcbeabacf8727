"""Derivation: from the current records of one patient to each patient-day's charge lines
and correction alerts (contract.md §3, billing-rules.md).

`evaluate_patient()` is a pure function of the *set* of current record versions (arrival
order never matters: every choice sorts by `occurred_at`, then `record_id`). It returns a
`DayView` per service date with every derivable line, the alerts raised, and which lines
those alerts hold. Emission bookkeeping (revisions, void/resolved) is in engine.py.

The rules are grouped by family, one module each, mirroring tests/engine/test_rules_*.py;
this module runs them in order and applies the holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from datetime import date

from stream_app import vocabulary as V
from stream_app.engine import normalise as nz
from stream_app.engine.derive.admin_codes import AdminCodeRules
from stream_app.engine.derive.documentation import DocumentationRules
from stream_app.engine.derive.drug_lines import DrugLineRules
from stream_app.engine.derive.edits import EditRules
from stream_app.engine.derive.em import EMRules
from stream_app.engine.derive.encounter import EncounterRules
from stream_app.engine.derive.model import (
    AdminFacts,
    Alert,
    CachedRules,
    DayView,
    Line,
    alert_key,
    by_time,
    ndc11_of,
    route_of,
)
from stream_app.engine.derive.modifiers import ModifierRules
from stream_app.engine.derive.ndc import NdcRules
from stream_app.engine.records import Administration, Dispense, EMService
from stream_app.engine.ruledata import Derivation, RuleSet
from stream_app.vocabulary import ADMINISTRATION, DISPENSE, EM_SERVICE


class Evaluator(AdminCodeRules, DrugLineRules, NdcRules, DocumentationRules, ModifierRules,
                EMRules, EditRules, EncounterRules):
    """Holds the rule data; `evaluate_patient` is the pure derivation."""

    def __init__(self, rules: RuleSet):
        self.rules = CachedRules(rules)
        self.d: Derivation = rules.derivation
        self._price = self.rules.unit_price

    def evaluate_patient(self, patient_id: str, records: Iterable, settled: Callable[[date], bool],
                         open_missing_ndc: Callable[[date, str], bool],
                         closed: Callable[[date], bool] | None = None,
                         awaiting: Set[tuple[str, str]] = frozenset(),
                         contexts: dict | None = None) -> dict[date, DayView]:
        """`records` as derived (encounter context merged in, engine/encounters.py);
        `awaiting`: (event_type, record_id) of those pending for want of their encounter,
        `contexts` their encounters' contexts by encounter_id; `closed(day)` whether the
        day closes (a record still in progress then raises MISSING_DOCUMENTATION)."""
        contexts = contexts or {}
        admins: list[Administration] = []
        ems: list[EMService] = []
        dispenses: list[Dispense] = []
        for rec in records:
            if rec.withdrawn:
                continue
            et = rec.event_type
            if et == ADMINISTRATION:
                admins.append(rec)
            elif et == EM_SERVICE:
                ems.append(rec)
            elif et == DISPENSE:
                dispenses.append(rec)
        admins.sort(key=by_time)
        ems.sort(key=by_time)
        dispenses.sort(key=by_time)

        facts = [self._facts(a) for a in admins]
        self._match_dispenses(facts, dispenses)

        by_day: dict[date, list[AdminFacts]] = {}
        for f in facts:
            by_day.setdefault(f.rec.service_date, []).append(f)
        em_by_day: dict[date, list[EMService]] = {}
        for e in ems:
            em_by_day.setdefault(e.service_date, []).append(e)

        any_in_progress = any(a.in_progress for a in admins) or any(e.in_progress for e in ems)
        views: dict[date, DayView] = {}
        day_alerts: dict[date, list[Alert]] = {}
        day_pending: dict[date, set[tuple[str, str]]] = {}
        for day in sorted(set(by_day) | set(em_by_day)):
            view = views[day] = DayView(day)
            alerts = day_alerts[day] = []
            day_facts = by_day.get(day, [])
            day_ems = em_by_day.get(day, [])
            day_settled = settled(day)
            # Only a record in progress asks whether the day closes (most days have none).
            in_progress = any_in_progress and (any(f.rec.in_progress for f in day_facts)
                                               or any(e.in_progress for e in day_ems))
            day_closed = in_progress and (closed(day) if closed is not None else day_settled)
            if awaiting or in_progress:
                pending = self._pending(day_facts, day_ems, awaiting, day_settled, day_closed)
                if pending:
                    day_pending[day] = pending
                    view.awaits_settle = not day_settled and not pending.isdisjoint(awaiting)
            self._mark_duplicates(day_facts, alerts)
            self._code_administrations(patient_id, day, day_facts, alerts)
            for f in day_facts:
                self._record_checks(patient_id, day, f, alerts, day_settled, open_missing_ndc,
                                    day_closed, contexts)
            self._distinct_and_repeat_modifiers(day, day_facts)
            self._addon_without_primary(day, day_facts, alerts)
            self._em_lines(patient_id, day, day_facts, day_ems, view, alerts)
            self._em_context_checks(day_ems, alerts, contexts, day_closed)
            for f in day_facts:
                for ln in f.lines:
                    view.lines[ln.key] = ln
            self._mue(day, day_facts, alerts)
            self._ptp_edits(day, day_facts, view, alerts)
        self._frequency_limits(by_day, day_alerts)

        for day, view in views.items():
            pending = day_pending.get(day)
            for a in day_alerts[day]:
                if (pending and not a.subject.startswith("code:")
                        and (a.record.event_type, a.record.record_id) in pending):
                    continue  # a pending record's own alerts wait
                a.source_event_ids = (a.record.event_id,)
                view.alerts[alert_key(patient_id, day, a.reason_code, a.subject)] = a
            self._apply_holds(view)
            if pending:
                for ln in view.lines.values():
                    if (ln.record.event_type, ln.record.record_id) in pending:
                        ln.held = True
        return views

    @staticmethod
    def _pending(day_facts, day_ems, awaiting, day_settled: bool,
                 day_closed: bool) -> set[tuple[str, str]]:
        """The day's pending records (ehr-mapping.md §2): awaiting their encounter until
        the day settles, or in progress until a version without the flag (or close)."""
        pending = set()
        for rec in [f.rec for f in day_facts] + day_ems:
            key = (rec.event_type, rec.record_id)
            if (not day_settled and key in awaiting) or (rec.in_progress and not day_closed):
                pending.add(key)
        return pending

    def _facts(self, a: Administration) -> AdminFacts:
        route = route_of(a.route)
        if route is not None:
            route = nz.resolve_iv(route, a.occurred_at, a.ended_at)
        ndc11 = ndc11_of(a.drug.ndc) if a.drug.ndc else None
        name = (a.drug.name or "").strip().lower()
        f = AdminFacts(a, route, ndc11, bool(a.drug.ndc) and ndc11 is None, ndc11 or name)
        f.drug_billable = self._drug_billable(f)
        return f

    def _apply_holds(self, view: DayView) -> None:
        """Block alerts hold lines; warn alerts list themselves in the lines' warnings.
        An alert about a record concerns every line derived from that record; MUE and
        FREQUENCY_LIMIT concern only the lines they name (contract.md §3)."""
        by_record: dict[tuple[str, str], list[Line]] = {}
        for ln in view.lines.values():
            by_record.setdefault((ln.record.event_type, ln.record.record_id), []).append(ln)
        for a in view.alerts.values():
            if not a.line_keys and a.subject.startswith("rec:"):
                a.line_keys = [ln.key for ln in by_record.get((a.record.event_type, a.record.record_id), [])]
            sev = a.severity or self.rules.reason(a.reason_code).severity
            a.severity = sev
            for k in a.line_keys:
                concerned = view.lines.get(k)
                if concerned is None:
                    continue
                if sev == V.BLOCK:
                    concerned.held = True
                else:
                    concerned.warnings.add(a.reason_code)
