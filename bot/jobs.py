"""Runs `/imagine` jobs for Discord: submit, follow with a live status, deliver, explain failures.

The engine (`bot.engine`) knows nothing of Discord; this module is the glue, and the cog only parses
the command and hands over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import discord

from bot import render
from bot.buttons import cancel_view
from bot.config import Secret, Settings
from bot.delivery import fit_for_upload
from bot.engine import JobResult, PollPolicy, follow_job, submit_job
from bot.errors import BotError, JobCancelled, RunPodError
from bot.images import ImageFetcher
from bot.live import LiveMessage
from bot.params import GenerationParams
from bot.presets import PRESETS, WorkerPreset
from bot.runpod import JobState, RunPodClient

log = logging.getLogger(__name__)


class NotConfigured(BotError):
    def __init__(self) -> None:
        super().__init__("No RunPod endpoint is set up for this server.")

    advice = "A server admin must run /runpod setup first."


@dataclass(frozen=True)
class Endpoint:
    """Where a guild's jobs run, and with which key."""

    api_key: Secret = field(repr=False)
    endpoint_id: str
    preset: WorkerPreset
    workflow: Any = None


@dataclass
class RunnerOptions:
    poll: PollPolicy = field(default_factory=PollPolicy)
    job_timeout: float = 15 * 60.0  # queue plus run; then the job is cancelled on RunPod
    edit_interval: float = 1.5
    notify_after: float = 20.0  # a job this long: ping the requester, they may have looked away
    expiry_margin: timedelta = timedelta(seconds=60)


