"""Runs `/imagine` jobs for Discord: record, submit, follow with a live status, deliver exactly once.

The engine (`bot.engine`) knows nothing of Discord; this module is the glue, and the cogs only parse
and hand over. Every job is in the ledger (`bot.storage`) before it is submitted and after every
transition, so a restarted bot resumes every job it had and delivers each one once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import discord

from bot import render
from bot.buttons import job_view
from bot.config import Secret, Settings
from bot.crypto import Vault
from bot.delivery import fit_for_upload
from bot.engine import JobResult, JobUpdate, PollPolicy, follow_job, submit_job
from bot.errors import BotError, JobCancelled, JobError, JobExpired, JobTimedOut, RunPodError
from bot.images import ImageFetcher
from bot.live import Address, LiveMessage
from bot.params import GenerationParams
from bot.presets import PRESETS, WorkerPreset, parse_workflow
from bot.runpod import JobState, RunPodClient
from bot.storage import JobRecord, Storage

log = logging.getLogger(__name__)

RESULT_ACTIONS = ("reroll", "info", "delete")


class NotConfigured(BotError):
    def __init__(self) -> None:
        super().__init__("No RunPod endpoint is set up for this server.")

    advice = "A server admin must run /runpod setup first."


@dataclass(frozen=True)
class Endpoint:
    """Where a guild's jobs run, and with whose key."""

    api_key: Secret = field(repr=False)
    endpoint_id: str
    preset: WorkerPreset
    workflow: Any = None
    source: str = "default"  # "guild": the guild's own key; "default": the operator's


@dataclass
class RunnerOptions:
    poll: PollPolicy = field(default_factory=PollPolicy)
    job_timeout: float = 15 * 60.0  # queue plus run; then the job is cancelled on RunPod
    edit_interval: float = 1.5
    notify_after: float = 20.0  # a job this long: ping the requester, they may have looked away
    expiry_margin: timedelta = timedelta(seconds=60)


@dataclass
class LiveJob:
    record: JobRecord
    params: GenerationParams
    endpoint: Endpoint
    message: LiveMessage
    started: datetime
    task: asyncio.Task[None] | None = None
    cancelled_by: str | None = None
    filesize_limit: int | None = None  # this interaction's upload limit; unknown after a restart
    ending: bool = False  # delivering its picture or its failure: let it finish, do not overwrite

    @property
    def job_id(self) -> str:
        return self.record.runpod_job_id or f"request-{self.record.request_id}"

    @property
    def context(self) -> str:
        return f"job {self.job_id} guild {self.record.guild_id} endpoint {self.endpoint.endpoint_id}"


