"""FHIR Bulk Data NDJSON exports (ehr-mapping.md §3.1): one resource per line, one type
per file. The export is the resolution scope: the context resources of every file are
indexed first, then each line is mapped as its own input unit against that index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from stream_app.adapters import Adapted
from stream_app.adapters.fhir import mapping as M
from stream_app.adapters.fhir._model import literal_type_id
from stream_app.adapters.fhir.adapter import adapt
from stream_app.adapters.site import SiteConfig


@dataclass(slots=True)
class BulkIndex:
    """The context resources of an export by (type, id), ChargeItems by the resource their
    `service` references, Coverages by beneficiary id, and the ids of the mapped resources."""

    resources: dict[tuple[str, str], dict] = field(default_factory=dict)
    charge_items: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    coverages: dict[str, list[dict]] = field(default_factory=dict)
    primary: set[tuple[str, str]] = field(default_factory=set)
    context_lines: int = 0

    def add_line(self, line: bytes) -> bool:
        """Index one NDJSON line; True when it is a context-only resource (indexed, not mapped).
        Lines that do not parse are left for the mapping pass to refuse."""
        try:
            res = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        if type(res) is not dict:
            return False
        rtype, rid = res.get("resourceType"), res.get("id")
        if type(rtype) is not str or type(rid) is not str:
            return False
        if rtype in M.MAPPERS:
            self.primary.add((rtype, rid))
        if rtype not in M.CONTEXT_TYPES:
            return False
        self.resources.setdefault((rtype, rid), res)
        if rtype == "ChargeItem":
            services = res.get("service")
            for service in services if type(services) is list else ():
                ref = service.get("reference") if type(service) is dict else None
                lit = literal_type_id(ref) if type(ref) is str else None
                if lit is not None:
                    self.charge_items.setdefault(lit, []).append(res)
            return False  # a ChargeItem is also mapped (E/M) or refused
        if rtype == "Coverage":
            ben = res.get("beneficiary")
            ref = ben.get("reference") if type(ben) is dict else None
            lit = literal_type_id(ref) if type(ref) is str else None
            if lit is not None and lit[0] == "Patient":
                self.coverages.setdefault(lit[1], []).append(res)
        self.context_lines += 1
        return True

    def charge_items_for(self, rtype: str, rid: str) -> list[dict]:
        return self.charge_items.get((rtype, rid), [])

    def coverages_for(self, patient_literal_id: str) -> list[dict]:
        return self.coverages.get(patient_literal_id, [])

    def has_primary(self, rtype: str, rid: str) -> bool:
        return (rtype, rid) in self.primary


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if line:
                yield number, line


def index_bulk(paths: Iterable[Path]) -> BulkIndex:
    """First pass over every file of the export: the context resources."""
    index = BulkIndex()
    for path in paths:
        for _, line in _lines(Path(path)):
            index.add_line(line)
    return index


def adapt_bulk(paths: Iterable[Path], site: SiteConfig, *, default_tz: str = "UTC"
               ) -> Iterator[tuple[Path, int, Adapted]]:
    """(file, line number, result) for every line that is not a context-only resource
    (those are counted in the index's `context_lines`, not mapped on their own)."""
    paths = [Path(p) for p in paths]
    index = index_bulk(paths)
    for path in paths:
        for number, line in _lines(path):
            if _is_context_only(line):
                continue
            yield path, number, adapt(line, site, default_tz=default_tz, bulk=index)


def _is_context_only(line: bytes) -> bool:
    try:
        res = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return (type(res) is dict and res.get("resourceType") in M.CONTEXT_TYPES
            and res.get("resourceType") not in M.MAPPERS and type(res.get("id")) is str)
