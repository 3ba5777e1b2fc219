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
from collections.abc import Callable
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
from bot.engine import JobResult, PollPolicy, endpoint_stats, endpoint_stats_at, follow_job, submit_job
from bot.errors import BotError, JobCancelled, JobError, JobExpired, JobTimedOut, RunPodError
from bot.images import ImageFetcher
from bot.live import Address, LiveMessage
from bot.params import GenerationParams
from bot.policy import (
    COUNTED_STATES,
    FairQueue,
    GuildPolicy,
    Refused,
    Ticket,
    Usage,
    check_quota,
    check_size,
    moderate,
    start_of_day,
    start_of_month,
)
from bot.presets import PRESETS, WorkerPreset, parse_workflow
from bot.ratelimit import RateLimit, RateLimiter
from bot.replies import explain, reply_privately
from bot.runpod import JobState, JobStatus, RunPodClient, endpoint_url
from bot.storage import JobRecord, Storage

log = logging.getLogger(__name__)

RESULT_ACTIONS = ("reroll", "edit", "info", "delete")
NEEDED_PERMISSIONS = ("send_messages", "attach_files", "embed_links")


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
    model: str | None = None  # the guild's name for it


# Pings are new messages in the channel: Discord has quoted 30 webhook messages a minute per channel.
PING_PACE = RateLimit(25, 60.0)


@dataclass
class RunnerOptions:
    poll: PollPolicy = field(default_factory=PollPolicy)
    edit_interval: float = 1.5
    notify_after: float = 20.0  # a job this long: ping the requester, they may have looked away
    pings_per_channel: RateLimit = PING_PACE
    expiry_margin: timedelta = timedelta(seconds=60)
    sweep_interval: float = 60.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # the runner's only idea of now


