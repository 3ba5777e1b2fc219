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
from bot.buttons import ResultMoves
from bot.clock import monotonic, wall_clock
from bot.config import Settings
from bot.crypto import Vault
from bot.endpoints import Endpoint, Endpoints
from bot.engine import JobResult, JobUpdate, RunPodContext, follow_job, may_hold_pictures, submit_job
from bot.errors import BotError, JobCancelled, JobError, JobExpired, JobTimedOut, StartPictureUnread
from bot.lifecycle import ENDINGS, LedgerState
from bot.metrics import Metrics
from bot.params import GenerationParams
from bot.policy import FairQueue, GuildPolicy, Ticket
from bot.polling import PollPolicy
from bot.presenter import PING_PACE, Delivered, JobPresenter, Stage, Undelivered
from bot.push import Call, Wakeups, WebhookAddresses
from bot.ratelimit import RateLimit
from bot.runpod import JobState, JobStatus, RunPodClient
from bot.status import LinePlace, StatusBoard
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
    tickets: list[Ticket] = field(default_factory=list)  # its parts' places in the fair queue, until they end
    parts: Parts = field(default_factory=lambda: Parts(1))  # what is sent of it, and what is followed

    @property
    def deadline(self) -> float:
        """The guild's maximum wall time, from the request, on the monotonic clock: a clock step moves nothing."""
        return self.started + self.policy.max_wall_seconds

    @property
    def job_id(self) -> str:
        return self.record.runpod_job_id or f"request-{self.record.request_id}"

    @property
    def context(self) -> str:
        guild = f" guild {self.record.guild_id}" if self.record.guild_id is not None else ""
        return f"job {self.job_id}{guild} endpoint {self.endpoint.endpoint_id}"


@dataclass
class Parts:
    """A request's RunPod jobs (its parts): how many it needs, and how far sending and following them got."""

    planned: int
    ended: int = 0  # followed to their end, in order
    answers: dict[str, JobStatus] = field(default_factory=dict)  # RunPod's answer to each part's /run, until read
    stopped: BotError | None = None  # why the parts not sent never will be
    sent: int = 0
    params: GenerationParams | None = None  # as sent: with the start picture's address, once it is prepared
    image: bytes | None = None  # the start picture, for a worker that takes it as base64
    start_size: tuple[int, int] | None = None  # the start picture's size as sent; not known after a restart

    @property
    def unsent(self) -> int:
        return self.planned - self.sent

    @property
    def on_runpod(self) -> int:
        """Sent and not yet followed to their end: each holds a slot of the server's limits."""
        return self.sent - self.ended

    @classmethod
    def resumed(cls, record: JobRecord, planned: int) -> Parts:
        sent = len(record.runpod_job_ids)
        restarted = BotError("The bot restarted while it was sending them to RunPod.") if sent < planned else None
        return cls(planned=max(planned, sent), sent=sent, stopped=restarted)


