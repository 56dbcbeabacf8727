"""Reading FHIR JSON (orjson dicts) safely, and resolving references in one input unit.

Every reader checks the JSON type of the element it reads and raises `Refusal`
(`FHIR_INVALID`, naming the element's FHIR path) when it is wrong: a wrong type is a sender
error, never a guess. References resolve as R4 `bundle.html#references` says, without
fetching anything; each look-up is one hop, so cycles cannot loop.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import orjson
from jcs.ntoj import convert2Es6Format

from stream_app.vocabulary import FHIR_INVALID


class Refusal(Exception):  # noqa: N818 - control flow inside the adapter, never escapes it
    """The resource (or entry) becomes a dead letter with this code and FHIR path."""

    __slots__ = ("code", "error", "field")

    def __init__(self, code: str, error: str, field: str | None) -> None:
        super().__init__(error)
        self.code, self.error, self.field = code, error, field


def invalid(path: str, what: str) -> Refusal:
    return Refusal(FHIR_INVALID, f"{path} {what}", path)


# ------------------------------------------------------------------------- typed readers

def obj(value: object, path: str) -> dict | None:
    if value is None or type(value) is dict:
        return value  # type: ignore[return-value]
    raise invalid(path, "must be a JSON object")


def arr(value: object, path: str) -> list:
    if value is None:
        return []
    if type(value) is list:
        return value
    raise invalid(path, "must be a JSON array")


def string(value: object, path: str) -> str | None:
    """A FHIR string/code/uri: stripped, None when absent or empty."""
    if value is None:
        return None
    if type(value) is str:
        return value.strip() or None
    raise invalid(path, "must be a string")


def number(value: object, path: str) -> int | float | None:
    if value is None:
        return None
    if type(value) in (int, float):
        return value  # type: ignore[return-value]
    raise invalid(path, "must be a number")


def boolean(value: object, path: str) -> bool | None:
    if value is None or type(value) is bool:
        return value  # type: ignore[return-value]
    raise invalid(path, "must be true or false")


def objects(value: object, path: str) -> list[tuple[str, dict]]:
    """The objects of an array element with their paths (`path[i]`); nulls skipped."""
    out = []
    for i, item in enumerate(arr(value, path)):
        if item is None:
            continue
        o = obj(item, f"{path}[{i}]")
        out.append((f"{path}[{i}]", o))
    return out


def codings(concept: dict | None, path: str) -> list[tuple[str | None, str | None, str | None]]:
    """(system, code, display) of a CodeableConcept's codings."""
    if concept is None:
        return []
    out = []
    for cpath, coding in objects(concept.get("coding"), f"{path}.coding"):
        out.append((string(coding.get("system"), f"{cpath}.system"),
                    string(coding.get("code"), f"{cpath}.code"),
                    string(coding.get("display"), f"{cpath}.display")))
    return out


def concept_text(concept: dict | None, path: str) -> str | None:
    return None if concept is None else string(concept.get("text"), f"{path}.text")


def extensions(holder: dict | None, path: str, urls: tuple[str, ...] | frozenset[str]
               ) -> list[tuple[str, dict]]:
    """The extensions of `holder` whose url is one of `urls`, in order, with their paths."""
    if holder is None:
        return []
    out = []
    for epath, ext in objects(holder.get("extension"), f"{path}.extension"):
        if string(ext.get("url"), f"{epath}.url") in urls:
            out.append((epath, ext))
    return out


# ------------------------------------------------------------------------- times

# FHIR dateTime: YYYY, YYYY-MM, YYYY-MM-DD, or with hh:mm:ss(.s+) and a required offset.
_DATETIME = re.compile(
    r"(?P<date>\d{4}(?:-\d{2}(?:-\d{2})?)?)"
    r"(?:T(?P<time>\d{2}:\d{2}:\d{2}(?:\.\d+)?)(?P<offset>Z|[+-]\d{2}:\d{2}))?", re.ASCII)


