"""What a guild allows: limits, quotas, moderation and price. No Discord here.

The admin's money is GPU time, so every limit is checked before a job is submitted, and failed or
cancelled jobs never count against anyone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import re2

from bot.errors import BotError
from bot.params import GenerationParams
from bot.text import moment, plural

MAX_PATTERNS = 20
MAX_PATTERN_LENGTH = 200


class Refused(BotError):
    """A job this guild's rules do not allow; the message says why and when to try again.

    Given in parts, a moment (when a quota resets) as the datetime itself: `str()` writes it in UTC (`moment`),
    and the Discord side counts it down in each member's own time (`render.explanation`)."""

    def __init__(self, *parts: str | datetime) -> None:
        super().__init__("".join(part if isinstance(part, str) else moment(part) for part in parts))
        self.parts = parts


@dataclass(frozen=True)
class GuildPolicy:
    member_concurrent: int = 2  # jobs of one member on RunPod at once; more wait in the fair queue
    member_waiting: int = 3  # jobs of one member waiting in the queue
    guild_concurrent: int = 6  # jobs of the whole guild on RunPod at once
    member_daily: int = 0  # 0 = no limit
    guild_daily_jobs: int = 0
    guild_daily_gpu_seconds: int = 0
    guild_monthly_jobs: int = 0
    guild_monthly_gpu_seconds: int = 0
    max_count: int = 4
    max_steps: int = 150
    max_wall_seconds: int = 15 * 60  # queue plus run, then the job is cancelled on RunPod
    gpu_price_per_second: float = 0.0  # for cost estimates; 0 = unknown
    banned_words: tuple[str, ...] = ()
    banned_patterns: tuple[str, ...] = ()
    nsfw_only_words: tuple[str, ...] = ()
    spoiler_outside_nsfw: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> GuildPolicy:
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in (data or {}).items()
            if key in known  # a newer version's settings are ignored, not fatal
        }
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @property
    def has_quota(self) -> bool:
        """Whether any daily or monthly quota is set: without one, nothing need be counted."""
        return any(
            (
                self.member_daily,
                self.guild_daily_jobs,
                self.guild_daily_gpu_seconds,
                self.guild_monthly_jobs,
                self.guild_monthly_gpu_seconds,
            )
        )

    def cost(self, execution_ms: int | None) -> float | None:
        if not self.gpu_price_per_second or execution_ms is None:
            return None
        return execution_ms / 1000 * self.gpu_price_per_second


def _compiled(pattern: str) -> Any:
    """An admin's pattern under RE2, which runs in time linear in the prompt: no pattern can backtrack for
    seconds and stall the bot for every server. Case-insensitive; RE2's own errors are not printed."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = 1 << 20  # bytes of compiled program: ample for a 200-character pattern
    return re2.compile(pattern, options)


def check_pattern(pattern: str, existing: tuple[str, ...] = ()) -> str:
    """A pattern an admin may save: short, one of few, and one RE2 can run (no backreferences or lookarounds)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise BotError(f"Keep patterns under {MAX_PATTERN_LENGTH} characters.")
    if len(existing) >= MAX_PATTERNS:
        raise BotError(f"This server already refuses {MAX_PATTERNS} patterns; unban one first.")
    try:
        _compiled(pattern)
    except re2.error as error:
        reason = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else error
        raise BotError(
            f"`{pattern}` is not a valid regular expression here ({reason}). Patterns run on RE2: "
            "no backreferences or lookarounds."
        ) from None
    return pattern


def _find_word(words: tuple[str, ...], text: str) -> str | None:
    for word in words:
        if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE):
            return word
    return None


def moderate(policy: GuildPolicy, params: GenerationParams, *, nsfw_channel: bool) -> None:
    """Refuse a prompt the guild does not allow, saying which word, never echoing the whole rule set.

    The negative prompt (`negative_prompt`, or `--no` in the prompt) is judged by the same rules: it is sent to
    the worker and shown on the public result ("Without: ..."), so a refused word may not hide there either."""
    _moderate_text(policy, params.prompt, nsfw_channel=nsfw_channel, where="")
    if params.negative_prompt:
        where = " (in the “without” part: --no or negative_prompt)"
        _moderate_text(policy, params.negative_prompt, nsfw_channel=nsfw_channel, where=where)


