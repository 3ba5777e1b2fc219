"""One job's life on Discord: record it, wait for its turn, submit it, follow it with a live status, and
deliver it (or explain its end) exactly once.

The engine (`bot.engine`) knows nothing of Discord; this module is the glue. The cogs decide what runs
(`cogs/imagine.py` checks a request with `bot.admission` first) and hand over an `Origin` and an
`Admission`. Every move of a job is a ledger transition (`bot.storage`, table in `bot.lifecycle`), and
`LiveJob.record` is always what the last one returned. What the member sees is `bot.presenter`'s business;
it reports outcomes and never raises for Discord's faults. After a restart, `bot.recovery` hands the
unfinished jobs back to `JobRunner.follow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import discord

from bot import start_picture, tasks
from bot.admission import Admission, check_quota_now
from bot.clock import monotonic, wall_clock
from bot.config import Settings
from bot.crypto import Vault
from bot.endpoints import Endpoint, Endpoints
from bot.engine import JobResult, RunPodContext, follow_job, submit_job
from bot.errors import BotError, JobCancelled, JobError, JobExpired, JobTimedOut
from bot.lifecycle import ENDINGS, LedgerState
from bot.params import GenerationParams
from bot.policy import FairQueue, GuildPolicy, Ticket
from bot.polling import PollPolicy
from bot.presenter import PING_PACE, Delivered, JobPresenter, Stage, Undelivered
from bot.ratelimit import RateLimit
from bot.runpod import JobState, JobStatus, RunPodClient
from bot.status import StatusBoard
from bot.storage import JobRecord, Storage

log = logging.getLogger(__name__)


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
    # A finished job's last look that Discord would not take (a reset, a 5xx, no permission in the channel) is
    # tried again after each of these pauses; then the job is recorded as undeliverable, never cancelled.
    delivery_retries: tuple[float, ...] = (2.0, 10.0, 30.0)
    clock: Callable[[], datetime] = wall_clock  # the bot's only idea of what time it is (bot/clock.py)


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
    record: JobRecord  # what the ledger's last transition returned: never changed by hand
    params: GenerationParams
    endpoint: Endpoint
    presenter: JobPresenter
    policy: GuildPolicy
    started: float  # when it was asked for, on the monotonic clock (earlier than now after a restart)
    status: StatusBoard  # what its live status shows beyond RunPod's last word
    task: asyncio.Task[None] | None = None
    cancelled_by: str | None = None
    ending: bool = False  # delivering its picture or its failure: let it finish, do not overwrite
    ticket: Ticket | None = None  # its place in the fair queue, released when it ends

    @property
    def deadline(self) -> float:
        """The guild's maximum wall time, from the request, on the monotonic clock: a clock step moves nothing."""
        return self.started + self.policy.max_wall_seconds

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
        self.options = options = options or RunnerOptions()
        self.stage = Stage(
            client,
            runpod.fetcher.budget,
            retries=options.delivery_retries,
            edit_interval=options.edit_interval,
            expiry_margin=options.expiry_margin,
            pings_per_channel=options.pings_per_channel,
            clock=options.clock,
        )
        self.live: dict[int, LiveJob] = {}  # by ledger id
        self.queue = FairQueue()
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
        job = self.adopt(record, params, endpoint, admission.policy, origin.token, origin.filesize_limit)
        self.follow(job)

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
        refusals = await self.cancel_parts(job.endpoint, job.record.runpod_job_ids, job.context)
        if refusals and len(refusals) == len(job.record.runpod_job_ids):
            job.cancelled_by = None
            raise refusals[0]

    def adopt(
        self,
        record: JobRecord,
        params: GenerationParams,
        endpoint: Endpoint,
        policy: GuildPolicy,
        token: str | None,
        filesize_limit: int | None = None,
    ) -> LiveJob:
        """A recorded job, ready to be followed or ended here."""

        async def remember_channel_message(message_id: int) -> None:
            job.record = await self._storage.channel_message(job.record, message_id)

        presenter = JobPresenter(
            self.stage,
            record,
            params,
            token=token,
            can_vary=endpoint.takes_images,
            spoiler_outside_nsfw=policy.spoiler_outside_nsfw,
            filesize_limit=filesize_limit,
            on_channel_message=remember_channel_message,
        )
        asked_at = record.created_at or self.options.clock()
        age = max(0.0, (self.options.clock() - asked_at).total_seconds())
        job = LiveJob(record, params, endpoint, presenter, policy, monotonic() - age, StatusBoard(asked_at))
        presenter.context = job.context
        return job

    def follow(self, job: LiveJob) -> None:
        if not self.accepting:  # shutting down: the next run finds the job in the ledger and takes it up
            return
        self.live[job.record.request_id] = job
        job.task = tasks.spawn(self._run(job), name=job.context)

    # --- running -----------------------------------------------------------------------------------

    async def _run(self, job: LiveJob) -> None:
        """Wait for the job's turn if it has not been submitted yet, then follow it to the end."""
        guild_id = job.record.guild_id or 0
        try:
            submitted: list[JobStatus] = []
            refused: BotError | None = None
            if job.record.state is LedgerState.WAITING:
                job.ticket = self.queue.join(guild_id, job.record.user_id, job.policy)
                log.info("%s: waiting for a turn, place %s", job.context, self.queue.position(job.ticket) or "-")
                await self._wait_for_turn(job)
                submitted, refused = await self._submit(job)
                if job.cancelled_by is not None:  # cancelled while its parts were being sent
                    await self.cancel_parts(job.endpoint, job.record.runpod_job_ids, job.context)
            else:
                job.ticket = self.queue.occupy(guild_id, job.record.user_id, job.policy)
            await self._follow(job, submitted, refused)
        except BotError as error:  # refused by the queue or by RunPod, cancelled, failed on RunPod
            await self.end(job, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: unexpected error", job.context)
            await self.end(job, BotError("Something went wrong on our side; it has been logged. Try again."))
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
                job.presenter.waiting(position=position, running=running)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.ticket.admitted), 1.0)

    async def _submit(self, job: LiveJob) -> tuple[list[JobStatus], BotError | None]:
        """Send the request as the RunPod jobs that make it (`WorkerPreset.parts`): RunPod's answers to `/run`,
        and why the rest of a set was not sent. Each part's id is in the ledger as soon as RunPod gives it. When
        a later part fails to be sent, those sent are cancelled (they would bill for a set cut short) but still
        followed: one that finished before its cancel is paid for, and posted."""
        job.record = await self._storage.submitting(job.record)
        client, preset = self._endpoints.client(job.endpoint), job.endpoint.preset
        submitted: list[JobStatus] = []
        refused: BotError | None = None
        try:
            budget = self._runpod.fetcher.budget
            params, image = await start_picture.prepare(
                self._discord, budget, job.presenter, job.params, preset, tenant=job.record.guild_id
            )
            for part in preset.parts(params):
                status = await submit_job(client, part, preset, workflow=job.endpoint.workflow, image=image)
                submitted.append(status)
                job.status.submitted_at = job.status.submitted_at or self.options.clock()
                job.record = await self._storage.sent(job.record, [status.id for status in submitted])
        except BotError as error:
            if not submitted:
                raise
            await self.cancel_parts(job.endpoint, [status.id for status in submitted], job.context)
            refused = error
        job.record = await self._storage.queued(job.record)
        job.presenter.context = job.context
        log.info("%s: submitted as %d job(s) for request %s", job.context, len(submitted), job.record.request_id)
        return submitted, refused

    async def _follow(self, job: LiveJob, submitted: Sequence[JobStatus] = (), refused: BotError | None = None) -> None:
        """Follow every part in turn (they run side by side on RunPod), then deliver their pictures as one set.
        A part that fails costs only its own pictures; parts that finished before a cancel are still posted."""
        client = self._endpoints.client(job.endpoint)
        refresher = tasks.spawn(self._keep_status_fresh(job, client), name=f"status {job.context}")
        parts = job.record.runpod_job_ids
        results: list[JobResult] = []
        failures: list[BotError] = [refused] if refused else []  # why the set is short, first reason first
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
                    log.info("%s: part %d of %d ended: %s", job.context, index + 1, len(parts), failure)
                    failures.append(failure)
                except BotError:  # RunPod itself failed us (key, endpoint, outage): the parts not followed yet
                    await self.cancel_parts(job.endpoint, parts[index + 1 :], job.context)  # nobody would post them
                    raise
        finally:
            refresher.cancel()
        if job.cancelled_by is not None and not results:  # say who cancelled, rather than RunPod's "cancelled"
            raise JobCancelled(f"Cancelled by {job.cancelled_by}.")
        if not results:
            raise failures[0]
        await self._deliver(job, _one_set(results), failures)

    async def cancel_parts(self, endpoint: Endpoint, runpod_job_ids: Sequence[str], context: str) -> list[BotError]:
        """Cancel these RunPod jobs so they stop billing; what RunPod refused, each logged."""
        refusals = []
        for runpod_job_id in runpod_job_ids:
            try:
                await self._endpoints.client(endpoint).cancel(runpod_job_id)
            except BotError as error:
                log.warning("%s: could not cancel part %s: %s", context, runpod_job_id, error)
                refusals.append(error)
        return refusals

    async def _follow_part(
        self, job: LiveJob, client: RunPodClient, runpod_job_id: str, submitted: JobStatus | None
    ) -> JobResult:
        async for event in follow_job(
            self._runpod,
            client,
            runpod_job_id,
            timeout=max(1.0, job.deadline - monotonic()),
            poll=self.options.poll,
            submitted=submitted,
            tenant=job.record.guild_id,
        ):
            if isinstance(event, JobResult):
                return event
            was = job.record.state
            if job.record.state is not LedgerState.COMPLETED:  # resumed after its pictures arrived: only fetch
                move = self._storage.queued if event.state is JobState.IN_QUEUE else self._storage.running
                job.record = await move(job.record, delay_ms=event.delay_ms)
            if job.record.state is not was:
                log.info("%s: %s on RunPod (worker %s)", job.context, job.record.state, event.worker_id or "-")
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
        loop_time = monotonic()
        if board.health_due(loop_time, self.options.health_interval):
            board.health_read_at = loop_time
            board.health = await self._runpod.health(client)
        if board.waiting_on_runpod:
            endpoint_id = job.endpoint.endpoint_id
            board.move_up(other.status for other in self.live.values() if other.endpoint.endpoint_id == endpoint_id)
        outlook = board.outlook(self.options.clock(), self._runpod.stats(job.endpoint.endpoint_id), job.params.count)
        if not job.ending:  # its picture or its end is being shown: a late status must not cover it
            job.presenter.status(update, outlook)

    # --- the end of a job ----------------------------------------------------------------------------

    async def _deliver(self, job: LiveJob, result: JobResult, failures: Sequence[BotError] = ()) -> None:
        uploads = await job.presenter.fit(result, job.job_id)
        job.ending = True
        resumed_mid_send = job.record.state is LedgerState.PENDING  # killed before every part was sent
        if job.record.state is not LedgerState.COMPLETED:  # a resumed job's arrival is recorded already
            job.record = await self._storage.completed(
                job.record,
                pictures=min(len(result.images), job.params.count),
                delay_ms=result.delay_ms,
                execution_ms=result.execution_ms,
            )
        why = failures[0].for_members if failures else ""
        if resumed_mid_send:
            why = "The bot restarted while it was sending them to RunPod."
        seconds = monotonic() - job.started
        match await job.presenter.deliver(
            result, uploads, seconds=seconds, why_short=why, cancelled_by=job.cancelled_by
        ):
            case Delivered():
                job.record = await self._storage.delivered(job.record)
                log.info("%s: delivered %d image(s) after %.1f s", job.context, len(uploads), seconds)
                if seconds >= self.options.notify_after or job.presenter.in_channel:
                    self._leave_queue(job)  # the next job need not wait for this ping's turn in the channel
                    await job.presenter.ping(len(uploads))
            case Undelivered(reason):
                job.record = await self._storage.undeliverable(job.record)  # its usage stays counted
                log.error(
                    "%s: finished but could not be posted anywhere (%s); recorded as undeliverable", job.context, reason
                )

    async def end(self, job: LiveJob, error: BotError) -> None:
        """The job ends without pictures: record how, and tell the member. A job whose pictures arrived is never
        recorded as failed: it is undeliverable, its GPU time counted."""
        job.ending = True
        state = job.record.state
        if state in (LedgerState.DELIVERED, LedgerState.UNDELIVERABLE):
            log.error("%s: already %s, so not ended again: %s", job.context, state, error)
            return
        if state is LedgerState.COMPLETED:
            job.record = await self._storage.undeliverable(job.record)
            log.error("%s: its pictures arrived but cannot be posted: %s", job.context, error)
        elif not state.final:  # else ended before a restart, and not yet told
            ending = _ENDINGS.get(type(error), LedgerState.FAILED)
            job.record = await self._storage.ended(job.record, ending, error.explanation)
            log.info("%s: %s: %s", job.context, job.record.state, error)
        if isinstance(await job.presenter.end(error), Undelivered):
            log.error("%s: its end could be told nowhere; not trying again", job.context)
        if job.record.state in ENDINGS:
            await self._storage.told(job.record)

    def _leave_queue(self, job: LiveJob) -> None:
        if job.ticket is not None:
            self.queue.leave(job.ticket)
            job.ticket = None

    # --- shutdown ----------------------------------------------------------------------------------

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking jobs and following; tell every waiting member their job goes on. Within `grace`: a job
        still being delivered then is left to the next run, which finds it in the ledger."""
        self.accepting = False
        ending = [job.task for job in self.live.values() if job.ending and job.task]
        waiting = [job for job in self.live.values() if not job.ending]
        for job in waiting:
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(job.task for job in waiting if job.task), return_exceptions=True)
        telling = [tasks.spawn(job.presenter.restarting(), name=f"restarting {job.context}") for job in waiting]
        if ending or telling:
            _, late = await asyncio.wait([*ending, *telling], timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


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
