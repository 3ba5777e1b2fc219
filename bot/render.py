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
from bot.lifecycle import LedgerState
from bot.params import GenerationParams
from bot.policy import Refused
from bot.presets import WorkerPreset, start_strength
from bot.runpod import Health, JobState
from bot.status import LinePlace, Outlook
from bot.storage import JobRecord
from bot.text import dollars, duration, noun, plural, worker_counts

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


def waiting_embed(params: GenerationParams, requester: str, place: LinePlace) -> discord.Embed:
    embed = _base("🕒 Waiting for your turn", QUEUED_COLOUR, params, requester)
    # The same words as the RunPod queue's status (`_queued`): "Your place", "Why the wait".
    embed.add_field(name="Your place", value=f"{ordinal(place.position)} in this server's line")
    if place.running:
        embed.add_field(name="Your pictures painting now", value=str(place.running))
    embed.add_field(name="Why the wait", value=_why_in_line(place), inline=False)
    if place.moved_back:
        embed.add_field(
            name="Why your place moved",
            value="This server's line takes turns between members: a member with nothing painting goes before "
            "another's next picture.",
            inline=False,
        )
    return embed


def _why_in_line(place: LinePlace) -> str:
    """The limit that holds this job: the member's own at-once limit, or the server's. Nothing is paid yet."""
    if place.held_by_member_limit:
        return (
            f"This server paints at most {plural(place.member_limit, 'picture')} of each member's at once, and "
            f"{plural(place.running, 'picture')} of yours {'is' if place.running == 1 else 'are'} painting: this one "
            "starts when one of them is done. Nothing is paid yet."
        )
    return (
        f"This server paints at most {plural(place.server_limit, 'picture')} at once, so everyone gets a turn. "
        "Nothing is paid yet."
    )


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
    if outlook.place is not None and outlook.waiting is not None:
        embed.add_field(name="Your place", value=f"{ordinal(outlook.place)} of {outlook.waiting} waiting")
    if health is not None:
        embed.add_field(name="Workers", value=describe_workers(health, outlook.own_painting))
        if health.ready_workers == 0:
            embed.add_field(name="Why the wait", value=_why_waiting(health, outlook.own_painting), inline=False)
    if outlook.expected_start is not None:
        embed.add_field(name="Expected start", value=when(outlook.expected_start, outlook.now))
    embed.add_field(name="Waiting since", value=timestamp(outlook.waiting_since))
    return embed


def _painting(update: JobUpdate, params: GenerationParams, requester: str, outlook: Outlook) -> discord.Embed:
    embed = _base("🎨 Painting…", RUNNING_COLOUR, params, requester)
    if outlook.progress is not None:
        embed.add_field(name="Progress", value=progress_bar(outlook.progress), inline=False)
    if outlook.painting_since is not None:
        embed.add_field(name="Painting since", value=timestamp(outlook.painting_since))
    if outlook.expected_done is not None:
        embed.add_field(name="Expected done", value=when(outlook.expected_done, outlook.now))

    if update.delay_ms is not None:
        embed.add_field(name="Time in queue", value=duration(update.delay_ms / 1000))
    return embed


def when(moment: datetime, now: datetime) -> str:
    """An expected moment as Discord counts it down, or "any moment now" once it is (nearly) due."""
    return timestamp(moment) if moment - now > DUE_MARGIN else "any moment now"


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def describe_workers(health: Health, own_painting: int = 0) -> str:
    """RunPod's worker counts in three words: ready for a job, busy with one, starting up (a cold start); the
    busy ones painting this member's own set are said to be."""
    shown = []
    for count, word in worker_counts(health):
        if count:
            yours = min(own_painting, count) if word == "busy" else 0
            shown.append(f"{count} {word}" + (f" ({yours} on your set)" if yours else ""))
    return " · ".join(shown) or "none running yet"


