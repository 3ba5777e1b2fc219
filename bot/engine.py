"""The job engine: submit a job and follow it to the end, with no Discord in sight.

`follow_job` yields a `JobUpdate` whenever something a person would notice changes (state, worker,
progress) and finally a `JobResult` with the decoded pictures; every other ending raises a `JobError`
whose message says what happened.

Polling adapts to the endpoint. `EndpointStats` (one per endpoint, shared by all its jobs) learns from
finished jobs how long they ran. A job's start is known precisely from `delayTime` (submission + queue
time), so the engine does not poll while the job cannot be done yet, polls every `near` seconds while it
may be, and every `dense` seconds once it is among the last to finish. Until an endpoint has taught
anything, `PollPolicy.delay`'s plain backoff is used. Finished pictures are read and checked a few at a
time per process (`_picture_turns`), so a flood of finishes queues fairly instead of filling the memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import statistics
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeGuard

from bot.errors import (
    JobCancelled,
    JobExpired,
    JobFailed,
    JobTimedOut,
    OutputError,
    RunPodBadResponse,
    RunPodError,
    RunPodNotFound,
    RunPodRateLimited,
    RunPodUnavailable,
)
from bot.images import DecodedImage, ImageFetcher, find_images
from bot.params import GenerationParams
from bot.presets import WorkerPreset
from bot.runpod import JobState, JobStatus, RunPodClient

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

    @property
    def view(self) -> tuple[object, ...]:
        """What a person watching would notice; executionTime ticks on every poll and is not news."""
        return (self.state, self.worker_id, self.delay_ms, self.progress)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    images: tuple[DecodedImage, ...]
    delay_ms: int | None = None
    execution_ms: int | None = None
    worker_id: str | None = None


@dataclass(frozen=True)
class PollPolicy:
    """How often to poll.

    Before the endpoint's run times are known: quickly after a change, then back off while nothing moves
    (`queued`, `running`: first and longest interval; a running job is polled about once a second, as the
    official client does). Once they are known: not at all while the job cannot be finished yet, every
    `near` s while it may be, and every `dense` s once it has run longer than all but the last
    `dense_share` of past runs (both intervals capped by `running[1]`, so fast test policies stay fast).
    No wait is ever longer than `longest`."""

    queued: tuple[float, float] = (1.0, 4.0)  # first and longest interval while IN_QUEUE
    running: tuple[float, float] = (0.5, 1.0)
    growth: float = 1.5
    max_failures: int = 6  # consecutive failed polls (each already retried by the client) before giving up
    # Only jobs still running pay for dense polls, and late finishes are the likeliest among those still
    # running: dense for the last finishes only (tuned with benchmarks/cadence.py, confirmed by
    # benchmarks/polling.py: see RESULTS.md).
    near: float = 0.85
    dense: float = 0.2
    dense_share: float = 0.4
    progress_every: float = 2.0  # a worker that reports progress gets its bar moved at least this often
    sparse_factor: float = 4.0  # learned waits are at most this many times the plain backoff's longest

    def delay(self, state: JobState, unchanged_polls: int) -> float:
        first, longest = self.queued if state is JobState.IN_QUEUE else self.running
        # The exponent is capped: a job unchanged for hours must not overflow the float.
        return min(longest, first * self.growth ** min(unchanged_polls, 64))

    @property
    def near_interval(self) -> float:
        return min(self.near, self.running[1])

    @property
    def dense_interval(self) -> float:
        return min(self.dense, self.near_interval)

    @property
    def longest(self) -> float:
        return self.sparse_factor * max(self.queued[1], self.running[1])


@dataclass(frozen=True)
class RunBand:
    """When a job of this endpoint finishes, in seconds after it starts running."""

    low: float  # none has finished sooner (less a margin)
    dense_from: float  # the last `PollPolicy.dense_share` of runs ended after this
    high: float  # none has run longer (plus a margin)


def _quantile(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * min(1.0, max(0.0, q))
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


class EndpointStats:
    """Queue and run times of one endpoint's recently completed jobs. Shared by all its jobs; no Discord."""

    def __init__(self, size: int = 64) -> None:
        self._runs: deque[float] = deque(maxlen=size)
        self._waits: deque[float] = deque(maxlen=size)
        self._bands: dict[float, RunBand] = {}

    def record(self, *, run_s: float | None = None, wait_s: float | None = None) -> None:
        if run_s is not None and run_s >= 0:
            self._runs.append(run_s)
            self._bands.clear()
        if wait_s is not None and wait_s >= 0:
            self._waits.append(wait_s)

    def record_status(self, status: JobStatus) -> None:
        """Learn from a COMPLETED job (failures end early and would teach the wrong run time)."""
        if status.state is JobState.COMPLETED:
            self.record(
                run_s=status.execution_ms / 1000 if status.execution_ms is not None else None,
                wait_s=status.delay_ms / 1000 if status.delay_ms is not None else None,
            )

    @property
    def runs(self) -> int:
        return len(self._runs)

    @property
    def typical_run(self) -> float | None:
        return _median(self._runs)

    @property
    def typical_wait(self) -> float | None:
        return _median(self._waits)

    def band(self, policy: PollPolicy | None = None) -> RunBand | None:
        """None until a run was seen. The margins shrink as runs accumulate: one run says little about the
        next, least of all how much quicker it may be (the first few may all have been slow ones)."""
        if not self._runs:
            return None
        share = (policy or PollPolicy()).dense_share
        band = self._bands.get(share)
        if band is None:
            runs = sorted(self._runs)
            quicker, slower = min(0.9, 0.05 + 1 / len(runs)), 0.05 + 0.3 / len(runs)
            band = RunBand(runs[0] * (1 - quicker), _quantile(runs, 1 - share), runs[-1] * (1 + slower))
            self._bands[share] = band
        return band


