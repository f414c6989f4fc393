"""Token buckets by key: at most `rate_per_s` units per second per key, `burst` at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One bucket per key (a device id), filled at `rate_per_s` up to `burst` tokens."""

    def __init__(self, rate_per_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic,
                 max_keys: int | None = None) -> None:
        """`max_keys` bounds the memory for keys an attacker may invent: past it, the bucket
        used least recently is forgotten (as if full again)."""
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, wanted: int) -> int:
        """Take up to `wanted` tokens from `key`'s bucket; returns how many were granted."""
        now = self._clock()
        bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        self._buckets[key] = bucket  # the most recently used last
        if self._max_keys is not None and len(self._buckets) > self._max_keys:
            del self._buckets[next(iter(self._buckets))]
        bucket.tokens = min(float(self.burst),
                            bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.at = now
        granted = min(wanted, int(bucket.tokens))
        bucket.tokens -= granted
        return granted
