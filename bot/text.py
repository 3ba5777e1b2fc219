"""Text for people, with no Discord in it: numbers, plurals, dollars, sizes, moments and RunPod's health as
members, admins and operators read them, and what outside text must lose before it reaches a terminal or a log
line. Discord's own markup (timestamps, mentions) is drawn by the Discord side only, in `bot/render.py`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

# What worker text must not bring to a terminal: the control characters (C0, DEL and C1; ESC starts the
# ANSI/OSC sequences that retitle, clear or rewrite a terminal or plant hyperlinks, CR rewrites the line),
# the bidi controls that reorder what is shown, and lone surrogates. Line breaks and tabs become spaces.
_SPACES = "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029"
_UNPRINTABLE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
_UNPRINTABLE += [*range(0x2066, 0x206A), *range(0xD800, 0xE000)]
_PRINTABLE = {code: " " if chr(code) in _SPACES else "\N{REPLACEMENT CHARACTER}" for code in _UNPRINTABLE}


def printable(text: object) -> str:
    """Text from RunPod or a worker, safe to write to a terminal or a log: one line, every control
    character shown as U+FFFD (or a space for line breaks and tabs), so it can never move the cursor,
    send an escape sequence or start a line of its own; ordinary Unicode text is kept as it is."""
    return str(text).translate(_PRINTABLE)


def number(amount: float) -> str:
    """`3`, `3,600`, `1.5`: whole numbers grouped, fractions to two places at most."""
    return f"{amount:,.0f}" if float(amount).is_integer() else f"{amount:,.2f}".rstrip("0").rstrip(".")


def noun(amount: float, unit: str, shown: str | None = None) -> str:
    """`unit` as it reads after `amount` (written as `number` writes it, or as `shown`): `picture` after `1`,
    `pictures` after any other."""
    return unit if (number(amount) if shown is None else shown) == "1" else f"{unit}s"


def plural(amount: float, unit: str, shown: str | None = None) -> str:
    """`1 picture`, `3 pictures`, `3,600 GPU seconds`, `1.5 minutes`: the amount as `number` writes it (or as
    `shown`, when the caller rounds it otherwise), then its `noun`."""
    shown = number(amount) if shown is None else shown
    return f"{shown} {noun(amount, unit, shown)}"


def dollars(amount: float, places: int = 2) -> str:
    """`$1,234.50`, `$0.00031`: to `places` decimals, never fewer than the cent's two, trailing zeros beyond the
    cent dropped; an amount that is not nothing but would round to nothing is `< $0.01` (at two places)."""
    smallest = 10.0**-places
    if 0 < amount < smallest / 2:
        return f"< ${smallest:.{places}f}"
    whole, _, fraction = f"{amount:,.{places}f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def duration(seconds: float) -> str:
    """A duration as a member reads it, rounded to the second: `59 s`, `1 min`, `2 min 5 s`, `1 h 20 min`."""
    whole = max(1, round(seconds)) if seconds > 0 else 0
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    minutes = round(rest / 60)
    if minutes == 60:
        hours, minutes = hours + 1, 0
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def size_text(size: int) -> str:
    """A size as a member reads it: "64 MB", or "512 KB" below a megabyte (of 1024 x 1024 bytes)."""
    return f"{size / (1024 * 1024):.0f} MB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KB"


def moment(when: datetime) -> str:
    """A moment in plain text, for logs and the terminal: `at 2026-11-23 00:00 UTC`. (In Discord each member
    sees it counted down in their own time instead: `render.timestamp`.)"""
    return f"at {when.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


class WorkerCounts(Protocol):
    """What of RunPod's /health answer (`bot.runpod.Health`) is told in words."""

    @property
    def ready_workers(self) -> int: ...
    @property
    def warm_workers(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def initializing(self) -> int: ...
    @property
    def throttled(self) -> int: ...
    @property
    def in_queue(self) -> int: ...
    @property
    def in_progress(self) -> int: ...


COLD_NOTE = " (none warm: the first job waits for a cold start)"


def worker_counts(health: WorkerCounts) -> tuple[tuple[int, str], ...]:
    """RunPod's workers by what they mean for a job, in the bot's words: ready (one can start it now), busy
    (running another), starting (a cold start)."""
    return (health.ready_workers, "ready"), (health.running, "busy"), (health.initializing, "starting")


def health_text(health: WorkerCounts) -> tuple[str, str]:
    """RunPod's /health as an admin or operator reads it: the workers (`1 ready, 0 busy, 0 starting, 0 throttled`,
    then `COLD_NOTE` when none can start a job without a cold start) and the jobs (`0 in queue, 0 running`)."""
    counts = [f"{count} {word}" for count, word in worker_counts(health)]
    workers = f"{', '.join(counts)}, {health.throttled} throttled{COLD_NOTE if health.warm_workers == 0 else ''}"
    return workers, f"{health.in_queue} in queue, {health.in_progress} running"
