"""Record versions: amendments, fixes and withdrawals of an emitted record, and the
arrival order (local shuffle, redeliveries)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from stream_app.devtools.generate.catalogue import CHRONIC_DX
from stream_app.vocabulary import ADMINISTRATION, EM_SERVICE


@dataclass(slots=True)
class Version:
    """One message-to-be: a record version with its arrival time."""

    arrival: float  # seconds since start-date midnight UTC
    seq: int
    record: dict
    label: str | None = None  # the error kind the record carries (for tests), if any


class VersionHistory:
    """Mixin of the generator: emits a record and its later versions."""

    # versions --------------------------------------------------------------------------
    def _emit(self, rec: dict, tz: int, recorded_s: int, label: str | None = None) -> None:
        rng = self.rng
        self.seq += 1
        arrival = self._utc(tz, recorded_s) + rng.random() * 30.0
        self.versions.append(Version(arrival, self.seq, rec, label))
        self.stats[rec["event_type"]] += 1

    def _new_version(self, rec: dict, tz: int, recorded_s: int) -> dict:
        new = dict(rec)
        if "drug" in new:
            new["drug"] = dict(new["drug"])
        new["event_id"] = self._event_id()
        new["recorded_at"] = self._ts(tz, recorded_s, self.rng.randrange(1000))
        return new

    def _later(self) -> int:
        r = self.rng.random()
        if r < 0.70:
            return self.rng.randint(600, 4 * 3600)
        if r < 0.95:
            return self.rng.randint(4 * 3600, 86400)
        return self.rng.randint(86400, 3 * 86400)

    def _finish(self, rec: dict, valid: dict | None, tz: int, recorded_s: int,
                label: str | None, withdraw_fix: bool = False) -> None:
        """Emit a record and maybe its amendment / fix / withdrawal versions."""
        rng = self.rng
        self._emit(rec, tz, recorded_s, label)
        last = recorded_s
        key = (rec["event_type"], rec["record_id"])
        if label is not None and rng.random() < self.fix_rate and (valid or withdraw_fix):
            last = recorded_s + self._later()
            if withdraw_fix:
                fix = self._new_version(rec, tz, last)
                fix["status"] = "entered-in-error"
                self.stats["withdrawal"] += 1
            else:
                fix = self._new_version(valid, tz, last)
                self.stats["amendment"] += 1
            self.stats["fix"] += 1
            self.fixed.add(key)
            self._emit(fix, tz, last, label)
            return
        if rng.random() < self.amend_rate:
            last = recorded_s + self._later()
            amended = self._new_version(rec, tz, last)
            self._amend(amended)
            self.stats["amendment"] += 1
            self._emit(amended, tz, last, label)
        if rng.random() < self.withdraw_rate:
            last = last + self._later()
            gone = self._new_version(rec, tz, last)
            gone["status"] = "entered-in-error"
            self.stats["withdrawal"] += 1
            self._emit(gone, tz, last, label)

    def _amend(self, rec: dict) -> None:
        """A benign change (never introduces or fixes an error); always changes something."""
        rng = self.rng
        et = rec["event_type"]

        def swap_site() -> bool:
            site = rec.get("site")
            if not site or ("left" not in site and "right" not in site):
                return False
            rec["site"] = (site.replace("left", "right") if "left" in site
                           else site.replace("right", "left"))
            return True

        def add_dx() -> bool:
            dx = rec.get("diagnosis_codes")
            if not dx:
                return False
            extra = [d for d in CHRONIC_DX if d not in dx]
            if not extra:
                return False
            rec["diagnosis_codes"] = [*dx, extra[rng.randrange(len(extra))]]
            return True

        def new_lot() -> bool:
            holder = rec["drug"] if et == ADMINISTRATION else rec
            if not holder.get("lot_number"):
                return False
            holder["lot_number"] = self._lot()
            return True

        def bump_code() -> bool:
            code = rec.get("code")
            if code not in ("99212", "99213", "99214"):
                return False
            rec["code"] = str(int(code) + 1)
            return True

        if et == ADMINISTRATION:
            changes = [swap_site, add_dx, new_lot]
        elif et == EM_SERVICE:
            changes = [bump_code, add_dx]
        else:
            changes = [new_lot]
        k = rng.randrange(len(changes))
        for change in changes[k:] + changes[:k]:
            if change():
                return



def arrival_order(versions: list[Version], seed: int, shuffle_window: int,
                   redeliver_rate: float) -> list[tuple[Version, bool]]:
    """Sort by arrival time, shuffle locally within `shuffle_window` positions, insert
    redeliveries (exact duplicates) a little later. Returns (version, is_redelivery)."""
    rng = random.Random(f"chargecap-arrival:{seed}")
    ordered = sorted(versions, key=lambda v: (v.arrival, v.seq))
    window = max(0, shuffle_window)
    keyed: list[tuple[float, int, Version, bool]] = []
    n = 0
    for i, v in enumerate(ordered):
        pos = i + (rng.random() * window if window else 0.0)
        keyed.append((pos, n, v, False))
        n += 1
        if redeliver_rate > 0 and rng.random() < redeliver_rate:
            keyed.append((pos + rng.randint(1, 200) + rng.random(), n, v, True))
            n += 1
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [(v, dup) for _, _, v, dup in keyed]