@dataclass(frozen=True, slots=True)
class Instant:
    """A parsed dateTime: `text` is the RFC 3339 form for the record (as written when it
    has a time), `at` the aware datetime, `date_only` when the input had no time."""

    text: str
    at: datetime
    date_only: bool


def parse_datetime(value: object, path: str, zone_for_date) -> Instant | None:
    """A FHIR dateTime element -> Instant; None when absent. A date-only value becomes 00:00
    in `zone_for_date(date)` (a ZoneInfo); a partial date (year, year-month) or anything
    unparsable is FHIR_INVALID."""
    text = string(value, path)
    if text is None:
        return None
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise invalid(path, "is not a FHIR dateTime")
    if m.group("time") is None:
        if len(m.group("date")) != 10:
            raise invalid(path, "is a partial date (no day)")
        try:
            day = date.fromisoformat(m.group("date"))
        except ValueError:
            raise invalid(path, "is not a calendar date") from None
        zone = zone_for_date(day)
        at = datetime(day.year, day.month, day.day, tzinfo=zone)
        return Instant(at.isoformat(), at, True)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(path, "is not a valid date and time") from None
    if not 1900 <= at.year <= 2100 or at.utcoffset() is None or abs(at.utcoffset()) >= timedelta(hours=24):
        raise invalid(path, "is out of range")
    return Instant(text, at, False)


def tz_code(holder: dict | None, path: str, url: str) -> str | None:
    """The tz-code extension's valueCode on a primitive's `_element` object."""
    for epath, ext in extensions(holder, path, (url,)):
        return string(ext.get("valueCode"), f"{epath}.valueCode")
    return None


# ------------------------------------------------------------------------- identity

def version_ref(rtype: str, resource: dict, local_id: str) -> str:
    """`{Type}/{id}/_history/{versionId}`; without a versionId, `{Type}/{id}/_sha256/{16 hex}`
    of the RFC 8785 canonical JSON without meta and text (the same content redelivered has
    the same id)."""
    meta = resource.get("meta")
    if type(meta) is dict:
        vid = meta.get("versionId")
        if type(vid) is str and vid.strip():
            return f"{rtype}/{local_id}/_history/{vid.strip()}"
    body = {k: v for k, v in resource.items() if k not in ("meta", "text")}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()[:16]
    return f"{rtype}/{local_id}/_sha256/{digest}"


_EXACT_INT = 2**53


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _canonical(value: object) -> object:
    kind = type(value)
    if kind is dict:
        keys = sorted(value) if all(k.isascii() for k in value) else sorted(value, key=_utf16)
        return {k: _canonical(value[k]) for k in keys}
    if kind is list:
        return [_canonical(v) for v in value]
    if kind is float or (kind is int and abs(value) > _EXACT_INT):  # type: ignore[arg-type]
        # JSON numbers are IEEE 754 doubles in RFC 8785: a larger integer is its double
        return orjson.Fragment(convert2Es6Format(value))
    return value


def canonical_json(value: object) -> bytes:
    """RFC 8785 (JCS) bytes of parsed JSON: members sorted by UTF-16 code units, numbers in
    the ES6 form (the `jcs` reference formatter), strings as orjson escapes them, which is
    JCS's escaping. orjson does the writing: `jcs.canonicalize` gives the same bytes (tested)
    at many times the cost."""
    return orjson.dumps(_canonical(value))


# ------------------------------------------------------------------------- references

# A literal reference `[base/]Type/id[/_history/v]` (R4 §2.3.0 "Literal references").
_LITERAL = re.compile(
    r"(?:.*/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?",
    re.ASCII)


def literal_type_id(reference: str) -> tuple[str, str] | None:
    m = _LITERAL.fullmatch(reference)
    return (m.group("type"), m.group("id")) if m else None


@dataclass(slots=True)
class Found:
    """A resolved reference: the resource, its FHIR path in the unit, and where its own
    `#id` references point (its container when it is contained, else itself)."""

    resource: dict
    rtype: str
    rid: str | None
    contained: bool
    path: str
    holder: dict
    holder_path: str


