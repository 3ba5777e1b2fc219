"""Everything checked before any GPU time is paid for: an endpoint, the channel, the guild's limits and
moderation, the member's quota. Quick enough to answer before the defer, so a refusal stays private.

No Discord here: `cogs/imagine.py` describes the request in plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.endpoints import Endpoint, Endpoints
from bot.params import GenerationParams
from bot.policy import GuildPolicy, Refused, Usage, check_quota, check_size, moderate, start_of_day, start_of_month
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


async def preflight(
    endpoints: Endpoints,
    storage: Storage,
    request: Request,
    params: GenerationParams,
    model: str | None,
    now: datetime,
) -> Admission:
    endpoint = await endpoints.for_guild(request.guild_id, model)
    policy = await endpoints.policy(request.guild_id)
    if request.missing_permissions:
        names = ", ".join(name.replace("_", " ").title() for name in request.missing_permissions)
        raise Refused(f"I cannot post pictures in this channel: I am missing {names}. Ask an admin to allow it.")
    check_size(policy, params)
    moderate(policy, params, nsfw_channel=request.nsfw_channel)
    endpoint.preset.build_input(params.with_seed(), endpoint.workflow)
    if request.guild_id is not None:
        check_quota(policy, await usage(storage, request.guild_id, request.member_id, now), now)
    return Admission(params, endpoint, policy)


async def usage(storage: Storage, guild_id: int, member_id: int, now: datetime) -> Usage:
    """What the guild and the member have used today and this month, as the ledger counts it."""
    today, month = start_of_day(now), start_of_month(now)
    counted = [job for job in await storage.guild_jobs_since(guild_id, month) if job.state.counted]
    todays = [job for job in counted if job.created_at and job.created_at >= today]
    return Usage(
        member_today=sum(job.user_id == member_id for job in todays),
        guild_today=len(todays),
        guild_month=len(counted),
        gpu_seconds_today=sum((job.execution_ms or 0) for job in todays) / 1000,
        gpu_seconds_month=sum((job.execution_ms or 0) for job in counted) / 1000,
    )
