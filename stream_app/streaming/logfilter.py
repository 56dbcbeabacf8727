"""Rate limiting of the Kafka client's repeated log lines.

While a broker is down aiokafka logs the same connection error every ~50 ms (tens of
thousands of lines a minute), which buries everything else and fills disks. The filter
lets the first occurrence of a message template through, then at most one every
`interval` seconds, with the number suppressed in between.
"""

from __future__ import annotations

import logging
import time

KAFKA_CLIENT_LOGGERS = ("aiokafka", "kafka", "faust.transport")


class RateLimitFilter(logging.Filter):
    def __init__(self, interval: float = 10.0, clock=time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.msg)
        now = self.clock()
        last = self._seen.get(key)
        if last is None or now - last[0] >= self.interval:
            suppressed = last[1] if last else 0
            self._seen[key] = (now, 0)
            if suppressed:
                record.msg = f"{record.msg} [{suppressed} similar messages suppressed]"
            if len(self._seen) > 1000:  # templates are few; bound it anyway
                self._seen.clear()
            return True
        self._seen[key] = (last[0], last[1] + 1)
        return False


def rate_limit_kafka_client_logs(interval: float = 10.0) -> RateLimitFilter:
    flt = RateLimitFilter(interval)
    for name in KAFKA_CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(flt)
    return flt
