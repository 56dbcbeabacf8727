"""Compare the HL7 v2 parsing libraries python-hl7 (`hl7`) and `hl7apy` (docs/hl7v2.md).

For each message of ../shared/hl7v2/samples/ and ../shared/spec/examples/office-visit.hl7:
CPU µs per parse (best of 5 rounds, each the mean over N parses), then correctness checks on
one synthetic message written twice (default and non-default MSH-2 delimiters): the escape
sequences \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, a repetition, a component, a sub-component.

    .venv/bin/pip install hl7apy   # not a project dependency; only this comparison uses it
    .venv/bin/python benchmarks/hl7_parsers.py [--adapter-only]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hl7

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def units() -> list[tuple[str, str]]:
    out = []
    for path in sorted((SHARED / "hl7v2" / "samples").glob("*.hl7")):
        text = path.read_bytes().decode("utf-8-sig").replace("\r\n", "\r").replace("\n", "\r")
        out.append((path.stem, text.strip("\r")))
    example = (SHARED / "spec" / "examples" / "office-visit.hl7").read_bytes().decode()
    for n, line in enumerate(m for m in example.split("\n") if m.strip()):
        out.append((f"office-visit#{n + 1}", line.strip("\r")))
    return out


def best_us(fn, text: str, n: int) -> float:
    """CPU µs per call (process time, so other jobs on a shared machine weigh less)."""
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn(text)
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


# The decoded PID-5 must read `A|B^C&D~E\F`; PID-3's 2nd repetition CX-1 `P2`; PV1-7's
# XCN-9 (HD) sub-component 2 `2.16.840.1.113883.4.6`.
CHECK = ("MSH|^~\\&|A|FAC|B|C|20250314085500||ADT^A04^ADT_A01|1|P|2.5.1\r"
         "PID|1||P1^^^F^MR~P2^^^F^SS||A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F\r"
         "PV1|1|O|FM^^^MAIN||||1234^Doe^J^^^^^^NPI&2.16.840.1.113883.4.6&ISO^^^^NPI\r")
CUSTOM = CHECK.translate(str.maketrans("|^~\\&", "#$*!%"))
EXPECTED = ("A|B^C&D~E\\F", "P2", "2.16.840.1.113883.4.6")


def check_hl7(text: str) -> tuple[str, ...]:
    m = hl7.parse(text)
    return (m.unescape(str(m.segment("PID")(5))), str(m["PID.F3.R2.C1"]), str(m["PV1.F7.R1.C9.S2"]))


def check_hl7apy(text: str) -> tuple[str, ...]:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message
    m = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    # hl7apy has no read-side unescape: the value is returned as written.
    return (m.pid.pid_5.value, m.pid.pid_3[1].cx_1.value, m.pv1.pv1_7.xcn_9.hd_2.to_er7())


def adapter_table(rows: list[tuple[str, str]]) -> None:
    """µs per message of the whole adapter (framing, charset, parse, mapping) with the
    example's site rows."""
    import csv

    from stream_app.adapters.hl7v2 import adapt
    from stream_app.adapters.site import SiteConfig

    site_rows = {}
    for path in (SHARED / "spec" / "examples" / "site").glob("*.csv"):
        with path.open(newline="") as fh:
            site_rows[path.stem] = list(csv.DictReader(fh))
    site = SiteConfig.packaged().merged(SiteConfig.from_rows(**site_rows))
    adapt(rows[0][1].encode(), site)            # loads the packaged rule data once
    print(f"\n{'message':24} {'adapt() µs':>10}  outcome")
    total = 0.0
    for name, text in rows:
        raw = text.encode()
        us = best_us(lambda r: adapt(r, site), raw, 50)
        out = adapt(raw, site)
        outcome = ",".join([r["event_type"] for r in out.records]
                           + [d.error_code for d in out.dead_letters])
        total += us
        print(f"{name:24} {us:10.0f}  {outcome}")
    print(f"{'mean':24} {total / len(rows):10.0f}")


def main() -> int:
    if "--adapter-only" in sys.argv:
        adapter_table(units())
        return 0
    try:
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.parser import parse_message

        def apy(text):
            return parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except ImportError:
        apy = None
    print(f"{'message':24} {'bytes':>6} {'hl7 µs':>10} {'hl7apy µs':>10}")
    tot_a = tot_b = 0.0
    rows = units()
    for name, text in rows:
        a = best_us(hl7.parse, text, 50)
        b = best_us(apy, text, 3) if apy else float("nan")
        tot_a += a
        tot_b += b
        print(f"{name:24} {len(text):6} {a:10.0f} {b:10.0f}")
    print(f"{'mean':24} {'':6} {tot_a / len(rows):10.0f} {tot_b / len(rows):10.0f}")
    adapter_table(rows)
    for label, text in (("default delimiters", CHECK), ("MSH-2 #$*!%", CUSTOM)):
        want = EXPECTED if label.startswith("default") else tuple(
            s.translate(str.maketrans("|^~\\&", "#$*!%")) for s in EXPECTED[:1]) + EXPECTED[1:]
        for lib, fn in (("hl7", check_hl7), ("hl7apy", check_hl7apy if apy else None)):
            if fn is None:
                continue
            try:
                got = fn(text)
            except Exception as exc:  # noqa: BLE001 - a comparison report, not production code
                got = (f"error {type(exc).__name__}",)
            print(f"{label:20} {lib:7} {'ok' if got == want else 'WRONG'} {got!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
