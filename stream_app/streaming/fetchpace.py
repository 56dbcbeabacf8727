"""Fetch requests paced by load: batch them while records flow, wait long when idle.

A Kafka fetch is answered once `fetch_min_bytes` are ready or `fetch_max_wait` is over.
Faust fixes these at 1 byte / 1.5 s: every fetch returns as soon as any record is there.
Under a steady trickle nearly every record then costs a fetch round trip, and aiokafka
encodes and decodes every request and response in Python. Holding fetches for a few
kilobytes or milliseconds saves worker CPU under load (docs/performance.md), but as a
fixed setting it makes an idle worker poll every few milliseconds.

So the setting follows the traffic: after a fetch that brought records the next one is
held for `busy_min_bytes` / `busy_max_wait`; after one that came back empty, the next is
answered at the first byte and may wait `idle_max_wait` for it. The first record after
a quiet spell is therefore delivered as soon as it is written; only records
arriving within `busy_max_wait` of others wait, at most that long.

This module is the policy; seam/consumer.py applies it to the aiokafka fetcher the
worker's consumer creates.
"""
from __future__ import annotations


class FetchPace:
    """The two fetch settings of one fetcher: (min bytes, max wait in ms) after a response
    that brought records, or after one that did not."""

    def __init__(self, busy_min_bytes: int, busy_max_wait: float, idle_max_wait: float = 1.5):
        self.busy = (busy_min_bytes, int(busy_max_wait * 1000))
        self.idle = (1, int(idle_max_wait * 1000))

    def settings(self, got_records: bool) -> tuple[int, int]:
        return self.busy if got_records else self.idle
