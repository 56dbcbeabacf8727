"""Phase `raw`: aiokafka consumer -> orjson -> aiokafka producer over the pre-produced
input (`raw_passthrough.py`), the physical limit of this machine and broker."""

from __future__ import annotations

from raw_passthrough import run_raw_passthrough

from phases.common import create_topic
from stream_app.vocabulary import INPUT_TOPICS


async def phase_raw(bootstrap: str, prefix: str, n: int) -> dict:
    out_topic = prefix + "bench.raw-passthrough"
    await create_topic(bootstrap, out_topic, 3)
    res = await run_raw_passthrough(bootstrap, [prefix + t for t in INPUT_TOPICS], out_topic, n)
    if res["produced"] != n:
        raise RuntimeError(f"raw passthrough produced {res['produced']} of {n}")
    return res