_STATS: dict[str, EndpointStats] = {}


def endpoint_stats(client: RunPodClient) -> EndpointStats:
    """The stats every job of this client's endpoint shares (kept for the life of the process)."""
    return endpoint_stats_at(client.endpoint_url)


def endpoint_stats_at(endpoint_url: str) -> EndpointStats:
    stats = _STATS.get(endpoint_url)
    if stats is None:
        stats = _STATS[endpoint_url] = EndpointStats()
    return stats


def _median(values: deque[float]) -> float | None:
    return statistics.median(values) if values else None


class Cadence:
    """One job's polling schedule: where its run started, and so how soon it can finish."""

    def __init__(self, policy: PollPolicy, stats: EndpointStats, submitted_at: float | None) -> None:
        self.policy = policy
        self.stats = stats
        self.submitted_at = submitted_at
        self.queued_at: float | None = None  # when a poll last found it queued
        self.started_at: float | None = None  # estimated start of its run
        self.progress = False

    def observe(self, status: JobStatus, sent: float, received: float) -> None:
        if self.submitted_at is None:
            # Followed as soon as it is submitted (how the bot and the CLI do it); resuming callers pass it.
            self.submitted_at = sent
        if status.state is JobState.IN_QUEUE:
            self.queued_at = sent
            return
        self.progress = status.has_output
        if status.execution_ms is not None:
            # Progress answers carry executionTime: the start, exactly (`sent` errs early, the safe side).
            self.started_at = sent - status.execution_ms / 1000
        elif self.started_at is None and status.delay_ms is not None:
            start = min(self.submitted_at + status.delay_ms / 1000, received)
            self.started_at = max(start, self.queued_at) if self.queued_at is not None else start

    def delay(self, now: float, state: JobState, unchanged: int) -> float:
        policy = self.policy
        fallback = policy.delay(state, unchanged)
        near, dense = policy.near_interval, policy.dense_interval
        band = self.stats.band(policy)
        if band is None:
            return fallback
        if state is JobState.IN_QUEUE:
            # It may start any moment: polled as one that started just now, but not faster than the plain
            # backoff would (an endpoint with sub-second runs must not be hammered while it queues).
            elapsed = 0.0
        elif self.started_at is None:
            return fallback
        else:
            elapsed = now - self.started_at
        if elapsed >= band.high:  # longer than any run seen: back off gently, then in proportion to the overrun
            overrun = elapsed - band.high
            wait = max(min(near, dense + overrun / 2), overrun / 4)
        else:
            # Nothing can end before `low`; a finish after it is caught within `near`, or within `dense`
            # once among the last runs (no wait is shorter: a dense stretch a hair away has as good as begun).
            soonest = max(elapsed, band.low)
            wait = max(dense, min(soonest + near, max(soonest, band.dense_from)) - elapsed)
        if state is JobState.IN_QUEUE:
            wait = max(wait, min(fallback, near))
        elif self.progress:
            wait = min(wait, policy.progress_every)
        return max(0.0, min(wait, policy.longest))


