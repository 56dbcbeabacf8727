"""The ceiling of one Faust hop configured as the worker (`faust_passthrough_eps`).

`raw_passthrough.py` is the limit of a plain aiokafka loop. This is the same work — read
the input topics, `orjson.loads` each value, re-key by `patient_id`, send the original
bytes to one output topic — done the way the worker's stage 1 does its I/O: the worker's
Faust app (`build_worker_app`: its settings and tuning flags, the delivery fast path,
paced fetches, strict commits), batches taken with `take_batches` of the same size and
wait, sent with `send_batched` and acknowledged only once delivered. No validation, no
state, no second stage: whatever the pipeline does beyond this is chargecap's own work,
and `pipeline_eps` cannot exceed this figure however cheap that work becomes.

Run by `bench.py` as a subprocess (a Faust worker owns its event loop) and timed by it
from the Kafka timestamps of the output topic, as the pipeline is:
`python benchmarks/faust_passthrough.py --broker 127.0.0.1:9092 --topic-prefix P
--app-id A --data-dir D --out TOPIC`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_app.config import settings_from_args  # noqa: E402
from stream_app.streaming.app import build_worker_app  # noqa: E402
from stream_app.streaming.batching import ack_batch, send_batched, take_batches  # noqa: E402
from stream_app.streaming.worker import add_arguments, stream_options, tune_gc  # noqa: E402
from stream_app.vocabulary import INPUT_TOPICS  # noqa: E402


def build(args: argparse.Namespace):
    settings = settings_from_args(args)
    opts = stream_options(args)
    app, _commits = build_worker_app(settings, opts)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
           "value_serializer": "raw"}
    inputs = app.topic(*(settings.topic(t) for t in INPUT_TOPICS), **raw)
    out_topic = args.out
    loads = orjson.loads

    async def passthrough(stream):
        kafka = app.producer._ensure_producer()  # noqa: SLF001 - as the worker does
        async for events in take_batches(stream, opts.batch_size, opts.batch_within):
            sends = []
            for ev in events:
                value = ev.message.value or b""
                try:
                    key = loads(value)["patient_id"].encode()
                except (ValueError, TypeError, KeyError, AttributeError):
                    key = ev.message.key
                sends.append((out_topic, None, key, value, None))
            await send_batched(kafka, sends)
            await ack_batch(stream, events)

    app.agent(inputs, name="faust-passthrough", concurrency=1)(passthrough)
    return app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output topic (must exist)")
    add_arguments(ap)  # the worker's settings and tuning flags
    args = ap.parse_args(argv)
    app = build(args)
    import faust

    tune_gc()
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
