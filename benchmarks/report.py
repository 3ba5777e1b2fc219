"""What the benchmarks measure and print with: quantiles, busiest windows, when and where they ran, tables."""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def peak_in_window(times: Iterable[float], window: float) -> int:
    """The most events in any window of this length, closed on the right as RunPod, Discord and the doubles
    count (a fixed window can hold no more than this)."""
    ordered = sorted(times)
    best = start = 0
    for end, moment in enumerate(ordered):
        while ordered[start] <= moment - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
    }


def describe_machine(machine: dict[str, Any]) -> str:
    """`machine()`'s answer as the results files print it."""
    return (
        f"Machine: {machine['cpus']} CPUs ({machine['cpu_model'] or 'unknown model'}), `uname -m` "
        f"{machine['machine']}, {machine['system']}, Python {machine['python']}."
    )


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def command_line(module: str, argv: Sequence[str]) -> str:
    """How to run it again."""
    return " ".join([f"python -m {module}", *argv])


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def publish(text: str, results: Path | None) -> None:
    """A benchmark's report on stdout, and in `results` when given (`--results`)."""
    print(text)
    if results is not None:
        results.write_text(text)


def quiet_logging() -> None:
    """Warnings only, on stderr: what discord.py says when it is rate limited or must wait, without the bot's INFO."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
