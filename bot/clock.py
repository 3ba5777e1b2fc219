"""The bot's two clocks. The wall clock says what time it is, for people and the ledger, and can step (an NTP
correction); the monotonic clock only moves forward, for deadlines, ages and pauses. Tests inject a wall clock
(bot/jobs.py, RunnerOptions.clock; bot/storage.py, Storage.clock) to cross a midnight or step the time."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def wall_clock() -> datetime:
    return datetime.now(UTC)


def monotonic() -> float:
    """asyncio's own clock (its loops read `time.monotonic`), so deadlines agree with `asyncio.sleep`."""
    return time.monotonic()