class PartSender:
    """Sends a request's parts to RunPod as the server's fair queue admits them, so a set's parts count against
    the limits like jobs do; each id is in the ledger as soon as RunPod gives it."""

    def __init__(
        self,
        client: discord.Client,
        runpod: RunPodContext,
        endpoints: Endpoints,
        storage: Storage,
        clock: Callable[[], datetime],
        webhooks: WebhookAddresses | None = None,
    ) -> None:
        self._discord = client
        self._runpod = runpod
        self._endpoints = endpoints
        self._storage = storage
        self._clock = clock
        self._webhooks = webhooks

    async def send_admitted(self, job: LiveJob, admitted: int) -> None:
        """Send, in order, the parts whose turn has come (`admitted` slots, one held by each part on RunPod).
        When RunPod refuses a later part, those sent are cancelled (they would bill for a set cut short) but still
        followed: one that finished before its cancel is paid for, and posted."""
        parts, preset = job.parts, job.endpoint.preset
        while parts.unsent and parts.stopped is None and job.cancelled_by is None and admitted > parts.on_runpod:
            try:
                if parts.params is None:
                    job.record = await self._storage.submitting(job.record)
                    budget = self._runpod.fetcher.budget
                    parts.params, parts.image, parts.start_size = await start_picture.prepare(
                        self._discord, budget, job.presenter, job.params, preset, tenant=job.record.guild_id
                    )
                part = preset.parts(parts.params)[parts.sent]
                client = self._endpoints.client(job.endpoint)
                webhook = self._webhooks.url(job.record.request_id, parts.sent) if self._webhooks else None
                status = await submit_job(
                    client,
                    part,
                    preset,
                    workflow=job.endpoint.workflow,
                    image=parts.image,
                    start_size=parts.start_size,
                    webhook=webhook,
                )
            except BotError as error:
                if not parts.sent:
                    raise
                await self.cancel_parts(job.endpoint, job.record.runpod_job_ids, job.context)
                parts.stopped = error
                return
            parts.sent += 1
            parts.answers[status.id] = status
            job.status.submitted_at = job.status.submitted_at or self._clock()
            job.record = await self._storage.sent(job.record, [*job.record.runpod_job_ids, status.id])
            if job.record.state is LedgerState.PENDING:
                job.record = await self._storage.queued(job.record)
                job.presenter.context = job.context
            if job.cancelled_by is not None:  # cancelled while RunPod was taking it: its id was not known yet
                await self.cancel_parts(job.endpoint, [status.id], job.context)
            log.info(
                "%s: part %d of %d sent for request %s", job.context, parts.sent, parts.planned, job.record.request_id
            )

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
        webhooks: WebhookAddresses | None = None,
        metrics: Metrics | None = None,
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
        self.sender = PartSender(client, runpod, endpoints, storage, options.clock, webhooks)
        self.webhooks = webhooks  # None: no PUBLIC_URL, so RunPod's webhooks never come and polls alone follow
        self.wakeups = Wakeups()
        self.metrics = metrics or Metrics()
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

    async def wake(self, call: Call) -> bool:
        """A webhook for this part arrived: its follower looks at RunPod at once. False when the request is unknown
        or ended (the webhook changes nothing); a request the ledger has unfinished but another process follows (its
        shard's) is woken there (`Storage.notify_wakeup`)."""
        if self.wakeups.ring(call):
            return True
        record = await self._storage.job(call.request_id)
        if record is None or record.state.final:
            return False
        await self._storage.notify_wakeup(call.request_id, call.part)
        return True

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
        refusals = await self.sender.cancel_parts(job.endpoint, job.record.runpod_job_ids, job.context)
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
            moves=ResultMoves(vary=endpoint.takes_images, outpaint=endpoint.paints_outside),
            spoiler_outside_nsfw=policy.spoiler_outside_nsfw,
            filesize_limit=filesize_limit,
            on_channel_message=remember_channel_message,
        )
        asked_at = record.created_at or self.options.clock()
        age = max(0.0, (self.options.clock() - asked_at).total_seconds())
        board = StatusBoard(asked_at, painting_since=record.painting_at)  # as the ledger knew it before a restart
        job = LiveJob(record, params, endpoint, presenter, policy, monotonic() - age, board)
        presenter.context = job.context
        return job

    def follow(self, job: LiveJob) -> None:
        if not self.accepting:  # shutting down: the next run finds the job in the ledger and takes it up
            return
        self.live[job.record.request_id] = job
        self.wakeups.open(job.record.request_id)
        job.task = tasks.spawn(self._run(job), name=job.context)

    # --- running -----------------------------------------------------------------------------------

    async def _run(self, job: LiveJob) -> None:
        """Wait for the job's turn if it has not been submitted yet, then send and follow its parts to the end."""
        guild_id = job.record.guild_id or 0
        try:
            if job.record.state is LedgerState.WAITING:
                planned = len(job.endpoint.preset.parts(job.params.with_seed()))
                job.tickets = self.queue.join_set(guild_id, job.record.user_id, job.policy, parts=planned)
                job.parts = Parts(planned)
                log.info("%s: waiting for a turn%s", job.context, _place(self.queue, job))
                await self._wait_for_turn(job, job.tickets[0])
            else:  # followed on after a restart: what is on RunPod takes its slots whatever the limits say
                job.tickets = [
                    self.queue.occupy(guild_id, job.record.user_id, job.policy) for _ in job.record.runpod_job_ids
                ]
                job.parts = Parts.resumed(job.record, len(job.endpoint.preset.parts(job.params.with_seed())))
            await self._follow(job)
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
            self.wakeups.close(job.record.request_id)

    async def _wait_for_turn(self, job: LiveJob, ticket: Ticket) -> None:
        """Until this part's turn comes in the server's fair queue, show the member their place."""
        shown = None
        while True:
            if job.cancelled_by is not None:  # checked last thing before a submit, too
                raise JobCancelled(f"Cancelled by {job.cancelled_by} before it started.")
            if ticket.admitted.done():
                return
            position = self.queue.position(ticket)
            if position is not None and position != shown:
                place = LinePlace.of(position, self.queue.running(ticket.guild_id, ticket.member_id), job.policy, shown)
                shown = position
                pictures = (job.status.pictures_ready or 0, job.params.count) if job.parts.sent else None
                job.presenter.waiting(place, pictures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ticket.admitted), 1.0)

    async def _follow(self, job: LiveJob) -> None:
        """Send each part when its turn comes and follow them in order (those sent run side by side on RunPod),
        then deliver their pictures as one set. A part that fails costs only its own pictures; parts that
        finished before a cancel are still posted."""
        client = self._endpoints.client(job.endpoint)
        refresher = tasks.spawn(self._keep_status_fresh(job, client), name=f"status {job.context}")
        parts, results, failures = job.parts, list[JobResult](), list[BotError]()
        try:
            while True:
                await self.sender.send_admitted(job, self._admitted(job))
                ids = job.record.runpod_job_ids
                if parts.ended < len(ids):
                    runpod_job_id = ids[parts.ended]
                    ready = sum(len(r.images) for r in results) if parts.planned > 1 else None
                    job.status.following(parts.planned, parts.ended, sent=len(ids), ready=ready)
                    try:
                        results.append(
                            await self._follow_part(job, client, runpod_job_id, parts.answers.pop(runpod_job_id, None))
                        )
                    except JobError as failure:
                        log.info("%s: part %d of %d ended: %s", job.context, parts.ended + 1, len(ids), failure)
                        failures.append(failure)
                    except BotError:  # RunPod itself failed us (key, endpoint, outage): the parts not followed yet
                        await self.sender.cancel_parts(job.endpoint, ids[parts.ended + 1 :], job.context)
                        raise
                    parts.ended += 1
                    self._release_one(job)  # the next part, or another member's job, may go
                elif parts.unsent and parts.stopped is None and job.cancelled_by is None:
                    waiting = next(ticket for ticket in job.tickets if not ticket.admitted.done())
                    with contextlib.suppress(JobCancelled):  # a cancel now ends the set with what arrived
                        await self._wait_for_turn(job, waiting)
                else:
                    break
        finally:
            refresher.cancel()
        if job.cancelled_by is not None and not results:  # say who cancelled, rather than RunPod's "cancelled"
            raise JobCancelled(f"Cancelled by {job.cancelled_by}.")
        if not results:
            raise (parts.stopped or failures[0])
        await self._deliver(job, _one_set(results), [parts.stopped, *failures] if parts.stopped else failures)

    def _admitted(self, job: LiveJob) -> int:
        return sum(1 for ticket in job.tickets if ticket.admitted.done() and not ticket.admitted.cancelled())

    def _release_one(self, job: LiveJob) -> None:
        ticket = next((t for t in job.tickets if t.admitted.done() and not t.admitted.cancelled()), None)
        if ticket is not None:
            job.tickets.remove(ticket)
            self.queue.leave(ticket)

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
            # RunPod's local test server runs a job inside its /status and sends the webhook after: poll it.
            wakeup=self.wakeups.line(job.record.request_id, job.parts.ended)
            if self.webhooks and not client.local
            else None,
            limit=job.policy.max_wall_seconds,
        ):
            if isinstance(event, JobResult):
                return _painted_from_start(job, event)
            was = job.record.state
            job.status.saw(event, self.options.clock())
            if job.record.state is not LedgerState.COMPLETED:  # resumed after its pictures arrived: only fetch
                job.record = await _recorded(self._storage, job.record, event, job.status.painting_since)
            if job.record.state is not was:
                log.info("%s: %s on RunPod%s", job.context, job.record.state, _known(" (worker {})", event.worker_id))
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
            board.own_painting = await own_parts_painting(job, client)
        if board.waiting_on_runpod:
            endpoint_id = job.endpoint.endpoint_id
            board.move_up(other.status for other in self.live.values() if other.endpoint.endpoint_id == endpoint_id)
        stats = self._runpod.stats(job.endpoint.endpoint_id, job.record.guild_id)
        outlook = board.outlook(self.options.clock(), stats, job.params.count)
        if not job.ending:  # its picture or its end is being shown: a late status must not cover it
            job.presenter.status(update, outlook)

    # --- the end of a job ----------------------------------------------------------------------------

    async def _deliver(self, job: LiveJob, result: JobResult, failures: Sequence[BotError] = ()) -> None:
        arrived = monotonic()
        uploads = await job.presenter.fit(result, job.job_id)
        job.ending = True
        if job.record.state is not LedgerState.COMPLETED:  # a resumed job's arrival is recorded already
            job.record = await self._storage.completed(
                job.record,
                pictures=min(len(result.images), job.params.count),
                delay_ms=result.delay_ms,
                execution_ms=result.execution_ms,
            )
        why = failures[0].for_members if failures else ""
        seconds = monotonic() - job.started
        match await job.presenter.deliver(
            result, uploads, seconds=seconds, why_short=why, cancelled_by=job.cancelled_by
        ):
            case Delivered():
                self.metrics.delivery_lag.observe(monotonic() - arrived)
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
            ending = ENDED_BY.get(type(error), LedgerState.FAILED)
            job.record = await self._storage.ended(job.record, ending, error.explanation)
            log.info("%s: %s: %s", job.context, job.record.state, error)
        if isinstance(await job.presenter.end(error), Undelivered):
            log.error("%s: its end could be told nowhere; not trying again", job.context)
        if job.record.state in ENDINGS:
            await self._storage.told(job.record)

    def _leave_queue(self, job: LiveJob) -> None:
        for ticket in job.tickets:
            self.queue.leave(ticket)
        job.tickets = []

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
ENDED_BY: dict[type[BotError], LedgerState] = {
    JobCancelled: LedgerState.CANCELLED,
    JobTimedOut: LedgerState.TIMED_OUT,
    JobExpired: LedgerState.EXPIRED,
}


