"""What a member sees: one embed per job state, built so that it only changes when something real does.

Times are Discord relative timestamps (`<t:…:R>`), which every client counts by itself, so an
embed stays identical between polls and costs no edit while nothing happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import discord

from bot.engine import JobResult, JobUpdate, Progress
from bot.errors import BotError, JobCancelled
from bot.params import GenerationParams
from bot.runpod import Health, JobState
from bot.storage import JobRecord

QUEUED_COLOUR = discord.Colour.light_grey()
RUNNING_COLOUR = discord.Colour.blurple()
DONE_COLOUR = discord.Colour.green()
FAILED_COLOUR = discord.Colour.red()
CANCELLED_COLOUR = discord.Colour.dark_grey()
BAR_CELLS = 12
PROMPT_PREVIEW = 300


@dataclass(frozen=True)
class QueueInfo:
    """What `/health` told us, and when we expect the job to start."""

    health: Health | None = None
    eta: datetime | None = None


def safe_text(text: str, limit: int = PROMPT_PREVIEW) -> str:
    """A prompt shown back to the channel: no working mentions, no markdown tricks, bounded length."""
    shown = discord.utils.escape_mentions(discord.utils.escape_markdown(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def timestamp(moment: datetime) -> str:
    return discord.utils.format_dt(moment, "R")


def progress_bar(progress: Progress) -> str:
    if progress.fraction is None:
        return progress.text
    filled = round(progress.fraction * BAR_CELLS)
    return f"`{'█' * filled}{'░' * (BAR_CELLS - filled)}` {round(progress.fraction * 100)}%"


def _base(title: str, colour: discord.Colour, params: GenerationParams, requester: str) -> discord.Embed:
    embed = discord.Embed(title=title, colour=colour, description=safe_text(params.prompt))
    embed.set_footer(text=f"Requested by {requester}")
    return embed


def submitting_embed(params: GenerationParams, requester: str) -> discord.Embed:
    return _base("⏳ Sending to RunPod…", QUEUED_COLOUR, params, requester)


def waiting_embed(params: GenerationParams, requester: str, *, position: int, running: int) -> discord.Embed:
    embed = _base("🕒 Waiting for your turn", QUEUED_COLOUR, params, requester)
    embed.add_field(name="Place in this server's queue", value=f"You are number {position}")
    if running:
        embed.add_field(name="Your jobs running now", value=str(running))
    embed.add_field(
        name="Why",
        value="This server limits how many pictures run at once, so everyone gets a turn. Nothing is paid yet.",
        inline=False,
    )
    return embed


def status_embed(
    update: JobUpdate, params: GenerationParams, requester: str, *, started: datetime, queue: QueueInfo
) -> discord.Embed:
    embed = _status_embed(update, params, requester, started=started, queue=queue)
    if update.unanswered:
        embed.add_field(
            name="RunPod is not answering",
            value="Still trying: your job is followed until it ends, and the picture will be posted here.",
            inline=False,
        )
    return embed


def _status_embed(
    update: JobUpdate, params: GenerationParams, requester: str, *, started: datetime, queue: QueueInfo
) -> discord.Embed:
    if update.state is JobState.IN_QUEUE:
        embed = _base("⏳ In queue", QUEUED_COLOUR, params, requester)
        health = queue.health
        if health is not None:
            embed.add_field(name="Queue", value=f"{health.in_queue} waiting · {health.warm_workers} workers ready")
            if health.warm_workers == 0:
                embed.add_field(
                    name="Cold start",
                    value="No worker is warm, so RunPod is starting one: the first picture can take a minute or two.",
                    inline=False,
                )
        if queue.eta is not None:
            embed.add_field(name="Expected start", value=timestamp(queue.eta))
        embed.add_field(name="Waiting since", value=timestamp(started))
        return embed
    embed = _base("🎨 Painting…", RUNNING_COLOUR, params, requester)
    if update.progress is not None:
        embed.add_field(name="Progress", value=progress_bar(update.progress), inline=False)
    embed.add_field(name="Started", value=timestamp(started))
    if update.delay_ms is not None:
        embed.add_field(name="Time in queue", value=f"{update.delay_ms / 1000:.1f} s")
    return embed


def result_embed(
    params: GenerationParams,
    requester: str,
    result: JobResult,
    *,
    seconds: float,
    notes: list[str],
) -> discord.Embed:
    seed = result.images[0].seed if result.images[0].seed is not None else params.seed  # the worker's word first
    embed = _base("✅ Done", DONE_COLOUR, params, requester)
    if params.negative_prompt:
        embed.add_field(name="Without", value=safe_text(params.negative_prompt, 200), inline=False)
    embed.add_field(name="Seed", value=str(seed) if seed is not None else "unknown")
    embed.add_field(name="Size", value=params.aspect_ratio)
    embed.add_field(name="Took", value=f"{seconds:.0f} s")
    if notes:
        embed.add_field(name="Note", value="\n".join(notes)[:1024], inline=False)
    return embed


def failure_embed(error: BotError, params: GenerationParams, requester: str) -> discord.Embed:
    cancelled = isinstance(error, JobCancelled)
    title, colour = ("🚫 Cancelled", CANCELLED_COLOUR) if cancelled else ("⚠️ No picture this time", FAILED_COLOUR)
    embed = _base(title, colour, params, requester)
    embed.add_field(name="What happened", value=error.explanation[:1024], inline=False)
    return embed


def restarting_embed(params: GenerationParams, requester: str) -> discord.Embed:
    embed = _base("🔄 Bot restarting", QUEUED_COLOUR, params, requester)
    embed.add_field(
        name="Your job keeps running",
        value="The bot is restarting; your job keeps running on RunPod and the picture will be posted here.",
        inline=False,
    )
    return embed


def info_embed(record: JobRecord, cost: float | None = None) -> discord.Embed:
    """Everything about one job, for the member who asks (privately)."""
    params = GenerationParams(**record.params)
    embed = discord.Embed(title="ℹ️ Job details", colour=QUEUED_COLOUR, description=safe_text(params.prompt, 1000))
    if params.negative_prompt:
        embed.add_field(name="Without", value=safe_text(params.negative_prompt, 1000), inline=False)
    embed.add_field(name="Seed", value=str(params.seed))
    embed.add_field(name="Aspect ratio", value=params.aspect_ratio)
    embed.add_field(name="Images", value=str(params.count))
    embed.add_field(name="Steps", value=str(params.steps or "worker default"))
    embed.add_field(name="Guidance", value=f"{params.guidance:g}" if params.guidance is not None else "worker default")
    embed.add_field(name="Worker", value=record.worker)  # the server's endpoint id stays the admins' business
    if record.delay_ms is not None:
        embed.add_field(name="Time in queue", value=f"{record.delay_ms / 1000:.1f} s")
    if record.execution_ms is not None:
        embed.add_field(name="Run time", value=f"{record.execution_ms / 1000:.1f} s")
    if cost is not None:
        embed.add_field(name="Estimated cost", value=f"${cost:.4f}")
    embed.add_field(name="State", value=record.state)
    embed.set_footer(text=f"Requested by {record.user_name} · job {record.runpod_job_id}")
    return embed
