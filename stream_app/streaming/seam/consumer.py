"""The worker's Kafka consumer: Faust's aiokafka consumer with four changes.

* **Strict commits** (`_new_offset`, `_add_gap`): the offset to commit is decided by
  `commits.StrictCommits`, which never crosses a record that was fetched but not
  processed; Faust's gap tracking is switched off (holes are audited, not assumed).
  `acked_offsets`, `acked_index` and `committed_offset` give StrictCommits the
  consumer's bookkeeping through public methods.
* **Seeks wait for the batch in hand** (`getmany`, `perform_seek`, `seek`; seekguard.py).
* **A cheaper hand-off to the streams** (`_drain_messages`): Faust delivers every
  fetched message with `await self.wait_first(callback(message),
  self.suspend_flow.wait())`: four tasks, an `asyncio.wait` and three cancellations per
  message, so that a delivery blocked on a full stream queue can be abandoned when a
  rebalance suspends the flow; that alone caps a do-nothing agent far below the
  worker's rate (docs/performance.md). The delivery (`Conductor.on_message` and the
  handler Faust compiles per partition) can only block in four places: the conductor's
  subscription lock, the flow-control gate (closed during a rebalance), a producer
  buffer over its limit and a full stream queue. When none of them can block and the
  flow is not suspended, the delivery completes without yielding, so it is awaited
  directly; otherwise it takes Faust's own path. The rest of the loop is Faust's
  `Consumer._drain_messages`, kept line for line (its fingerprint is checked by
  tests/streaming/test_seam.py).
* **Fetches paced by load** (the aiokafka fetcher's `_fetch_min_bytes`,
  `_fetch_max_wait_ms` and `_proc_fetch_request`; fetchpace.py has the policy).
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_app.streaming.seam.patch import overrides, replace, require
from stream_app.streaming.seekguard import SeekGuarded


def delivery_can_block(app) -> bool:
    """Whether handing a message to the streams might have to wait (see module doc)."""
    conductor = app.topics
    if conductor._tp_to_callback_lock.locked():
        return True
    if not app.flow_control.is_active():
        return True
    buffer = app.producer.buffer
    if buffer.size > buffer.max_messages:
        return True
    # A channel's queue is created when its stream starts iterating; one not created yet
    # would be created by the delivery (and is empty), so it cannot block.
    return any(ch._queue is not None and ch._queue.full() for ch in conductor._topics)


def pace_fetcher(fetcher: Any, pace) -> None:
    """Switch an aiokafka fetcher's two fetch settings after every response: `pace`
    (fetchpace.FetchPace) says which. aiokafka reads the settings each time it builds a
    request and looks `_proc_fetch_request` up on the fetcher each time it sends one."""
    require(fetcher, "_fetch_min_bytes", "_fetch_max_wait_ms")

    def apply(got_records: bool) -> None:
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = pace.settings(got_records)

    proc = fetcher._proc_fetch_request

    async def _proc_fetch_request(assignment, node_id, request):
        # aiokafka's result: True when the response added records to hand on
        got = await proc(assignment, node_id, request)
        apply(bool(got))
        return got

    apply(False)
    replace(fetcher, "_proc_fetch_request", _proc_fetch_request)


@overrides(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer")
class WorkerConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Paces the fetches of the aiokafka consumer it creates once that has started (the
    consumer creates its fetcher in `start()`)."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        pace = getattr(transport, "pace", None)
        if pace is None:
            return consumer
        start = consumer.start

        async def _start():
            await start()
            pace_fetcher(consumer._fetcher, pace)

        replace(consumer, "start", _start)
        return consumer


require(faust_aiokafka.Consumer, "getmany", "perform_seek", "seek")  # SeekGuarded's


@overrides(faust_aiokafka.Consumer, "_new_consumer_thread", "_new_offset", "_add_gap",
           "_drain_messages")
class WorkerConsumer(SeekGuarded, faust_aiokafka.Consumer):
    def __init__(self, transport, *args: Any, **kwargs: Any) -> None:
        super().__init__(transport, *args, **kwargs)
        require(self, "_acked", "_acked_index", "_committed_offset", "_read_offset",
                "_commit_every", "_n_acked")
        self.strict_commits = getattr(transport, "commits", None)
        if self.strict_commits is not None:
            self.strict_commits.bind(self)

    # -------------------------------------------------------------- bookkeeping (public)

    def acked_offsets(self, tp) -> list[int]:
        """The acknowledged offsets not committed yet (Faust's own list: trimmed in place
        by the caller once committed)."""
        return self._acked[tp]

    def acked_index(self, tp) -> set[int]:
        """The same offsets as a set (Faust's own)."""
        return self._acked_index[tp]

    def committed_offset(self, tp) -> int | None:
        """The last offset committed (Kafka's convention: the next one to read), or None."""
        return self._committed_offset.get(tp)

    # -------------------------------------------------------------- replaced methods

    def _new_offset(self, tp):
        if self.strict_commits is None:
            return super()._new_offset(tp)
        return self.strict_commits.new_offset(tp)

    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        if self.strict_commits is None:
            return await super()._add_gap(tp, offset_from, offset_to)
        return None  # holes are audited, not assumed

    def _new_consumer_thread(self):
        return WorkerConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - Faust's loop
        # Faust's Consumer._drain_messages with the fast path marked below.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
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
                            if not suspended() and not delivery_can_block(app):
                                await callback(message)
                            else:
                                await self.wait_first(callback(message),
                                                      self.suspend_flow.wait())
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