@dataclass(frozen=True)
class Admission:
    """A request that passed every check: what to run, where, under which rules."""

    params: GenerationParams
    endpoint: Endpoint
    policy: GuildPolicy


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
    policy: GuildPolicy = field(default_factory=GuildPolicy)
    ticket: Ticket | None = None  # its place in the fair queue, released when it ends

    @property
    def key(self) -> str:
        """What its buttons carry: the ledger id, known before RunPod's job id exists."""
        return str(self.record.request_id)

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
        self.live: dict[int, LiveJob] = {}  # by ledger id
        self.queue = FairQueue()
        self._pings: dict[int, RateLimiter] = {}  # by channel id
        self._accepting = True

    # --- where jobs run, under which rules ---------------------------------------------------------

    async def endpoint_for(self, guild_id: int | None, model: str | None = None) -> Endpoint:
        """The guild's model (its default when unnamed), else the operator's default endpoint."""
        if guild_id is not None:
            saved = await self.storage.guild_endpoint(guild_id, model)
            if saved is not None:
                workflow = parse_workflow(saved.workflow) if saved.workflow else None
                key = self.vault.decrypt(saved.api_key_encrypted)
                preset = PRESETS[saved.worker]
                return Endpoint(key, saved.endpoint_id, preset, workflow, source="guild", model=saved.name)
            if model is not None:
                raise BotError(f"This server has no model called “{model}”. Pick one from the list.")
        settings = self._settings
        if settings.runpod_api_key is None or settings.runpod_endpoint_id is None:
            raise NotConfigured()
        return Endpoint(settings.runpod_api_key, settings.runpod_endpoint_id, PRESETS[settings.runpod_worker])

    async def _endpoint_of(self, record: JobRecord) -> Endpoint:
        """The endpoint a recorded job ran on, never another guild's or a newer one."""
        guild_id = record.guild_id if record.key_source == "guild" else None
        endpoint = await self.endpoint_for(guild_id, record.model if guild_id is not None else None)
        if endpoint.endpoint_id != record.endpoint_id or endpoint.source != record.key_source:
            raise BotError("This server's RunPod endpoint changed while the job ran, so it can no longer be followed.")
        return endpoint

    async def policy_for(self, guild_id: int | None) -> GuildPolicy:
        saved = await self.storage.guild_policy(guild_id) if guild_id is not None else None
        return GuildPolicy.from_json(saved)

    def client_for(self, endpoint: Endpoint) -> RunPodClient:
        return self.client_for_key(endpoint.api_key, endpoint.endpoint_id)

    def client_for_key(self, api_key: Secret, endpoint_id: str) -> RunPodClient:
        return RunPodClient(
            self._session, api_key=api_key, endpoint_id=endpoint_id, api_url=self._settings.runpod_api_url
        )

    # --- a new job ---------------------------------------------------------------------------------

    async def preflight(
        self, interaction: discord.Interaction[Any], params: GenerationParams, model: str | None = None
    ) -> Admission:
        """Everything checked before any GPU time is paid for, fast enough to answer before the defer:
        an endpoint, the channel, the guild's limits and moderation, the member's quota."""
        if not self._accepting:
            raise BotError("The bot is restarting; try again in a minute.")
        endpoint = await self.endpoint_for(interaction.guild_id, model)
        policy = await self.policy_for(interaction.guild_id)
        missing = [name for name in NEEDED_PERMISSIONS if not getattr(interaction.app_permissions, name)]
        if missing:
            names = ", ".join(name.replace("_", " ").title() for name in missing)
            raise Refused(f"I cannot post pictures in this channel: I am missing {names}. Ask an admin to allow it.")
        check_size(policy, params)
        moderate(policy, params, nsfw_channel=_is_nsfw(interaction.channel))
        endpoint.preset.build_input(params.with_seed(), endpoint.workflow)
        if interaction.guild_id is not None:
            now = self.options.clock()
            check_quota(policy, await self._usage(interaction.guild_id, interaction.user.id, now), now)
        return Admission(params, endpoint, policy)

    async def _usage(self, guild_id: int, member_id: int, now: datetime) -> Usage:
        today, month = start_of_day(now), start_of_month(now)
        counted = [job for job in await self.storage.guild_jobs_since(guild_id, month) if job.state in COUNTED_STATES]
        todays = [job for job in counted if job.created_at and job.created_at >= today]
        return Usage(
            member_today=sum(job.user_id == member_id for job in todays),
            guild_today=len(todays),
            guild_month=len(counted),
            gpu_seconds_today=sum((job.execution_ms or 0) for job in todays) / 1000,
            gpu_seconds_month=sum((job.execution_ms or 0) for job in counted) / 1000,
        )

    async def start(self, interaction: discord.Interaction[Any], admission: Admission) -> None:
        """Called right after the defer: record the job, wait for its turn, submit it, follow it."""
        params, endpoint = admission.params.with_seed(), admission.endpoint
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
            model=endpoint.model,
            token_encrypted=self.vault.encrypt(interaction.token) if self.vault.available else None,
            token_expires_at=interaction.expires_at,
            message_id=message_id,
            state="waiting",
            created_at=self.options.clock(),
        )
        if not await self.storage.record_job(record):
            log.warning("interaction %s arrived twice; its job is already recorded, not paying again", interaction.id)
            return
        job = self._live_job(record, params, endpoint, interaction.token, admission.policy)
        job.filesize_limit = interaction.filesize_limit
        self._spawn(job)

    def _live_job(
        self, record: JobRecord, params: GenerationParams, endpoint: Endpoint, token: str | None, policy: GuildPolicy
    ) -> LiveJob:
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
        job = LiveJob(record, params, endpoint, message, record.created_at or self.options.clock(), policy=policy)
        message.context = job.context
        return job

    def _spawn(self, job: LiveJob) -> None:
        self.live[job.record.request_id] = job
        job.task = asyncio.create_task(self._run(job), name=job.context)

    # --- running -----------------------------------------------------------------------------------

    async def _run(self, job: LiveJob) -> None:
        """Wait for the job's turn if it has not been submitted yet, then follow it to the end."""
        guild_id = job.record.guild_id or 0
        try:
            submitted = None
            if job.record.runpod_job_id is None:
                job.ticket = self.queue.join(guild_id, job.record.user_id, job.policy)
                log.info("%s: waiting for a turn, place %s", job.context, self.queue.position(job.ticket) or "-")
                await self._wait_for_turn(job)
                submitted = await self._submit(job)
                if submitted is None:
                    return
            else:
                job.ticket = self.queue.occupy(guild_id, job.record.user_id, job.policy)
            await self._follow(job, submitted)
        except BotError as error:  # refused by the queue, or cancelled while waiting
            await self._end(job, error, state=_STATES.get(type(error), "failed"))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: unexpected error", job.context)
            await self._end(job, BotError("Something went wrong on our side; it has been logged. Try again."), "failed")
        finally:
            self._leave_queue(job)
            self.live.pop(job.record.request_id, None)

    async def _wait_for_turn(self, job: LiveJob) -> None:
        assert job.ticket is not None
        shown = None
        while True:
            if job.cancelled_by is not None:  # checked last thing before a submit, too
                raise JobCancelled(f"Cancelled by {job.cancelled_by} before it started.")
            if job.ticket.admitted.done():
                return
            position = self.queue.position(job.ticket)
            if position is not None and position != shown:
                shown = position
                running = self.queue.running(job.record.guild_id or 0, job.record.user_id)
                embed = render.waiting_embed(job.params, job.record.user_name, position=position, running=running)
                job.message.show(embed, job_view(job.key, "cancel"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.ticket.admitted), 1.0)

    async def _submit(self, job: LiveJob) -> JobStatus | None:
        """RunPod's answer to `/run`, or None when the job has ended here already."""
        await self.storage.update_job(job.record.request_id, state="pending")
        try:
            submitted = await submit_job(
                self.client_for(job.endpoint), job.params, job.endpoint.preset, workflow=job.endpoint.workflow
            )
        except BotError as error:
            await self._end(job, error, state="failed")
            return None
        job.record = dataclasses.replace(job.record, runpod_job_id=submitted.id, state="queued")
        await self.storage.update_job(job.record.request_id, runpod_job_id=submitted.id, state="queued")
        job.message.context = job.context
        log.info("%s: submitted for request %s", job.context, job.record.request_id)
        return submitted

    async def _follow(self, job: LiveJob, submitted: JobStatus | None = None) -> None:
        client = self.client_for(job.endpoint)
        queue = render.QueueInfo()
        state = job.record.state
        try:
            async for event in follow_job(
                client,
                job.job_id,
                self._fetcher,
                timeout=self._remaining(job),
                poll=self.options.poll,
                submitted=submitted,
            ):
                if isinstance(event, JobResult):
                    await self._deliver(job, event)
                    return
                if event.state is JobState.IN_QUEUE and queue.health is None:
                    queue = await self._queue_info(client, job)
                new_state = "queued" if event.state is JobState.IN_QUEUE else "running"
                if new_state != state:
                    state = new_state
                    log.info("%s: %s on RunPod (worker %s)", job.context, state, event.worker_id or "-")
                    await self.storage.update_job(job.record.request_id, state=state, delay_ms=event.delay_ms)
                embed = render.status_embed(event, job.params, job.record.user_name, started=job.started, queue=queue)
                job.message.show(embed, job_view(job.key, "cancel"))
        except JobError as failure:
            # Say who cancelled, rather than RunPod's plain "cancelled".
            ended = failure if job.cancelled_by is None else JobCancelled(f"Cancelled by {job.cancelled_by}.")
            await self._end(job, ended, state=_STATES.get(type(ended), "failed"))
        except BotError as error:  # RunPod itself failed us (key, endpoint, outage)
            await self._end(job, error, state="failed")

    def _remaining(self, job: LiveJob) -> float:
        """The guild's maximum wall time counts from the request, across restarts."""
        elapsed = (self.options.clock() - job.started).total_seconds()
        return max(1.0, job.policy.max_wall_seconds - elapsed)

    async def _queue_info(self, client: RunPodClient, job: LiveJob) -> render.QueueInfo:
        try:
            health = await client.health()
        except RunPodError as error:
            log.info("%s: /health failed: %s", job.context, error)
            return render.QueueInfo()
        typical = endpoint_stats(client).typical_wait
        eta = job.started + timedelta(seconds=typical) if typical is not None else None
        return render.QueueInfo(health, eta)

    async def _deliver(self, job: LiveJob, result: JobResult) -> None:
        job.ending = True
        await self.storage.update_job(
            job.record.request_id, state="completed", delay_ms=result.delay_ms, execution_ms=result.execution_ms
        )
        channel = self._discord.get_channel(job.record.channel_id)
        spoiler = job.policy.spoiler_outside_nsfw and not _is_nsfw(channel)
        uploads = await asyncio.to_thread(
            fit_for_upload,
            [image.png for image in result.images],
            per_file_limit=self._discord_filesize_limit(job),
            stem=("SPOILER_" if spoiler else "") + _file_stem(job.params),
        )
        seconds = (self.options.clock() - job.started).total_seconds()
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
        if not await job.message.final(embed, job_view(job.key, *RESULT_ACTIONS), uploads):
            log.error("%s: finished but could not be posted anywhere; left undelivered", job.context)
            return
        if not await self.storage.claim_delivery(job.record.request_id):
            return
        log.info("%s: delivered %d image(s) after %.1f s", job.context, len(uploads), seconds)
        if seconds >= self.options.notify_after or job.message.in_channel:
            self._leave_queue(job)  # the next job need not wait for this ping's turn in the channel
            await self._ping_pace(job.record.channel_id).acquire()
            link = job.message.message.jump_url if job.message.message else "above"
            user = discord.Object(job.record.user_id)
            await job.message.notify(f"<@{job.record.user_id}> your picture is ready: {link}", user)

    def _leave_queue(self, job: LiveJob) -> None:
        if job.ticket is not None:
            self.queue.leave(job.ticket)
            job.ticket = None

    def _ping_pace(self, channel_id: int) -> RateLimiter:
        pace = self._pings.get(channel_id)
        if pace is None:
            limit = self.options.pings_per_channel
            pace = self._pings[channel_id] = RateLimiter(limit.requests, limit.per)
        return pace

    def _discord_filesize_limit(self, job: LiveJob) -> int:
        if job.filesize_limit is not None:
            return job.filesize_limit
        guild = self._discord.get_guild(job.record.guild_id or 0)
        return guild.filesize_limit if guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def _end(self, job: LiveJob, error: BotError, state: str) -> None:
        log.info("%s: %s: %s", job.context, state, error)
        job.ending = True
        await self.storage.update_job(job.record.request_id, state=state, notice=error.explanation)
        embed = render.failure_embed(error, job.params, job.record.user_name, job.record.runpod_job_id)
        if await job.message.final(embed):
            await self.storage.claim_delivery(job.record.request_id)

    # --- after a restart, and stale jobs -----------------------------------------------------------

    async def rotate_keys(self) -> None:
        """With several BOT_ENCRYPTION_KEYs, re-encrypt stored server keys under the first one, so the
        operator can drop the old key after one restart."""
        if len(self._settings.encryption_keys) < 2:
            return
        try:
            count = await self.storage.rewrite_keys(self.vault.rotate)
        except BotError as error:
            log.error("key rotation stopped: %s", error)
            return
        log.info("re-encrypted %d stored server key(s) under the first BOT_ENCRYPTION_KEY", count)

    async def recall_run_times(self) -> None:
        """Teach each endpoint's polling the queue and run times the ledger remembers, so that a restarted
        bot polls as sparingly and finds finished jobs as soon as before."""
        for endpoint_id, delay_ms, execution_ms in await self.storage.recent_run_times():
            stats = endpoint_stats_at(endpoint_url(self._settings.runpod_api_url, endpoint_id))
            stats.record(run_s=execution_ms / 1000, wait_s=delay_ms / 1000 if delay_ms is not None else None)

    async def resume_all(self) -> None:
        """Pick up every job an earlier run left undelivered: follow it, deliver it, or explain."""
        records = [job for job in await self.storage.undelivered_jobs() if self._settings.owns_guild(job.guild_id)]
        if records:
            log.info("resuming %d undelivered job(s)", len(records))
        for record in records:
            try:
                await self.resume(record)
            except Exception:
                log.exception("job %s (request %s): could not be resumed", record.runpod_job_id, record.request_id)

    async def resume(self, record: JobRecord) -> None:
        if record.request_id in self.live:
            return
        params = GenerationParams(**record.params)
        token = self.vault.decrypt(record.token_encrypted).reveal() if record.token_encrypted else None
        policy = await self.policy_for(record.guild_id)
        try:
            endpoint = await self._endpoint_of(record)
        except BotError as error:
            placeholder = Endpoint(Secret(""), record.endpoint_id, PRESETS[record.worker], source=record.key_source)
            await self._end(self._live_job(record, params, placeholder, token, policy), error, "failed")
            return
        job = self._live_job(record, params, endpoint, token, policy)
        if record.runpod_job_id is None and record.state != "waiting":
            # Killed between "pending" and RunPod's answer: RunPod may or may not have the job.
            unsure = BotError("The bot restarted while sending this job to RunPod, so it may not have started.")
            unsure.advice = "Run /imagine again."
            await self._end(job, unsure, "failed")
            return
        self._spawn(job)

    async def sweep(self) -> None:
        """Cancel, on RunPod, jobs past their guild's maximum wall time that nobody is following
        (their follower died, or resuming them failed), so they stop billing; tell the requester."""
        now = self.options.clock()
        for record in await self.storage.undelivered_jobs():
            if record.request_id in self.live or record.runpod_job_id is None or record.created_at is None:
                continue
            if not self._settings.owns_guild(record.guild_id):  # another process's shards: its jobs
                continue
            policy = await self.policy_for(record.guild_id)
            if (now - record.created_at).total_seconds() < policy.max_wall_seconds:
                continue
            params = GenerationParams(**record.params)
            token = self.vault.decrypt(record.token_encrypted).reveal() if record.token_encrypted else None
            try:
                endpoint = await self._endpoint_of(record)
                await self.client_for(endpoint).cancel(record.runpod_job_id)
            except BotError as error:
                log.warning("job %s: sweeper could not cancel it: %s", record.runpod_job_id, error)
                continue
            minutes = policy.max_wall_seconds / 60
            stale = JobTimedOut(
                f"Still unfinished after {minutes:g} minutes, so it was cancelled on RunPod to stop the billing.",
                record.runpod_job_id,
            )
            log.info("job %s: swept after %g minutes", record.runpod_job_id, minutes)
            await self._end(self._live_job(record, params, endpoint, token, policy), stale, "timed_out")

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("the stale-job sweeper failed; it will try again")

    # --- buttons -----------------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction[Any], action: str, key: str) -> None:
        record = await self.storage.job(int(key)) if key.isdigit() else None
        if record is None or record.guild_id != interaction.guild_id:
            await interaction.response.send_message("I have no record of this job any more.", ephemeral=True)
            return
        if action == "info":
            policy = await self.policy_for(record.guild_id)
            embed = render.info_embed(record, policy.cost(record.execution_ms))
            await interaction.response.send_message(embed=embed, ephemeral=True)
            return
        if action in ("cancel", "delete") and not _may_moderate(interaction, record):
            await interaction.response.send_message(
                f"Only the member who asked for this picture, or a moderator, can {action} it.", ephemeral=True
            )
            return
        params = GenerationParams(**record.params)
        if action == "cancel":
            await self._cancel(interaction, record)
        elif action == "delete":
            await interaction.response.defer()
            await interaction.delete_original_response()
            log.info("job %s: result deleted by user %s", record.runpod_job_id, interaction.user.id)
        elif action == "reroll":
            await self.run_new(interaction, dataclasses.replace(params, seed=None), record.model)
        elif action == "edit":
            await interaction.response.send_modal(EditModal(self, params, record.model))

    async def run_new(
        self, interaction: discord.Interaction[Any], params: GenerationParams, model: str | None = None
    ) -> None:
        """A new job from a command, a button or a modal: the same preflight and limits for all."""
        admission = await self.preflight(interaction, params, model)
        await interaction.response.defer(thinking=True)
        await self.start(interaction, admission)

    async def _cancel(self, interaction: discord.Interaction[Any], record: JobRecord) -> None:
        job = self.live.get(record.request_id)
        if record.delivered_at is not None or job is None or job.ending:
            await interaction.response.send_message("This job has already finished.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        job.cancelled_by = interaction.user.display_name
        if record.runpod_job_id is not None:
            try:
                await self.client_for(job.endpoint).cancel(record.runpod_job_id)
            except BotError as error:
                job.cancelled_by = None
                await interaction.followup.send(f"Could not cancel: {error.explanation}", ephemeral=True)
                return
        log.info(
            "job %s (request %s): cancelled by user %s", record.runpod_job_id, record.request_id, interaction.user.id
        )
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


class EditModal(discord.ui.Modal, title="Edit and run again"):
    """The prompt, prefilled: change it and the job runs again with the other parameters kept."""

    def __init__(self, runner: JobRunner, params: GenerationParams, model: str | None) -> None:
        super().__init__(timeout=600)
        self._runner = runner
        self._params = params
        self._model = model
        self.prompt: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Prompt",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=params.prompt,
            max_length=1000,
        )
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        params = dataclasses.replace(self._params, prompt=self.prompt.value, seed=None)
        await self._runner.run_new(interaction, params, self._model)

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception) -> None:  # type: ignore[override]
        await reply_privately(interaction, explain(interaction, error))


_STATES: dict[type[BotError], str] = {JobCancelled: "cancelled", JobTimedOut: "timed_out", JobExpired: "expired"}


def _is_nsfw(channel: Any) -> bool:
    return bool(getattr(channel, "nsfw", False))


def _may_moderate(interaction: discord.Interaction[Any], record: JobRecord) -> bool:
    return interaction.user.id == record.user_id or interaction.permissions.manage_messages


def _file_stem(params: GenerationParams) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", params.prompt.lower()).strip("_")[:40].rstrip("_")
    return f"{words or 'imagine'}_{params.seed}"
