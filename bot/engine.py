"""The job engine: submit a job and follow it to the end, with no Discord in sight.

`follow_job` yields a `JobUpdate` whenever something a person would notice changes (state, worker,
progress) and finally a `JobResult` with the decoded pictures; every other ending raises a `JobError`
whose message says what happened. How often it polls is `bot.polling`'s business.

Everything jobs share on RunPod lives in one `RunPodContext`, built once by `python -m bot` and by
`generate` (tests build their own): the HTTP session, the API root, the rate limiters, what each
endpoint's jobs taught about their timing, and the turns for checking pictures. Finished pictures are read
and checked a few at a time (`RunPodContext.picture_turns`), each server in its turn, so a flood of finishes
queues fairly instead of filling the memory or holding every connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeGuard

import aiohttp

from bot import safejson
from bot.config import DEFAULT_RUNPOD_API_URL, Secret
from bot.errors import (
    JobCancelled,
    JobExpired,
    JobFailed,
    JobTimedOut,
    OutputError,
    RunPodAnswerRefused,
    RunPodBadResponse,
    RunPodError,
    RunPodNotFound,
    RunPodRateLimited,
    RunPodUnavailable,
    RunPodUnsupported,
)
from bot.images import DecodedImage, FairTurns, ImageFetcher
from bot.params import GenerationParams
from bot.polling import Cadence, EndpointStats, PollPolicy
from bot.presets import WorkerPreset
from bot.push import Wakeup
from bot.runpod import (
    MAX_ANSWER_BYTES,
    Health,
    JobState,
    JobStatus,
    RateLimiters,
    RetryPolicy,
    RunPodClient,
    endpoint_url,
)
from bot.text import duration

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 300


@dataclass(frozen=True)
class Progress:
    text: str  # what the worker said, e.g. "4/10" or "denoising"
    fraction: float | None = None  # 0..1 when the worker's value can be read as one


@dataclass(frozen=True)
class JobUpdate:
    job_id: str
    state: JobState
    delay_ms: int | None = None
    execution_ms: int | None = None
    worker_id: str | None = None
    progress: Progress | None = None
    unanswered: bool = False  # RunPod has not answered the last polls: the job is still followed

    @property
    def view(self) -> tuple[object, ...]:
        """What a person watching would notice; executionTime ticks on every poll and is not news."""
        return (self.state, self.worker_id, self.delay_ms, self.progress, self.unanswered)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    images: tuple[DecodedImage, ...]
    delay_ms: int | None = None
    execution_ms: int | None = None
    worker_id: str | None = None


LOCAL_MODE_NOTE = (
    "RUNPOD_BASE_URL {url} is RunPod's local test server (python handler.py --rp_serve_api): no key is sent, each "
    "job runs inside its status request, and jobs cannot be cancelled there"
)
# What RunPod's local test server answers to /status of a job it does not have (runpod's rp_fastapi `_sim_status`):
# never a worker's failure.
LOCAL_UNKNOWN_JOB = "Job ID not found"
_LARGE_ANSWER = 256 * 1024  # bytes; status answers without a picture are a few hundred
# How many requests one API key may have in flight at once, as a share of the session's pooled connections (100 by
# default, bot/__main__.py): a server whose jobs all finish together leaves the others three quarters of them.
_KEY_SHARE = 4
_KEY_REQUESTS = 25  # when the session's pool has no limit


class RunPodContext:
    """What every job of this process shares on RunPod. Clients are cheap and made per job; through this
    context they share one rate limiter per endpoint and operation, and one `EndpointStats` per endpoint.

    `picture_turns` is how many answers carrying pictures are read and checked at once: an answer is megabytes
    (up to `max_answer_bytes`, twice that while it is parsed), so when more jobs finish at once, the others wait
    for a turn, served round-robin by server (`FairTurns`), holding no connection while they wait: an answer that
    turns out large when no turn is free is left unread (its connection closed) and asked for again once its turn
    has come. Three by default, at most two of them for one server: the pictures are checked on one thread
    (`ImageFetcher.budget`), so one answer is checked while the next is read, and the third is always there for
    another server, however long one server's answers take to check.

    `key_requests` is how many requests one API key may have in flight at once (a quarter of the session's pool by
    default), so one server's flood never takes every pooled connection from the others."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        fetcher: ImageFetcher,
        *,
        api_url: str = DEFAULT_RUNPOD_API_URL,
        limiters: RateLimiters | None = None,
        picture_turns: int | None = None,
        retry: RetryPolicy | None = None,
        request_timeout: float = 20.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        local: bool = False,
        health_ttl: float = 5.0,
        key_requests: int | None = None,
    ) -> None:
        self.session = session
        self.local = local  # RunPod's local test server (`python handler.py --rp_serve_api`)
        self.fetcher = fetcher
        self.api_url = api_url
        self.limiters = limiters or RateLimiters()
        self.picture_turns = FairTurns(picture_turns or 3)
        pool = session.connector.limit if session.connector is not None else 0
        self.key_requests = key_requests or (max(1, pool // _KEY_SHARE) if pool else _KEY_REQUESTS)
        self._key_slots: dict[str, asyncio.Semaphore] = {}  # by a digest of the key, never the key
        self._retry = retry
        self._request_timeout = request_timeout
        self.max_answer_bytes = max_answer_bytes
        self._stats: dict[tuple[str, object], EndpointStats] = {}  # by endpoint and tenant
        self.health_ttl = health_ttl
        self._health: dict[tuple[str, str], tuple[float, asyncio.Future[Health | None]]] = {}  # by client identity

    def client(self, api_key: Secret, endpoint_id: str) -> RunPodClient:
        digest = hashlib.sha256(api_key.reveal().encode()).hexdigest()
        slots = self._key_slots.get(digest)
        if slots is None:
            slots = self._key_slots[digest] = asyncio.Semaphore(self.key_requests)
        return RunPodClient(
            self.session,
            api_key=api_key,
            endpoint_id=endpoint_id,
            api_url=self.api_url,
            retry=self._retry,
            request_timeout=self._request_timeout,
            limiters=self.limiters,
            max_answer_bytes=self.max_answer_bytes,
            local=self.local,
            slots=slots,
        )

    def drop_picture_work(self) -> None:
        """At shutdown: every job waiting for a picture turn, and every picture waiting for the pictures' thread, is
        cancelled at once (the ledger keeps what they were waiting for, for the next run); a picture being worked on
        ends on its own. Nothing later gets a turn."""
        turns = self.picture_turns.close()
        work = self.fetcher.budget.close()
        log.info("shutting down: %d picture turn(s) and %d picture work(s) waiting were dropped", turns, work)

    async def health(self, client: RunPodClient) -> Health | None:
        """The endpoint's `/health` as RunPod reports it, None when it fails. One answer serves every job of the
        endpoint (and key) for `health_ttl` seconds, so a hundred waiting jobs cost one request, not a hundred."""
        key, loop = client.identity, asyncio.get_running_loop()
        cached = self._health.get(key)
        if cached is None or loop.time() - cached[0] >= self.health_ttl:
            cached = (loop.time(), asyncio.ensure_future(self._read_health(client)))
            self._health[key] = cached
        return await asyncio.shield(cached[1])

    @staticmethod
    async def _read_health(client: RunPodClient) -> Health | None:
        try:
            return await client.health()
        except RunPodError as error:
            log.info("endpoint %s: /health failed: %s", client.endpoint_id, error)
            return None

    def stats(self, endpoint_id: str, tenant: object = None) -> EndpointStats:
        """What this endpoint's finished jobs of this tenant (a server) taught, kept for the life of the context.
        Learned per server: one server's 25-second jobs on a shared endpoint must not make the polling of another
        server's 1-second job wait 23 seconds before its first look."""
        key = (endpoint_url(self.api_url, endpoint_id), tenant)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = EndpointStats()
        return stats


def may_hold_pictures(size: int) -> bool:
    """Whether a /status answer of `size` bytes (-1: not said) may carry a job's pictures: those are read only with
    a picture turn in hand."""
    return not 0 <= size < _LARGE_ANSWER


class _TurnBusy(Exception):
    """A large answer arrived while every picture turn was taken: left unread (its connection let go) until one is."""


class _Turn:
    """One poll's claim on a picture turn, taken only if its answer turns out to be large. A large answer is read
    only with a turn in hand: when none is free at once it is left unread (`_TurnBusy`), so no pooled connection is
    held while waiting, and the job waits for its turn (`wait`, round-robin by tenant) and asks again."""

    def __init__(self, turns: FairTurns, tenant: object, *, wait_in_socket: bool = False) -> None:
        self._turns = turns
        self._tenant = tenant
        self._held = False
        self._wait_in_socket = wait_in_socket  # RunPod's local test server gives a result once: never ask again

    async def admit(self, size: int) -> None:
        """`RunPodClient`'s admit hook: a large answer is read only with a turn in hand."""
        if self._held or not may_hold_pictures(size):
            return
        if self._wait_in_socket:
            await self.wait()
        elif self._turns.try_acquire(self._tenant):
            self._held = True
        else:
            raise _TurnBusy

    async def wait(self) -> None:
        if not self._held:
            await self._turns.acquire(self._tenant)
            self._held = True

    def release(self) -> None:
        if self._held:
            self._turns.release(self._tenant)
            self._held = False


async def submit_job(
    client: RunPodClient,
    params: GenerationParams,
    preset: WorkerPreset,
    *,
    workflow: Any = None,
    image: bytes | None = None,
    execution_timeout_s: float | None = None,
    start_size: tuple[int, int] | None = None,
    webhook: str | None = None,
) -> JobStatus:
    """Build the worker's input and POST /run. `params` must carry a seed; `image` is the picture to start from,
    for a worker that takes it in base64 (`WorkerPreset.image_input`), and `start_size` that picture's size;
    `webhook` is where RunPod says the job ended (bot/push.py)."""
    if image is None:
        job_input = preset.build_input(params, workflow, start_size=start_size)
    else:  # base64 and a digest of megabytes: off the event loop
        job_input = await asyncio.to_thread(preset.build_input, params, workflow, image, start_size)
    policy = {"executionTimeout": int(execution_timeout_s * 1000)} if execution_timeout_s else None
    status = await client.run(job_input, policy=policy, webhook=webhook)
    log.info("job %s submitted to endpoint %s (%s)", status.id, client.endpoint_id, preset.name)
    return status


async def follow_job(
    context: RunPodContext,
    client: RunPodClient,
    job_id: str,
    *,
    timeout: float | None = None,
    poll: PollPolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    stats: EndpointStats | None = None,
    submitted: JobStatus | None = None,
    submitted_at: float | None = None,
    tenant: object = None,
    wakeup: Wakeup | None = None,
    limit: float | None = None,
) -> AsyncIterator[JobUpdate | JobResult]:
    """Poll one job until it ends. With `timeout`, a job still unfinished then is cancelled on RunPod: the
    deadline bounds the whole wait, a request in flight included. Until then an outage (5xx, 429, dropped
    connections, garbage answers) never ends the job, which may be running and billing: it is polled on with
    capped backoff, and an update with `unanswered` says so.

    `submitted` is RunPod's answer to `/run`, just received: it stands for the first poll, so the job is
    not asked at once what it has just said. `stats` defaults to what the context learned of the endpoint.
    `submitted_at` (on `clock`) matters when resuming a job submitted a while ago; by default the first poll
    is taken as its submission. `tenant` (the job's guild; None for the terminal) is whose turn reading and
    checking its pictures takes: servers are served round-robin. With `wakeup`, RunPod's webhook for this job is
    expected: it rings when the job ends, and polls are only as frequent as the live status needs
    (`PollPolicy.push_delay`), catching a lost webhook. `limit` is the server's time limit the `timeout` is what
    is left of (the whole job's, from its request): a job that runs out of it says so by name."""
    poll = poll or PollPolicy()
    cadence = Cadence(poll, context.stats(client.endpoint_id, tenant) if stats is None else stats, submitted_at)
    deadline = clock() + timeout if timeout is not None else None
    last: JobUpdate | None = None
    unchanged = failures = 0
    since_wake: int | None = None  # polls since a webhook rang, while RunPod does not show the job ended yet
    in_hand = submitted
    while True:
        if in_hand is not None:
            status, sent, in_hand = in_hand, clock(), None
        else:
            turn = _Turn(context.picture_turns, tenant, wait_in_socket=client.local)
            try:
                sent = clock()
                try:
                    async with asyncio.timeout(None if deadline is None else max(0.0, deadline - clock())):
                        try:
                            status = await client.status(job_id, admit=turn.admit)
                        except _TurnBusy:  # its pictures are in: wait for a turn with no connection held, then read
                            await turn.wait()
                            sent = clock()
                            status = await client.status(job_id, admit=turn.admit)
                    failures = 0
                except RunPodNotFound:  # docs/runpod-api.md, Retention
                    raise JobExpired(
                        "RunPod no longer has this job (404): results are kept for 30 minutes after they finish.",
                        job_id,
                    ) from None
                except RunPodAnswerRefused as refused:  # the same answer again on every poll: the job ends here
                    await _stop_billing(client, job_id, refused)
                    raise OutputError(f"RunPod's answer for this job {refused.reason}.", job_id) from None
                except TimeoutError:  # the deadline passed during the request
                    await _give_up(client, job_id, timeout or 0, limit)
                except (RunPodUnavailable, RunPodRateLimited, RunPodBadResponse) as error:
                    failures += 1
                    log.warning(
                        "job %s: status poll failed %d time(s) in a row (%s); still trying", job_id, failures, error
                    )
                    status = None
                result = None
                if status is not None and status.state.is_terminal:
                    cadence.finished(status)
                    result = await _finish(status, context.fetcher, tenant=tenant, local=client.local)
            finally:
                turn.release()
            if result is not None:
                yield result
                return

        update: JobUpdate | None = last
        if status is not None:
            cadence.observe(status, sent, clock())
            update = _update(status)
        elif failures >= poll.outage_after:
            update = dataclasses.replace(last or JobUpdate(job_id, JobState.IN_QUEUE), unanswered=True)
        if update is not None and (last is None or update.view != last.view):
            last, unchanged = update, 0
            yield update
        else:
            unchanged += 1

        if failures:
            delay = poll.outage_delay(failures)
        else:
            delay = cadence.delay(clock(), last.state if last else JobState.IN_QUEUE, unchanged)
            if wakeup is not None:
                delay = poll.push_delay(delay, since_wake=since_wake, progress=cadence.progress)
        if deadline is not None:
            remaining = deadline - clock()
            if remaining <= 0:
                await _give_up(client, job_id, timeout or 0, limit)
            delay = min(delay, remaining)
        shown = "not answering" if failures else (last.state if last else "submitted")
        log.debug("job %s: %s; next poll in %.2f s", job_id, shown, delay)
        if wakeup is None:
            await sleep(delay)
        elif await wakeup.sleep(delay):
            since_wake = 0
        elif since_wake is not None:
            since_wake += 1


def _update(status: JobStatus) -> JobUpdate:
    progress = parse_progress(status.output) if status.has_output else None
    return JobUpdate(status.id, status.state, status.delay_ms, status.execution_ms, status.worker_id, progress)


async def _finish(status: JobStatus, fetcher: ImageFetcher, *, tenant: object = None, local: bool = False) -> JobResult:
    job_id = status.id
    timings = [
        f"{what} {ms} ms" for what, ms in (("queue", status.delay_ms), ("run", status.execution_ms)) if ms is not None
    ]
    log.info("job %s ended %s%s", job_id, status.state, f" ({', '.join(timings)})" if timings else "")
    if local and status.state is JobState.FAILED and status.error == LOCAL_UNKNOWN_JOB:
        raise JobExpired(
            "RunPod's local test server no longer has this job: it forgets each job once a status request has run "
            "it, so a job cannot be resumed there.",
            job_id,
        )
    if status.state is JobState.FAILED:
        raise JobFailed(describe_worker_error(status.error, status.output), job_id)
    if status.state is JobState.CANCELLED:
        raise JobCancelled("The job was cancelled on RunPod.", job_id)
    if status.state is JobState.TIMED_OUT:
        raise JobTimedOut(
            "RunPod timed the job out: no worker picked it up in time, or it ran past the endpoint's execution "
            "timeout. Try again; if it keeps happening, ask a server admin to raise the endpoint's execution timeout "
            "on RunPod.",
            job_id,
        )
    try:
        # Finding the pictures base64-decodes megabytes: off the event loop, like the decoding itself.
        sources = await fetcher.find(status.output if status.has_output else None, tenant=tenant)
        images = await fetcher.decode_all(sources, tenant=tenant)
    except OutputError as error:
        error.job_id = job_id
        raise
    return JobResult(job_id, tuple(images), status.delay_ms, status.execution_ms, status.worker_id)


async def _stop_billing(client: RunPodClient, job_id: str, refused: RunPodAnswerRefused) -> None:
    """An answer that cannot be read may be a job still running: cancel it, as far as RunPod lets us."""
    log.warning("job %s: %s", job_id, refused)
    try:
        await client.cancel(job_id)
    except RunPodError as error:
        log.info("job %s: cancel after a refused answer failed: %s", job_id, error)


CANCEL_PATIENCE = 3.0  # seconds a cancel at the deadline may take: the deadline is the member's, not RunPod's


async def _give_up(client: RunPodClient, job_id: str, timeout: float, limit: float | None) -> NoReturn:
    """Our deadline passed: cancel on RunPod so the job stops billing, then say so."""
    try:
        await asyncio.wait_for(client.cancel(job_id), CANCEL_PATIENCE)
        outcome = "it was cancelled on RunPod so it stops costing GPU time"
    except RunPodUnsupported:
        outcome = "RunPod's local test server cannot cancel it, so it may still run"
    except (RunPodError, TimeoutError) as error:
        log.warning("job %s: cancel after timeout failed: %s", job_id, error)
        outcome = "cancelling it on RunPod failed, so it may still run"
    waited = f"{duration(limit)}, this server's time limit" if limit is not None else f"{timeout:g} s"
    raise JobTimedOut(f"No result after {waited}; {outcome}.", job_id)


_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def parse_progress(value: Any) -> Progress | None:
    """Read a worker's `progress_update` value: "4/10", "40%", 0.4, {"progress": ...}, {"step", "total"}
    (docs/runpod-api.md, Progress updates)."""
    if value is None:
        return None
    if isinstance(value, dict):
        step, total = value.get("step"), value.get("total") or value.get("steps")
        if _is_number(step) and _is_number(total) and total > 0:
            return Progress(f"{step}/{total}", _clamp(step / total))
        for key in ("progress", "percent", "status", "message"):
            if key in value:
                inner = parse_progress(value[key])
                if inner is not None and key == "percent" and _is_number(value[key]):
                    return Progress(f"{value[key]:g}%", _clamp(value[key] / 100))
                return inner
        return None
    if _is_number(value):
        fraction = value if value <= 1 else value / 100
        return Progress(f"{round(_clamp(fraction) * 100)}%", _clamp(fraction))
    if isinstance(value, str) and value.strip():
        text = value.strip()[:100]
        if match := _FRACTION.match(text):
            done, total = float(match.group(1)), float(match.group(2))
            return Progress(text, _clamp(done / total) if total else None)
        if match := _PERCENT.search(text):
            return Progress(text, _clamp(float(match.group(1)) / 100))
        return Progress(text)
    return None


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _clamp(fraction: float) -> float:
    return max(0.0, min(1.0, fraction))


def describe_worker_error(error: Any, output: Any = None) -> str:
    """The worker's own words, never a traceback: runpod-python sends a JSON string with `error_message`
    (docs/runpod-api.md, Worker error strings)."""
    message: Any = error
    if isinstance(error, str):
        try:
            decoded = safejson.loads(error)
        except ValueError:  # not JSON, or refused: too deep or too large to be an error report
            decoded = None
        if isinstance(decoded, dict):
            message = decoded.get("error_message") or decoded.get("error") or decoded.get("message")
    elif isinstance(error, dict):
        message = error.get("error_message") or error.get("message") or error.get("error")
    elif isinstance(error, list):
        message = "; ".join(str(item) for item in error)
    if isinstance(output, dict) and isinstance(output.get("details"), list) and output["details"]:
        message = f"{message}: {'; '.join(str(item) for item in output['details'][:3])}"
    text = str(message).strip() if message else ""
    if "Traceback (most recent call last)" in text:
        text = text.strip().splitlines()[-1]
    if not text:
        return "The worker failed without saying why."
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 1] + "…"
    return f"The worker failed: {text}" + ("" if text.endswith((".", "!", "?", "…")) else ".")
