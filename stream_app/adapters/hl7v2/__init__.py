"""HL7 v2 adapter: one input unit (a Kafka record of `ehr.hl7v2`, MLLP-framed or not, or
the bytes of an `.hl7` file) → canonical records and dead letters (ehr-mapping.md §4).

    adapt(raw, site, *, default_tz="UTC", rules=None) -> Adapted

Message types (MSH-9): RAS^O17 and VXU^V04 → `medication.administered` (one per RXA),
RDS^O13 → `drug.dispensed` (one per RXD), DFT^P03 → `em.service` (one per E/M FT1),
ADT^A01-A08/A13/A11/A38 → `encounter.updated`. Anything else is a dead letter
`HL7_UNSUPPORTED_MESSAGE` naming the type. The adapter never raises: an unexpected
exception becomes `HL7_INVALID` ("internal error", naming the segment reached), which is
a bug to fix, never an answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from functools import lru_cache

from stream_app.adapters import Adapted, AdapterDeadLetter
from stream_app.adapters.hl7v2 import mapping
from stream_app.adapters.hl7v2.mapping import Context, Refusal
from stream_app.adapters.hl7v2.message import (
    EncodingRefused,
    MessageRefused,
    Unit,
    parse_message,
    split_messages,
)
from stream_app.vocabulary import (
    HL7_INVALID,
    HL7_NOT_BILLABLE,
    HL7_UNSUPPORTED_MESSAGE,
    INVALID_ENCODING,
)

__all__ = ["adapt", "looks_like_hl7", "split_messages", "INTERNAL_ERROR"]

INTERNAL_ERROR = "internal error"
HEADER = frozenset({"MSH"})


@lru_cache(maxsize=1)
def _packaged_rules():
    from stream_app.rules import load_rules
    return load_rules(None)


def _em_codes(rules) -> Callable[[str, date], bool]:
    def is_em(code: str, on: date) -> bool:
        ruleset = rules if rules is not None else _packaged_rules()
        return code in ruleset.code_set("em", on)
    return is_em


def looks_like_hl7(data: bytes) -> bool:
    """ehr-mapping §1 content detection: the first non-blank bytes are `MSH`, `FHS`, `BHS`
    or an MLLP start byte (after an optional UTF-8 byte-order mark)."""
    head = data[:4096].removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return head[:1] == b"\x0b" or head[:3] in (b"MSH", b"FHS", b"BHS")


def adapt(raw: bytes, site, *, default_tz: str = "UTC", rules=None) -> Adapted:
    """Every message of `raw` mapped (ehr-mapping.md §4).

    `site` is a `SiteConfig`; `default_tz` the configured zone (`CHARGECAP_TIMEZONE`);
    `rules` the engine's `RuleSet` whose `em` code set tells E/M charges apart (default:
    the packaged rule data).
    """
    records: list[dict] = []
    dead: list[AdapterDeadLetter] = []
    try:
        data = bytes(raw)
    except TypeError:
        data = str(raw).encode("utf-8", "replace")
    try:
        units = split_messages(data)
    except Exception as exc:  # noqa: BLE001 - the adapter never raises (module docstring)
        return Adapted([], [AdapterDeadLetter(
            HL7_INVALID, f"{INTERNAL_ERROR} while framing: {type(exc).__name__}", None, data)])
    if not units:
        dead.append(AdapterDeadLetter(HL7_INVALID, "no MSH segment", "MSH", data))
    is_em = _em_codes(rules)
    for unit in units:
        adapt_unit(unit, site, default_tz, is_em, records, dead)
    return Adapted(records, dead)


def _printable(code: str) -> str:
    """A message type or event code as it may appear in an error (short, plain ASCII)."""
    return re.sub(r"[^A-Z0-9_]", "?", code[:12])


def adapt_unit(unit: Unit, site, default_tz: str, is_em, records: list[dict],
               dead: list[AdapterDeadLetter]) -> None:
    if unit.orphan:
        dead.append(AdapterDeadLetter(HL7_INVALID, "segments outside any message (no MSH)",
                                      "MSH", unit.raw))
        return
    reached = "MSH"
    try:
        try:
            header = parse_message(unit.text, keep=HEADER)
        except EncodingRefused as exc:
            dead.append(AdapterDeadLetter(INVALID_ENCODING, str(exc), "MSH-18", unit.raw))
            return
        except MessageRefused as exc:
            dead.append(AdapterDeadLetter(HL7_INVALID, str(exc), exc.field, unit.raw))
            return
        msh = header.first("MSH")
        kind, event = (msh.value(9, 1, 1) or "").upper(), (msh.value(9, 1, 2) or "").upper()
        if not kind:
            dead.append(AdapterDeadLetter(HL7_INVALID, "message type is empty", "MSH-9", unit.raw))
            return
        family = mapping.MESSAGE_FAMILIES.get((kind, event))
        if family is None:
            dead.append(AdapterDeadLetter(
                HL7_UNSUPPORTED_MESSAGE,
                f"message type {_printable(kind)}^{_printable(event)} is not mapped",
                "MSH-9", unit.raw))
            return
        # Same bytes, same checks as the header parse: this cannot refuse.
        msg = parse_message(unit.text, keep=mapping.SEGMENTS_READ[family])
        ctx_args = (msg, site, default_tz, is_em)

        def one(producer, build) -> dict | None:
            nonlocal reached
            reached = producer.name if producer else reached
            ctx = Context(*ctx_args, warnings=list(msg.warnings))
            try:
                return build(ctx)
            except Refusal as refusal:
                dead.append(AdapterDeadLetter(refusal.code, refusal.error, refusal.where, unit.raw))
                return None

        if family == "administration":
            rxas = msg.all("RXA")
            if not rxas:
                dead.append(AdapterDeadLetter(HL7_INVALID, f"{kind}^{event} without RXA", "RXA",
                                              unit.raw))
            vaccine = kind == "VXU"
            for rxa in rxas:
                rec = one(rxa, lambda ctx, rxa=rxa: mapping.administration(ctx, rxa, vaccine))
                if rec:
                    records.append(rec)
        elif family == "dispense":
            rxds = msg.all("RXD")
            if not rxds:
                dead.append(AdapterDeadLetter(HL7_INVALID, "RDS^O13 without RXD", "RXD", unit.raw))
            for rxd in rxds:
                rec = one(rxd, lambda ctx, rxd=rxd: mapping.dispense(ctx, rxd))
                if rec:
                    records.append(rec)
        elif family == "em_service":
            ft1s = msg.all("FT1")
            before = len(dead)
            found = []
            for ft1 in ft1s:
                rec = one(ft1, lambda ctx, ft1=ft1: mapping.em_service(ctx, ft1))
                if rec:
                    found.append(rec)
            records.extend(found)
            if not found and len(dead) == before:
                dead.append(AdapterDeadLetter(
                    HL7_NOT_BILLABLE, "DFT^P03 without an E/M charge (other charges are derived)",
                    "FT1-25" if ft1s else "FT1", unit.raw))
        else:   # family "encounter"
            rec = one(msg.first("PV1"), lambda ctx: mapping.encounter(ctx, event))
            if rec:
                records.append(rec)
    except Exception as exc:  # noqa: BLE001 - the adapter never raises (module docstring)
        dead.append(AdapterDeadLetter(
            HL7_INVALID, f"{INTERNAL_ERROR} at segment {reached}: {type(exc).__name__}",
            reached, unit.raw))
