"""Normalisation of raw record values (contract.md §2, billing-rules.md §6, §8).

Pure functions; each returns None for a value it cannot normalise, never raises
(`service_date` is the one exception: an unknown zone name is a configuration error and
raises ValueError — `parse_record` only ever passes zones it has already validated).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from stream_app.vocabulary import (
    IM,
    INTRA_ARTERIAL,
    INTRA_ARTICULAR,
    INTRADERMAL,
    IV,
    IV_INFUSION,
    IV_PUSH,
    ORAL,
    OTHER_ROUTE,
    SC,
)

# Keys are upper-cased with every space, hyphen and underscore removed, so `IV push`,
# `iv-push`, `IV_PUSH` and `ivpush` are the same route.
_ROUTE_SYNONYMS: dict[str, str] = {
    "IM": IM,
    "INTRAMUSCULAR": IM,
    "SC": SC,
    "SUBCUTANEOUS": SC,
    "SQ": SC,
    "SUBQ": SC,
    "SUBCUT": SC,
    "IVPUSH": IV_PUSH,
    "IVP": IV_PUSH,
    "INTRAVENOUSPUSH": IV_PUSH,
    "IVINFUSION": IV_INFUSION,
    "INTRAVENOUSINFUSION": IV_INFUSION,
    "IV": IV,
    "INTRAVENOUS": IV,
    "INTRAARTERIAL": INTRA_ARTERIAL,
    "INTRADERMAL": INTRADERMAL,
    "ID": INTRADERMAL,
    "INTRAARTICULAR": INTRA_ARTICULAR,
    "ORAL": ORAL,
    "PO": ORAL,
    "OTHER": OTHER_ROUTE,
}
_ROUTE_SEPARATORS = str.maketrans("", "", " \t-_")

_PUSH_MAX = timedelta(minutes=15)


@lru_cache(maxsize=4096)
def _normalize_route(raw: str) -> str | None:
    return _ROUTE_SYNONYMS.get(raw.strip().upper().translate(_ROUTE_SEPARATORS))


def normalize_route(raw: str | None) -> str | None:
    """Canonical route for a raw route string (case-insensitive, synonyms), else None."""
    if type(raw) is not str or len(raw) > 64:
        return None
    return _normalize_route(raw)


def resolve_iv(route: str, occurred_at: datetime, ended_at: datetime | None) -> str | None:
    """IV and IV_INFUSION by duration: <= 15 min is IV_PUSH, longer is IV_INFUSION.

    Returns None when the route needs a duration (IV, IV_INFUSION) and ended_at is missing.
    Other routes are returned unchanged.
    """
    canonical = normalize_route(route)
    if canonical not in (IV, IV_INFUSION):
        return canonical if canonical is not None else route
    if ended_at is None:
        return None
    try:
        duration = ended_at - occurred_at
    except (TypeError, ValueError):  # naive vs aware: no usable duration
        return None
    if duration < timedelta(0):
        return None  # ends before it starts: cannot be coded
    return IV_PUSH if duration <= _PUSH_MAX else IV_INFUSION


_NDC_SEGMENTS = {  # hyphenated segment lengths -> where the leading zero goes
    (4, 4, 2): 0,
    (5, 3, 2): 1,
    (5, 4, 1): 2,
    (5, 4, 2): None,
}


def ndc_to_11(raw: str | None) -> str | None:
    """NDC in 4-4-2 / 5-3-2 / 5-4-1 (hyphenated) or 11 digits (hyphens optional) -> 11 digits."""
    if type(raw) is not str or len(raw) > 32:
        return None
    s = raw.strip()
    if not s.isascii():
        return None
    if "-" not in s:
        # An unhyphenated 10-digit NDC is ambiguous (billing-rules §6): rejected.
        return s if len(s) == 11 and s.isdigit() else None
    parts = s.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    key = (len(parts[0]), len(parts[1]), len(parts[2]))
    if key not in _NDC_SEGMENTS:
        return None
    pad = _NDC_SEGMENTS[key]
    if pad is not None:
        parts[pad] = "0" + parts[pad]
    return "".join(parts)


def npi_check_digit(first9: str) -> str:
    """The NPI check digit: Luhn over the prefix 80840 + the first 9 digits, doubling every
    second digit from the rightmost digit of that payload (the check digit sits to its
    right)."""
    total = 0
    for i, ch in enumerate(reversed("80840" + first9)):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def npi_valid(npi: str | None) -> bool:
    """10 digits, Luhn check digit over the prefix 80840 + first 9 digits."""
    if type(npi) is not str or len(npi) != 10 or not npi.isascii() or not npi.isdigit():
        return False
    return npi_check_digit(npi[:9]) == npi[9]


_ICD10CM = re.compile(r"[A-Z][0-9][A-Z0-9](?:\.[A-Z0-9]{1,4})?", re.ASCII)


def icd10cm_shaped(code: str | None) -> bool:
    """A letter, a digit, a letter or digit, then optionally a dot and 1-4 letters/digits."""
    if type(code) is not str or len(code) > 8:
        return False
    return _ICD10CM.fullmatch(code.upper()) is not None


@lru_cache(maxsize=1024)
def zone(tz: str) -> ZoneInfo | None:
    """The cached ZoneInfo for an IANA name, or None when the name is unknown."""
    if type(tz) is not str or not tz or len(tz) > 256 or "\x00" in tz:
        return None
    try:
        return ZoneInfo(tz)
    except Exception:  # ZoneInfoNotFoundError, ValueError (bad path), IsADirectoryError, ...
        return None


@lru_cache(maxsize=4096)
def _service_date(occurred_at: datetime, tz: str) -> date:
    zi = zone(tz)
    if zi is None:
        raise ValueError("unknown time zone")
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return occurred_at.astimezone(zi).date()


def service_date(occurred_at: datetime, tz: str) -> date:
    """Calendar date of occurred_at in the IANA zone tz (DST-correct).

    A naive occurred_at is taken as UTC. An unknown zone raises ValueError.
    """
    return _service_date(occurred_at, tz)
