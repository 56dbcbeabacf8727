"""The whole generated stream: the generator assembled from its concerns, message keys,
malformed messages interleaved, and `generate_stream` / `generate_events` /
`generate_messages`."""

from __future__ import annotations

import gc
import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from stream_app.devtools.generate.catalogue import PAYER_MIX, TIMEZONES, Weighted
from stream_app.devtools.generate.errors import ERROR_KINDS, MEDICARE_ONLY_ERRORS, ErrorInjection
from stream_app.devtools.generate.malformed import malformed_message
from stream_app.devtools.generate.versions import Version, VersionHistory, arrival_order
from stream_app.devtools.generate.visits import VisitModel
from stream_app.vocabulary import EVENT_TYPE_TOPICS

Message = tuple[str, bytes | None, bytes]


class GeneratedStream:
    """Result of `generate_stream`.

    `events`: the valid records in arrival order (a redelivery is the same dict again).
    `messages` / `iter_messages()`: (topic, key, value) in send order, malformed ones
    interleaved; values are serialised lazily (orjson) so that callers who only want the
    records don't pay for it. `labels`: (event_type, record_id) -> error kind of the
    record hosting an injected problem (its other versions may fix it). `fixed`: keys of
    those fixed later by an amendment or a withdrawal. `malformed`: kind of each malformed
    message, in order. `stats`: counts by category, safe to print (no ids).
    """

    def __init__(self, events, plan, labels, fixed, malformed, stats) -> None:
        self.events: list[dict] = events
        self._plan: list[tuple[str, bytes | None, dict | bytes]] = plan
        self.labels: dict[tuple[str, str], str] = labels
        self.fixed: set[tuple[str, str]] = fixed
        self.malformed: list[str] = malformed
        self.stats: Counter = stats
        self._messages: list[Message] | None = None

    def iter_messages(self) -> Iterator[Message]:
        dumps = orjson.dumps
        for topic, key, payload in self._plan:
            yield topic, key, payload if type(payload) is bytes else dumps(payload)

    def iter_labeled_messages(self) -> Iterator[tuple[str, bytes | None, bytes, str | None]]:
        """(topic, key, value, malformed kind or None) in send order."""
        bad = iter(self.malformed)
        dumps = orjson.dumps
        for topic, key, payload in self._plan:
            if type(payload) is bytes:
                yield topic, key, payload, next(bad)
            else:
                yield topic, key, dumps(payload), None

    def iter_plan(self) -> Iterator[tuple[str, bytes | None, dict | bytes]]:
        """(topic, key, record dict or malformed bytes) in send order (formats.py)."""
        yield from self._plan

    @property
    def messages(self) -> list[Message]:
        if self._messages is None:
            self._messages = list(self.iter_messages())
        return self._messages

    def iter_ndjson(self, include_malformed: bool = False) -> Iterator[bytes]:
        """One line (without newline) per record, or per message if include_malformed."""
        dumps = orjson.dumps
        for _topic, _key, payload in self._plan:
            if type(payload) is bytes:
                if include_malformed:
                    yield payload
            else:
                yield dumps(payload)


