"""A cheaper per-message hand-off from Faust's fetcher to the agents' streams.

faust-streaming 0.15.3 (`Consumer._drain_messages`) delivers every fetched message with
`await self.wait_first(callback(message), self.suspend_flow.wait())`: four tasks, an
`asyncio.wait` and three cancellations per message, so that a delivery blocked on a full
stream queue can be abandoned when a rebalance suspends the flow. On this machine that
alone caps a do-nothing agent at ~6,500 messages/s (docs/performance.md, hot spot 3).

The delivery (`Conductor.on_message` and the handler Faust compiles per partition) can
only block in four places: the conductor's subscription lock, the flow-control gate
(closed during a rebalance), a producer buffer over its limit and a full stream queue.
When none of them can block *and* the flow is not suspended, the delivery completes without yielding, so
`install()` awaits it directly; otherwise it takes Faust's own path unchanged. Everything
else in the loop (read offsets, gap tracking for acks, commit-every, yielding to the event
loop every 100 messages) is Faust's code, kept line for line; the gap tracking it calls is
switched off by commits.py, which audits holes instead.

Pinned to the faust-streaming version in requirements.lock: `install()` refuses any other
version rather than patch code it has not been checked against.
"""

from __future__ import annotations

import asyncio
import logging
import types

import faust
from faust.transport import consumer as faust_consumer

log = logging.getLogger(__name__)

CHECKED_VERSIONS = ("0.15.3",)


def _can_block(app) -> bool:
    conductor = app.topics
    if conductor._tp_to_callback_lock.locked():  # noqa: SLF001
        return True
    if not app.flow_control.is_active():
        return True
    buffer = app.producer.buffer
    if buffer.size > buffer.max_messages:
        return True
    # A channel's queue is created when its stream starts iterating; one not created yet
    # would be created by the delivery (and is empty), so it cannot block.
    return any(ch._queue is not None and ch._queue.full()  # noqa: SLF001
               for ch in conductor._topics)  # noqa: SLF001


async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - Faust's loop
    # Faust's Consumer._drain_messages (0.15.3) with the fast path marked below.
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set  # noqa: SLF001
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    suspended = self.suspend_flow.is_set
    app = self.app

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset:
                            if acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # --- fast path: a delivery that cannot block needs no race
                        # against suspend_flow.
                        if not suspended() and not _can_block(app):
                            await callback(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                unset_flag(flag_consumer_fetching)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


def install(app: faust.App) -> bool:
    """Give `app`'s consumer the fast delivery path. Returns False, and leaves Faust
    untouched, on an unchecked faust-streaming version."""
    version = getattr(faust, "__version__", "")
    if version not in CHECKED_VERSIONS:
        log.warning("faust-streaming %s not checked for the delivery fast path; using "
                    "Faust's own", version)
        return False
    consumer = app.consumer

    async def drain(self, fetcher):
        return await _drain_messages(self, fetcher)

    consumer._drain_messages = types.MethodType(drain, consumer)  # noqa: SLF001
    return True