class JobRunner:
    def __init__(
        self,
        client: discord.Client,
        settings: Settings,
        storage: Storage,
        session: aiohttp.ClientSession,
        fetcher: ImageFetcher,
        options: RunnerOptions | None = None,
    ) -> None:
        self._discord = client
        self._settings = settings
        self.storage = storage
        self.vault = Vault(settings.encryption_keys)
        self._session = session
        self._fetcher = fetcher
        self.options = options or RunnerOptions()
        self.live: dict[str, LiveJob] = {}
        self._typical_wait: dict[str, float] = {}  # endpoint id -> seconds in queue, smoothed
        self._accepting = True

    # --- where jobs run ----------------------------------------------------------------------------

    async def endpoint_for(self, guild_id: int | None) -> Endpoint:
        """The guild's own endpoint if an admin connected one, else the operator's default."""
        if guild_id is not None:
            saved = await self.storage.guild_endpoint(guild_id)
            if saved is not None:
                workflow = parse_workflow(saved.workflow) if saved.workflow else None
                key = self.vault.decrypt(saved.api_key_encrypted)
                return Endpoint(key, saved.endpoint_id, PRESETS[saved.worker], workflow, source="guild")
        settings = self._settings
        if settings.runpod_api_key is None or settings.runpod_endpoint_id is None:
            raise NotConfigured()
        return Endpoint(settings.runpod_api_key, settings.runpod_endpoint_id, PRESETS[settings.runpod_worker])

    async def _endpoint_of(self, record: JobRecord) -> Endpoint:
        """The endpoint a recorded job ran on, never another guild's or a newer one."""
        endpoint = await self.endpoint_for(record.guild_id if record.key_source == "guild" else None)
        if endpoint.endpoint_id != record.endpoint_id or endpoint.source != record.key_source:
            raise BotError("This server's RunPod endpoint changed while the job ran, so it can no longer be followed.")
        return endpoint

    def client_for(self, endpoint: Endpoint) -> RunPodClient:
        return self.client_for_key(endpoint.api_key, endpoint.endpoint_id)

    def client_for_key(self, api_key: Secret, endpoint_id: str) -> RunPodClient:
        return RunPodClient(
            self._session, api_key=api_key, endpoint_id=endpoint_id, api_url=self._settings.runpod_api_url
        )

    # --- a new job ---------------------------------------------------------------------------------

    def check(self, params: GenerationParams, endpoint: Endpoint) -> None:
        """Everything that can be refused before the reply is deferred (and so, privately)."""
        if not self._accepting:
            raise BotError("The bot is restarting; try again in a minute.")
        endpoint.preset.build_input(params.with_seed(), endpoint.workflow)

    async def start(self, interaction: discord.Interaction[Any], params: GenerationParams, endpoint: Endpoint) -> None:
        """Called right after the defer: record the job, submit it, and follow it in the background."""
        params = params.with_seed()
        try:
            message_id: int | None = (await interaction.original_response()).id
        except discord.HTTPException:
            message_id = None
        record = JobRecord(
            request_id=interaction.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            user_name=interaction.user.display_name[:100],
            params=dataclasses.asdict(params),
            endpoint_id=endpoint.endpoint_id,
            worker=endpoint.preset.name,
            key_source=endpoint.source,
            token_encrypted=self.vault.encrypt(interaction.token) if self.vault.available else None,
            token_expires_at=interaction.expires_at,
            message_id=message_id,
        )
        if not await self.storage.record_job(record):
            log.warning(
                "interaction %s arrived twice; the job is already recorded, not submitting again", interaction.id
            )
            return
        job = self._live_job(record, params, endpoint, interaction.token)
        job.filesize_limit = interaction.filesize_limit
        try:
            submitted = await submit_job(self.client_for(endpoint), params, endpoint.preset, workflow=endpoint.workflow)
        except BotError as error:
            log.warning("%s: submit failed: %s", job.context, error)
            await self._end(job, error, state="failed")
            return
        job.record = dataclasses.replace(record, runpod_job_id=submitted.id, state="queued")
        await self.storage.update_job(record.request_id, runpod_job_id=submitted.id, state="queued")
        job.message.context = job.context
        self._spawn(job)

    def _live_job(self, record: JobRecord, params: GenerationParams, endpoint: Endpoint, token: str | None) -> LiveJob:
        async def remember_channel_message(message_id: int) -> None:
            await self.storage.update_job(record.request_id, channel_message_id=message_id)

        address = Address(
            channel_id=record.channel_id,
            guild_id=record.guild_id,
            token=token,
            token_expires_at=record.token_expires_at,
            message_id=record.message_id,
            channel_message_id=record.channel_message_id,
        )
        message = LiveMessage(
            self._discord,
            address,
            min_interval=self.options.edit_interval,
            expiry_margin=self.options.expiry_margin,
            on_channel_message=remember_channel_message,
        )
        job = LiveJob(record, params, endpoint, message, record.created_at or datetime.now(UTC))
        message.context = job.context
        return job

    def _spawn(self, job: LiveJob) -> None:
        self.live[job.job_id] = job
        job.task = asyncio.create_task(self._follow(job), name=job.context)

    # --- following ---------------------------------------------------------------------------------

    async def _follow(self, job: LiveJob) -> None:
        client = self.client_for(job.endpoint)
        queue = render.QueueInfo()
        state = job.record.state
        try:
            async for event in follow_job(
                client, job.job_id, self._fetcher, timeout=self._remaining(job), poll=self.options.poll
            ):
                if isinstance(event, JobResult):
                    await self._deliver(job, event)
                    return
                if event.state is JobState.IN_QUEUE and queue.health is None:
                    queue = await self._queue_info(client, job)
                new_state = "queued" if event.state is JobState.IN_QUEUE else "running"
                if new_state != state:
                    state = new_state
                    await self.storage.update_job(job.record.request_id, state=state, delay_ms=event.delay_ms)
                    self._learn_wait(job.endpoint.endpoint_id, event)
                embed = render.status_embed(event, job.params, job.record.user_name, started=job.started, queue=queue)
                job.message.show(embed, job_view(job.job_id, "cancel"))
        except JobError as failure:
            # Say who cancelled, rather than RunPod's plain "cancelled".
            ended = failure if job.cancelled_by is None else JobCancelled(f"Cancelled by {job.cancelled_by}.")
            log.info("%s: ended without a picture: %s", job.context, ended)
            await self._end(job, ended, state=_STATES.get(type(ended), "failed"))
        except BotError as error:
            log.warning("%s: RunPod failed us: %s", job.context, error)
            await self._end(job, error, state="failed")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: unexpected error while following the job", job.context)
            await self._end(job, BotError("Something went wrong on our side; it has been logged. Try again."), "failed")
        finally:
            self.live.pop(job.job_id, None)

    def _remaining(self, job: LiveJob) -> float:
        """The job's overall deadline counts from its submission, across restarts."""
        elapsed = (datetime.now(UTC) - job.started).total_seconds()
        return max(1.0, self.options.job_timeout - elapsed)

    async def _queue_info(self, client: RunPodClient, job: LiveJob) -> render.QueueInfo:
        try:
            health = await client.health()
        except RunPodError as error:
            log.info("%s: /health failed: %s", job.context, error)
            return render.QueueInfo()
        typical = self._typical_wait.get(job.endpoint.endpoint_id)
        eta = job.started + timedelta(seconds=typical) if typical is not None else None
        return render.QueueInfo(health, eta)

    def _learn_wait(self, endpoint_id: str, update: JobUpdate) -> None:
        if update.delay_ms is None:
            return
        seconds, previous = update.delay_ms / 1000, self._typical_wait.get(endpoint_id)
        self._typical_wait[endpoint_id] = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    async def _deliver(self, job: LiveJob, result: JobResult) -> None:
        job.ending = True
        await self.storage.update_job(
            job.record.request_id, state="completed", delay_ms=result.delay_ms, execution_ms=result.execution_ms
        )
        uploads = await asyncio.to_thread(
            fit_for_upload,
            [image.png for image in result.images],
            per_file_limit=self._discord_filesize_limit(job),
            stem=_file_stem(job.params),
        )
        seconds = (datetime.now(UTC) - job.started).total_seconds()
        seed = result.images[0].seed if result.images[0].seed is not None else job.params.seed
        embed = render.result_embed(
            job.params,
            job.record.user_name,
            seed=seed,
            seconds=seconds,
            notes=[upload.note for upload in uploads if upload.note],
            job_id=job.job_id,
        )
        # Editing the status message is idempotent: a bot killed between this edit and the claim below
        # edits the same message again after its restart, and nobody sees the picture twice.
        if not await job.message.final(embed, job_view(job.job_id, *RESULT_ACTIONS), uploads):
            log.error("%s: finished but could not be posted anywhere; left undelivered", job.context)
            return
        if not await self.storage.claim_delivery(job.record.request_id):
            return
        log.info("%s: delivered %d image(s) after %.1f s", job.context, len(uploads), seconds)
        if seconds >= self.options.notify_after or job.message.in_channel:
            link = job.message.message.jump_url if job.message.message else "above"
            user = discord.Object(job.record.user_id)
            await job.message.notify(f"<@{job.record.user_id}> your picture is ready: {link}", user)

    def _discord_filesize_limit(self, job: LiveJob) -> int:
        if job.filesize_limit is not None:
            return job.filesize_limit
        guild = self._discord.get_guild(job.record.guild_id or 0)
        return guild.filesize_limit if guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def _end(self, job: LiveJob, error: BotError, state: str) -> None:
        job.ending = True
        await self.storage.update_job(job.record.request_id, state=state, notice=error.explanation)
        embed = render.failure_embed(error, job.params, job.record.user_name, job.record.runpod_job_id)
        if await job.message.final(embed):
            await self.storage.claim_delivery(job.record.request_id)

    # --- after a restart ---------------------------------------------------------------------------

    async def resume_all(self) -> None:
        """Pick up every job an earlier run left undelivered: follow it, deliver it, or explain."""
        records = await self.storage.undelivered_jobs()
        if records:
            log.info("resuming %d undelivered job(s)", len(records))
        for record in records:
            try:
                await self.resume(record)
            except Exception:
                log.exception("job %s (request %s): could not be resumed", record.runpod_job_id, record.request_id)

    async def resume(self, record: JobRecord) -> None:
        params = GenerationParams(**record.params)
        token = self.vault.decrypt(record.token_encrypted).reveal() if record.token_encrypted else None
        try:
            endpoint = await self._endpoint_of(record)
        except BotError as error:
            placeholder = Endpoint(Secret(""), record.endpoint_id, PRESETS[record.worker], source=record.key_source)
            await self._end(self._live_job(record, params, placeholder, token), error, "failed")
            return
        job = self._live_job(record, params, endpoint, token)
        if record.runpod_job_id is None:
            error = BotError("The bot restarted while sending this job to RunPod, so it may not have started.")
            error.advice = "Run /imagine again."
            await self._end(job, error, "failed")
            return
        self._spawn(job)

    # --- buttons -----------------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction[Any], action: str, job_id: str) -> None:
        record = await self.storage.job_by_runpod_id(job_id)
        if record is None or record.guild_id != interaction.guild_id:
            await interaction.response.send_message("I have no record of this job any more.", ephemeral=True)
            return
        if action == "info":
            await interaction.response.send_message(embed=render.info_embed(record), ephemeral=True)
            return
        if action in ("cancel", "delete") and not _may_moderate(interaction, record):
            await interaction.response.send_message(
                f"Only the member who asked for this picture, or a moderator, can {action} it.", ephemeral=True
            )
            return
        if action == "cancel":
            await self._cancel(interaction, record)
        elif action == "delete":
            await interaction.response.defer()
            await interaction.delete_original_response()
            log.info("job %s: result deleted by user %s", job_id, interaction.user.id)
        elif action == "reroll":
            params = dataclasses.replace(GenerationParams(**record.params), seed=None)
            endpoint = await self.endpoint_for(interaction.guild_id)
            self.check(params, endpoint)
            await interaction.response.defer(thinking=True)
            await self.start(interaction, params, endpoint)

    async def _cancel(self, interaction: discord.Interaction[Any], record: JobRecord) -> None:
        job_id = record.runpod_job_id or ""
        job = self.live.get(job_id)
        if record.delivered_at is not None or (job is None and record.state not in ("queued", "running")):
            await interaction.response.send_message("This job has already finished.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.client_for(await self._endpoint_of(record)).cancel(job_id)
        except BotError as error:
            await interaction.followup.send(f"Could not cancel: {error.explanation}", ephemeral=True)
            return
        if job is not None:
            job.cancelled_by = interaction.user.display_name
        log.info("job %s: cancelled by user %s", job_id, interaction.user.id)
        await interaction.followup.send("Cancelled.", ephemeral=True)

    # --- shutdown ----------------------------------------------------------------------------------

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking jobs and following; tell every waiting member their job goes on. Within `grace`."""
        self._accepting = False
        ending = [job.task for job in self.live.values() if job.ending and job.task]
        waiting = [job for job in self.live.values() if not job.ending]
        for job in waiting:
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(job.task for job in waiting if job.task), return_exceptions=True)

        async def tell(job: LiveJob) -> None:
            await job.message.final(render.restarting_embed(job.params, job.record.user_name, job.job_id))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*ending, *(tell(job) for job in waiting), return_exceptions=True), grace
            )


_STATES: dict[type[BotError], str] = {JobCancelled: "cancelled", JobTimedOut: "timed_out", JobExpired: "expired"}


def _may_moderate(interaction: discord.Interaction[Any], record: JobRecord) -> bool:
    return interaction.user.id == record.user_id or interaction.permissions.manage_messages


def _file_stem(params: GenerationParams) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", params.prompt.lower()).strip("_")[:40].rstrip("_")
    return f"{words or 'imagine'}_{params.seed}"
