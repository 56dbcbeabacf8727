"""`python -m stream_app replay FILE... [--out DIR]` (contract.md §5).

Runs the engine in-process over input files in arrival order. Each file's format is
detected by content (ehr-mapping.md §1): first non-blank byte `{` -> JSON, one record per
line (NDJSON: canonical records and `encounter.updated` by `event_type`, FHIR resources or
Bundles by `resourceType`, FHIR Bulk Data files indexed together first) or, when the first
line is not a JSON value of its own, one JSON document (a FHIR Bundle file); `MSH`, `FHS`,
`BHS` or 0x0B -> HL7 v2 (every message of the file). Anything else is read as NDJSON, so
its lines become the contract's dead letters. The clock stands still
while input is read (nothing settles or closes); at the end of input every patient-day
settles, then closes. Writes the highest revision per key, sorted by key.

`--jobs N` replays in N processes, each holding a share of the patients (see
`replay_shares`); the outputs are byte-identical to one process.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import marshal
import multiprocessing
import os
import pickle
import sys
import traceback
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, groupby
from operator import itemgetter
from pathlib import Path

import orjson

from stream_app.engine import DeadLetter, Engine, PatientState, parse_record
from stream_app.vocabulary import LINE, TOPIC_ENCOUNTERS

# Records are handed to the engine per patient in chunks of this many input lines, as
# the worker does per batch; the settled view does not depend on it (contract.md §3).
CHUNK = 2000
REPLAY_NOW = 0.0  # the clock stands still while input is read


@dataclass
class ReplayResult:
    lines: dict[str, dict] = field(default_factory=dict)
    alerts: dict[str, dict] = field(default_factory=dict)
    dead_letters: list[dict] = field(default_factory=list)
    records: int = 0
    duplicates: int = 0
    by_event_type: Counter = field(default_factory=Counter)

    def settled_view(self) -> tuple[list[dict], list[dict]]:
        """Active lines and open alerts, without revision (contract.md §3)."""
        return settled_view(self.lines.values(), self.alerts.values())


def settled_view(lines: Iterable[dict], alerts: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    def strip(v: dict) -> dict:
        return {k: x for k, x in v.items() if k != "revision"}

    act = sorted((strip(v) for v in lines if v["state"] == "active"), key=lambda v: v["line_id"])
    opn = sorted((strip(v) for v in alerts if v["state"] == "open"), key=lambda v: v["alert_id"])
    return act, opn


def _iter_lines(paths: list[str], stdin=None) -> Iterator[tuple[str, int, bytes]]:
    """`stdin`: what `-` reads (a binary stream), standard input if None."""
    stdin = sys.stdin.buffer if stdin is None else stdin
    for path in paths:
        stream = stdin if path == "-" else open(path, "rb")  # noqa: SIM115
        try:
            for n, raw in enumerate(stream, 1):
                raw = raw.rstrip(b"\r\n")
                if raw.strip():  # blank lines carry no record
                    yield path, n, raw
        finally:
            if stream is not stdin:
                stream.close()


def dead_letter_from_file(dl: DeadLetter, raw: bytes, source: str, line: int) -> dict:
    return {"error_code": dl.error_code, "error": dl.error, "field": dl.field,
            "raw": raw.decode("utf-8", "replace"), "source": source, "line": line}


def adapter_dead_letter(dl, source: str, line: int) -> dict:
    """An adapter's refusal in the contract's shape: `field` the FHIR path or HL7 position,
    `raw` the unit or refused entry (base64 when it is not UTF-8, ehr-mapping.md §1)."""
    try:
        raw = dl.raw.decode("utf-8")
    except UnicodeDecodeError:
        raw = base64.b64encode(dl.raw).decode("ascii")
    return {"error_code": dl.error_code, "error": dl.error, "field": dl.field, "raw": raw,
            "source": source, "line": line}


def replay(paths: list[str], engine: Engine, default_tz: str = "UTC", site=None,
           jobs: int = 1) -> ReplayResult:
    """`site`: the adapters' SiteConfig (stream_app.adapters.site), packaged rows if None.
    `jobs` > 1: that many processes, each replaying a share of the patients
    (`replay_shares`); the same result, its lines and alerts in the same order."""
    # Replay builds millions of small, acyclic objects that live to the end of the run;
    # the cyclic collector would rescan them over and over for nothing.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if jobs == 1:
            return _replay(paths, engine, default_tz, site)
        return replay_shares(paths, engine, default_tz, site, jobs)
    finally:
        if was_enabled:
            gc.enable()


def _replay(paths: list[str], engine: Engine, default_tz: str, site,
            share: tuple[int, int] | None = None, stdin=None,
            patients: list | None = None,
            states: dict[str, PatientState] | None = None) -> ReplayResult:
    """`share` (index, jobs): replay only the patients of that share (`share_of`).
    `patients`: filled with (patient_id, share index, lines, alerts) per patient in the
    order of finishing, the counts being the sizes of `lines` and `alerts` after it.
    `states`: the patients' states are kept in it (a process about to end need not free
    them)."""
    res = ReplayResult()
    states = {} if states is None else states

    def keep(decisions) -> None:
        for d in decisions:
            (res.lines if d.kind == LINE else res.alerts)[d.key] = d.value

    def flush(pending: dict[str, list]) -> None:
        for pid, recs in pending.items():
            state, out = engine.ingest(states.get(pid), recs, REPLAY_NOW, evaluate=False)
            states[pid] = state
            res.duplicates += out.duplicates
            keep(out.decisions)
        pending.clear()

    pending: dict[str, list] = defaultdict(list)
    count = 0
    for source, n, raw, rec in _iter_records(paths, engine, default_tz, site, res, share, stdin):
        if isinstance(rec, DeadLetter):
            res.dead_letters.append(dead_letter_from_file(rec, raw, source, n))
            continue
        res.records += 1
        res.by_event_type[rec.event_type] += 1
        pending[rec.patient_id].append(rec)
        count += 1
        if count % CHUNK == 0:
            flush(pending)
    flush(pending)
    for pid in sorted(states):
        _, out = engine.finish(states[pid], REPLAY_NOW)
        keep(out.decisions)
        if patients is not None:
            patients.append((pid, share[0], len(res.lines), len(res.alerts)))
    res.dead_letters.sort(key=lambda d: (d["source"], d["line"]))
    return res


# ------------------------------------------------------------------ replay in parallel
#
# A patient's outputs depend only on that patient's records in arrival order (the engine
# evaluates each patient once, in `finish`), so patients are split between processes and
# the shares merged. Each process reads every input itself: the parent built the engine
# and the site configuration, and forked children inherit them instead of receiving them
# pickled. The parent replays share 0 itself and merges.


class ReplayJobError(RuntimeError):
    """A share of a parallel replay failed: the replay as a whole has no result."""


def share_of(patient_id: str, jobs: int) -> int:
    """The share (0 … jobs-1) that replays this patient. A stable hash, the same in every
    process (Python's `hash` of a str is salted per process)."""
    return zlib.crc32(patient_id.encode("utf-8", "surrogatepass")) % jobs


_UTF8_BOM = b"\xef\xbb\xbf"


def line_share(raw: bytes, jobs: int) -> int:
    """The share that parses this canonical input line: its patient's (`patient_id` read
    as `parse_record` reads it: after a UTF-8 BOM, trimmed); share 0 for a line that has
    no string `patient_id`, whose dead letter must appear once.

    What matters is that every line that parses into a record goes to its patient's
    share; a line that does not parse may go to any one share."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if not raw.startswith(_UTF8_BOM):
            return 0
        try:
            doc = orjson.loads(raw[3:])
        except orjson.JSONDecodeError:
            return 0
    pid = doc.get("patient_id") if type(doc) is dict else None
    return share_of(pid.strip(), jobs) if type(pid) is str else 0


def replay_shares(paths: list[str], engine: Engine, default_tz: str, site,
                  jobs: int) -> ReplayResult:
    """Replay in `jobs` processes (fork): share 0 here, the others in children that send
    back their partial result; merged as one process would have built it."""
    # Standard input can be read once: read here, each process replays its own copy.
    stdin = sys.stdin.buffer.read() if "-" in paths else None
    context = multiprocessing.get_context("fork")
    children = []
    try:
        for index in range(1, jobs):
            receive, send = context.Pipe(duplex=False)
            proc = context.Process(
                target=_replay_child, name=f"chargecap-replay-{index}", daemon=True,
                args=(send, paths, engine, default_tz, site, (index, jobs), stdin))
            proc.start()
            send.close()  # EOF on `receive` once the child is gone, whatever its end
            children.append((proc, receive))
        patients: list = []
        own = _replay(paths, engine, default_tz, site, (0, jobs),
                      None if stdin is None else io.BytesIO(stdin), patients)
        shares = [_share_part(own, patients)]
        del own
        for index, (proc, receive) in enumerate(children, 1):
            shares.append(_receive_share(proc, receive, index, jobs))
        # merged before the children are joined: they hand their memory back meanwhile
        return merge_shares(shares)
    finally:
        for proc, receive in children:
            receive.close()
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _share_part(res: ReplayResult, patients: list) -> tuple:
    """A share's result in the plain form `merge_shares` takes (and marshal can write)."""
    return (list(res.lines.items()), list(res.alerts.items()), res.dead_letters,
            res.records, res.duplicates, dict(res.by_event_type), patients)


def _replay_child(send, paths, engine, default_tz, site, share, stdin) -> None:
    gc.disable()
    states: dict[str, PatientState] = {}
    try:
        patients: list = []
        res = _replay(paths, engine, default_tz, site, share,
                      None if stdin is None else io.BytesIO(stdin), patients, states)
        part = _share_part(res, patients)
        try:
            # marshal writes and reads these dicts faster than pickle; reading them back
            # is time the parent alone spends once every share is done.
            payload = b"M" + marshal.dumps(part)
        except ValueError:  # a value marshal cannot write
            payload = b"P" + pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        send.send_bytes(b"E" + traceback.format_exc().encode("utf-8", "replace"))
        send.close()
        sys.exit(1)
    send.send_bytes(payload)
    send.close()
    # The share's millions of objects end with the process: freeing them one by one
    # first would only delay the result (about a quarter of a second per 100k records).
    os._exit(0)


def _receive_share(proc, receive, index: int, jobs: int) -> tuple:
    what = f"replay share {index + 1} of {jobs} (process {proc.pid})"
    try:
        payload = receive.recv_bytes()
    except EOFError:
        proc.join()
        raise ReplayJobError(f"{what} ended without a result "
                             f"(exit code {proc.exitcode})") from None
    kind, body = payload[:1], memoryview(payload)[1:]
    if kind == b"M":
        return marshal.loads(body)
    if kind == b"P":
        return pickle.loads(body)  # noqa: S301 - our own child's bytes
    raise ReplayJobError(f"{what} failed:\n{bytes(body).decode('utf-8', 'replace')}")


def merge_shares(shares: list[tuple]) -> ReplayResult:
    """One ReplayResult from the shares' (lines, alerts, dead letters, records, duplicates,
    by event type, patients), each share's lines and alerts as items in its order of
    finishing patients, `patients` as `_replay` fills it. The merged dicts get their keys
    in the one-process order: patients sorted, each patient's keys in the order it emitted
    them (the metrics textfile adds up amounts in that order)."""
    res = ReplayResult()
    # (patient, share, lines and alerts of the share up to that patient), in patient order;
    # consecutive patients of one share are merged in one go.
    order = sorted(chain.from_iterable(share[6] for share in shares))
    merged = [(0, 0)] * len(shares)
    for index, run in groupby(order, key=itemgetter(1)):
        *_, (_, _, n_lines, n_alerts) = run  # the run's last patient says how far it goes
        lines_from, alerts_from = merged[index]
        res.lines.update(shares[index][0][lines_from:n_lines])
        res.alerts.update(shares[index][1][alerts_from:n_alerts])
        merged[index] = (n_lines, n_alerts)
    for _, _, dead, records, duplicates, by_event_type, _ in shares:
        # A (source, line) belongs to one share (same bytes, same share), so the stable
        # sort keeps the one-process order of dead letters sharing a line.
        res.dead_letters += dead
        res.records += records
        res.duplicates += duplicates
        res.by_event_type.update(by_event_type)
    res.dead_letters.sort(key=lambda d: (d["source"], d["line"]))
    return res


def write_outputs(res: ReplayResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in (("charge_lines.ndjson", [res.lines[k] for k in sorted(res.lines)]),
                        ("alerts.ndjson", [res.alerts[k] for k in sorted(res.alerts)]),
                        ("dead_letters.ndjson", res.dead_letters)):
        with open(out_dir / name, "wb") as fh:
            for item in items:
                fh.write(orjson.dumps(item))
                fh.write(b"\n")


def summary(res: ReplayResult) -> str:
    from stream_app.metrics import code_family

    active, open_alerts = res.settled_view()
    families = Counter(code_family(v["code"]) for v in active)
    reasons = Counter(a["reason_code"] for a in open_alerts)
    at_risk: dict[str, float] = defaultdict(float)
    for a in open_alerts:
        at_risk[a.get("payer_class") or "unknown"] += a["revenue_at_risk"]
    out = [f"replay: {res.records} records, {res.duplicates} redelivered, "
           f"{len(res.dead_letters)} dead letters",
           f"charge lines active: {len(active)} of {len(res.lines)} keys"]
    out += [f"  {fam:<16} {n:>7}" for fam, n in sorted(families.items())]
    out.append(f"alerts open: {len(open_alerts)} of {len(res.alerts)} keys")
    out += [f"  {r:<32} {n:>7}" for r, n in reasons.most_common()]
    out.append("revenue at risk (open alerts):")
    out += [f"  {p:<16} ${v:>12,.2f}" for p, v in sorted(at_risk.items())]
    return "\n".join(out)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stream_app.config import add_settings_arguments

    parser.add_argument("files", nargs="+", metavar="FILE", help="NDJSON input, '-' for stdin")
    parser.add_argument("--out", type=Path, default=None, help="directory for the three outputs")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="write Prometheus metrics of the run to this textfile")
    parser.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                        help="replay in N processes (default 1; 0: one per CPU), the "
                             "patients split between them; the outputs are the same bytes")
    add_settings_arguments(parser)


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of processes: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a number of processes: {text!r}")
    return n or os.cpu_count() or 1


