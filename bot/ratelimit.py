"""A sliding-window rate limiter: what keeps the bot under RunPod's per-endpoint limits and its pings under
Discord's per-channel ones."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimit:
    requests: int
    per: float  # seconds


class RateLimiter:
    """At most `limit` request starts in any `window` seconds (a sliding window).

    Each caller reserves the next free slot at once and then sleeps until it, so waiting callers keep
    their order, nothing polls, and no lock ties the limiter to one event loop."""

    def __init__(self, limit: int, window: float, *, clock: Clock = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a rate limit needs at least one request per positive window")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._slots: deque[float] = deque()  # granted start times, ascending; some may lie in the future

    def reserve(self) -> float:
        """Take the next free slot; returns how long to wait before using it."""
        now = self._clock()
        slots = self._slots
        while slots and slots[0] <= now - self.window:
            slots.popleft()
        start = now
        if slots:
            start = max(start, slots[-1])
            if len(slots) >= self.limit:
                # The new slot and the `limit` before it must not fit in one window.
                start = max(start, slots[-self.limit] + self.window)
        slots.append(start)
        return start - now

    async def acquire(self, sleep: Sleep = asyncio.sleep) -> float:
        wait = self.reserve()
        if wait > 0:
            await sleep(wait)
        return wait

    @property
    def pending(self) -> int:
        """Slots granted in the last window or still ahead (for logs and tests)."""
        now = self._clock()
        return sum(1 for slot in self._slots if slot > now - self.window)


class RateLimiterPerKey:
    """A `RateLimiter` of its own for each key (a channel, say), all under the same limit, made on first use."""

    def __init__(self, limit: RateLimit, *, clock: Clock = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._limiters: dict[object, RateLimiter] = {}

    def get(self, key: object) -> RateLimiter:
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = RateLimiter(self._limit.requests, self._limit.per, clock=self._clock)
        return limiter
