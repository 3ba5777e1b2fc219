"""A job's life, as the ledger records it: its states, and the only moves between them.

`MOVES` is the whole lifecycle at a glance. The ledger (`bot.storage.Storage`) makes each move as a named method
(`submitting`, `queued`, `running`, `completed`, `delivered`, `undeliverable`, `ended`) that checks this table,
writes the row and the usage counters in one transaction, and returns the new record; nothing else writes a
state. A final state has no moves out, so a picture that arrived (COMPLETED) can only be delivered or found
undeliverable: never failed after the fact.

    WAITING ──▶ PENDING ──▶ QUEUED ◀──▶ RUNNING ──▶ COMPLETED ──▶ DELIVERED
       │           │          │            │                 └──▶ UNDELIVERABLE
       └───────────┴──────────┴────────────┴──▶ FAILED | CANCELLED | TIMED_OUT | EXPIRED
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class LedgerState(StrEnum):
    """Where a job is in its life (stored as these very strings)."""

    WAITING = "waiting"  # in the server's fair queue: nothing sent to RunPod, nothing paid
    PENDING = "pending"  # being sent: RunPod may or may not have it
    QUEUED = "queued"  # on RunPod, waiting for a worker
    RUNNING = "running"
    COMPLETED = "completed"  # its pictures arrived; being posted
    DELIVERED = "delivered"  # posted (a final state)
    UNDELIVERABLE = "undeliverable"  # finished and paid for, but could be posted nowhere (a final state)
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"  # gone from RunPod before it was delivered

    @property
    def counted(self) -> bool:
        """Whether it counts against quotas and in usage: failures and cancellations are free."""
        return self in COUNTED

    @property
    def final(self) -> bool:
        return not MOVES[self]

    @property
    def on_runpod(self) -> bool:
        """Sent to RunPod and not finished there: a job someone must follow, or cancel when it is stale."""
        return self in (LedgerState.PENDING, LedgerState.QUEUED, LedgerState.RUNNING)


_S = LedgerState
_ENDINGS = frozenset({_S.FAILED, _S.CANCELLED, _S.TIMED_OUT, _S.EXPIRED})  # a job that ends without pictures
_ON_RUNPOD = frozenset({_S.QUEUED, _S.RUNNING, _S.COMPLETED}) | _ENDINGS

# from -> the states it may move to. A state that moves to itself (a later part of a set queued again) is not a
# move but a change of the row's other values, which the named methods allow where they say.
MOVES: Final[Mapping[LedgerState, frozenset[LedgerState]]] = {
    _S.WAITING: frozenset({_S.PENDING}) | _ENDINGS,
    _S.PENDING: _ON_RUNPOD,  # a set killed mid-send is followed on from here after a restart
    _S.QUEUED: _ON_RUNPOD - {_S.QUEUED},
    _S.RUNNING: _ON_RUNPOD - {_S.RUNNING},  # RUNNING -> QUEUED: the next part of a set waits for a worker
    _S.COMPLETED: frozenset({_S.DELIVERED, _S.UNDELIVERABLE}),
    _S.DELIVERED: frozenset(),
    _S.UNDELIVERABLE: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.TIMED_OUT: frozenset(),
    _S.EXPIRED: frozenset(),
}

# What quotas and usage count: everything that is or may become a paid picture.
COUNTED: Final = frozenset(MOVES) - _ENDINGS
ENDINGS: Final = _ENDINGS


class IllegalMove(Exception):
    """A move the table does not allow: a bug, or another process that moved the job first."""

    def __init__(self, request_id: int, current: LedgerState, wanted: LedgerState) -> None:
        super().__init__(f"job {request_id}: no move from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


def check_move(request_id: int, current: LedgerState, wanted: LedgerState) -> None:
    if wanted not in MOVES[current]:
        raise IllegalMove(request_id, current, wanted)