_LARGE_ANSWER = 256 * 1024  # bytes; status answers without a picture are a few hundred
_PICTURE_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _picture_turns() -> asyncio.Semaphore:
    """How many answers carrying pictures this process reads and checks at once (one per CPU, at least two).

    An answer is megabytes; when more jobs finish at once than the CPUs can take, the others wait for a turn,
    first come first served, with their answers still unread in their sockets rather than in memory."""
    loop = asyncio.get_running_loop()
    turns = _PICTURE_TURNS.get(loop)
    if turns is None:
        turns = _PICTURE_TURNS[loop] = asyncio.Semaphore(max(2, os.cpu_count() or 1))
    return turns


class _Turn:
    """One poll's claim on a picture turn, taken only if its answer turns out to be large."""

    def __init__(self, turns: asyncio.Semaphore) -> None:
        self._turns = turns
        self._held = False

    async def admit(self, size: int) -> None:
        """`RunPodClient`'s admit hook: a large answer stays unread until it may be checked."""
        if not self._held and not 0 <= size < _LARGE_ANSWER:
            await self._turns.acquire()
            self._held = True

    def release(self) -> None:
        if self._held:
            self._turns.release()
            self._held = False


async def submit_job(
    client: RunPodClient,
    params: GenerationParams,
    preset: WorkerPreset,
    *,
    workflow: Any = None,
    execution_timeout_s: float | None = None,
) -> JobStatus:
    """Build the worker's input and POST /run. `params` must carry a seed."""
    job_input = preset.build_input(params, workflow)
    policy = {"executionTimeout": int(execution_timeout_s * 1000)} if execution_timeout_s else None
    status = await client.run(job_input, policy=policy)
    log.info("job %s submitted to endpoint %s (%s)", status.id, client.endpoint_id, preset.name)
    return status


