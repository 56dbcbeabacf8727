"""Summarise a py-spy collapsed-stack profile (`bench.py --profile DIR` writes them).

`python benchmarks/profile_summary.py DIR/<app>.txt [--top 30] [--match stream_app]`
prints the share of samples per function: inclusive (on the stack) and self (on top).
Frames are `function (file)` as py-spy writes them with `--nolineno`.
"""

from __future__ import annotations

import argparse
from collections import Counter


def load(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                stacks.append((stack.split(";"), int(count)))
            except ValueError:
                continue
    return stacks


def summarise(stacks, top: int = 30, match: str | None = None) -> str:
    total = sum(c for _, c in stacks) or 1
    inclusive: Counter = Counter()
    self_: Counter = Counter()
    for frames, count in stacks:
        for f in set(frames):
            inclusive[f] += count
        if frames:
            self_[frames[-1]] += count
    out = [f"{total} samples (GIL held)"]
    for title, counter in (("inclusive", inclusive), ("self", self_)):
        out.append(f"-- {title}")
        shown = 0
        for frame, count in counter.most_common():
            if match and match not in frame:
                continue
            out.append(f"{100 * count / total:6.1f}%  {frame}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--match", default=None, help="only frames containing this text")
    args = ap.parse_args(argv)
    print(summarise(load(args.profile), args.top, args.match))


if __name__ == "__main__":
    main()
