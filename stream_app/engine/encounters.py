"""Encounter context (ehr-mapping.md §2): what an `encounter.updated` lends to the records
of its visit, and the merge of that context into a record.

The context is a function of the *set* of an encounter's versions, never of their arrival
order: for each of the four context fields, the value of the newest version (by
`recorded_at`, then `event_id`) carrying the field, among the versions newer than the
newest `entered-in-error` one. So only a few versions can ever matter: the newest
withdrawal, the newest live version and, per field, the newest version carrying it.
`needed_versions` keeps those and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from stream_app.engine.records import Encounter
from stream_app.vocabulary import DISPENSE

CONTEXT_FIELDS = ("place_of_service", "payer_class", "facility_timezone", "rendering_npi")
# The two whose absence, once settled, raises ENCOUNTER_CONTEXT_MISSING.
REQUIRED_CONTEXT = ("place_of_service", "payer_class")

# What an encounter is to its records (also ENCOUNTER_CONTEXT_MISSING's `cause`).
NOT_RECEIVED = "encounter_not_received"
WITHDRAWN = "encounter_withdrawn"
LIVE = "live"


def _order(v: Encounter) -> tuple:
    return (v.recorded_at, v.event_id)


@dataclass(frozen=True, slots=True)
class Context:
    place_of_service: str | None = None
    payer_class: str | None = None
    facility_timezone: str | None = None
    rendering_npi: str | None = None
    status: str = NOT_RECEIVED  # NOT_RECEIVED, WITHDRAWN or LIVE

    @property
    def live(self) -> bool:
        return self.status == LIVE


NO_CONTEXT = Context()


def needed_versions(versions: list[Encounter]) -> list[Encounter]:
    """The versions the context rule can ever read, whatever arrives later: the newest
    withdrawal, the newest live version, and per field the newest version carrying it.
    A version outside these is older than one of them that decides the same thing."""
    keep: dict[str, Encounter] = {}

    def newest(slot: str, v: Encounter) -> None:
        cur = keep.get(slot)
        if cur is None or _order(v) > _order(cur):
            keep[slot] = v

    for v in versions:
        if v.withdrawn:
            newest("withdrawn", v)
            continue
        newest("live", v)
        for name in CONTEXT_FIELDS:
            if getattr(v, name) is not None:
                newest(name, v)
    return sorted({v.event_id: v for v in keep.values()}.values(), key=_order)


def context_of(versions: list[Encounter]) -> Context:
    """The encounter's context from its versions (any order)."""
    if not versions:
        return NO_CONTEXT
    cutoff = max((_order(v) for v in versions if v.withdrawn), default=None)
    live = [v for v in versions if not v.withdrawn and (cutoff is None or _order(v) > cutoff)]
    if not live:
        return Context(status=WITHDRAWN)
    live.sort(key=_order, reverse=True)
    values = {}
    for name in CONTEXT_FIELDS:
        values[name] = next((getattr(v, name) for v in live if getattr(v, name) is not None),
                            None)
    return Context(**values, status=LIVE)


class Inherited(NamedTuple):
    """The record as derived (own values, gaps filled from the context) and whether it is
    pending for want of its encounter (ehr-mapping.md §2 (a))."""

    record: object
    awaits_encounter: bool


def lacks_context(rec) -> bool:
    """An administration or E/M record missing one of the four context fields."""
    return (rec.place_of_service is None or rec.payer_class is None
            or rec.rendering_npi is None or not rec.timezone_given)


def merge(rec, ctx: Context, zone_of) -> Inherited:
    """`rec` with each context field it lacks taken from `ctx` (its own value always wins);
    a dispense takes only the zone. `zone_of(name)` is the ZoneInfo of a known zone name:
    a new zone recomputes the service date."""
    if rec.event_type == DISPENSE:
        if rec.timezone_given or ctx.facility_timezone is None:
            return Inherited(rec, False)
        return Inherited(_with_zone(rec, ctx.facility_timezone, zone_of, {}), False)
    if not lacks_context(rec):
        return Inherited(rec, False)
    if not ctx.live:
        return Inherited(rec, rec.encounter_id is not None)
    changes = {}
    for name in REQUIRED_CONTEXT + ("rendering_npi",):
        if getattr(rec, name) is None:
            value = getattr(ctx, name)
            if value is not None:
                changes[name] = value
    if not rec.timezone_given and ctx.facility_timezone is not None:
        return Inherited(_with_zone(rec, ctx.facility_timezone, zone_of, changes), False)
    return Inherited(replace(rec, **changes) if changes else rec, False)


def _with_zone(rec, tz: str, zone_of, changes: dict):
    if tz == rec.timezone:
        return replace(rec, **changes) if changes else rec
    day = rec.occurred_at.astimezone(zone_of(tz)).date()
    return replace(rec, timezone=tz, service_date=day, **changes)