async def follow_job(
    client: RunPodClient,
    job_id: str,
    fetcher: ImageFetcher,
    *,
    timeout: float | None = None,
    poll: PollPolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    stats: EndpointStats | None = None,
    submitted: JobStatus | None = None,
    submitted_at: float | None = None,
) -> AsyncIterator[JobUpdate | JobResult]:
    """Poll one job until it ends. With `timeout`, a job still unfinished then is cancelled on RunPod.

    `submitted` is RunPod's answer to `/run`, just received: it stands for the first poll, so the job is
    not asked at once what it has just said. `stats` defaults to the endpoint's shared `endpoint_stats`.
    `submitted_at` (on `clock`) matters when resuming a job submitted a while ago; by default the first poll
    is taken as its submission."""
    poll = poll or PollPolicy()
    cadence = Cadence(poll, endpoint_stats(client) if stats is None else stats, submitted_at)
    deadline = clock() + timeout if timeout is not None else None
    turns = _picture_turns()
    last: JobUpdate | None = None
    unchanged = failures = 0
    in_hand = submitted
    while True:
        if in_hand is not None:
            status, sent, in_hand = in_hand, clock(), None
        else:
            turn = _Turn(turns)
            try:
                sent = clock()
                try:
                    status = await client.status(job_id, admit=turn.admit)
                    failures = 0
                except RunPodNotFound:
                    raise JobExpired(
                        "RunPod no longer has this job (404): results are kept for 30 minutes after they finish.",
                        job_id,
                    ) from None
                except (RunPodUnavailable, RunPodRateLimited, RunPodBadResponse) as error:
                    failures += 1
                    if failures >= poll.max_failures:
                        raise
                    log.warning("job %s: status poll failed (%s); will retry", job_id, error)
                    status = None
                result = None
                if status is not None and status.state.is_terminal:
                    cadence.stats.record_status(status)
                    result = await _finish(status, fetcher)
            finally:
                turn.release()
            if result is not None:
                yield result
                return

        if status is not None:
            cadence.observe(status, sent, clock())
            update = _update(status)
            if last is None or update.view != last.view:
                last, unchanged = update, 0
                yield update
            else:
                unchanged += 1

        delay = cadence.delay(clock(), last.state if last else JobState.IN_QUEUE, unchanged)
        if deadline is not None:
            remaining = deadline - clock()
            if remaining <= 0:
                await _give_up(client, job_id, timeout or 0)
            delay = min(delay, remaining)
        await sleep(delay)


def _update(status: JobStatus) -> JobUpdate:
    progress = parse_progress(status.output) if status.has_output else None
    return JobUpdate(status.id, status.state, status.delay_ms, status.execution_ms, status.worker_id, progress)


async def _finish(status: JobStatus, fetcher: ImageFetcher) -> JobResult:
    job_id = status.id
    log.info("job %s ended %s (queue %s ms, run %s ms)", job_id, status.state, status.delay_ms, status.execution_ms)
    if status.state is JobState.FAILED:
        raise JobFailed(describe_worker_error(status.error, status.output), job_id)
    if status.state is JobState.CANCELLED:
        raise JobCancelled("The job was cancelled on RunPod.", job_id)
    if status.state is JobState.TIMED_OUT:
        raise JobTimedOut(
            "RunPod timed the job out: no worker picked it up in time, or it ran past the endpoint's execution "
            "timeout. Try again, or raise the endpoint's timeout.",
            job_id,
        )
    try:
        # Finding the pictures base64-decodes megabytes: off the event loop, like the decoding itself.
        sources = await asyncio.to_thread(find_images, status.output if status.has_output else None)
        images = await fetcher.decode_all(sources)
    except OutputError as error:
        error.job_id = job_id
        raise
    return JobResult(job_id, tuple(images), status.delay_ms, status.execution_ms, status.worker_id)


async def _give_up(client: RunPodClient, job_id: str, timeout: float) -> NoReturn:
    """Our deadline passed: cancel on RunPod so the job stops billing, then say so."""
    try:
        await client.cancel(job_id)
        outcome = "it was cancelled on RunPod so it stops costing GPU time"
    except RunPodError as error:
        log.warning("job %s: cancel after timeout failed: %s", job_id, error)
        outcome = "cancelling it on RunPod failed, so it may still run"
    raise JobTimedOut(f"No result after {timeout:g} s; {outcome}.", job_id)


_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def parse_progress(value: Any) -> Progress | None:
    """Read a worker's `progress_update` value: "4/10", "40%", 0.4, {"progress": ...}, {"step", "total"}."""
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
    """The worker's own words, never a traceback: runpod-python sends a JSON string with `error_message`."""
    message: Any = error
    if isinstance(error, str):
        try:
            decoded = json.loads(error)
        except ValueError:
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
    return f"The worker failed: {text}"
