"""The engine: records in, decisions out (contract.md §3), driven by replay and the worker.

`ingest` applies redelivery, amendment and withdrawal rules to a patient's state, asks
derive/ for every day's lines and alerts, and diffs them against what each key last
emitted: a changed key is emitted with a higher revision, a line that became held or
withdrawn is voided, an alert whose problem went away is resolved. `advance` runs timed
work (settle, close, retention) and is driven by the caller's clock.

State is per patient (`PatientState`, state.py) so the worker can keep it in a table.
Time is always passed in (`now`, seconds since the epoch). `rev_floor` is the lowest
revision the next emission may carry: replay passes 0 (revisions 1, 2, ...); the worker
passes the wall clock in microseconds so that a key's revision keeps rising across
crashes and restarts (contract.md §3).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from stream_app.engine import normalise
from stream_app.engine.decisions import Decision, EngineSettings, Outcome
from stream_app.engine.derive import Alert, DayView, Evaluator, Line
from stream_app.engine.encounters import (
    NO_CONTEXT,
    Context,
    context_of,
    merge,
    needed_versions,
)
from stream_app.engine.ruledata import RuleSet
from stream_app.engine.state import DayState, Emitted, PatientState
from stream_app.vocabulary import (
    ALERT,
    ALERT_STATES,
    DISPENSE,
    ENCOUNTER_UPDATED,
    LINE,
    LINE_STATES,
)

ACTIVE, VOID = LINE_STATES
OPEN, RESOLVED = ALERT_STATES
# What a key's message becomes when it is no longer wanted.
_REVERSE = {ACTIVE: VOID, OPEN: RESOLVED}


@lru_cache(maxsize=8192)
def _end_of_day(day: date, tz: str) -> float:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=ZoneInfo(tz)).timestamp()


class Engine:
    def __init__(self, rules: RuleSet, settings: EngineSettings | None = None):
        """`rules`: loaded rule data, coding table included (stream_app.rules.load_rules)."""
        self.rules = rules
        self.settings = settings or EngineSettings()
        self.evaluator = Evaluator(rules)

    # ------------------------------------------------------------------ public API

    def ingest(self, state: PatientState | None, records: list, now: float,
               rev_floor: int = 0, evaluate: bool = True) -> tuple[PatientState | None, Outcome]:
        """Apply records of one patient. `evaluate=False` only stores them (replay, whose
        clock stands still, evaluates once in `finish`; the settled view is the same)."""
        out = Outcome()
        if not records:
            return state, out
        if state is None:
            state = PatientState(records[0].patient_id)
        contexts: dict[str, Context] = {}  # this batch's look-ups, dropped on a new version
        changed: set[str] = set()  # encounters with a new version in this batch
        for rec in records:
            if rec.event_id in state.seen:
                out.duplicates += 1
                continue
            if rec.event_type == ENCOUNTER_UPDATED:
                # The encounter's own day gives it a lifetime when no record refers to it.
                state.seen[rec.event_id] = self._touch(state, rec, now, out, message=True)
                eid = rec.encounter_id
                state.encounters[eid] = needed_versions([*state.encounters.get(eid, ()), rec])
                contexts.pop(eid, None)
                changed.add(eid)
                continue
            # Day bookkeeping follows the effective service date: only a record without its
            # own zone can take another (its encounter's).
            eff = rec if rec.timezone_given else self._inherit(state, rec, contexts)
            iso = eff.service_date.isoformat()
            state.seen[rec.event_id] = iso
            ds = state.days.get(iso)  # _touch inlined: this is the per-record hot path
            if ds is None:
                ds = state.days[iso] = DayState()
                out.opened_days += 1
            elif ds.closed:
                out.late += 1
            ds.last_input_at = now
            ds.settled_evaluated = False
            ds.end_ts = max(ds.end_ts, _end_of_day(eff.service_date, eff.timezone))
            key = (rec.event_type, rec.record_id)
            cur = state.records.get(key)
            if cur is None or (rec.recorded_at, rec.event_id) > (cur.recorded_at, cur.event_id):
                state.records[key] = rec
        if changed:
            # A context change re-derives the encounter's records, maybe on another date.
            for rec in state.records.values():
                if rec.encounter_id in changed:
                    eff = self._inherit(state, rec, contexts)
                    state.seen[rec.event_id] = self._touch(state, eff, now, out, message=False)
        if evaluate:
            self._evaluate(state, now, rev_floor, out)
        return state, out

    def advance(self, state: PatientState, now: float,
                rev_floor: int = 0) -> tuple[PatientState | None, Outcome]:
        out = Outcome()
        s = self.settings
        evaluate = False
        closing: list[DayState] = []
        for iso, ds in list(state.days.items()):
            if ds.closed_at is not None:
                if now >= ds.closed_at + s.retention_days * 86400:
                    self._drop_day(state, iso)
                    out.dropped_days += 1
                continue
            settle_due = not ds.settled_evaluated and now >= ds.last_input_at + s.settle_seconds
            evaluate = evaluate or settle_due
            if now >= self._close_at(ds):
                closing.append(ds)
        for ds in closing:
            ds.closed_at = now
            out.closed_days += 1
        if closing and not evaluate:
            # A record still in progress at close raises MISSING_DOCUMENTATION then.
            evaluate = any(getattr(r, "in_progress", False) for r in state.records.values())
        if evaluate:
            self._evaluate(state, now, rev_floor, out)
        else:
            # Nothing changed since the last evaluation but `final`: re-emit every key the
            # closing days ever emitted, as it was, with final: true (what a diff would do).
            for ds in closing:
                for key, em in ds.emitted.items():
                    self._emit(ds, key, em.kind, {**em.value, "final": True}, rev_floor, out)
        return (state if state.days else None), out

    def finish(self, state: PatientState, now: float,
               rev_floor: int = 0) -> tuple[PatientState, Outcome]:
        """End of replay input: every patient-day settles, then closes."""
        out = Outcome()
        views = self._evaluate(state, now, rev_floor, out, force_settled=True, force_closed=True)
        for ds in state.days.values():
            if not ds.closed:
                ds.closed_at = now
                out.closed_days += 1
        # Closing changes nothing but `final`: diff the same views again.
        for iso, ds in state.days.items():
            self._diff_day(state, ds, views.get(date.fromisoformat(iso)), rev_floor, out)
        return state, out

    def reemit(self, state: PatientState, now: float, rev_floor: int) -> tuple[PatientState, Outcome]:
        """Re-emit the current message of every key with a higher revision (recovery)."""
        out = Outcome()
        for ds in state.days.values():
            for key, em in ds.emitted.items():
                em.rev = max(em.rev + 1, rev_floor)
                out.decisions.append(Decision(em.kind, key, {**em.value, "revision": em.rev}))
        return state, out

    def next_due(self, state: PatientState) -> float | None:
        s = self.settings
        due: float | None = None
        for ds in state.days.values():
            if ds.closed_at is not None:
                t = ds.closed_at + s.retention_days * 86400
            else:
                t = self._close_at(ds)
                if not ds.settled_evaluated:
                    t = min(t, ds.last_input_at + s.settle_seconds)
            due = t if due is None else min(due, t)
        return due

    # ------------------------------------------------------------------ internals

    def _close_at(self, ds: DayState) -> float:
        # A day closes close_after_seconds after the end of its service date, but never
        # before it has settled: historical days close promptly, yet not mid-burst.
        s = self.settings
        return max(ds.end_ts + s.close_after_seconds, ds.last_input_at + s.settle_seconds)

    @staticmethod
    def _context(state: PatientState, eid: str | None, cache: dict[str, Context]) -> Context:
        if eid is None:
            return NO_CONTEXT
        ctx = cache.get(eid)
        if ctx is None:
            versions = state.encounters.get(eid)
            ctx = cache[eid] = context_of(versions) if versions else NO_CONTEXT
        return ctx

    def _inherit(self, state: PatientState, rec, cache: dict[str, Context]):
        """The record as derived: its gaps filled from its encounter's context."""
        if rec.encounter_id is None and rec.timezone_given:
            return rec
        return merge(rec, self._context(state, rec.encounter_id, cache), normalise.zone).record

    @staticmethod
    def _touch(state: PatientState, rec, now: float, out: Outcome, *, message: bool) -> str:
        """Mark the record's (effective) service date as having new input; its ISO date."""
        iso = rec.service_date.isoformat()
        ds = state.days.get(iso)
        if ds is None:
            ds = state.days[iso] = DayState()
            out.opened_days += 1
        elif ds.closed and message:
            out.late += 1
        ds.last_input_at = now
        ds.settled_evaluated = False
        ds.end_ts = max(ds.end_ts, _end_of_day(rec.service_date, rec.timezone))
        return iso

    def _drop_day(self, state: PatientState, iso: str) -> None:
        del state.days[iso]
        cache: dict[str, Context] = {}
        state.records = {k: r for k, r in state.records.items()
                         if self._inherit(state, r, cache).service_date.isoformat() != iso}
        state.seen = {e: d for e, d in state.seen.items() if d != iso}
        if state.encounters:
            # An encounter lives while a retained patient-day refers to it: one of its
            # records' days, or the day of one of its own versions.
            referred = {r.encounter_id for r in state.records.values()}
            for eid, versions in list(state.encounters.items()):
                if eid in referred or any(v.service_date.isoformat() in state.days
                                          for v in versions):
                    continue
                del state.encounters[eid]
                for v in versions:
                    state.seen.pop(v.event_id, None)

    def _evaluate(self, state: PatientState, now: float, rev_floor: int, out: Outcome,
                  force_settled: bool = False, force_closed: bool = False) -> dict[date, DayView]:
        settle = self.settings.settle_seconds
        days = state.days

        def settled(day: date) -> bool:
            ds = days.get(day.isoformat())
            return force_settled or ds is None or ds.closed or now >= ds.last_input_at + settle

        def closed(day: date) -> bool:
            ds = days.get(day.isoformat())
            return force_closed or ds is None or ds.closed

        waiting: set[date] = set()  # days where a MISSING_NDC waits for the day to settle

        def open_missing_ndc(day: date, akey: str) -> bool:
            for ds in days.values():
                em = ds.emitted.get(akey)
                if em is not None and em.state == OPEN:
                    return True
            waiting.add(day)
            return False

        records = state.records.values()
        contexts: dict[str, Context] = {}
        awaiting: set[tuple[str, str]] = set()  # pending for want of their encounter
        if not state.encounters:
            # No context to inherit: records derive as they are; those with an encounter
            # id that lack a context field await it.
            # (encounters.lacks_context, inlined: this runs for every record)
            awaiting = {(r.event_type, r.record_id) for r in records
                        if r.encounter_id is not None and r.event_type != DISPENSE
                        and (r.place_of_service is None or r.payer_class is None
                             or r.rendering_npi is None or not r.timezone_given)}
        else:
            derived = []
            zone_of = normalise.zone
            for rec in records:
                if rec.encounter_id is None and rec.timezone_given:
                    derived.append(rec)
                    continue
                ctx = self._context(state, rec.encounter_id, contexts)
                inherited = merge(rec, ctx, zone_of)
                derived.append(inherited.record)
                if inherited.awaits_encounter:
                    awaiting.add((rec.event_type, rec.record_id))
            records = derived
        views = self.evaluator.evaluate_patient(state.patient_id, records, settled,
                                                open_missing_ndc, closed=closed,
                                                awaiting=awaiting, contexts=contexts)
        for iso, ds in days.items():
            day = date.fromisoformat(iso)
            view = views.get(day)
            self._diff_day(state, ds, view, rev_floor, out)
            # Only a MISSING_NDC or a record awaiting its encounter, held back until
            # settle, makes a later settle evaluation worthwhile; without one the day's
            # decisions cannot change by waiting.
            ds.settled_evaluated = day not in waiting and not (view and view.awaits_settle)
        return views

    def _diff_day(self, state: PatientState, ds: DayState, view: DayView | None, rev_floor: int,
                  out: Outcome) -> None:
        final = ds.closed
        emitted = ds.emitted
        lines = alerts = {}
        wanted = 0  # keys wanted now (each is in `emitted` once compared below)
        if view is not None:
            # Each wanted message is compared with the last one emitted as soon as it is
            # rendered: emitting touches only its own key, so the order of decisions is
            # that of first rendering all and then comparing, without the extra dict.
            lines, alerts = view.lines, view.alerts
            iso = view.day.isoformat()  # once per day, not once per message
            pid = state.patient_id
            for key, ln in lines.items():
                if ln.held:
                    continue
                wanted += 1
                value = self._render_line(pid, iso, ln, final)
                em = emitted.get(key)
                if em is None or not em.same_as(value):
                    self._emit(ds, key, LINE, value, rev_floor, out)
            for key, a in alerts.items():
                value = self._render_alert(pid, iso, view, key, a, final)
                em = emitted.get(key)
                if em is None or not em.same_as(value):
                    self._emit(ds, key, ALERT, value, rev_floor, out)
            wanted += len(alerts)
        if len(emitted) == wanted:
            return  # every key the day ever emitted is still wanted (all are emitted now)
        for key, em in list(emitted.items()):
            wanted_line = lines.get(key)
            if (wanted_line is not None and not wanted_line.held) or key in alerts:
                continue  # still wanted: handled above
            state_now = _REVERSE.get(em.state, em.state)
            if state_now != em.state or em.final != final:
                self._emit(ds, key, em.kind, {**em.value, "state": state_now, "final": final},
                           rev_floor, out)

    @staticmethod
    def _emit(ds: DayState, key: str, kind: str, value: dict, rev_floor: int, out: Outcome) -> None:
        em = ds.emitted.get(key)
        rev = max((em.rev if em else 0) + 1, rev_floor)
        ds.emitted[key] = Emitted(rev, kind, value)
        out.decisions.append(Decision(kind, key, {**value, "revision": rev}))

    def _render_line(self, patient_id: str, iso: str, ln: Line, final: bool) -> dict:
        rec = ln.record
        warnings = ln.warnings
        events = ln.source_event_ids
        return {
            "line_id": ln.key, "state": ACTIVE, "final": final,
            "patient_id": patient_id, "encounter_id": rec.encounter_id,
            "service_date": iso, "place_of_service": rec.place_of_service,
            "payer_class": rec.payer_class, "code": ln.code, "modifiers": ln.modifiers,
            "units": ln.units, "ndc": ln.ndc, "ndc_qualifier": "N4" if ln.ndc else None,
            "ndc_quantity": ln.ndc_quantity, "ndc_unit": ln.ndc_unit,
            "diagnosis_codes": list(rec.diagnosis_codes or ()),
            "rendering_npi": rec.rendering_npi,
            # most lines have one source event and no warning: skip sorting those
            "source_event_ids": sorted(events) if len(events) > 1 else list(events),
            "expected_reimbursement": ln.expected,
            "denial_risk": self._denial_risk(warnings),
            "warnings": sorted(warnings) if warnings else [],
        }

    def _denial_risk(self, warnings: set[str]) -> float:
        risk = 1.0
        for reason in warnings:
            risk *= 1.0 - self.rules.reason(reason).risk_weight
        return round(1.0 - risk, 4)

    def _render_alert(self, patient_id: str, iso: str, view: DayView, key: str, a: Alert,
                      final: bool) -> dict:
        info = self.rules.reason(a.reason_code)
        lines = [view.lines[k] for k in a.line_keys if k in view.lines]
        events = set(a.source_event_ids)
        for ln in lines:
            events.update(ln.source_event_ids)
        return {
            "alert_id": key, "state": OPEN, "final": final,
            "reason_code": a.reason_code, "severity": a.severity or info.severity,
            "work_queue": info.work_queue, "message": a.message, "suggested_fix": a.suggested_fix,
            "predicted_denial": {"carc": info.carc, "rarc": a.rarc or info.rarc},
            "patient_id": patient_id, "encounter_id": a.record.encounter_id,
            "service_date": iso, "payer_class": a.record.payer_class,
            "code": a.code, "rendering_npi": a.record.rendering_npi,
            "line_id": lines[0].key if lines else None,
            # every line the alert holds or warns about: a held line may never be emitted,
            # so its code and value are known downstream (the audit report) only from here
            "lines": [{"line_id": ln.key, "code": ln.code, "expected_reimbursement": ln.expected}
                      for ln in lines],
            "revenue_at_risk": round(sum(ln.expected for ln in lines), 2),
            "source_event_ids": sorted(events), "details": a.details,
        }