def run(args: argparse.Namespace) -> int:
    from stream_app.config import settings_from_args
    from stream_app.engine import RuleDataError
    from stream_app.runtime import build_engine

    settings = settings_from_args(args)
    try:
        engine = build_engine(settings)
    except RuleDataError as exc:
        print(f"chargecap replay: bad rule data: {exc}", file=sys.stderr)
        return 2
    from stream_app.adapters.site import SiteConfigError, load_site_config

    try:
        site = load_site_config(settings.rules_dir)
    except SiteConfigError as exc:
        print(f"chargecap replay: bad site configuration: {exc}", file=sys.stderr)
        return 2
    try:
        res = replay(args.files, engine, settings.timezone, site, jobs=args.jobs)
    except ReplayJobError as exc:
        print(f"chargecap replay: {exc}\nchargecap replay: no output written", file=sys.stderr)
        return 1
    if args.out is not None:
        write_outputs(res, args.out)
    if args.metrics is not None:
        write_metrics(res, args.metrics)
    print(summary(res), file=sys.stderr)
    return 0


def write_metrics(res: ReplayResult, path: Path) -> None:
    from stream_app.metrics import Metrics, write_textfile
    from stream_app.vocabulary import EVENT_TYPE_TOPICS

    m = Metrics()
    for event_type, n in res.by_event_type.items():
        m.consumed(EVENT_TYPE_TOPICS.get(event_type, TOPIC_ENCOUNTERS), n)
    for v in res.lines.values():
        m.record_line(v)
    for v in res.alerts.values():
        m.record_alert(v)
    for dl in res.dead_letters:
        m.dead_lettered(dl["source"], dl["error_code"])
    write_textfile(m, str(path))


