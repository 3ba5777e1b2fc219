"""Seeded random faults for the loopback doubles: :class:`Chaos`.

Set ``double.chaos = Chaos(rate=0.1, seed=7)`` (or pass ``chaos=`` to the constructor) on a ``RunPodDouble``
or a ``DiscordDouble`` and every request to a covered route is, before the double handles it, faulted with
probability ``rate``: ``"reset"`` closes the connection without an answer (the transport is aborted, so
aiohttp raises ``ServerDisconnectedError``, or ``ClientOSError`` when the kernel resets the socket), and
``"500"``/``"502"``/``"503"`` answer that status (Discord: a JSON ``{"message", "code": 0}``; RunPod: its
gateway's plain text), while ``"slow"`` (not among the defaults) waits ``slow_s`` real seconds and then
answers normally. A faulted request has no effect on the double's state (no job created, no message posted
or edited, no rate-limit window used); it is still recorded, with ``chaos`` set to the kind and, on Discord,
``Recorded.status`` the status sent or :data:`RESET` (-1) for a reset. One-shot injections (``fail_next``,
``drop_next``...) take precedence: a request one of them answers draws nothing. ``routes`` names what may
be faulted, Discord route names (``"cdn"`` for attachment downloads) or RunPod ops; ``None`` leaves it to
the double: every RunPod op, and on Discord every REST route but the login-time ones and ``callback``, plus
the CDN. Draws come from ``random.Random(seed)`` and only covered requests draw, so one seed and one order
of requests give one sequence of faults. Mind that aiohttp resends an idempotent request (GET, PUT,
DELETE...) once after a reset, and that resend draws again. ``injected`` counts what was sent, by
(route, kind), for a test's figures; :meth:`Chaos.summary` puts it in words.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final

KINDS: Final = frozenset({"reset", "500", "502", "503", "slow"})
RESET: Final = -1  # Discord's Recorded.status of a request the double hung up on


@dataclass
class Chaos:
    """Fault each covered request with probability ``rate``, the kind drawn from ``kinds``; seeded."""

    rate: float  # chance in 0..1 that one covered request is faulted
    seed: int = 0
    kinds: tuple[str, ...] = ("reset", "500", "502", "503")
    routes: frozenset[str] | None = None  # Discord routes / RunPod ops that may be faulted; None: the double's
    slow_s: float = 1.0  # how long a "slow" request waits (real time) before its normal answer
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, kind) -> how many
    _random: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, not {self.rate!r}")
        unknown = set(self.kinds) - KINDS
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be some of {sorted(KINDS)}; got {self.kinds!r}")
        if self.routes is not None:
            self.routes = frozenset(self.routes)
        self._random = random.Random(self.seed)

    def covers(self, route: str, default: Collection[str] | None = None) -> bool:
        """Whether ``route`` may be faulted: named in ``routes``, else in the double's ``default`` (all if None)."""
        allowed = self.routes if self.routes is not None else default
        return allowed is None or route in allowed

    def draw(self, route: str, default: Collection[str] | None = None) -> str | None:
        """The fault for one request to ``route`` (counted in ``injected``), or None to answer it normally."""
        if not self.covers(route, default) or self._random.random() >= self.rate:
            return None
        kind = self._random.choice(self.kinds)
        self.injected[route, kind] += 1
        return kind

    @property
    def total(self) -> int:
        """How many faults were injected so far."""
        return sum(self.injected.values())

    def summary(self) -> str:
        """``injected`` in words, e.g. ``3 faults: channel_message 503 x2, edit_original reset x1``."""
        parts = [f"{route} {kind} x{n}" for (route, kind), n in sorted(self.injected.items())]
        return f"{self.total} fault{'' if self.total == 1 else 's'}" + (": " + ", ".join(parts) if parts else "")
