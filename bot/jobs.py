"""One job's life on Discord: record it, wait for its turn, submit it, follow it with a live status, and
deliver it (or explain its end) exactly once; after a restart, pick it up again.

The engine (`bot.engine`) knows nothing of Discord; this module is the glue. The cogs decide what runs
(`cogs/imagine.py` checks a request with `bot.admission` first) and hand over an `Origin` and an
`Admission`. Every job is in the ledger (`bot.storage`) before it is submitted and after every transition,
so a restarted bot resumes every job it had and delivers each one once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import discord

from bot import render
from bot.admission import Admission, check_quota_now
from bot.buttons import RESULT_ACTIONS, ButtonAction, job_view
from bot.config import Secret, Settings
from bot.crypto import UndecryptableSecret, Vault
from bot.delivery import Upload, fit_within, upload_stem
from bot.endpoints import Endpoint, Endpoints
from bot.engine import JobResult, RunPodContext, follow_job, submit_job
from bot.errors import BotError, JobCancelled, JobError, JobExpired, JobTimedOut
from bot.live import Address, LiveMessage
from bot.params import GenerationParams
from bot.policy import FairQueue, GuildPolicy, Ticket
from bot.polling import PollPolicy
from bot.presets import PRESETS
from bot.ratelimit import RateLimit, RateLimiterPerKey
from bot.runpod import JobState, JobStatus
from bot.storage import JobRecord, LedgerState, Storage

log = logging.getLogger(__name__)

# Pings are new messages in the channel: Discord has quoted 30 webhook messages a minute per channel
# (docs/discord-notes.md, Rate limits).
PING_PACE = RateLimit(25, 60.0)


@dataclass
class RunnerOptions:
    poll: PollPolicy = field(default_factory=PollPolicy)
    edit_interval: float = 1.5
    notify_after: float = 20.0  # a job this long: ping the requester, they may have looked away
    pings_per_channel: RateLimit = PING_PACE
    expiry_margin: timedelta = timedelta(seconds=60)
    sweep_interval: float = 60.0
    # A final message that could be posted nowhere (no channel permission, token gone) is tried again after
    # each of these pauses, then the job is recorded as undeliverable: never retried forever, never cancelled.
    delivery_retries: tuple[float, ...] = (2.0, 10.0)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # the bot's only idea of now


@dataclass(frozen=True)
class Origin:
    """The request a job answers, in plain values: what a restarted bot can rebuild from the ledger."""

    request_id: int  # the interaction's id: the job's key in the ledger and on its buttons
    guild_id: int | None
    channel_id: int
    user_id: int
    user_name: str
    token: str = field(repr=False)  # the interaction's, for editing its reply
    token_expires_at: datetime
    message_id: int | None  # the interaction's reply, once Discord has it
    filesize_limit: int | None = None  # this interaction's upload limit

    def record(self, params: GenerationParams, endpoint: Endpoint, vault: Vault, now: datetime) -> JobRecord:
        """The job's first line in the ledger: waiting for its turn, its token encrypted (if it can be)."""
        return JobRecord(
            request_id=self.request_id,
            guild_id=self.guild_id,
            channel_id=self.channel_id,
            user_id=self.user_id,
            user_name=self.user_name[:100],
            params=dataclasses.asdict(params),
            endpoint_id=endpoint.endpoint_id,
            worker=endpoint.preset.name,
            key_source=endpoint.source,
            model=endpoint.model,
            token_encrypted=vault.encrypt(self.token) if vault.available else None,
            token_expires_at=self.token_expires_at,
            message_id=self.message_id,
            state=LedgerState.WAITING,
            created_at=now,
        )


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
        vault: Vault,
        runpod: RunPodContext,
        endpoints: Endpoints,
        options: RunnerOptions | None = None,
    ) -> None:
        self._discord = client
        self._settings = settings
        self._storage = storage
        self._vault = vault
        self._runpod = runpod
        self._endpoints = endpoints
        self.options = options or RunnerOptions()
        self.live: dict[int, LiveJob] = {}  # by ledger id
        self.queue = FairQueue()
        self._pings = RateLimiterPerKey(self.options.pings_per_channel)  # by channel id
        self._reserving: dict[int, asyncio.Lock] = {}  # by guild id
        self.accepting = True

    # --- a new job ---------------------------------------------------------------------------------

    async def start(self, origin: Origin, admission: Admission) -> None:
        """Called right after the defer: count the quota and record the job (raises `Refused` when used up),
        then, in the background, wait for its turn, submit it, follow it."""
        params, endpoint = admission.params.with_seed(), admission.endpoint
        now = self.options.clock()
        record = origin.record(params, endpoint, self._vault, now)
        # The quota is counted and the job written under one lock per guild (a guild's interactions all reach
        # the process of its shard): requests that arrive together cannot all pass a limit of one. Without a
        # quota the lock still queues the writes, which SQLite takes one at a time anyway.
        async with self._reserving.setdefault(origin.guild_id or 0, asyncio.Lock()):
            if origin.guild_id is not None:
                await check_quota_now(self._storage, admission.policy, origin.guild_id, origin.user_id, now)
            if not await self._storage.record_job(record):
                log.warning("request %s arrived twice; already recorded, not paying again", origin.request_id)
                return
        job = self._live_job(record, endpoint, admission.policy, origin.token)
        job.filesize_limit = origin.filesize_limit
        self._spawn(job)

    def is_live(self, request_id: int) -> bool:
        """Whether this job is still being followed here, and not already ending."""
        job = self.live.get(request_id)
        return job is not None and not job.ending

    async def cancel(self, request_id: int, by: str) -> None:
        """Take the job out of the queue, or cancel it on RunPod so it stops billing. Raises what RunPod said
        when it refused; the job then goes on."""
        job = self.live.get(request_id)
        if job is None or job.ending:
            raise BotError("This job has already finished.")
        job.cancelled_by = by
        if job.record.runpod_job_id is not None:
            try:
                await self._endpoints.client(job.endpoint).cancel(job.record.runpod_job_id)
            except BotError:
                job.cancelled_by = None
                raise

    def _live_job(self, record: JobRecord, endpoint: Endpoint, policy: GuildPolicy, token: str | None) -> LiveJob:
        async def remember_channel_message(message_id: int) -> None:
            await self._storage.update_job(record.request_id, channel_message_id=message_id)

        message = LiveMessage(
            self._discord,
            Address.of(record, token),
            min_interval=self.options.edit_interval,
            expiry_margin=self.options.expiry_margin,
            on_channel_message=remember_channel_message,
        )
        params = GenerationParams(**record.params)
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
            await self._end(job, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: unexpected error", job.context)
            await self._end(job, BotError("Something went wrong on our side; it has been logged. Try again."))
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
                job.message.show(embed, job_view(job.key, ButtonAction.CANCEL))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.ticket.admitted), 1.0)

    async def _submit(self, job: LiveJob) -> JobStatus | None:
        """RunPod's answer to `/run`, or None when the job has ended here already."""
        await self._storage.update_job(job.record.request_id, state=LedgerState.PENDING)
        try:
            submitted = await submit_job(
                self._endpoints.client(job.endpoint), job.params, job.endpoint.preset, workflow=job.endpoint.workflow
            )
        except BotError as error:
            await self._end(job, error)
            return None
        job.record = dataclasses.replace(job.record, runpod_job_id=submitted.id, state=LedgerState.QUEUED)
        await self._storage.update_job(job.record.request_id, runpod_job_id=submitted.id, state=LedgerState.QUEUED)
        job.message.context = job.context
        log.info("%s: submitted for request %s", job.context, job.record.request_id)
        return submitted

    async def _follow(self, job: LiveJob, submitted: JobStatus | None = None) -> None:
        client = self._endpoints.client(job.endpoint)
        queue = render.QueueInfo()
        state = job.record.state
        try:
            async for event in follow_job(
                self._runpod,
                client,
                job.job_id,
                timeout=self._remaining(job),
                poll=self.options.poll,
                submitted=submitted,
            ):
                if isinstance(event, JobResult):
                    await self._deliver(job, event)
                    return
                if event.state is JobState.IN_QUEUE and queue.health is None and not event.unanswered:
                    health, wait = await self._runpod.queue_outlook(client)
                    queue = render.QueueInfo(
                        health, job.started + timedelta(seconds=wait) if wait is not None else None
                    )
                new_state = LedgerState.QUEUED if event.state is JobState.IN_QUEUE else LedgerState.RUNNING
                if new_state != state:
                    state = new_state
                    log.info("%s: %s on RunPod (worker %s)", job.context, state, event.worker_id or "-")
                    await self._storage.update_job(job.record.request_id, state=state, delay_ms=event.delay_ms)
                embed = render.status_embed(event, job.params, job.record.user_name, started=job.started, queue=queue)
                job.message.show(embed, job_view(job.key, ButtonAction.CANCEL))
        except JobError as failure:
            # Say who cancelled, rather than RunPod's plain "cancelled".
            await self._end(
                job, failure if job.cancelled_by is None else JobCancelled(f"Cancelled by {job.cancelled_by}.")
            )
        except BotError as error:  # RunPod itself failed us (key, endpoint, outage)
            await self._end(job, error)

    def _remaining(self, job: LiveJob) -> float:
        """The guild's maximum wall time counts from the request, across restarts."""
        elapsed = (self.options.clock() - job.started).total_seconds()
        return max(1.0, job.policy.max_wall_seconds - elapsed)

    # --- the end of a job ----------------------------------------------------------------------------

    async def _deliver(self, job: LiveJob, result: JobResult) -> None:
        spoiler = job.policy.spoiler_outside_nsfw and not is_nsfw(self._discord.get_channel(job.record.channel_id))
        stem = upload_stem(job.params.prompt, job.params.seed, spoiler=spoiler)
        budget, limit = self._runpod.fetcher.budget, _upload_limit(self._discord, job)
        uploads = await fit_within(budget, result.images, per_file_limit=limit, stem=stem, job_id=job.job_id)
        job.ending = True
        await self._storage.update_job(
            job.record.request_id,
            state=LedgerState.COMPLETED,
            delay_ms=result.delay_ms,
            execution_ms=result.execution_ms,
        )
        seconds = (self.options.clock() - job.started).total_seconds()
        notes = [upload.note for upload in uploads if upload.note]
        embed = render.result_embed(job.params, job.record.user_name, result, seconds=seconds, notes=notes)
        # Editing the status message is idempotent: a bot killed between this edit and the claim below
        # edits the same message again after its restart, and nobody sees the picture twice.
        if not await self._final(job, embed, job_view(job.key, *RESULT_ACTIONS), uploads):
            await self._storage.update_job(job.record.request_id, state=LedgerState.UNDELIVERABLE)
            await self._storage.claim_delivery(job.record.request_id)  # its usage stays counted
            log.error("%s: finished but could not be posted anywhere; recorded as undeliverable", job.context)
            return
        if not await self._storage.claim_delivery(job.record.request_id):
            return
        log.info("%s: delivered %d image(s) after %.1f s", job.context, len(uploads), seconds)
        if seconds >= self.options.notify_after or job.message.in_channel:
            self._leave_queue(job)  # the next job need not wait for this ping's turn in the channel
            await self._pings.get(job.record.channel_id).acquire()
            link = job.message.message.jump_url if job.message.message else "above"
            user = discord.Object(job.record.user_id)
            await job.message.notify(f"<@{job.record.user_id}> your picture is ready: {link}", user)

    async def _end(self, job: LiveJob, error: BotError) -> None:
        state = _ENDINGS.get(type(error), LedgerState.FAILED)
        log.info("%s: %s: %s", job.context, state, error)
        job.ending = True
        await self._storage.update_job(job.record.request_id, state=state, notice=error.explanation)
        embed = render.failure_embed(error, job.params, job.record.user_name)
        if not await self._final(job, embed):
            log.error("%s: its end could be told nowhere; not trying again", job.context)
        await self._storage.claim_delivery(job.record.request_id)

    async def _final(
        self, job: LiveJob, embed: discord.Embed, view: discord.ui.View | None = None, uploads: Sequence[Upload] = ()
    ) -> bool:
        """Show the job's last look, trying again a few times if it can be shown nowhere."""
        for pause in (*self.options.delivery_retries, None):
            if await job.message.final(embed, view, uploads):
                return True
            if pause is not None:
                await asyncio.sleep(pause)
        return False

    def _leave_queue(self, job: LiveJob) -> None:
        if job.ticket is not None:
            self.queue.leave(job.ticket)
            job.ticket = None

    # --- after a restart, and stale jobs -----------------------------------------------------------

    async def resume_all(self) -> None:
        """Pick up every job an earlier run left undelivered: follow it, deliver it, or explain."""
        records = [job for job in await self._storage.undelivered_jobs() if self._settings.owns_guild(job.guild_id)]
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
        token, policy = _readable_token(self._vault, record), await self._endpoints.policy(record.guild_id)
        try:
            endpoint = await self._endpoints.of_record(record)
        except BotError as error:
            placeholder = Endpoint(Secret(""), record.endpoint_id, PRESETS[record.worker], source=record.key_source)
            await self._end(self._live_job(record, placeholder, policy, token), error)
            return
        job = self._live_job(record, endpoint, policy, token)
        if record.runpod_job_id is None and record.state is not LedgerState.WAITING:
            # Killed between "pending" and RunPod's answer: RunPod may or may not have the job.
            unsure = BotError("The bot restarted while sending this job to RunPod, so it may not have started.")
            unsure.advice = "Run /imagine again."
            await self._end(job, unsure)
            return
        self._spawn(job)

    async def sweep(self) -> None:
        """Cancel, on RunPod, jobs past their guild's maximum wall time that nobody is following
        (their follower died, or resuming them failed), so they stop billing; tell the requester."""
        for record in await self._storage.undelivered_jobs():
            if record.request_id in self.live or record.runpod_job_id is None or record.created_at is None:
                continue
            if record.state in _FINISHED or not self._settings.owns_guild(record.guild_id):
                continue  # finished on RunPod (resuming delivers it), or another process's shards' job
            try:
                await self._sweep_one(record, record.runpod_job_id, record.created_at)
            except Exception:  # one job's trouble must not stop the sweep of the others
                log.exception("job %s: the sweeper failed on it", record.runpod_job_id)

    async def _sweep_one(self, record: JobRecord, runpod_job_id: str, created_at: datetime) -> None:
        policy = await self._endpoints.policy(record.guild_id)
        if (self.options.clock() - created_at).total_seconds() < policy.max_wall_seconds:
            return
        try:
            endpoint = await self._endpoints.of_record(record)
            await self._endpoints.client(endpoint).cancel(runpod_job_id)
        except BotError as error:
            log.warning("job %s: sweeper could not cancel it: %s", runpod_job_id, error)
            return
        minutes = policy.max_wall_seconds / 60
        stale = JobTimedOut(
            f"Still unfinished after {minutes:g} minutes, so it was cancelled on RunPod to stop the billing.",
            runpod_job_id,
        )
        log.info("job %s: swept after %g minutes", runpod_job_id, minutes)
        await self._end(self._live_job(record, endpoint, policy, _readable_token(self._vault, record)), stale)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("the stale-job sweeper failed; it will try again")

    # --- shutdown ----------------------------------------------------------------------------------

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking jobs and following; tell every waiting member their job goes on. Within `grace`."""
        self.accepting = False
        ending = [job.task for job in self.live.values() if job.ending and job.task]
        waiting = [job for job in self.live.values() if not job.ending]
        for job in waiting:
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(job.task for job in waiting if job.task), return_exceptions=True)

        async def tell(job: LiveJob) -> None:
            await job.message.final(render.restarting_embed(job.params, job.record.user_name))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*ending, *(tell(job) for job in waiting), return_exceptions=True), grace
            )


_FINISHED = frozenset({LedgerState.COMPLETED, LedgerState.UNDELIVERABLE})

# How a job that ended without pictures is recorded: failures of every other kind are "failed".
_ENDINGS: dict[type[BotError], LedgerState] = {
    JobCancelled: LedgerState.CANCELLED,
    JobTimedOut: LedgerState.TIMED_OUT,
    JobExpired: LedgerState.EXPIRED,
}


def _upload_limit(client: discord.Client, job: LiveJob) -> int:
    """The interaction's own upload limit, else (after a restart) the guild's, else Discord's default."""
    if job.filesize_limit is not None:
        return job.filesize_limit
    guild = client.get_guild(job.record.guild_id or 0)
    return guild.filesize_limit if guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES


def _readable_token(vault: Vault, record: JobRecord) -> str | None:
    """The interaction's token, or None when it cannot be read (after a change of BOT_ENCRYPTION_KEY): the
    job then goes on, and its status continues in a channel message sent with the bot token."""
    if not record.token_encrypted:
        return None
    try:
        return vault.decrypt(record.token_encrypted).reveal()
    except UndecryptableSecret:
        log.warning("request %s: its interaction token cannot be decrypted; using the channel", record.request_id)
        return None


def is_nsfw(channel: Any) -> bool:
    return bool(getattr(channel, "nsfw", False))
