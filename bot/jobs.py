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
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import discord

from bot import render
from bot.admission import Admission, check_quota_now
from bot.buttons import ENDED_ACTIONS, ButtonAction, job_view, result_view
from bot.config import Secret, Settings
from bot.crypto import UndecryptableSecret, Vault
from bot.delivery import Upload, fit_within, upload_stem
from bot.endpoints import Endpoint, Endpoints
from bot.engine import JobResult, RunPodContext, follow_job, submit_job
from bot.errors import BotError, JobCancelled, JobError, JobExpired, JobTimedOut, OutputError
from bot.images import enlarge, read_header
from bot.live import Address, LiveMessage
from bot.params import GenerationParams, InvalidParams
from bot.policy import FairQueue, GuildPolicy, Ticket
from bot.polling import PollPolicy
from bot.presets import PRESETS
from bot.ratelimit import RateLimit, RateLimiterPerKey
from bot.runpod import JobState, JobStatus, RunPodClient
from bot.status import StatusBoard
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
    # A live status is drawn again this often even when RunPod says nothing new, so an estimate that came due
    # reads "any moment now"; the queue's /health is read again at most this often while the job waits.
    status_refresh: float = 5.0
    health_interval: float = 15.0
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
    status: StatusBoard = field(init=False)  # what its live status shows beyond RunPod's last word

    def __post_init__(self) -> None:
        self.status = StatusBoard(self.started)

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
                await check_quota_now(
                    self._storage, admission.policy, origin.guild_id, origin.user_id, now, pictures=params.count
                )
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
        refusals = []
        for runpod_job_id in job.record.runpod_job_ids:  # every part of the set
            try:
                await self._endpoints.client(job.endpoint).cancel(runpod_job_id)
            except BotError as error:
                refusals.append(error)
        if refusals and len(refusals) == len(job.record.runpod_job_ids):
            job.cancelled_by = None
            raise refusals[0]

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
            submitted: list[JobStatus] = []
            if job.record.runpod_job_id is None:
                job.ticket = self.queue.join(guild_id, job.record.user_id, job.policy)
                log.info("%s: waiting for a turn, place %s", job.context, self.queue.position(job.ticket) or "-")
                await self._wait_for_turn(job)
                answers = await self._submit(job)
                if answers is None:
                    return
                submitted = answers
                if job.cancelled_by is not None:  # cancelled while its parts were being sent
                    await self._cancel_parts(job, job.record.runpod_job_ids)
                    raise JobCancelled(f"Cancelled by {job.cancelled_by}.")
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
                job.message.show(embed, _cancel_view(job))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.ticket.admitted), 1.0)

    async def _submit(self, job: LiveJob) -> list[JobStatus] | None:
        """Send the request as the RunPod jobs that make it (`WorkerPreset.parts`): RunPod's answers to `/run`,
        or None when it has ended here already. Each part's id is in the ledger as soon as RunPod gives it."""
        await self._storage.update_job(job.record.request_id, state=LedgerState.PENDING)
        client, preset = self._endpoints.client(job.endpoint), job.endpoint.preset
        submitted: list[JobStatus] = []
        try:
            params, image = await self._start_image(job)
            for part in preset.parts(params):
                status = await submit_job(client, part, preset, workflow=job.endpoint.workflow, image=image)
                submitted.append(status)
                job.status.submitted_at = job.status.submitted_at or self.options.clock()
                first, *more = (status.id for status in submitted)
                job.record = dataclasses.replace(job.record, runpod_job_id=first, more_job_ids=more or None)
                await self._storage.update_job(job.record.request_id, runpod_job_id=first, more_job_ids=more or None)
        except BotError as error:
            await self._cancel_parts(job, [status.id for status in submitted])  # they would bill for nothing shown
            await self._end(job, error)
            return None
        job.record = dataclasses.replace(job.record, state=LedgerState.QUEUED)
        await self._storage.update_job(job.record.request_id, state=LedgerState.QUEUED)
        job.message.context = job.context
        log.info("%s: submitted as %d job(s) for request %s", job.context, len(submitted), job.record.request_id)
        return submitted

    async def _start_image(self, job: LiveJob) -> tuple[GenerationParams, bytes | None]:
        """The picture an image job starts from, checked and in the form its worker takes: Discord's URL where
        the worker fetches it; the bytes where it wants base64. It is read and its header checked first, so a file
        that only claims to be a picture, or one deleted since, is refused before any GPU time is paid. An upscale
        starts from the picture enlarged here; a worker that fetches URLs finds that enlarged picture attached to
        the job's own status message."""
        params, preset = job.params, job.endpoint.preset
        if params.image_url is None:
            return params, None
        where = "The picture to start from"
        if not from_discord(params.image_url):  # only Discord's payloads put a URL here; never fetch another
            raise BotError(f"{where} is not on Discord's CDN, so it was not fetched.")
        try:
            data = await self._discord.http.get_from_cdn(params.image_url)
        except discord.HTTPException as error:
            raise BotError(f"{where} could not be read from Discord ({error.status}); was it deleted?") from None
        budget = self._runpod.fetcher.budget
        try:
            header = await budget.run(0, functools.partial(read_header, data, where))
            if params.upscale:
                data = await budget.run(header.decode_bytes * 5, functools.partial(enlarge, data, where))
        except OutputError as error:  # the member's file, not the worker's output: no admin can fix it
            raise InvalidParams(str(error)) from None
        if preset.image_input == "base64":
            return params, data
        if not params.upscale:
            return params, None  # the worker fetches it from Discord itself
        embed = render.starting_embed(job.params, job.record.user_name)
        url = await job.message.attach(embed, Upload("start.png", data))
        if url is None:
            raise BotError("The enlarged picture could not be posted for the worker to fetch. Try again.")
        return dataclasses.replace(params, image_url=url), None

    async def _follow(self, job: LiveJob, submitted: Sequence[JobStatus] = ()) -> None:
        """Follow every part in turn (they run side by side on RunPod), then deliver their pictures as one set.
        A part that fails costs only its own pictures: the others are posted, with a note saying so."""
        client = self._endpoints.client(job.endpoint)
        refresher = asyncio.create_task(self._keep_status_fresh(job, client), name=f"status {job.context}")
        parts = job.record.runpod_job_ids
        results: list[JobResult] = []
        failures: list[BotError] = []
        try:
            for index, runpod_job_id in enumerate(parts):
                if len(parts) > 1:
                    job.status.pictures_ready = sum(len(result.images) for result in results)
                job.status.parts_behind = len(parts) - 1 - index
                try:
                    # Only the first part starts from RunPod's answer to /run: the others' are old news by now.
                    answer = submitted[0] if index == 0 and submitted else None
                    results.append(await self._follow_part(job, client, runpod_job_id, answer))
                except JobError as failure:
                    if job.cancelled_by is not None:  # say who cancelled, rather than RunPod's plain "cancelled"
                        raise JobCancelled(f"Cancelled by {job.cancelled_by}.") from None
                    log.info("%s: part %d of %d ended: %s", job.context, index + 1, len(parts), failure)
                    failures.append(failure)
                except BotError:  # RunPod itself failed us (key, endpoint, outage): the parts not followed yet
                    await self._cancel_parts(job, parts[index + 1 :])  # would bill with nobody to post them
                    raise
        except BotError as error:
            await self._end(job, error)
            return
        finally:
            refresher.cancel()
        if not results:
            await self._end(job, failures[0])
            return
        await self._deliver(job, _one_set(results), failures)

    async def _cancel_parts(self, job: LiveJob, runpod_job_ids: Sequence[str]) -> None:
        for runpod_job_id in runpod_job_ids:
            try:
                await self._endpoints.client(job.endpoint).cancel(runpod_job_id)
            except BotError as error:
                log.warning("%s: could not cancel part %s: %s", job.context, runpod_job_id, error)

    async def _follow_part(
        self, job: LiveJob, client: RunPodClient, runpod_job_id: str, submitted: JobStatus | None
    ) -> JobResult:
        state = job.record.state
        async for event in follow_job(
            self._runpod,
            client,
            runpod_job_id,
            timeout=self._remaining(job),
            poll=self.options.poll,
            submitted=submitted,
        ):
            if isinstance(event, JobResult):
                return event
            new_state = LedgerState.QUEUED if event.state is JobState.IN_QUEUE else LedgerState.RUNNING
            if new_state != state:
                state = new_state
                log.info("%s: %s on RunPod (worker %s)", job.context, state, event.worker_id or "-")
                await self._storage.update_job(job.record.request_id, state=state, delay_ms=event.delay_ms)
            job.status.saw(event, self.options.clock())
            await self._show_status(job, client)
        raise AssertionError("follow_job ends with a result or an error")

    async def _keep_status_fresh(self, job: LiveJob, client: RunPodClient) -> None:
        """Between RunPod's news, draw the status again now and then: estimates come due, the place moves up."""
        while True:
            await asyncio.sleep(self.options.status_refresh)
            if job.status.update is not None and not job.ending:
                await self._show_status(job, client)

    async def _show_status(self, job: LiveJob, client: RunPodClient) -> None:
        board, update = job.status, job.status.update
        if update is None:
            return
        loop_time = asyncio.get_running_loop().time()
        if board.health_due(loop_time, self.options.health_interval):
            board.health_read_at = loop_time
            board.health = await self._runpod.health(client)
        if board.waiting_on_runpod:
            endpoint_id = job.endpoint.endpoint_id
            board.move_up(other.status for other in self.live.values() if other.endpoint.endpoint_id == endpoint_id)
        outlook = board.outlook(self.options.clock(), self._runpod.stats(job.endpoint.endpoint_id), job.params.count)
        if job.ending:  # its picture or its end is being shown: a late status must not cover it
            return
        job.message.show(render.status_embed(update, job.params, job.record.user_name, outlook), _cancel_view(job))

    def _remaining(self, job: LiveJob) -> float:
        """The guild's maximum wall time counts from the request, across restarts."""
        elapsed = (self.options.clock() - job.started).total_seconds()
        return max(1.0, job.policy.max_wall_seconds - elapsed)

    # --- the end of a job ----------------------------------------------------------------------------

    async def _deliver(self, job: LiveJob, result: JobResult, failures: Sequence[BotError] = ()) -> None:
        spoiler = job.policy.spoiler_outside_nsfw and not is_nsfw(self._discord.get_channel(job.record.channel_id))
        stem = upload_stem(job.params.prompt, job.params.seed, spoiler=spoiler)
        budget, limit = self._runpod.fetcher.budget, _upload_limit(self._discord, job)
        uploads = await fit_within(budget, result.images, per_file_limit=limit, stem=stem, job_id=job.job_id)
        job.ending = True
        # A set that lost parts counts the pictures that arrived, not those asked for (a worker may send more).
        short = len(result.images) < job.params.count
        counted = {"pictures": len(result.images)} if short else {}
        await self._storage.update_job(
            job.record.request_id,
            state=LedgerState.COMPLETED,
            delay_ms=result.delay_ms,
            execution_ms=result.execution_ms,
            **counted,
        )
        seconds = (self.options.clock() - job.started).total_seconds()
        notes = [upload.note for upload in uploads if upload.note]
        if short:  # say how many arrived, and why not the rest when it is known
            why = failures[0].for_members if failures else ""
            if job.record.state is LedgerState.PENDING:  # resumed: killed before every part was sent
                why = "The bot restarted while it was sending them to RunPod."
            notes.insert(0, f"{len(uploads)} of {job.params.count} pictures arrived. {why}".strip())
        embed = render.result_embed(job.params, job.record.user_name, result, seconds=seconds, notes=notes)
        # Editing the status message is idempotent: a bot killed between this edit and the claim below
        # edits the same message again after its restart, and nobody sees the picture twice.
        view = result_view(job.key, len(uploads), can_vary=job.endpoint.takes_images)
        if not await self._final(job, embed, view, uploads):
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
            ready = "your pictures are ready" if len(uploads) > 1 else "your picture is ready"
            await job.message.notify(f"<@{job.record.user_id}> {ready}.", discord.Object(job.record.user_id))

    async def _end(self, job: LiveJob, error: BotError) -> None:
        state = _ENDINGS.get(type(error), LedgerState.FAILED)
        log.info("%s: %s: %s", job.context, state, error)
        job.ending = True
        await self._storage.update_job(job.record.request_id, state=state, notice=error.explanation)
        embed = render.failure_embed(error, job.params, job.record.user_name)
        if not await self._final(job, embed, job_view(job.key, *ENDED_ACTIONS)):
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
                await self._sweep_one(record, record.created_at)
            except Exception:  # one job's trouble must not stop the sweep of the others
                log.exception("job %s: the sweeper failed on it", record.runpod_job_id)

    async def _sweep_one(self, record: JobRecord, created_at: datetime) -> None:
        policy = await self._endpoints.policy(record.guild_id)
        if (self.options.clock() - created_at).total_seconds() < policy.max_wall_seconds:
            return
        runpod_job_id = record.runpod_job_ids[0]
        try:
            endpoint = await self._endpoints.of_record(record)
            for part in record.runpod_job_ids:
                await self._endpoints.client(endpoint).cancel(part)
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


def _one_set(results: Sequence[JobResult]) -> JobResult:
    """The parts' pictures as one result: in order, the first part's queue time, and the GPU time of them all
    (what RunPod bills, and what usage counts)."""
    runs = [result.execution_ms for result in results if result.execution_ms is not None]
    return JobResult(
        results[0].job_id,
        tuple(image for result in results for image in result.images),
        delay_ms=results[0].delay_ms,
        execution_ms=sum(runs) if runs else None,
        worker_id=results[0].worker_id,
    )


# Where Discord serves attachments; the API's own host too, which is Discord's unless a test points the client at
# a double (doubles/discord/server.py).
DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})


def from_discord(url: str) -> bool:
    host = urlsplit(url).hostname
    return host is not None and (host in DISCORD_CDN_HOSTS or host == urlsplit(discord.http.Route.BASE).hostname)


def _cancel_view(job: LiveJob) -> discord.ui.View:
    return job_view(job.key, ButtonAction.CANCEL)


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