@dataclass
class LiveJob:
    job_id: str
    requester: discord.abc.User
    guild_id: int | None
    params: GenerationParams
    endpoint: Endpoint
    message: LiveMessage
    started: datetime
    task: asyncio.Task[None] | None = None
    cancelled_by: discord.abc.User | None = None

    @property
    def context(self) -> str:
        return f"job {self.job_id} guild {self.guild_id} endpoint {self.endpoint.endpoint_id}"


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        fetcher: ImageFetcher,
        options: RunnerOptions | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._fetcher = fetcher
        self.options = options or RunnerOptions()
        self.live: dict[str, LiveJob] = {}
        self._typical_wait: dict[str, float] = {}  # endpoint id -> seconds in queue, smoothed
        self._accepting = True

    # --- the command ---------------------------------------------------------------------------

    def endpoint_for(self, guild_id: int | None) -> Endpoint:
        """The operator's default endpoint (per-guild endpoints come with /runpod setup)."""
        settings = self._settings
        if settings.runpod_api_key is None or settings.runpod_endpoint_id is None:
            raise NotConfigured()
        return Endpoint(settings.runpod_api_key, settings.runpod_endpoint_id, PRESETS[settings.runpod_worker])

    def check(self, params: GenerationParams, endpoint: Endpoint) -> None:
        """Everything that can be refused before the reply is deferred (and so, privately)."""
        if not self._accepting:
            raise BotError("The bot is restarting; try again in a minute.")
        endpoint.preset.build_input(params.with_seed(), endpoint.workflow)

    async def start(self, interaction: discord.Interaction[Any], params: GenerationParams, endpoint: Endpoint) -> None:
        """Called right after the defer: submit the job and follow it in the background."""
        params = params.with_seed()
        requester = interaction.user
        context = f"guild {interaction.guild_id} user {requester.id}"
        message = LiveMessage(
            interaction,
            min_interval=self.options.edit_interval,
            expiry_margin=self.options.expiry_margin,
            context=context,
        )
        client = self._client(endpoint)
        try:
            submitted = await submit_job(client, params, endpoint.preset, workflow=endpoint.workflow)
        except BotError as error:
            log.warning("%s: submit to endpoint %s failed: %s", context, endpoint.endpoint_id, error)
            await message.final(render.failure_embed(error, params, requester.display_name, None))
            return
        job = LiveJob(submitted.id, requester, interaction.guild_id, params, endpoint, message, datetime.now(UTC))
        message.context = job.context
        self.live[job.job_id] = job
        job.task = asyncio.create_task(self._follow(job, client, interaction.filesize_limit), name=job.context)

    # --- following -----------------------------------------------------------------------------

    def _client(self, endpoint: Endpoint) -> RunPodClient:
        return RunPodClient(
            self._session,
            api_key=endpoint.api_key,
            endpoint_id=endpoint.endpoint_id,
            api_url=self._settings.runpod_api_url,
        )

    async def _follow(self, job: LiveJob, client: RunPodClient, filesize_limit: int) -> None:
        requester = job.requester.display_name
        queue = render.QueueInfo()
        try:
            async for event in follow_job(
                client, job.job_id, self._fetcher, timeout=self.options.job_timeout, poll=self.options.poll
            ):
                if isinstance(event, JobResult):
                    await self._deliver(job, event, filesize_limit)
                    return
                if event.state is JobState.IN_QUEUE and queue.health is None:
                    queue = await self._queue_info(client, job)
                if event.delay_ms is not None:
                    self._learn_wait(job.endpoint.endpoint_id, event.delay_ms / 1000)
                embed = render.status_embed(event, job.params, requester, started=job.started, queue=queue)
                job.message.show(embed, cancel_view(job.job_id))
        except BotError as error:
            log.info("%s: ended without a picture: %s", job.context, error)
            if job.cancelled_by is not None:
                error = JobCancelled(f"Cancelled by {job.cancelled_by.display_name}.", job.job_id)
            await job.message.final(render.failure_embed(error, job.params, requester, job.job_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: unexpected error while following the job", job.context)
            error = BotError("Something went wrong on our side; it has been logged. Try again.")
            await job.message.final(render.failure_embed(error, job.params, requester, job.job_id))
        finally:
            self.live.pop(job.job_id, None)

    async def _queue_info(self, client: RunPodClient, job: LiveJob) -> render.QueueInfo:
        try:
            health = await client.health()
        except RunPodError as error:
            log.info("%s: /health failed: %s", job.context, error)
            return render.QueueInfo()
        typical = self._typical_wait.get(job.endpoint.endpoint_id)
        eta = job.started + timedelta(seconds=typical) if typical is not None else None
        return render.QueueInfo(health, eta)

    def _learn_wait(self, endpoint_id: str, seconds: float) -> None:
        previous = self._typical_wait.get(endpoint_id)
        self._typical_wait[endpoint_id] = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    async def _deliver(self, job: LiveJob, result: JobResult, filesize_limit: int) -> None:
        uploads = await asyncio.to_thread(
            fit_for_upload,
            [image.png for image in result.images],
            per_file_limit=filesize_limit,
            stem=_file_stem(job.params),
        )
        seconds = (datetime.now(UTC) - job.started).total_seconds()
        embed = render.result_embed(
            job.params,
            job.requester.display_name,
            seed=result.images[0].seed if result.images[0].seed is not None else job.params.seed,
            seconds=seconds,
            notes=[upload.note for upload in uploads if upload.note],
            job_id=job.job_id,
        )
        if not await job.message.final(embed, None, uploads):
            log.error("%s: finished but could not be posted anywhere; the result is lost for Discord", job.context)
            await _direct_message(job, "Your picture is ready, but I could not post it in the channel.")
            return
        log.info("%s: delivered %d image(s) in %.1f s", job.context, len(uploads), seconds)
        if seconds >= self.options.notify_after or job.message.in_channel:
            link = job.message.message.jump_url if job.message.message else "above"
            await job.message.notify(f"{job.requester.mention} your picture is ready: {link}", job.requester)

    # --- buttons and shutdown ------------------------------------------------------------------

    async def cancel(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = self.live.get(job_id)
        if job is None:
            await interaction.response.send_message("This job is no longer running.", ephemeral=True)
            return
        allowed = interaction.user.id == job.requester.id or interaction.permissions.manage_messages
        if not allowed:
            await interaction.response.send_message(
                "Only the member who asked for this picture, or a moderator, can cancel it.", ephemeral=True
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self._client(job.endpoint).cancel(job_id)
        except RunPodError as error:
            await interaction.followup.send(f"Could not cancel: {error.explanation}", ephemeral=True)
            return
        job.cancelled_by = interaction.user
        log.info("%s: cancelled by user %s", job.context, interaction.user.id)
        await interaction.followup.send("Cancelled.", ephemeral=True)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking jobs, stop following, tell every waiting member, within `grace` seconds."""
        self._accepting = False
        jobs = list(self.live.values())
        for job in jobs:
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(job.task for job in jobs if job.task), return_exceptions=True)

        async def tell(job: LiveJob) -> None:
            embed = render.restarting_embed(job.params, job.requester.display_name, job.job_id)
            await job.message.final(embed)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(tell(job) for job in jobs), return_exceptions=True), grace)


def _file_stem(params: GenerationParams) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", params.prompt.lower()).strip("_")[:40].rstrip("_")
    return f"{words or 'imagine'}_{params.seed}"


async def _direct_message(job: LiveJob, text: str) -> None:
    try:
        await job.requester.send(f"{text} Job `{job.job_id}`.")
    except discord.HTTPException as error:
        log.error("%s: could not DM the requester either: %s", job.context, error)
