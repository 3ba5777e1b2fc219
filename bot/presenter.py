"""Everything a member sees of one job: its live status, its pictures fitted to the upload limit, its last look,
and the ping that says it is ready.

At this edge nothing raises for a fault of Discord or of the network. Each final look is tried again with a
pause between attempts (`Stage.retries`) and then reported as `Delivered` or `Undelivered`; the job runner
(bot/jobs.py) records in the ledger what the report says. A status that could not be drawn is logged once
and the next change is drawn (bot/live.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import discord

from bot import render
from bot.buttons import ENDED_ACTIONS, ButtonAction, ResultMoves, job_view, result_view
from bot.clock import wall_clock
from bot.delivery import Upload, fit_within, upload_stem
from bot.engine import JobResult, JobUpdate
from bot.errors import BotError
from bot.images import MemoryBudget
from bot.live import Address, LiveMessage, Outcome, RetryLater, Shown, Unreachable
from bot.params import GenerationParams
from bot.ratelimit import RateLimit, RateLimiterPerKey
from bot.status import LinePlace, Outlook
from bot.storage import JobRecord

log = logging.getLogger(__name__)

# Pings are new messages in the channel: Discord has quoted 30 webhook messages a minute per channel
# (docs/discord-notes.md, Rate limits).
PING_PACE = RateLimit(25, 60.0)
# What the picture a job starts from is called when the bot attaches it to the status message for the worker:
# a JPEG once re-encoded to fit, else a PNG.
START_NAMES = ("start.jpg", "start.png")


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Undelivered:
    reason: str


@dataclass
class Stage:
    """What the presenters of every job share: the client, the memory for re-encoding pictures, the ping pace."""

    client: discord.Client
    budget: MemoryBudget
    retries: tuple[float, ...] = (2.0, 10.0)  # pauses between attempts at a last look, then it is undelivered
    edit_interval: float = 1.5
    expiry_margin: timedelta = timedelta(seconds=60)
    pings_per_channel: RateLimit = PING_PACE
    clock: Callable[[], datetime] = wall_clock
    pings: RateLimiterPerKey = field(init=False)  # by channel id

    def __post_init__(self) -> None:
        self.pings = RateLimiterPerKey(self.pings_per_channel)


class JobPresenter:
    def __init__(
        self,
        stage: Stage,
        record: JobRecord,
        params: GenerationParams,
        *,
        token: str | None,
        moves: ResultMoves,
        spoiler_outside_nsfw: bool,
        filesize_limit: int | None,
        on_channel_message: Callable[[int], Awaitable[None]],
    ) -> None:
        self._stage = stage
        self._params = params
        self._key = str(record.request_id)  # what its buttons carry
        self._requester = record.user_name
        self._user_id = record.user_id
        self._channel_id = record.channel_id
        self._guild_id = record.guild_id
        self._moves = moves  # which of V, Vary, Upscale, Zoom Out and Pan its result offers (bot/buttons.py)
        self._spoiler_outside_nsfw = spoiler_outside_nsfw
        self._filesize_limit = filesize_limit  # the interaction's own; unknown after a restart
        # Someone other than the set's requester clicked the button that made this job: the label names them.
        owner = params.set_owner_id
        self._clicked_by = record.user_name if owner is not None and owner != record.user_id else None
        self._start_name: str | None = None  # the picture it starts from, once attached to the status message
        self.message = LiveMessage(
            stage.client,
            Address.of(record, token),
            min_interval=stage.edit_interval,
            expiry_margin=stage.expiry_margin,
            on_channel_message=on_channel_message,
            clock=stage.clock,
            hand_over=self._handed_over,
        )

    @property
    def context(self) -> str:
        return self.message.context

    @context.setter
    def context(self, value: str) -> None:
        self.message.context = value

    # --- while it runs -----------------------------------------------------------------------------

    def waiting(self, place: LinePlace, pictures: tuple[int, int] | None = None) -> None:
        """Its place in the server's fair queue; `pictures` (ready, asked for) once a set's first parts are sent."""
        embed = render.waiting_embed(self._params, self._requester, place)
        if pictures is not None:
            embed.add_field(name="Pictures", value="{} of {} ready".format(*pictures))
        self.message.show(self._dressed(embed), self._cancel_view())

    def status(self, update: JobUpdate, outlook: Outlook) -> None:
        embed = render.status_embed(update, self._params, self._requester, outlook)
        self.message.show(self._dressed(embed), self._cancel_view())

    async def start_picture(self, data: bytes) -> str | None:
        """Post the picture a job starts from on the job's own message, for the worker to fetch: its address
        on Discord's CDN, or None when it could not be posted. The status shows it as a thumbnail, never as a
        full-size picture that would look like a result."""
        self._start_name = START_NAMES[0] if data.startswith(b"\xff\xd8\xff") else START_NAMES[1]  # re-encoded: JPEG
        embed = self._dressed(render.starting_embed(self._params, self._requester))
        upload = Upload(self._start_name, data)
        outcome = await self._tried(lambda: self.message.attach(embed, upload))
        message = outcome.message if isinstance(outcome, Shown) else None
        if isinstance(message, discord.Message) and message.attachments:
            return message.attachments[0].url
        return None

    async def restarting(self) -> None:
        """Tell the member the bot restarts and the job goes on. The attachments stay: a queued worker may still
        have to fetch the picture it starts from."""
        embed = self._dressed(render.restarting_embed(self._params, self._requester))
        outcome = await self.message.final(embed, uploads=None)
        if not isinstance(outcome, Shown):
            log.warning("%s: could not say the bot restarts (%s)", self.context, outcome)

    # --- its end -----------------------------------------------------------------------------------

    async def fit(self, result: JobResult, job_id: str) -> list[Upload]:
        """The pictures as files within this channel's upload limit (an `OutputError` when they cannot be)."""
        spoiler = self._spoiler_outside_nsfw and not is_nsfw(self._stage.client.get_channel(self._channel_id))
        stem = upload_stem(self._params.prompt, self._params.seed, spoiler=spoiler)
        return await fit_within(
            self._stage.budget,
            result.images,
            per_file_limit=self._upload_limit(),
            stem=stem,
            job_id=job_id,
            tenant=self._guild_id,
        )

    async def deliver(
        self,
        result: JobResult,
        uploads: Sequence[Upload],
        *,
        seconds: float,
        why_short: str = "",
        cancelled_by: str | None = None,
    ) -> Delivered | Undelivered:
        notes = [upload.note for upload in uploads if upload.note]
        if len(uploads) < self._params.count:  # say how many arrived, and why not the rest when it is known
            arrived = f"{len(uploads)} of {self._params.count} pictures arrived"
            notes.insert(
                0, f"{arrived} before {cancelled_by} cancelled." if cancelled_by else f"{arrived}. {why_short}".strip()
            )
        embed = render.result_embed(self._params, self._requester, result, seconds=seconds, notes=notes)
        first = result.images[0]
        self._dressed(embed, size=(first.width, first.height), thumbnail=False)
        view = result_view(self._key, len(uploads), can_vary=self._moves.vary, can_outpaint=self._moves.outpaint)
        # Editing the status message is idempotent: a bot killed between this edit and the ledger's record of it
        # edits the same message again after its restart, and nobody sees the picture twice.
        return await self._last_look(embed, view, uploads)

    async def end(self, error: BotError) -> Delivered | Undelivered:
        embed = self._dressed(render.failure_embed(error, self._params, self._requester), final=True)
        return await self._last_look(embed, job_view(self._key, *ENDED_ACTIONS), ())

    async def ping(self, pictures: int) -> None:
        """Tell the requester their pictures are ready, at the channel's pace; a ping that cannot be sent is
        only logged (the picture is there)."""
        await self._stage.pings.get(self._channel_id).acquire()
        ready = "your pictures are ready" if pictures > 1 else "your picture is ready"
        content, user = f"<@{self._user_id}> {ready}.", discord.Object(self._user_id)
        outcome = await self._tried(lambda: self.message.notify(content, user), pauses=self._stage.retries[:1])
        if not isinstance(outcome, Shown):
            log.warning("%s: could not ping the requester (%s)", self.context, outcome)

    @property
    def in_channel(self) -> bool:
        return self.message.in_channel

    async def _last_look(
        self, embed: discord.Embed, view: discord.ui.View, uploads: Sequence[Upload]
    ) -> Delivered | Undelivered:
        outcome = await self._tried(lambda: self.message.final(embed, view, uploads))
        match outcome:
            case Shown():
                return Delivered()
            case RetryLater(reason) | Unreachable(reason):
                return Undelivered(reason)
        raise AssertionError(outcome)

    async def _tried(self, attempt: Callable[[], Awaitable[Outcome]], pauses: Sequence[float] | None = None) -> Outcome:
        """The attempt's outcome, tried again after each pause while it is not `Shown`: a reset or a 5xx passes,
        and an admin may give the bot back its permission in the channel."""
        pauses = self._stage.retries if pauses is None else pauses
        for pause in (*pauses, None):
            outcome = await attempt()
            if isinstance(outcome, Shown) or pause is None:
                return outcome
            log.warning("%s: Discord did not take it (%s); trying again in %g s", self.context, outcome, pause)
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    def _dressed(
        self,
        embed: discord.Embed,
        *,
        size: tuple[int, int] | None = None,
        thumbnail: bool = True,
        final: bool = False,
    ) -> discord.Embed:
        """The embed with what this job is ("Variations (strong) of picture 3") above its title, and the picture
        it starts from as a thumbnail: attached to this message while it runs, else at its own address (a final
        look removes the attachments)."""
        label = render.made_label(self._params, size=size, by=self._clicked_by, running=size is None)
        if label:
            embed.set_author(name=label)
        if thumbnail and self._params.image_url is not None:
            attached = self._start_attached() if not final else None
            embed.set_thumbnail(url=f"attachment://{attached}" if attached else self._params.image_url)
        return embed

    def _start_attached(self) -> str | None:
        """The name of the picture the job starts from, when it is attached to the status message: known from
        posting it, or (after a restart) from the message as last shown."""
        if self._start_name is None:
            names = {attachment.filename for attachment in getattr(self.message.message, "attachments", ())}
            self._start_name = next((name for name in START_NAMES if name in names), None)
        return self._start_name

    def _handed_over(self, link: str) -> tuple[discord.Embed, discord.ui.View]:
        """The first message's last look once the job continues in a reply to it: where, and only Info."""
        embed = self._dressed(render.handed_over_embed(self._params, self._requester, link))
        return embed, job_view(self._key, ButtonAction.INFO)

    def _cancel_view(self) -> discord.ui.View:
        return job_view(self._key, ButtonAction.CANCEL)

    def _upload_limit(self) -> int:
        """The interaction's own upload limit, else (after a restart) the guild's, else Discord's default."""
        if self._filesize_limit is not None:
            return self._filesize_limit
        guild = self._stage.client.get_guild(self._guild_id or 0)
        return guild.filesize_limit if guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES


def is_nsfw(channel: Any) -> bool:
    return bool(getattr(channel, "nsfw", False))
