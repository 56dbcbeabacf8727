"""Give freed heap memory back to the operating system at a fixed interval.

glibc's malloc keeps memory that the program has freed and hands it out again later; it
returns it to the kernel only from the top of the heap. The worker frees a lot of
medium-sized blocks (fetched message values, encoded patient states, produced batches),
so after a surge its resident memory stays at the surge's high-water mark although the
live heap is far smaller (docs/performance.md has the figures). `malloc_trim(0)` releases
the free pages of every arena. It runs in a daemon thread (ctypes releases the GIL for
the call, which takes milliseconds); the main thread only waits for it if it allocates
from an arena being trimmed at that moment.

On a C library without `malloc_trim` (musl, macOS) this does nothing and says so once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def libc_malloc_trim() -> Callable[[], object] | None:
    """`malloc_trim(0)` of the process's C library, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


class MemoryTrimmer:
    """Calls `trim` every `interval` seconds in a daemon thread until `stop()`."""

    def __init__(self, interval: float, trim: Callable[[], object] | None = None):
        self.interval = interval
        self.trim = trim if trim is not None else libc_malloc_trim()
        self.calls = 0
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> MemoryTrimmer:
        if self.interval <= 0:
            return self
        if self.trim is None:
            log.info("malloc_trim not available in this C library; freed heap memory stays "
                     "with the process")
            return self
        self.thread = threading.Thread(target=self._run, name="chargecap-malloc-trim",
                                        daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trim()
            except Exception:  # a failed trim only means no memory returned
                log.exception("malloc_trim failed; not retried")
                return
            self.calls += 1
