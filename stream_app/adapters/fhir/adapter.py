"""`adapt`: one FHIR input unit (a resource or a Bundle, as bytes) -> records + dead letters.

Input units, Bundles and their limits follow ehr-mapping.md §3.1; the field rules are in
`mapping.py`. Never raises: an unexpected exception becomes a `FHIR_INVALID` dead letter
naming the entry it happened in (and is a bug to fix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from stream_app.adapters import Adapted, AdapterDeadLetter
from stream_app.adapters.fhir import mapping as M
from stream_app.adapters.fhir._model import Refusal, Scope, string
from stream_app.adapters.site import SiteConfig
from stream_app.vocabulary import (
    FHIR_DELETE_UNMAPPABLE,
    FHIR_INVALID,
    FHIR_UNSUPPORTED_BUNDLE_TYPE,
    FHIR_UNSUPPORTED_RESOURCE,
    INVALID_ENCODING,
    INVALID_JSON,
    TOO_LARGE,
)

if TYPE_CHECKING:
    from stream_app.adapters.fhir.bulk import BulkIndex

_UTF8_BOM = b"\xef\xbb\xbf"


def adapt(raw: bytes, site: SiteConfig, *, default_tz: str = "UTC",
          bulk: BulkIndex | None = None) -> Adapted:
    """Map one input unit. `bulk` is the Bulk Data export's context index (`bulk.py`):
    references that the unit itself does not resolve are looked up there."""
    reached = ["(input unit)"]
    try:
        raw_bytes = bytes(raw) if not isinstance(raw, str) else raw.encode("utf-8")
    except Exception:  # not bytes-like at all
        raw_bytes = repr(raw).encode("utf-8", "replace")
    try:
        return _adapt(raw_bytes, site, default_tz, bulk, reached)
    except Exception as exc:  # a bug in the adapter: the unit is kept, the worker goes on
        return Adapted([], [AdapterDeadLetter(
            FHIR_INVALID, f"adapter failed ({type(exc).__name__}) at {reached[0]}",
            reached[0], raw_bytes)])


def _dead(code: str, error: str, path: str | None, raw: bytes) -> AdapterDeadLetter:
    return AdapterDeadLetter(code, error, path, raw)


def _within_depth(node: dict | list, remaining: int) -> bool:
    """Whether no container under `node` (itself included) nests deeper than `remaining`.
    Recursion is bounded by `remaining`, and is about twice as fast as an explicit stack."""
    if remaining <= 0:
        return False
    for value in node.values() if type(node) is dict else node:
        kind = type(value)
        if (kind is dict or kind is list) and not _within_depth(value, remaining - 1):
            return False
    return True


def _max_entries(site: SiteConfig) -> int:
    value = site.setting(M.SOURCE, "fhir_max_entries")
    return int(value) if value and value.isdigit() else M.DEFAULT_MAX_ENTRIES


def _adapt(raw: bytes, site: SiteConfig, default_tz: str, bulk: BulkIndex | None,
           reached: list[str]) -> Adapted:
    text = raw[3:] if raw.startswith(_UTF8_BOM) else raw
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return Adapted([], [_dead(INVALID_ENCODING, "input is not UTF-8", None, raw)])
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            return Adapted([], [_dead(FHIR_INVALID, f"JSON nested deeper than {M.MAX_DEPTH}",
                                      None, raw)])
        return Adapted([], [_dead(INVALID_JSON, "input is not JSON", None, raw)])
    if type(doc) in (dict, list) and not _within_depth(doc, M.MAX_DEPTH):
        return Adapted([], [_dead(FHIR_INVALID, f"JSON nested deeper than {M.MAX_DEPTH}", None, raw)])
    if type(doc) is not dict:
        return Adapted([], [_dead(FHIR_INVALID, "input is not a JSON object", None, raw)])
    rtype = doc.get("resourceType")
    if type(rtype) is not str or rtype not in M.KNOWN_TYPES:
        return Adapted([], [_dead(FHIR_INVALID, "resourceType is missing or not a FHIR R4 type",
                                  "resourceType", raw)])
    scope = Scope(external=bulk.resources if bulk is not None else None)
    ctx = M.UnitContext(site=site, default_tz=default_tz, scope=scope, entries=[], bulk=bulk)
    if rtype != "Bundle":
        scope.add(doc, None, rtype)
        ctx.entries.append((rtype, doc))
        return _single(doc, rtype, raw, ctx, reached)
    return _bundle(doc, raw, ctx, site, reached)


def _single(doc: dict, rtype: str, raw: bytes, ctx: M.UnitContext, reached: list[str]) -> Adapted:
    reached[0] = rtype
    if rtype not in M.MAPPERS:
        why = ("a context resource alone carries no service: send it in the Bundle of the "
               "resource it describes" if rtype in M.CONTEXT_TYPES else
               "resource type is not mapped")
        return Adapted([], [_dead(FHIR_UNSUPPORTED_RESOURCE, f"{rtype}: {why}", "resourceType", raw)])
    try:
        return Adapted([M.map_resource(rtype, doc, rtype, ctx, None)], [])
    except Refusal as ref:
        return Adapted([], [_dead(ref.code, ref.error, ref.field, raw)])
    except M.LinkedCharge:
        # Only reachable with a Bulk Data index: the ChargeItem enriches an administration
        # of the export, whose record carries it.
        return Adapted([], [])


def _bundle(doc: dict, raw: bytes, ctx: M.UnitContext, site: SiteConfig,
            reached: list[str]) -> Adapted:
    reached[0] = "Bundle"
    try:
        btype = string(doc.get("type"), "Bundle.type")
        if btype not in M.BUNDLE_TYPES:
            return Adapted([], [_dead(FHIR_UNSUPPORTED_BUNDLE_TYPE,
                                      "Bundle type is not one of " + ", ".join(sorted(M.BUNDLE_TYPES)),
                                      "Bundle.type", raw)])
        entries = objects_or_refuse(doc)
    except Refusal as ref:
        return Adapted([], [_dead(ref.code, ref.error, ref.field, raw)])
    if len(entries) > _max_entries(site):
        return Adapted([], [_dead(TOO_LARGE, f"Bundle has more than {_max_entries(site)} entries",
                                  "Bundle.entry", raw)])
    records: list[dict] = []
    dead: list[AdapterDeadLetter] = []
    work: list[tuple[str, dict, str, str | None, dict]] = []
    for index, entry in enumerate(entries):
        path = f"Bundle.entry[{index}]"
        if type(entry) is not dict:
            dead.append(_dead(FHIR_INVALID, f"{path} must be a JSON object", path, _dump(entry)))
            continue
        resource = entry.get("resource")
        if resource is None:
            request = entry.get("request")
            method = request.get("method") if type(request) is dict else None
            if method == "DELETE":
                why = (f"{path} is a DELETE: a deletion cannot be mapped (withdraw the record "
                       "with an entered-in-error version instead)")
            else:
                why = f"{path} has no resource (request, or id-only notification)"
            dead.append(_dead(FHIR_DELETE_UNMAPPABLE, why, f"{path}.resource", _dump(entry)))
            continue
        rpath = f"{path}.resource"
        if type(resource) is not dict:
            dead.append(_dead(FHIR_INVALID, f"{rpath} must be a JSON object", rpath, _dump(entry)))
            continue
        rtype = resource.get("resourceType")
        if type(rtype) is not str or rtype not in M.KNOWN_TYPES:
            dead.append(_dead(FHIR_INVALID, f"{rpath}.resourceType is missing or not a FHIR R4 type",
                              f"{rpath}.resourceType", _dump(entry)))
            continue
        full_url = entry.get("fullUrl") if type(entry.get("fullUrl")) is str else None
        if rtype == "Bundle":
            dead.append(_dead(FHIR_UNSUPPORTED_RESOURCE, "nested Bundles are not unpacked",
                              f"{rpath}.resourceType", _dump(entry)))
            continue
        if rtype in M.NOTIFICATION_STATUS_TYPES and btype in ("history", "subscription-notification"):
            continue  # notification status, not data
        if rtype == "OperationOutcome" and _search_mode(entry) == "outcome":
            continue  # search messages, not data
        ctx.scope.add(resource, full_url, rpath)
        ctx.entries.append((rpath, resource))
        response = entry.get("response")
        if type(response) is dict and type(response.get("lastModified")) is str:
            ctx.last_modified[id(resource)] = response["lastModified"]
        work.append((rpath, resource, rtype, full_url, entry))
    context_only = 0
    for rpath, resource, rtype, full_url, entry in work:
        reached[0] = rpath
        if rtype not in M.MAPPERS:
            if rtype in M.CONTEXT_TYPES:
                context_only += 1
            else:
                dead.append(_dead(FHIR_UNSUPPORTED_RESOURCE, f"{rtype}: resource type is not mapped",
                                  f"{rpath}.resourceType", _dump(entry)))
            continue
        try:
            records.append(M.map_resource(rtype, resource, rpath, ctx, full_url))
        except Refusal as ref:
            dead.append(_dead(ref.code, ref.error, ref.field, _dump(entry)))
        except M.LinkedCharge:
            continue  # carried by the administration it is linked to
        except Exception as exc:  # a bug: this entry is kept, the others still map
            dead.append(_dead(FHIR_INVALID, f"adapter failed ({type(exc).__name__}) at {rpath}",
                              rpath, _dump(entry)))
    if not records and not dead:
        what = ("only context resources (no administration, dispense, charge or encounter)"
                if context_only else "no entries")
        dead.append(_dead(FHIR_UNSUPPORTED_RESOURCE, f"the Bundle has {what}", "Bundle.entry", raw))
    return Adapted(records, dead)


def objects_or_refuse(doc: dict) -> list:
    entries = doc.get("entry")
    if entries is None:
        return []
    if type(entries) is not list:
        raise Refusal(FHIR_INVALID, "Bundle.entry must be a JSON array", "Bundle.entry")
    return entries


def _search_mode(entry: dict) -> str | None:
    search = entry.get("search")
    mode = search.get("mode") if type(search) is dict else None
    return mode if type(mode) is str else None


def _dump(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except Exception:  # e.g. integers beyond 64 bits
        return repr(value).encode("utf-8", "replace")


__all__ = ["adapt"]