def _moderate_text(policy: GuildPolicy, text: str, *, nsfw_channel: bool, where: str) -> None:
    """`moderate` for one part of the request; `where` names that part in the refusal ("" for the prompt)."""
    if word := _find_word(policy.banned_words, text):
        raise Refused(f"This server does not allow “{word}” in prompts{where}.")
    for pattern in policy.banned_patterns:
        try:
            matched = _compiled(pattern).search(text) is not None
        except re2.error:  # saved before patterns ran on RE2: it cannot be judged, so nothing passes it
            raise Refused(
                f"This server refuses prompts by a pattern the bot cannot use any more (`{pattern}`); "
                "an admin should replace it with /runpod moderation."
            ) from None
        if matched:
            raise Refused(f"This server's rules do not allow that prompt{where}.")
    if not nsfw_channel and (word := _find_word(policy.nsfw_only_words, text)):
        raise Refused(f"“{word}” is only allowed in this server's NSFW channels{where}.")


def check_size(policy: GuildPolicy, params: GenerationParams) -> None:
    if params.count > policy.max_count:
        raise Refused(f"This server allows at most {plural(policy.max_count, 'picture')} per job.")
    if params.steps is not None and params.steps > policy.max_steps:
        raise Refused(f"This server allows at most {plural(policy.max_steps, 'step')}.")


@dataclass(frozen=True)
class Usage:
    """What has been used so far, as counted from the ledger: pictures (not jobs) and GPU seconds."""

    member_today: int = 0
    guild_today: int = 0
    guild_month: int = 0
    gpu_seconds_today: float = 0.0
    gpu_seconds_month: float = 0.0


def start_of_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def start_of_month(now: datetime) -> datetime:
    return start_of_day(now).replace(day=1)


def check_quota(policy: GuildPolicy, usage: Usage, now: datetime, pictures: int = 1) -> None:
    """Refuse when a daily or monthly quota is used up, or has fewer than the `pictures` asked for left,
    saying how many are left and when the quota resets (a moment of the refusal's parts)."""
    tomorrow = start_of_day(now) + timedelta(days=1)
    next_month = (start_of_month(now) + timedelta(days=32)).replace(day=1)

    def over(limit: int, used: int, used_up: str, who: str, period: str, reset: datetime) -> None:
        if not limit or used + pictures <= limit:
            return
        left = limit - used
        if left <= 0:
            raise Refused(used_up, reset, ".")
        # A request for several pictures that would cross the limit: what is left can still be had.
        raise Refused(
            f"{who} {plural(left, 'picture')} left for {period} and you asked for {pictures}: "
            f"ask for {left} or fewer now, or for more ",
            reset,
            ".",
        )

    over(
        policy.member_daily, usage.member_today,
        f"You have used your {plural(policy.member_daily, 'picture')} for today; you can make more ",
        "You have", "today", tomorrow,
    )  # fmt: skip
    over(
        policy.guild_daily_jobs, usage.guild_today,
        f"This server has used its {plural(policy.guild_daily_jobs, 'picture')} for today; more ",
        "This server has", "today", tomorrow,
    )  # fmt: skip
    if policy.guild_daily_gpu_seconds and usage.gpu_seconds_today >= policy.guild_daily_gpu_seconds:
        raise Refused("This server has used today's GPU time; more ", tomorrow, ".")
    over(
        policy.guild_monthly_jobs, usage.guild_month,
        f"This server has used its {plural(policy.guild_monthly_jobs, 'picture')} for this month; more ",
        "This server has", "this month", next_month,
    )  # fmt: skip
    if policy.guild_monthly_gpu_seconds and usage.gpu_seconds_month >= policy.guild_monthly_gpu_seconds:
        raise Refused("This server has used this month's GPU time; more ", next_month, ".")


# --- the fair queue ------------------------------------------------------------------------------