# ------------------------------------------------------------------ input formats

NDJSON, JSON_DOCUMENT, HL7V2 = "ndjson", "json", "hl7v2"
_HL7_STARTS = (b"MSH", b"FHS", b"BHS", b"\x0b")
_FHIR_KEY = b'"resourceType"'


def detect_format(path: str) -> str:
    """The file's format by content (ehr-mapping.md §1). Standard input is NDJSON."""
    if path == "-":
        return NDJSON
    with open(path, "rb") as fh:
        head = fh.read(65536)
        start = head.lstrip()
        if start.startswith(_HL7_STARTS):
            return HL7V2
        if not start.startswith(b"{"):
            return NDJSON
        first = start.split(b"\n", 1)[0]
        try:
            orjson.loads(first)
            return NDJSON
        except orjson.JSONDecodeError:
            pass
        fh.seek(0)
        try:
            orjson.loads(fh.read())
            return JSON_DOCUMENT
        except orjson.JSONDecodeError:
            return NDJSON


def _is_fhir(raw: bytes) -> bool:
    if _FHIR_KEY not in raw:  # canonical lines pay only this test
        return False
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return type(doc) is dict and "resourceType" in doc and "event_type" not in doc


def _iter_records(paths: list[str], engine: Engine, default_tz: str, site,
                  res: ReplayResult, share: tuple[int, int] | None = None,
                  stdin=None) -> Iterator[tuple[str, int, bytes, object]]:
    """(source, line, raw, record or DeadLetter) for every input unit; adapter refusals
    go straight to `res.dead_letters`.

    `share` (index, jobs): only the units of that share. A canonical line is parsed only
    by its patient's share (`line_share`). Adapters run in every share, each keeping its
    patients' records; share 0 keeps everything else an adapted unit gives (refusals,
    records that do not parse), so the dead letters of one (source, line) stay together
    and in order."""
    formats = {p: detect_format(p) for p in paths}
    if share is not None:
        index, jobs = share

        def ours(rec) -> bool:
            if isinstance(rec, DeadLetter):
                return index == 0
            return share_of(rec.patient_id, jobs) == index
    site_config = [site]

    def site_rows():
        if site_config[0] is None:
            from stream_app.adapters.site import load_site_config

            site_config[0] = load_site_config(None)
        return site_config[0]

    # FHIR Bulk Data (one resource type per file): an NDJSON file whose first record is a
    # FHIR resource. The adapter's bulk helper indexes the context resources of all of them
    # (the export's resolution scope, ehr-mapping.md §3.1) and maps every other line; they
    # are read together where the first of them comes (the settled view does not depend on
    # the order).
    bulk_files = [p for p, f in formats.items()
                  if f == NDJSON and p != "-" and _first_line_is_fhir(p)]

    def adapted(out, source: str, line_of) -> Iterator[tuple[str, int, bytes, object]]:
        if share is None or index == 0:
            for dl in out.dead_letters:
                res.dead_letters.append(adapter_dead_letter(dl, source, line_of(dl.raw)))
        for rec in out.records:
            raw = orjson.dumps(rec)
            parsed = parse_record(raw, default_tz=default_tz)
            if share is None or ours(parsed):
                yield source, line_of(None), raw, parsed

    for path in paths:
        fmt = formats[path]
        if path in bulk_files:
            if path == bulk_files[0]:
                from stream_app.adapters.fhir import adapt_bulk

                by_path = {Path(p): p for p in bulk_files}
                for file, n, out in adapt_bulk(bulk_files, site_rows(), default_tz=default_tz):
                    yield from adapted(out, by_path.get(Path(file), str(file)),
                                       lambda _raw, n=n: n)
            continue
        if fmt == NDJSON:
            for source, n, raw in _iter_lines([path], stdin):
                if _FHIR_KEY in raw and _is_fhir(raw):  # FHIR among canonical lines
                    from stream_app.adapters.fhir import adapt as fhir_adapt

                    out = fhir_adapt(raw, site_rows(), default_tz=default_tz)
                    yield from adapted(out, source, lambda _raw, n=n: n)
                elif share is None or line_share(raw, jobs) == index:
                    yield source, n, raw, parse_record(raw, default_tz=default_tz)
            continue
        with open(path, "rb") as fh:
            data = fh.read()
        if fmt == JSON_DOCUMENT:
            if _is_fhir(data):
                from stream_app.adapters.fhir import adapt as fhir_adapt

                yield from adapted(fhir_adapt(data, site_rows(), default_tz=default_tz), path,
                                   lambda _raw: 1)
            elif share is None or line_share(data, jobs) == index:
                yield path, 1, data, parse_record(data, default_tz=default_tz)
        else:
            yield from adapted(_adapt_hl7(data, site_rows(), default_tz, engine), path,
                               lambda raw, data=data: _line_of(data, raw))


def _adapt_hl7(data: bytes, site, default_tz: str, engine: Engine):
    """The single dispatch point to the HL7 v2 adapter (ehr-mapping.md §4)."""
    from stream_app.adapters.hl7v2 import adapt

    return adapt(data, site, default_tz=default_tz, rules=engine.rules)


def _line_of(data: bytes, unit: bytes | None) -> int:
    """1-based line of the file where `unit` (a message) starts; 1 if not found."""
    if not unit:
        return 1
    at = data.find(unit.lstrip(b"\x0b")[:64])
    return data.count(b"\n", 0, at) + 1 if at >= 0 else 1


def _first_line_is_fhir(path: str) -> bool:
    for _, _, raw in _iter_lines([path]):
        return _is_fhir(raw)
    return False