class _Generator(VisitModel, ErrorInjection, VersionHistory):
    """One run of the simulated world; each base class is one concern (see their modules).

    The concerns share the state set here: one `random.Random` drawn from in a fixed
    order (so the stream for a seed never depends on how the code is split), the id
    counters, the emitted versions, labels and stats.
    """

    def __init__(
        self,
        seed: int,
        *,
        patients: int | None,
        records: int | None,
        days: int,
        start_date: str | date,
        error_rate: float,
        error_mix: dict[str, float] | None,
        amend_rate: float,
        withdraw_rate: float,
        redeliver_rate: float,
        fix_rate: float,
        visit_rate: float,
    ) -> None:
        if days < 1:
            raise ValueError("days must be >= 1")
        for name, value in (("error_rate", error_rate), ("amend_rate", amend_rate),
                            ("withdraw_rate", withdraw_rate),
                            ("redeliver_rate", redeliver_rate), ("fix_rate", fix_rate),
                            ("visit_rate", visit_rate)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        self.seed = seed
        self.rng = random.Random(f"chargecap-generate:{seed}")
        self.tag = hashlib.blake2b(str(seed).encode(), digest_size=3).hexdigest()
        self.patients = patients
        self.records = records
        self.days = days
        self.start = date.fromisoformat(start_date) if isinstance(start_date, str) else start_date
        self.error_rate = error_rate
        self.amend_rate = amend_rate
        self.withdraw_rate = withdraw_rate
        self.redeliver_rate = redeliver_rate
        self.fix_rate = fix_rate
        self.visit_rate = visit_rate
        mix = dict.fromkeys(ERROR_KINDS, 1.0) if error_mix is None else dict(error_mix)
        unknown = set(mix) - set(ERROR_KINDS)
        if unknown:
            raise ValueError(f"unknown error kinds: {', '.join(sorted(unknown))}")
        if any(v < 0 for v in mix.values()):
            raise ValueError("error_mix weights must be >= 0")
        share_medicare = dict(PAYER_MIX)["medicare"] / sum(w for _, w in PAYER_MIX)
        # Medicare-only kinds are compensated so that their overall share matches the mix.
        medicare_w = [(k, mix.get(k, 0.0) / (share_medicare if k in MEDICARE_ONLY_ERRORS else 1.0))
                      for k in ERROR_KINDS]
        other_w = [(k, 0.0 if k in MEDICARE_ONLY_ERRORS else mix.get(k, 0.0)) for k in ERROR_KINDS]
        self._w_err_medicare = (Weighted(medicare_w)
                                if sum(w for _, w in medicare_w) > 0 else None)
        self._w_err_other = Weighted(other_w) if sum(w for _, w in other_w) > 0 else None
        self._given: set[str] = set()  # HCPCS codes the current patient already received
        self.n_event = 0
        self.n_record = 0
        self.n_staff = 0
        self.n_encounter = 0
        self.n_order = 0
        self.seq = 0
        self.versions: list[Version] = []
        self.labels: dict[tuple[str, str], str] = {}
        self.fixed: set[tuple[str, str]] = set()
        self.stats: Counter = Counter()
        self._tz_names = [name for name, _ in TIMEZONES]
        self._zones = [ZoneInfo(name) for name in self._tz_names]
        self._offsets: dict[tuple[int, int], tuple[int, str]] = {}
        self._dates: dict[int, str] = {}
        self._build_clinics()


def _choose_key(rng: random.Random, rec: dict) -> bytes | None:
    r = rng.random()
    if r < 0.45:
        return rec["patient_id"].encode()
    if r < 0.65:
        enc = rec.get("encounter_id")
        return (enc or rec["patient_id"]).encode()
    if r < 0.85:
        return rec["record_id"].encode()
    return None


def generate_stream(
    seed: int,
    patients: int = 200,
    days: int = 3,
    start_date: str | date = "2025-03-10",
    error_rate: float = 0.15,
    error_mix: dict[str, float] | None = None,
    amend_rate: float = 0.05,
    withdraw_rate: float = 0.02,
    redeliver_rate: float = 0.03,
    shuffle_window: int = 20,
    malformed_rate: float = 0.0,
    *,
    records: int | None = None,
    fix_rate: float = 0.2,
    visit_rate: float = 0.4,
    topic_prefix: str = "",
) -> GeneratedStream:
    """The whole synthetic stream, deterministic for its arguments.

    `error_rate`: share of encounters carrying one injected problem; `error_mix`: relative
    weights per `ERROR_KINDS` (default: all equal; kinds left out get weight 0).
    `fix_rate`: share of injected problems later fixed by an amendment (or, for duplicate
    administrations, a withdrawal). `records`: when given, the patient count is ignored
    and patients are added until about that many records (valid messages) exist.
    `malformed_rate`: per valid message, chance of a malformed message next to it; it uses
    its own random stream, so the valid records are identical whatever its value.
    """
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError("malformed_rate must be between 0 and 1")
    gen = _Generator(seed, patients=None if records is not None else patients,
                     records=records, days=days, start_date=start_date,
                     error_rate=error_rate, error_mix=error_mix, amend_rate=amend_rate,
                     withdraw_rate=withdraw_rate, redeliver_rate=redeliver_rate,
                     fix_rate=fix_rate, visit_rate=visit_rate)
    was_enabled = gc.isenabled()
    gc.disable()  # millions of small containers: the cyclic GC only costs time here
    try:
        versions = gen.run()
        order = arrival_order(versions, seed, shuffle_window, redeliver_rate)
    finally:
        if was_enabled:
            gc.enable()
    key_rng = random.Random(f"chargecap-keys:{seed}")
    bad_rng = random.Random(f"chargecap-malformed:{seed}")
    topics = {et: topic_prefix + name for et, name in EVENT_TYPE_TOPICS.items()}
    input_topics = tuple(topics.values())
    events: list[dict] = []
    plan: list[tuple[str, bytes | None, dict | bytes]] = []
    malformed: list[str] = []
    stats = gen.stats
    first_key: dict[int, bytes | None] = {}  # seq -> key (a redelivery repeats it exactly)
    was_enabled = gc.isenabled()
    gc.disable()  # millions of small containers: the cyclic GC only costs time here
    try:
        for v, is_dup in order:
            rec = v.record
            events.append(rec)
            if is_dup:
                key = first_key[v.seq]
                stats["redelivery"] += 1
            else:
                key = first_key[v.seq] = _choose_key(key_rng, rec)
            plan.append((topics[rec["event_type"]], key, rec))
            if malformed_rate > 0 and bad_rng.random() < malformed_rate:
                kind, raw = malformed_message(bad_rng, gen.tag, len(malformed) + 1, gen.start)
                malformed.append(kind)
                stats["malformed:" + kind] += 1
                key = None if bad_rng.random() < 0.5 else f"k-{bad_rng.randrange(10**6)}".encode()
                plan.append((input_topics[bad_rng.randrange(3)], key, raw))
    finally:
        if was_enabled:
            gc.enable()
    stats["records"] = len(events)
    stats["messages"] = len(plan)
    return GeneratedStream(events, plan, gen.labels, gen.fixed, malformed, stats)


def generate_events(seed: int, *args: Any, **kwargs: Any) -> list[dict]:
    """The valid input records in arrival order; takes `generate_stream`'s arguments.

    Malformed messages are raw bytes, not records: they are never in this list. Don't
    mutate the dicts: a redelivery is the same dict object twice.
    """
    kwargs.pop("malformed_rate", None)
    if len(args) >= 10:  # malformed_rate given positionally
        args = args[:9] + (0.0,) + args[10:]
    return generate_stream(seed, *args, **kwargs).events


def generate_messages(seed: int, *args: Any, **kwargs: Any) -> list[Message]:
    """(topic, key, value) per message in send order; takes `generate_stream`'s arguments."""
    return generate_stream(seed, *args, **kwargs).messages