@dataclass(eq=False)
class Ticket:
    guild_id: int
    member_id: int
    admitted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairQueue:
    """Admits jobs to RunPod within per-member and per-guild limits; the rest wait, served round-robin
    between members so that one member's ten jobs cannot starve everyone else."""

    def __init__(self) -> None:
        self._running: dict[tuple[int, int], int] = {}
        self._guild_running: dict[int, int] = {}
        self._waiting: dict[int, dict[int, deque[Ticket]]] = {}  # guild -> member -> tickets, insertion order
        self._turn: dict[int, int] = {}  # guild -> member served last
        self._limits: dict[int, GuildPolicy] = {}
        # guild -> waiting ticket -> place: every waiting job asks its place each second, so the order is
        # worked out once per change of the queue, not once per question (quadratic with a long queue).
        self._places: dict[int, dict[Ticket, int]] = {}

    def running(self, guild_id: int, member_id: int) -> int:
        return self._running.get((guild_id, member_id), 0)

    @property
    def length(self) -> int:
        """Parts waiting for a turn, in every server."""
        return sum(len(tickets) for members in self._waiting.values() for tickets in members.values())

    def waiting(self, guild_id: int, member_id: int) -> int:
        return len(self._waiting.get(guild_id, {}).get(member_id, ()))

    def join(self, guild_id: int, member_id: int, policy: GuildPolicy) -> Ticket:
        """Take a place; `ticket.admitted` resolves when the job may go to RunPod."""
        (ticket,) = self.join_set(guild_id, member_id, policy, parts=1)
        return ticket

    def join_set(self, guild_id: int, member_id: int, policy: GuildPolicy, *, parts: int) -> list[Ticket]:
        """Places for a request sent as several RunPod jobs: each part counts against the limits and is admitted
        in its turn, so a set of 4 under a limit of 1 runs one part at a time."""
        if self.waiting(guild_id, member_id) >= policy.member_waiting and not self._admissible(
            guild_id, member_id, policy
        ):
            raise Refused(
                f"You already have {policy.member_waiting} pictures waiting; try again when one of them has started."
            )
        self._limits[guild_id] = policy
        tickets = [Ticket(guild_id, member_id) for _ in range(max(1, parts))]
        self._waiting.setdefault(guild_id, {}).setdefault(member_id, deque()).extend(tickets)
        self._admit(guild_id)
        return tickets

    def occupy(self, guild_id: int, member_id: int, policy: GuildPolicy) -> Ticket:
        """A job already on RunPod (resumed after a restart) takes its slot whatever the limits say."""
        self._limits[guild_id] = policy
        ticket = Ticket(guild_id, member_id)
        self._running[(guild_id, member_id)] = self.running(guild_id, member_id) + 1
        self._guild_running[guild_id] = self._guild_running.get(guild_id, 0) + 1
        ticket.admitted.set_result(None)
        return ticket

    def position(self, ticket: Ticket) -> int | None:
        """1-based place in the order the queue would serve; None once admitted."""
        if ticket.admitted.done():
            return None
        places = self._places.get(ticket.guild_id)
        if places is None:
            order = self._service_order(ticket.guild_id)
            places = self._places[ticket.guild_id] = {waiting: place for place, waiting in enumerate(order, start=1)}
        return places.get(ticket)

    def leave(self, ticket: Ticket) -> None:
        """The job ended (or gave up waiting): free its slot and admit whoever is next."""
        members = self._waiting.get(ticket.guild_id, {})
        queue = members.get(ticket.member_id)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del members[ticket.member_id]
        elif ticket.admitted.done():
            key = (ticket.guild_id, ticket.member_id)
            self._running[key] -= 1
            self._guild_running[ticket.guild_id] -= 1
        if not ticket.admitted.done():
            ticket.admitted.cancel()
        self._admit(ticket.guild_id)

    def _admissible(self, guild_id: int, member_id: int, policy: GuildPolicy) -> bool:
        return (
            self.running(guild_id, member_id) < policy.member_concurrent
            and self._guild_running.get(guild_id, 0) < policy.guild_concurrent
        )

    def _service_order(self, guild_id: int) -> list[Ticket]:
        """Waiting tickets in the order they would be admitted: one per member per round."""
        members = self._waiting.get(guild_id, {})
        ids = list(members)
        last = self._turn.get(guild_id)
        if last in ids:
            start = ids.index(last) + 1
            ids = ids[start:] + ids[:start]
        queues = [list(members[member]) for member in ids]
        order: list[Ticket] = []
        for round_ in range(max((len(queue) for queue in queues), default=0)):
            order.extend(queue[round_] for queue in queues if round_ < len(queue))
        return order

    def _admit(self, guild_id: int) -> None:
        """Admit whoever may go now. Every change of the queue ends here, so the places are redone too."""
        self._places.pop(guild_id, None)
        policy = self._limits.get(guild_id)
        if policy is None:
            return
        progress = True
        while progress:
            progress = False
            for ticket in self._service_order(guild_id):
                if not self._admissible(guild_id, ticket.member_id, policy):
                    continue
                members = self._waiting[guild_id]
                members[ticket.member_id].popleft()
                if not members[ticket.member_id]:
                    del members[ticket.member_id]
                self._running[(guild_id, ticket.member_id)] = self.running(guild_id, ticket.member_id) + 1
                self._guild_running[guild_id] = self._guild_running.get(guild_id, 0) + 1
                self._turn[guild_id] = ticket.member_id
                ticket.admitted.set_result(None)
                progress = True
                break
