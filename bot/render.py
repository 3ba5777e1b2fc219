"""What a member sees: one embed per job state, built so that it only changes when something real does.

Times are Discord relative timestamps (`<t:…:R>`), which every client counts by itself, so an
embed stays identical between polls and costs no edit while nothing happens. An estimate that has come due
is drawn as "any moment now" instead (the job runner redraws now and then for that), never as a time past.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import discord

from bot.engine import JobResult, JobUpdate, Progress
from bot.errors import BotError, JobCancelled
from bot.params import GenerationParams
from bot.policy import Refused
from bot.runpod import Health, JobState
from bot.status import Outlook
from bot.storage import JobRecord
from bot.text import dollars, noun, plural, worker_counts

QUEUED_COLOUR = discord.Colour.light_grey()
RUNNING_COLOUR = discord.Colour.blurple()
DONE_COLOUR = discord.Colour.green()
FAILED_COLOUR = discord.Colour.red()
CANCELLED_COLOUR = discord.Colour.dark_grey()
BAR_CELLS = 12
PROMPT_PREVIEW = 300
DUE_MARGIN = timedelta(seconds=3)  # an estimate this close is shown as "any moment now", never as past


def safe_text(text: str, limit: int = PROMPT_PREVIEW) -> str:
    """A prompt shown back to the channel: no working mentions, no markdown tricks, bounded length."""
    shown = discord.utils.escape_mentions(discord.utils.escape_markdown(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def timestamp(moment: datetime) -> str:
    return discord.utils.format_dt(moment, "R")


def explanation(error: BotError) -> str:
    """What a member is told of an error, privately: its `explanation`, where a refusal's moment (when a quota
    resets) is a timestamp each member's client counts down in their own time."""
    return _refusal(error) if isinstance(error, Refused) else error.explanation


def for_members(error: BotError) -> str:
    """What a job's channel is told of its end: the error's `for_members`, a refusal's moment drawn as above."""
    return _refusal(error) if isinstance(error, Refused) else error.for_members


def _refusal(refused: Refused) -> str:
    said = "".join(part if isinstance(part, str) else timestamp(part) for part in refused.parts)
    return f"{said} {refused.advice}".strip()


def progress_bar(progress: Progress) -> str:
    if progress.fraction is None:
        return progress.text
    filled = round(progress.fraction * BAR_CELLS)
    return f"`{'█' * filled}{'░' * (BAR_CELLS - filled)}` {round(progress.fraction * 100)}%"


def _base(title: str, colour: discord.Colour, params: GenerationParams, requester: str) -> discord.Embed:
    embed = discord.Embed(title=title, colour=colour, description=safe_text(params.prompt))
    embed.set_footer(text=f"Requested by {requester}")
    return embed


def waiting_embed(params: GenerationParams, requester: str, *, position: int, running: int) -> discord.Embed:
    embed = _base("🕒 Waiting for your turn", QUEUED_COLOUR, params, requester)
    # The same words as the RunPod queue's status (`_queued`): "Your place", "Why the wait".
    embed.add_field(name="Your place", value=f"{ordinal(position)} in this server's line")
    if running:
        embed.add_field(name="Your jobs running now", value=str(running))
    embed.add_field(
        name="Why the wait",
        value="This server limits how many pictures run at once, so everyone gets a turn. Nothing is paid yet.",
        inline=False,
    )
    return embed


def status_embed(update: JobUpdate, params: GenerationParams, requester: str, outlook: Outlook) -> discord.Embed:
    embed = (
        _queued(params, requester, outlook)
        if update.state is JobState.IN_QUEUE
        else _painting(update, params, requester, outlook)
    )
    if outlook.pictures is not None:
        embed.add_field(name="Pictures", value="{} of {} ready".format(*outlook.pictures))
    if outlook.parts_unsent:
        embed.add_field(
            name="Waiting for a turn",
            value=f"The rest of this set ({plural(outlook.parts_unsent, 'job')}) starts when this server's limits "
            "allow; nothing is paid for it yet.",
            inline=False,
        )
    if update.unanswered:
        embed.add_field(
            name="RunPod is not answering",
            value="Still trying: your job is followed until it ends, and the picture will be posted here.",
            inline=False,
        )
    return embed


