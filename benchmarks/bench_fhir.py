"""FHIR input cost per resource: the direct mapping against model validation (issue 18).

Inputs: every official R4 example in ../shared/fhir/r4-examples/ (each file one input unit)
and the worked example office-visit.fhir.json (a transaction Bundle of 7 resources).
Per input set, µs per resource (a Bundle counts its entries) of:
  * parse_only: orjson.loads (the floor any JSON consumer pays);
  * adapter: `stream_app.adapters.fhir.adapt` (decode, depth check, references, mapping);
  * r4b_validate: `fhir.resources` R4B `model_validate` of the parsed dict, i.e. only the
    validation a model-based adapter would add before mapping anything;
  * r5_validate: the library's default (R5) models, for reference (they reject most R4
    medication resources: `medicationReference` is not an R5 element).
Best of `--repeat` rounds of `--loops` passes each. Prints a table and a last line of JSON.
Not a test: no thresholds. Needs the dev extra (fhir.resources).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from stream_app.adapters.fhir import adapt
from stream_app.adapters.site import SiteConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _inputs() -> dict[str, list[bytes]]:
    return {
        "r4-examples": [p.read_bytes() for p in sorted((SHARED / "fhir" / "r4-examples").glob("*.json"))],
        "office-visit": [(SHARED / "spec" / "examples" / "office-visit.fhir.json").read_bytes()],
    }


def _resources(raws: list[bytes]) -> int:
    total = 0
    for raw in raws:
        doc = orjson.loads(raw)
        total += len(doc.get("entry") or []) if doc.get("resourceType") == "Bundle" else 1
    return total


def _best(fn: Callable[[], None], loops: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    from fhir.resources import get_fhir_model_class as r5_model
    from fhir.resources.R4B import get_fhir_model_class as r4b_model

    site = SiteConfig.packaged()
    results: dict[str, dict] = {}
    for name, raws in _inputs().items():
        docs = [orjson.loads(r) for r in raws]
        n = _resources(raws)

        def parse(raws=raws) -> None:
            for raw in raws:
                orjson.loads(raw)

        def adapter(raws=raws) -> None:
            for raw in raws:
                adapt(raw, site)

        def validate(model, docs=docs) -> Callable[[], None]:
            def run() -> None:
                for doc in docs:
                    try:
                        model(doc["resourceType"]).model_validate(doc)
                    except Exception:  # R5 refuses R4-only elements: still timed
                        pass
            return run

        r5_ok = 0
        for doc in docs:
            try:
                r5_model(doc["resourceType"]).model_validate(doc)
                r5_ok += 1
            except Exception:
                pass
        row = {
            "resources": n,
            "parse_only_us": _best(parse, args.loops, args.repeat) / n * 1e6,
            "adapter_us": _best(adapter, args.loops, args.repeat) / n * 1e6,
            "r4b_validate_us": _best(validate(r4b_model), max(1, args.loops // 5), args.repeat) / n * 1e6,
            "r5_validate_us": _best(validate(r5_model), max(1, args.loops // 5), args.repeat) / n * 1e6,
            "r5_accepts": f"{r5_ok}/{len(docs)}",
        }
        results[name] = row
    print(f"{'input':<14}{'resources':>10}{'parse µs':>10}{'adapter µs':>12}{'R4B µs':>10}"
          f"{'R5 µs':>10}{'R5 ok':>8}")
    for name, row in results.items():
        print(f"{name:<14}{row['resources']:>10}{row['parse_only_us']:>10.1f}{row['adapter_us']:>12.1f}"
              f"{row['r4b_validate_us']:>10.1f}{row['r5_validate_us']:>10.1f}{row['r5_accepts']:>8}")
    print(orjson.dumps(results).decode())
    return results


if __name__ == "__main__":
    main()
