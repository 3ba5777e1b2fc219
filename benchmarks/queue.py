"""What telling waiting members their place costs: `python -m benchmarks.queue`.

Every job waiting in a guild's fair queue asks for its place once a second (`JobRunner._wait_for_turn`),
so with W waiting this measures W `FairQueue.position` calls, against the same calls on a queue that
works the order out afresh for each question (how it was before 2026-11-23), in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from benchmarks.report import number, table
from bot.policy import FairQueue, GuildPolicy, Ticket


class UncachedQueue(FairQueue):
    """The peer: the service order rebuilt for every question."""

    def position(self, ticket: Ticket) -> int | None:
        if ticket.admitted.done():
            return None
        order = self._service_order(ticket.guild_id)
        return next((place for place, waiting in enumerate(order, start=1) if waiting is ticket), None)


def one_second_of_questions(queue: FairQueue, members: int) -> tuple[int, float]:
    """`members` members with three jobs each, one guild, one running: the CPU seconds every waiting job's
    question costs once."""
    policy = GuildPolicy(member_concurrent=1, guild_concurrent=1, member_waiting=3)
    tickets = [queue.join(1, member, policy) for member in range(members) for _ in range(3)]
    waiting = [ticket for ticket in tickets if not ticket.admitted.done()]
    started = time.process_time()
    places = [queue.position(ticket) or 0 for ticket in waiting]
    spent = time.process_time() - started
    if sorted(places) != list(range(1, len(waiting) + 1)):
        raise RuntimeError(f"{type(queue).__name__} gave wrong places: {places}")
    return len(waiting), spent


async def run(member_counts: Sequence[int]) -> str:
    rows = []
    for members in member_counts:
        waiting, ours = one_second_of_questions(FairQueue(), members)
        _, peer = one_second_of_questions(UncachedQueue(), members)
        rows.append([str(waiting), number(ours * 1000, 1), number(peer * 1000, 1), f"{ours / peer:.3f}x"])
    return table(["jobs waiting", "ours ms per second", "uncached ms per second", "ours vs uncached"], rows)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queue", description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[10, 100, 500], help="members with 3 jobs each")
    text = asyncio.run(run(parser.parse_args(argv).members))
    print(text)
    return text


if __name__ == "__main__":
    main()
