"""Everything checked before any GPU time is paid for: an endpoint, the channel, the guild's limits and
moderation, the member's quota.

No Discord here: `cogs/imagine.py` describes the request in plain values, and the job runner counts the
quota when it writes the job (`check_quota_now`), so requests that arrive together cannot all pass it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.endpoints import Endpoint, Endpoints
from bot.params import GenerationParams
from bot.policy import GuildPolicy, Refused, check_quota, check_size, moderate, start_of_day, start_of_month
from bot.storage import Storage

NEEDED_PERMISSIONS = ("send_messages", "attach_files", "embed_links")


@dataclass(frozen=True)
class Request:
    """Who asks, and where."""

    guild_id: int | None
    member_id: int
    nsfw_channel: bool
    missing_permissions: tuple[str, ...] = ()  # of NEEDED_PERMISSIONS, what the bot lacks in the channel


@dataclass(frozen=True)
class Admission:
    """A request that passed every check: what to run, where, under which rules."""

    params: GenerationParams
    endpoint: Endpoint
    policy: GuildPolicy


async def preflight(endpoints: Endpoints, request: Request, params: GenerationParams, model: str | None) -> Admission:
    """Every check but the quota, which is counted when the job is written (`check_quota_now`)."""
    endpoint = await endpoints.for_guild(request.guild_id, model)
    policy = await endpoints.policy(request.guild_id)
    refuse_unpostable(request)
    check_size(policy, params)
    moderate(policy, params, nsfw_channel=request.nsfw_channel)
    endpoint.preset.refuse(params, endpoint.workflow)  # any count: a request runs as `WorkerPreset.parts`
    return Admission(params, endpoint, policy)


def refuse_unpostable(request: Request) -> None:
    """Refuse when the bot could not post the pictures here: a check that needs no database, so it is made before
    the public "thinking…" placeholder, and the refusal reaches the member alone with nothing shown to others."""
    if request.missing_permissions:
        names = ", ".join(name.replace("_", " ").title() for name in request.missing_permissions)
        raise Refused(f"I cannot post pictures in this channel: I am missing {names}. Ask an admin to allow it.")


async def check_quota_now(
    storage: Storage, policy: GuildPolicy, guild_id: int, member_id: int, now: datetime, *, pictures: int = 1
) -> None:
    """Refuse when a quota has fewer than the `pictures` asked for left, as the ledger counts it now (nothing is
    counted without a quota)."""
    if policy.has_quota:
        usage = await storage.usage(guild_id, member_id, start_of_day(now), start_of_month(now))
        check_quota(policy, usage, now, pictures)
