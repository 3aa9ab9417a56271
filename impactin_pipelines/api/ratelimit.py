"""Rate limiting of the API itself: a sliding window per caller (API key, or client address for failed
authentications), in memory with pyrate-limiter. One process serves the API, so memory is the right place;
several API processes would each allow the full rate."""

import math
import threading
import time
from collections import OrderedDict

from pyrate_limiter import Decision, Duration, InMemoryBucket, Rate, RateItem

MAX_CALLERS = 10_000  # buckets kept; the least recently seen caller is forgotten first


class KeyedRateLimiter:
    def __init__(self, per_minute: int, *, max_callers: int = MAX_CALLERS) -> None:
        self.per_minute = per_minute
        self._rates = [Rate(per_minute, Duration.MINUTE)]
        self._buckets: OrderedDict[str, InMemoryBucket] = OrderedDict()
        self._max = max_callers
        self._lock = threading.Lock()

    def acquire(self, caller: str) -> float | None:
        """None if the request may go ahead, else the seconds to wait (for Retry-After)."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            bucket = self._buckets.pop(caller, None) or InMemoryBucket(self._rates)
            self._buckets[caller] = bucket
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            bucket.leak(now_ms)
            decision = bucket.put_decision(RateItem(caller, now_ms))
        assert isinstance(decision, Decision)  # an in-memory bucket decides synchronously, never an awaitable
        if decision.allowed:
            return None
        wait_ms = decision.retry_after_ms if decision.retry_after_ms is not None else 60_000
        return max(1.0, math.ceil(wait_ms / 1000))
