"""Unit tests of the throughput plumbing (no broker): repartition bundles and the guard of
Faust's delivery fast path. The end-to-end behaviour of the same code is checked against the real broker in
test_worker_e2e.py and tests/broker/test_faults.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream_app.streaming import codecs
from stream_app.streaming.seam import delivery_can_block

# ---------------------------------------------------------------------- bundles


def test_bundle_round_trips_every_frame_in_order():
    frames = [(0, 1_700_000_000_123, 2, 17, b'{"a":1}'), (2, 5, 0, 2**40, b""),
              (1, 0, 1, 0, "é".encode() * 10)]
    values = codecs.encode_bundle(frames)
    assert len(values) == 1
    assert list(codecs.iter_bundle(values[0])) == frames


def test_bundles_are_cut_near_their_size_limit_and_keep_order():
    raw = b"x" * 100_000
    frames = [(0, i, 0, i, raw) for i in range(25)]  # 2.5 MB
    values = codecs.encode_bundle(frames)
    assert len(values) == 3
    assert all(len(v) <= codecs.BUNDLE_BYTES + codecs.FRAME_SIZE * 25 for v in values)
    assert [f for v in values for f in codecs.iter_bundle(v)] == frames


def test_one_record_larger_than_a_bundle_gets_a_bundle_of_its_own():
    big = b"y" * (codecs.BUNDLE_BYTES + 1)
    values = codecs.encode_bundle([(0, 1, 0, 1, b"a"), (0, 2, 0, 2, big), (0, 3, 0, 3, b"b")])
    assert [len(list(codecs.iter_bundle(v))) for v in values] == [1, 1, 1]


@pytest.mark.parametrize("cut", [1, codecs.FRAME_SIZE + 3])
def test_a_truncated_bundle_raises_instead_of_inventing_records(cut):
    value = codecs.encode_bundle([(0, 1, 0, 1, b"hello"), (0, 2, 0, 2, b"world")])[0]
    with pytest.raises(ValueError):
        list(codecs.iter_bundle(value[:-cut]))


# ---------------------------------------------------------------------- fast path guard


def _app(*, locked=False, flow=True, buffered=0, queues=()):
    lock = SimpleNamespace(locked=lambda: locked)
    channels = [SimpleNamespace(_queue=q) for q in queues]
    return SimpleNamespace(
        topics=SimpleNamespace(_tp_to_callback_lock=lock, _topics=channels),
        flow_control=SimpleNamespace(is_active=lambda: flow),
        producer=SimpleNamespace(buffer=SimpleNamespace(size=buffered, max_messages=100)),
    )


def _queue(full: bool):
    return SimpleNamespace(full=lambda: full)


def test_delivery_cannot_block_in_the_steady_state():
    assert not delivery_can_block(_app(queues=[_queue(False), None]))


@pytest.mark.parametrize("app", [
    _app(locked=True),  # subscription change in progress
    _app(flow=False),  # rebalance: flow control closed
    _app(buffered=101),  # producer buffer over its limit
    _app(queues=[_queue(False), _queue(True)]),  # one stream queue full
], ids=["lock", "flow", "producer-buffer", "queue-full"])
def test_any_blocking_condition_takes_fausts_own_path(app):
    assert delivery_can_block(app)
