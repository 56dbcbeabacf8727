"""HL7 v2 DTM/TS timestamps → RFC 3339 (ehr-mapping.md §4.1).

`YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`: an offset is used as given; without one
the time is local to the facility zone. A spring-forward gap time takes the offset before
the change (02:30 → 03:30 CDT) and an ambiguous fall-back time its first occurrence, both
with a warning; a date alone is 00:00 local with the warning `date_only`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

_DTM = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,4})?)?)?)?)?)?"
    r"([+-]\d{4})?")

DATE_ONLY = "date_only"
DST_GAP = "dst_gap"
DST_AMBIGUOUS = "dst_ambiguous"


class InvalidTimestamp(ValueError):
    """Not an HL7 DTM, or a calendar/clock value out of range."""


@dataclass(frozen=True, slots=True)
class Stamp:
    at: datetime                 # aware
    text: str                    # RFC 3339 with offset
    warnings: tuple[str, ...]


def written_date(text: str | None) -> date | None:
    """The calendar date written in the timestamp (the site tables' effective date)."""
    if not text:
        return None
    m = _DTM.fullmatch(text.strip())
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2] or 1), int(m[3] or 1))
    except ValueError:
        return None


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=64)
def known_zone(name: str | None) -> bool:
    """True when `name` is an IANA zone this machine can load."""
    if not name or len(name) > 256 or "\x00" in name:
        return False
    try:
        _zone(name)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError, IsADirectoryError...
        return False
    return True


def parse_timestamp(text: str, zone_name: str) -> Stamp:
    """Raises InvalidTimestamp."""
    m = _DTM.fullmatch(text.strip())
    if not m:
        raise InvalidTimestamp("not an HL7 timestamp")
    year, month, day, hour, minute, second = (int(g) if g else None for g in m.groups()[:6])
    fraction, offset = m[7], m[8]
    warnings: list[str] = []
    if hour is None:
        warnings.append(DATE_ONLY)
    micro = round(float(fraction) * 1_000_000) if fraction else 0
    try:
        naive = datetime(year, month or 1, day or 1, hour or 0, minute or 0, second or 0,
                         min(micro, 999_999))
    except ValueError:
        raise InvalidTimestamp("date or time out of range") from None
    if offset:
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 23 or minutes > 59:
            raise InvalidTimestamp("offset out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        at = naive.replace(tzinfo=timezone(-delta if offset[0] == "-" else delta))
    else:
        zone = _zone(zone_name)
        at = naive.replace(tzinfo=zone, fold=0)
        try:
            back = at.astimezone(UTC).astimezone(zone)
        except OverflowError:
            raise InvalidTimestamp("date out of range") from None
        if back.replace(tzinfo=None) != naive:
            warnings.append(DST_GAP)       # fold=0 used the offset before the change
            at = back
        elif at.utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset():
            warnings.append(DST_AMBIGUOUS)  # fold=0 is the first occurrence
    try:
        text_out = at.isoformat()
    except (OverflowError, ValueError):
        raise InvalidTimestamp("date out of range") from None
    return Stamp(at=at, text=text_out, warnings=tuple(warnings))