@dataclass(slots=True)
class Scope:
    """What references of one input unit may resolve to: the unit's entries by fullUrl and
    by type and id, and (Bulk Data) the export's context resources."""

    by_full_url: dict[str, dict] = field(default_factory=dict)
    by_url_suffix: dict[tuple[str, str], dict] = field(default_factory=dict)
    by_type_id: dict[tuple[str, str], dict] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)   # id(resource) -> its FHIR path
    external: Mapping[tuple[str, str], dict] | None = None
    # id(holder) -> contained id -> (path, resource): each `contained` list read once
    _contained: dict[int, dict[str, tuple[str, dict]]] = field(default_factory=dict)

    def contained(self, holder: dict, holder_path: str) -> dict[str, tuple[str, dict]]:
        index = self._contained.get(id(holder))
        if index is None:
            index = {}
            for cpath, res in objects(holder.get("contained"), f"{holder_path}.contained"):
                rid = res.get("id")
                if type(rid) is str:
                    index.setdefault(rid, (cpath, res))
            self._contained[id(holder)] = index
        return index

    def add(self, resource: dict, full_url: str | None, path: str) -> None:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        self.paths[id(resource)] = path
        if full_url:
            self.by_full_url.setdefault(full_url, resource)
            lit = literal_type_id(full_url)
            if lit is not None and "/" in full_url:
                self.by_url_suffix.setdefault(lit, resource)
        if type(rtype) is str and type(rid) is str:
            self.by_type_id.setdefault((rtype, rid), resource)

    def resolve(self, ref: dict | None, path: str, holder: dict, holder_path: str) -> Found | None:
        """The resource `ref` (a Reference object at `path`) points to, or None. `holder` is
        the resource whose `contained` a `#id` reference points into, at `holder_path`."""
        if ref is None:
            return None
        text = string(ref.get("reference"), f"{path}.reference")
        if text is None:
            return None
        if text.startswith("#"):
            hit = self.contained(holder, holder_path).get(text[1:])
            if hit is None:
                return None
            cpath, res = hit
            rtype = string(res.get("resourceType"), f"{cpath}.resourceType")
            return Found(res, rtype or "", text[1:], True, cpath, holder, holder_path)
        found = None
        if text.startswith("urn:") or "://" in text:
            found = self.by_full_url.get(text)
        lit = literal_type_id(text)
        if found is None and lit is not None and not text.startswith("urn:"):
            found = (self.by_url_suffix.get(lit) or self.by_type_id.get(lit)
                     or (self.external.get(lit) if self.external is not None else None))
        if found is None:
            return None
        rtype = found.get("resourceType")
        rtype = rtype if type(rtype) is str else ""
        rid = found.get("id")
        fpath = self.paths.get(id(found), rtype)  # an export's resource: its type names it
        return Found(found, rtype, rid if type(rid) is str else None, False, fpath, found, fpath)

    def found(self, resource: dict) -> Found:
        """A unit resource met without a reference (e.g. a Coverage entry)."""
        rtype = resource.get("resourceType")
        rtype = rtype if type(rtype) is str else ""
        rid = resource.get("id")
        fpath = self.paths.get(id(resource), rtype)
        return Found(resource, rtype, rid if type(rid) is str else None, False, fpath, resource, fpath)


def reference_id(ref: dict | None, path: str, scope: Scope, holder: dict, holder_path: str,
                 rtype: str) -> tuple[str | None, Found | None]:
    """(id, resolved) of a reference expected to point to a `rtype`: the literal id when
    the reference says `rtype/id`, else the resolved resource's id when it is a `rtype`."""
    if ref is None:
        return None, None
    found = scope.resolve(ref, path, holder, holder_path)
    text = string(ref.get("reference"), f"{path}.reference")
    if text is not None and not text.startswith(("#", "urn:")):
        lit = literal_type_id(text)
        if lit is not None and lit[0] == rtype:
            return lit[1], found
    if found is not None and found.rtype == rtype and found.rid:
        return found.rid, found
    return None, found
