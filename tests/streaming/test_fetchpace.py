"""fetchpace.py: fetches are held while records flow and answered at once after a quiet
spell (a fixed hold made an idle worker poll every few milliseconds)."""
from __future__ import annotations

import asyncio

import pytest

from stream_app.streaming.fetchpace import FetchPace, pace_fetches


class FakeFetcher:
    """The two attributes aiokafka's fetcher reads per request, and its per-request call
    (returns True when the response added records)."""

    def __init__(self, responses):
        self._fetch_min_bytes = 1
        self._fetch_max_wait_ms = 1500
        self.responses = list(responses)
        self.sent_with = []

    async def _proc_fetch_request(self, assignment, node_id, request):
        self.sent_with.append((self._fetch_min_bytes, self._fetch_max_wait_ms))
        return self.responses.pop(0)


def test_fetch_settings_follow_the_traffic():
    fetcher = FakeFetcher([True, True, False, False, True])
    FetchPace(16384, 0.005, idle_max_wait=1.5).install(fetcher)

    async def run():
        for _ in range(5):
            await fetcher._proc_fetch_request(None, 0, None)

    asyncio.run(run())
    idle, busy = (1, 1500), (16384, 5)
    # starts idle; a response with records makes the next request wait for more; an
    # empty one makes it answer at the first byte again
    assert fetcher.sent_with == [idle, busy, busy, idle, idle]
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == busy


def test_a_failed_fetch_leaves_the_setting_alone():
    class FailingFetcher(FakeFetcher):
        async def _proc_fetch_request(self, assignment, node_id, request):
            raise ConnectionError("broker went away")

    fetcher = FailingFetcher([])
    FetchPace(16384, 0.005).install(fetcher)
    fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = 16384, 5
    with pytest.raises(ConnectionError):  # reaches aiokafka's fetch loop as before
        asyncio.run(fetcher._proc_fetch_request(None, 0, None))
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (16384, 5)


async def test_the_worker_consumer_is_paced_once_started(monkeypatch):
    """The wrapper reaches the consumer Faust builds, and the fetcher it creates at start."""
    import aiokafka

    from stream_app.config import Settings
    from stream_app.streaming.app import StreamOptions, build_faust_app

    async def fake_start(self):  # aiokafka's start() connects, then creates the fetcher
        self._fetcher = FakeFetcher([True])

    monkeypatch.setattr(aiokafka.AIOKafkaConsumer, "start", fake_start)
    app = build_faust_app(Settings(broker="kafka://127.0.0.1:1", store="memory://"),
                          StreamOptions())
    pace_fetches(app, FetchPace(32768, 0.015))
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(thread.transport)
    try:
        await consumer.start()
        fetcher = consumer._fetcher
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 1500)
        await fetcher._proc_fetch_request(None, 0, None)  # brought records
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (32768, 15)
    finally:
        await consumer._client.close()
