"""memtrim.py: freed heap memory goes back to the OS at an interval (the worker's resident
memory after a surge was held at its high-water mark by glibc's free lists)."""
from __future__ import annotations

import os
import sys
import threading

import pytest

from stream_app.streaming.memtrim import MemoryTrimmer, libc_malloc_trim


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_malloc_trim_returns_freed_heap_memory():
    trim = libc_malloc_trim()
    assert trim is not None, "this Linux C library has malloc_trim"
    # 64 MB in 32 kB blocks (malloc'd from the heap, below glibc's mmap threshold), then
    # a small block above them that keeps the heap top in place: freeing the big blocks
    # leaves 64 MB of free heap that only malloc_trim hands back.
    blocks = [bytes(32 * 1024) for _ in range(2048)]
    for b in blocks:  # touch every page
        assert b[-1] == 0
    pin = [bytes(1024) for _ in range(64)]
    del blocks
    before = _rss_bytes()
    trim()
    after = _rss_bytes()
    assert before - after > 32 * 1024 * 1024, (before, after)
    assert len(pin) == 64


def test_trimmer_calls_trim_every_interval_until_stopped():
    called = threading.Event()
    calls = []

    def trim():
        calls.append(1)
        if len(calls) >= 3:
            called.set()

    t = MemoryTrimmer(0.01, trim).start()
    assert called.wait(5), "trim called three times"
    t.stop()
    n = len(calls)
    assert t.calls >= 3
    called.clear()
    assert not called.wait(0.05) and len(calls) == n  # no call after stop()


def test_zero_interval_or_no_malloc_trim_starts_no_thread():
    def trim():
        raise AssertionError("must not be called")

    off = MemoryTrimmer(0, trim).start()
    assert off.thread is None
    off.stop()
    missing = MemoryTrimmer(0.01, None)
    missing.trim = None  # as on a C library without malloc_trim
    missing.start()
    assert missing.thread is None


def test_a_failing_trim_is_logged_once_and_not_retried(caplog):
    calls = []
    failed = threading.Event()

    def trim():
        calls.append(1)
        failed.set()
        raise OSError("boom")

    t = MemoryTrimmer(0.01, trim).start()
    assert failed.wait(5)
    t.thread.join(5)
    assert not t.thread.is_alive() and len(calls) == 1
    assert "malloc_trim failed" in caplog.text