def _why_waiting(health: Health, own_painting: int = 0) -> str:
    if health.initializing:
        return "RunPod is starting a worker (a cold start): the first picture can take a minute or two."
    if own_painting and health.running <= own_painting:
        return "Every worker is busy with the rest of your set: this part starts when one of them is done."
    if own_painting:
        yours = f"{own_painting} of them with the rest of your set"
        return f"Every worker is busy, {yours}: this part starts when one is free."
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
    first = result.images[0]
    embed.add_field(name="Size", value=f"{params.aspect_ratio} · {first.width}×{first.height}")
    embed.add_field(name="Took", value=duration(seconds))
    if notes:
        embed.add_field(name="Note", value="\n".join(notes)[:1024], inline=False)
    return embed


def picked_embed(params: GenerationParams, requester: str, number: int, of: int, by: str | None) -> discord.Embed:
    """U<n>: one picture of a set, on its own; named by who clicked when it was not the set's requester."""
    embed = _base(f"🖼️ Picture {number} of {of}", DONE_COLOUR, params, requester)
    if by is not None:
        embed.set_author(name=f"Picture {number} of {of} · by {by}")
    return embed


def made_label(
    params: GenerationParams, *, size: tuple[int, int] | None = None, by: str | None = None, running: bool = False
) -> str | None:
    """What a job made from a picture is, above its title: "Variations (strong) of picture 3", "Upscaled 2x ·
    2048x2048" (the size once it is known), "Image prompt · strength 0.6", then "· by <who clicked>" when that
    was not the set's requester. None for a job painted from a prompt alone."""
    kind, _, argument = (params.made_by or "").partition(":")
    of = f" of picture {params.picture}" if params.picture else ""
    if kind == "vary":
        variation = argument if argument in ("subtle", "strong") else "strong"  # V<n> is strong, as Midjourney's
        label = f"Variations ({variation}){of}"
    elif kind == "upscale" or params.upscale:
        style = f" ({argument})" if argument and not argument.isdigit() else ""
        label = f"{'Upscale' if running else 'Upscaled'} 2×{style}{of}"
    elif kind == "zoom":
        label = f"{'Zoom' if running else 'Zoomed'} out {argument}×"
    elif kind == "pan":
        label = f"{'Pan' if running else 'Panned'} {argument}"
    elif kind:  # a move of another kind: its name as its button says it
        label = f"{kind.capitalize()}{f' {argument}' if argument and not argument.isdigit() else ''}{of}"
    elif params.image_url is not None:
        label = f"Image prompt · strength {start_strength(params):g}"
    else:
        return None
    if size is not None and (kind == "upscale" or params.upscale):
        label += " · {}×{}".format(*size)
    return f"{label} · by {by}" if by else label


def handed_over_embed(params: GenerationParams, requester: str, link: str) -> discord.Embed:
    """The first message of a job that outlived its interaction (15 minutes): where the job goes on."""
    embed = _base("⤵️ Continued below", QUEUED_COLOUR, params, requester)
    embed.add_field(
        name="Where it continues",
        value=f"Discord lets this message change for 15 minutes only, so the job goes on in [a reply to it]({link}).",
        inline=False,
    )
    return embed


def failure_embed(error: BotError, params: GenerationParams, requester: str) -> discord.Embed:
    cancelled = isinstance(error, JobCancelled)
    title, colour = ("🚫 Cancelled", CANCELLED_COLOUR) if cancelled else ("⚠️ No picture this time", FAILED_COLOUR)
    embed = _base(title, colour, params, requester)
    embed.add_field(name="What happened", value=for_members(error)[:1024], inline=False)
    return embed


def starting_embed(params: GenerationParams, requester: str) -> discord.Embed:
    """A job from a picture, about to start: the picture (a thumbnail) is made ready for the worker."""
    embed = _base("⏳ Starting", QUEUED_COLOUR, params, requester)
    what = "at twice its size" if params.upscale else "as it is"
    embed.add_field(name="Starting from", value=f"The picture shown here, {what}.", inline=False)
    return embed


def restarting_embed(params: GenerationParams, requester: str) -> discord.Embed:
    embed = _base("🔄 Bot restarting", QUEUED_COLOUR, params, requester)
    embed.add_field(
        name="Your job keeps running",
        value="The bot is restarting; your job keeps running on RunPod and the picture will be posted here.",
        inline=False,
    )
    return embed