def _queued(params: GenerationParams, requester: str, outlook: Outlook) -> discord.Embed:
    embed = _base("⏳ In queue", QUEUED_COLOUR, params, requester)
    health = outlook.health
    if outlook.place is not None:
        waiting = max(outlook.place, (health.in_queue if health else 0) - outlook.own_waiting)
        embed.add_field(name="Your place", value=f"{ordinal(outlook.place)} of {waiting} waiting")
    if health is not None:
        embed.add_field(name="Workers", value=describe_workers(health))
        if health.ready_workers == 0:
            embed.add_field(name="Why the wait", value=_why_waiting(health), inline=False)
    if outlook.expected_start is not None:
        embed.add_field(name="Expected start", value=when(outlook.expected_start, outlook.now))
    embed.add_field(name="Waiting since", value=timestamp(outlook.waiting_since))
    return embed


def _painting(update: JobUpdate, params: GenerationParams, requester: str, outlook: Outlook) -> discord.Embed:
    embed = _base("🎨 Painting…", RUNNING_COLOUR, params, requester)
    if update.progress is not None:
        embed.add_field(name="Progress", value=progress_bar(update.progress), inline=False)
    if outlook.painting_since is not None:
        embed.add_field(name="Painting since", value=timestamp(outlook.painting_since))
    if outlook.expected_done is not None:
        embed.add_field(name="Expected done", value=when(outlook.expected_done, outlook.now))

    if update.delay_ms is not None:
        embed.add_field(name="Time in queue", value=f"{update.delay_ms / 1000:.0f} s")
    return embed


def when(moment: datetime, now: datetime) -> str:
    """An expected moment as Discord counts it down, or "any moment now" once it is (nearly) due."""
    return timestamp(moment) if moment - now > DUE_MARGIN else "any moment now"


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def describe_workers(health: Health) -> str:
    """RunPod's worker counts in three words: ready for a job, busy with one, starting up (a cold start)."""
    shown = [f"{count} {word}" for count, word in worker_counts(health) if count]
    return " · ".join(shown) or "none running yet"


def _why_waiting(health: Health) -> str:
    if health.initializing:
        return "RunPod is starting a worker (a cold start): the first picture can take a minute or two."
    if health.running:
        return "Every worker is busy: yours starts when one is free."
    return "No worker is running, so RunPod is starting one: the first picture can take a minute or two."


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


def picked_embed(params: GenerationParams, requester: str, number: int) -> discord.Embed:
    """U<n>: one picture of a set, on its own."""
    return _base(f"🖼️ Picture {number}", DONE_COLOUR, params, requester)


def failure_embed(error: BotError, params: GenerationParams, requester: str) -> discord.Embed:
    cancelled = isinstance(error, JobCancelled)
    title, colour = ("🚫 Cancelled", CANCELLED_COLOUR) if cancelled else ("⚠️ No picture this time", FAILED_COLOUR)
    embed = _base(title, colour, params, requester)
    embed.add_field(name="What happened", value=for_members(error)[:1024], inline=False)
    return embed


def starting_embed(params: GenerationParams, requester: str) -> discord.Embed:
    """An upscale about to be sent: the picture enlarged here, which the worker fetches and paints detail into."""
    embed = _base("⏳ Sending to RunPod…", QUEUED_COLOUR, params, requester)
    embed.add_field(name="Upscaling", value="Starting from this picture at twice its size.", inline=False)
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
    embed.add_field(name="Worker", value=record.worker)
    if record.delay_ms is not None:
        embed.add_field(name="Time in queue", value=f"{record.delay_ms / 1000:.1f} s")
    if record.execution_ms is not None:
        embed.add_field(name="Run time", value=f"{record.execution_ms / 1000:.1f} s")
    if cost is not None:
        embed.add_field(name="Estimated cost", value=dollars(cost, places=4))
    embed.add_field(name="State", value=record.state)
    if record.notice:
        embed.add_field(name="What happened", value=record.notice[:1024], inline=False)
    # Ids help whoever asks RunPod's support about this job; this embed is private.
    jobs = ", ".join(f"`{runpod_job_id}`" for runpod_job_id in record.runpod_job_ids) or "never submitted"
    said = noun(len(record.runpod_job_ids) or 1, "job")  # "job never submitted"
    embed.add_field(name="RunPod", value=f"{said} {jobs}\nendpoint `{record.endpoint_id}`")
    embed.set_footer(text=f"Requested by {record.user_name}")
    return embed
