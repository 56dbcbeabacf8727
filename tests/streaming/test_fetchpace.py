"""fetchpace.py: fetches are held while records flow and answered at once after a quiet
spell (a fixed hold made an idle worker poll every few milliseconds). seam.pace_fetcher
applies the policy to a fetcher; tests/streaming/test_seam.py checks that the worker's
real consumer gets it."""
from __future__ import annotations

import asyncio

import pytest

from stream_app.streaming.fetchpace import FetchPace
from stream_app.streaming.seam import pace_fetcher


class FakeFetcher:
    """The two attributes aiokafka's fetcher reads per request, and its per-request call
    (returns True when the response added records)."""

    def __init__(self, responses):
        self._fetch_min_bytes = 1
        self._fetch_max_wait_ms = 1500
        self.responses = list(responses)
        self.sent_with = []

    async def _proc_fetch_request(self, assignment, node_id, request):
        self.sent_with.append(self.current())
        return self.responses.pop(0)

    async def fetch(self):
        return await self._proc_fetch_request(None, 0, None)

    def current(self) -> tuple[int, int]:
        return self._fetch_min_bytes, self._fetch_max_wait_ms

    def set(self, min_bytes: int, max_wait_ms: int) -> None:
        self._fetch_min_bytes, self._fetch_max_wait_ms = min_bytes, max_wait_ms


def test_the_policy():
    pace = FetchPace(16384, 0.005, idle_max_wait=1.5)
    assert pace.settings(True) == (16384, 5)
    assert pace.settings(False) == (1, 1500)


def test_fetch_settings_follow_the_traffic():
    fetcher = FakeFetcher([True, True, False, False, True])
    pace_fetcher(fetcher, FetchPace(16384, 0.005, idle_max_wait=1.5))

    async def run():
        for _ in range(5):
            await fetcher.fetch()

    asyncio.run(run())
    idle, busy = (1, 1500), (16384, 5)
    # starts idle; a response with records makes the next request wait for more; an
    # empty one makes it answer at the first byte again
    assert fetcher.sent_with == [idle, busy, busy, idle, idle]
    assert fetcher.current() == busy


def test_a_failed_fetch_leaves_the_setting_alone():
    class FailingFetcher(FakeFetcher):
        async def _proc_fetch_request(self, assignment, node_id, request):
            raise ConnectionError("broker went away")

    fetcher = FailingFetcher([])
    pace_fetcher(fetcher, FetchPace(16384, 0.005))
    fetcher.set(16384, 5)
    with pytest.raises(ConnectionError):  # reaches aiokafka's fetch loop as before
        asyncio.run(fetcher.fetch())
    assert fetcher.current() == (16384, 5)


def test_a_fetcher_without_the_settings_is_refused():
    from stream_app.streaming.seam import SeamError

    class Renamed:
        async def _proc_fetch_request(self, assignment, node_id, request):
            return True

    with pytest.raises(SeamError, match="_fetch_min_bytes"):
        pace_fetcher(Renamed(), FetchPace(16384, 0.005))