# A job's state in the ledger (bot/lifecycle.py) as its Info says it.
STATE_WORDS = {
    LedgerState.WAITING: "Waiting for a turn in this server's line",
    LedgerState.PENDING: "Being sent to RunPod",
    LedgerState.QUEUED: "In RunPod's queue",
    LedgerState.RUNNING: "Painting",
    LedgerState.COMPLETED: "Painted; being posted",
    LedgerState.DELIVERED: "Posted",
    LedgerState.UNDELIVERABLE: "Painted, but it could not be posted",
    LedgerState.FAILED: "No picture: it failed",
    LedgerState.CANCELLED: "Cancelled",
    LedgerState.TIMED_OUT: "No picture: it ran out of time",
    LedgerState.EXPIRED: "No picture: RunPod no longer had it",
}


def info_embed(
    record: JobRecord, cost: float | None = None, *, preset: WorkerPreset | None = None, show_ids: bool = False
) -> discord.Embed:
    """Everything about one job, for the member who asks (privately): the numbers sent to the worker (`preset`
    knows its defaults), what arrived, and RunPod's ids only when `show_ids` (the requester and moderators)."""
    params = GenerationParams(**record.params)
    embed = discord.Embed(title="ℹ️ Job details", colour=QUEUED_COLOUR, description=safe_text(params.prompt, 1000))
    label = made_label(params)
    if label:
        embed.set_author(name=label)
    if params.negative_prompt:
        embed.add_field(name="Without", value=safe_text(params.negative_prompt, 1000), inline=False)
    embed.add_field(name="Seed", value=str(params.seed))
    sent = preset.sent_numbers(params) if preset is not None else None
    if params.outpaint is not None:  # the canvas grows from the start picture's size, which the ledger does not keep
        embed.add_field(name="Size", value="The picture's own, on a larger canvas")
    else:
        size = f" · {sent.width}×{sent.height}" if sent is not None else ""
        embed.add_field(name="Size", value=f"{params.aspect_ratio}{size}")
    embed.add_field(name="Pictures", value=_pictures_arrived(record, params))
    steps = params.steps if params.steps is not None else (sent.steps if sent is not None else None)
    guidance = params.guidance if params.guidance is not None else (sent.guidance if sent is not None else None)
    embed.add_field(name="Steps", value=str(steps) if steps is not None else "the worker's own")
    embed.add_field(name="Guidance", value=f"{guidance:g}" if guidance is not None else "the worker's own")
    if params.image_url is not None:
        what = "2× upscale of [this picture]" if params.upscale else "[This picture]"
        embed.add_field(
            name="Started from",
            value=f"{what}({params.image_url}) · strength {start_strength(params):g}",
            inline=False,
        )
    embed.add_field(name="Worker", value=record.worker)
    if record.delay_ms is not None:
        embed.add_field(name="Time in queue", value=duration(record.delay_ms / 1000))
    if record.execution_ms is not None:
        embed.add_field(name="Run time", value=duration(record.execution_ms / 1000))
    if cost is not None:
        embed.add_field(name="Estimated cost", value=dollars(cost, places=4))
    embed.add_field(name="State", value=STATE_WORDS.get(LedgerState(record.state), str(record.state)))
    if record.notice:
        embed.add_field(name="What happened", value=record.notice[:1024], inline=False)
    if show_ids:  # for whoever asks RunPod's support about this job: its requester and the server's moderators
        jobs = ", ".join(f"`{runpod_job_id}`" for runpod_job_id in record.runpod_job_ids) or "never submitted"
        said = noun(len(record.runpod_job_ids) or 1, "job")  # "job never submitted"
        embed.add_field(name="RunPod", value=f"{said} {jobs}\nendpoint `{record.endpoint_id}`", inline=False)
    embed.set_footer(text=f"Requested by {record.user_name}")
    return embed


def _pictures_arrived(record: JobRecord, params: GenerationParams) -> str:
    """How many pictures the job asked for, and how many arrived once it is known to be fewer."""
    arrived = LedgerState(record.state) in (LedgerState.COMPLETED, LedgerState.DELIVERED, LedgerState.UNDELIVERABLE)
    if arrived and record.pictures < params.count:
        return f"{record.pictures} of {params.count} arrived"
    return str(params.count)
