"""Encounter context on the derived records (ehr-mapping.md §2): ENCOUNTER_CONTEXT_MISSING,
and the records still in progress at close (MISSING_DOCUMENTATION, `still_in_progress`).

The merge of the context into the records happens before derivation (engine/encounters.py);
here the rules see a record as derived and ask what is still missing once nothing more can
come. Pending records (awaiting their encounter, or in progress) are withheld by the
evaluator: their lines held, their own alerts not raised yet.
"""

from __future__ import annotations

from stream_app import vocabulary as V
from stream_app.engine.derive.model import Alert, RuleFamily, add_alert
from stream_app.engine.encounters import NO_CONTEXT, REQUIRED_CONTEXT, Context

NO_ENCOUNTER_ID = "no_encounter_id"
ENCOUNTER_LACKS_FIELD = "encounter_lacks_field"
STILL_IN_PROGRESS = "still_in_progress"
# RARC M77 "missing/incomplete/invalid place of service" joins CO-16 when POS is missing.
RARC_MISSING_POS = "M77"


class EncounterRules(RuleFamily):
    def _context_missing(self, rec, alerts: list[Alert], subject: str, code: str | None,
                         contexts: dict[str, Context]) -> None:
        """ENCOUNTER_CONTEXT_MISSING: the record, as derived, lacks place of service or
        payer class; `cause` says why its encounter did not supply them."""
        missing = [name for name in REQUIRED_CONTEXT if getattr(rec, name) is None]
        if not missing:
            return
        eid = rec.encounter_id
        if eid is None:
            cause = NO_ENCOUNTER_ID
        else:
            ctx = contexts.get(eid, NO_CONTEXT)
            cause = ENCOUNTER_LACKS_FIELD if ctx.live else ctx.status
        add_alert(alerts, V.ENCOUNTER_CONTEXT_MISSING, rec, subject, code, [],
                  f"Record {rec.record_id} lacks {', '.join(missing)} and its encounter "
                  "does not supply it",
                  "Send the encounter (encounter.updated) with " + ", ".join(missing)
                  + ", or complete the record",
                  {"missing_fields": missing, "encounter_id": eid, "cause": cause})
        if "place_of_service" in missing:
            alerts[-1].rarc = RARC_MISSING_POS

    def _em_context_checks(self, ems, alerts: list[Alert], contexts: dict[str, Context],
                           day_closed: bool) -> None:
        """The E/M records' context and in-progress checks (those deriving a line)."""
        for e in ems:
            if not e.code:
                continue
            if e.place_of_service is not None and e.payer_class is not None and not (
                    e.in_progress and day_closed):
                continue
            subject = "rec:" + e.record_id
            self._context_missing(e, alerts, subject, e.code, contexts)
            if e.in_progress and day_closed:
                add_alert(alerts, V.MISSING_DOCUMENTATION, e, subject, e.code, [],
                          f"E/M {e.record_id} was still in progress when the day closed",
                          "Complete the E/M record (send a version without in_progress)",
                          {"missing_fields": ["ended_at"], "cause": STILL_IN_PROGRESS})