def _known(text: str, value: object) -> str:
    """`text` with `value` in it, or nothing where the value is not known: a log line prints no `None` or `-`."""
    return "" if value is None or value == "" else text.format(value)


def _place(queue: FairQueue, job: LiveJob) -> str:
    return _known(", place {}", queue.position(job.tickets[0]))


def _painted_from_start(job: LiveJob, result: JobResult) -> JobResult:
    """The result, unless its worker painted from the text alone where it was to start from a picture (it could
    not fetch it and said nothing): those pictures would be posted as the member's variation or upscale."""
    start = job.parts.start_size
    if start is None:
        return result
    preset = job.endpoint.preset
    for image in result.images:
        if not preset.painted_from_start(start, (image.width, image.height)):
            raise StartPictureUnread(
                f"The worker painted a {image.width}×{image.height} picture from the text alone, not from the "
                f"{start[0]}×{start[1]} picture to start from: it could not fetch that picture.",
                result.job_id,
            )
    return result


async def own_parts_painting(job: LiveJob, client: RunPodClient) -> int | None:
    """How many of the job's own parts behind the one followed now are painting, so the status does not count
    their workers as busy with others' jobs; None when unknown (RunPod's local server reads a result once)."""
    behind = [id_ for id_ in job.record.runpod_job_ids[job.parts.ended + 1 :] if id_ not in job.status.parts_done]
    if not behind or client.local:
        return None
    painting = 0
    for runpod_job_id in behind:
        try:
            status = await client.status(runpod_job_id, admit=_no_pictures)
        except _PicturesIn:  # it has ended: its pictures are read once, with a turn, when it is followed
            job.status.parts_done.add(runpod_job_id)
            continue
        except BotError:
            return None
        if status.state.is_terminal:
            job.status.parts_done.add(runpod_job_id)
        painting += status.state is JobState.IN_PROGRESS
    return painting


class _PicturesIn(Exception):
    """A part's answer large enough to hold its pictures: left unread (its connection let go)."""


async def _no_pictures(size: int) -> None:
    """`RunPodClient.status`'s admit hook for a look at a part's state only: no answer with pictures is read."""
    if may_hold_pictures(size):
        raise _PicturesIn


async def _recorded(storage: Storage, record: JobRecord, event: JobUpdate, since: datetime | None) -> JobRecord:
    """RunPod's news in the ledger: waiting, or painting `since` then (kept, so a status drawn after a restart says
    the same)."""
    if event.state is JobState.IN_QUEUE:
        return await storage.queued(record, delay_ms=event.delay_ms)
    return await storage.running(record, delay_ms=event.delay_ms, painting_at=since)


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
