"""Synthetic, realistic EHR event stream for chargecap (`python -m stream_app generate`).

Everything here is deterministic for a seed: one `random.Random` per concern, no wall
clock, no hash randomisation, dicts built in a fixed field order and serialised with
orjson. The same arguments always give byte-identical output.

Public API (used by the demo, the benchmarks and the end-to-end tests):

* `generate_stream(seed, ...) -> GeneratedStream`: everything, with labels.
* `generate_events(seed, ...) -> list[dict]`: the valid input records in arrival order
  (amendments, withdrawals, redeliveries and out-of-order arrival included; malformed
  messages are not records and are never part of this list).
* `generate_messages(seed, ..., topic_prefix="") -> list[(topic, key, value)]`: what a
  producer sends, keys varied on purpose (patient, encounter, record id or None),
  malformed messages interleaved when `malformed_rate > 0`.
* `add_arguments(parser)` / `run(args) -> int`: the `generate` command.

The simulated world: clinics in a few US time zones with physicians/NPs/PAs (valid NPIs)
and RN/LPN/MA staff; patients with a payer class (medicare ~40 %, commercial ~35 %,
medicaid ~15 %, workers' comp, self-pay) who visit on some days; office (POS 11, 12, 20)
and facility (POS 22, 19, 21) encounters; E/M visits; IM/SC injections, IV pushes, IV
infusions, vaccines, allergen immunotherapy and oral medications of billing-rules.md §6
with consistent name / HCPCS / NDC / dose; pharmacy dispenses before or after the
administration, with or without `order_id`.

Injected problems (`ERROR_KINDS`, one per affected encounter; `error_rate` is the share
of encounters that carry one, `error_mix` the relative weight of each kind) are what a
correct validator should flag (`EXPECTED_REASON`). Valid encounters are built so that
they should raise no block alert. Records of a valid encounter are never mutated.

Nothing here prints or logs patient, encounter or record ids.

Modules, one concern each: `catalogue` (reference data: drugs, payers, zones, sites,
clinics), `visits` (patients walking through encounters), `errors` (injected problems),
`versions` (amendments, fixes, withdrawals, arrival order and redeliveries), `malformed`
(messages that are not records), `stream` (assembles them into `GeneratedStream`),
`output` (NDJSON file or Kafka producer) and `command` (the CLI flags and `run`).
"""

from stream_app.devtools.generate.command import add_arguments, run, stream_from_args
from stream_app.devtools.generate.errors import ERROR_KINDS, EXPECTED_REASON
from stream_app.devtools.generate.malformed import MALFORMED_KINDS
from stream_app.devtools.generate.output import produce, write_ndjson
from stream_app.devtools.generate.stream import (
    GeneratedStream,
    Message,
    generate_events,
    generate_messages,
    generate_stream,
)

__all__ = [
    "ERROR_KINDS",
    "EXPECTED_REASON",
    "MALFORMED_KINDS",
    "GeneratedStream",
    "Message",
    "add_arguments",
    "generate_events",
    "generate_messages",
    "generate_stream",
    "produce",
    "run",
    "stream_from_args",
    "write_ndjson",
]
