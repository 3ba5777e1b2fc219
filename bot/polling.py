"""How often to poll a job: the schedule, and what an endpoint's finished jobs teach it. No I/O here.

`EndpointStats` (one per endpoint, shared by all its jobs through `bot.engine.RunPodContext`) learns from
finished jobs how long they queued and ran. A job's start is known precisely from `delayTime` (submission
plus queue time), so `Cadence` does not poll while the job cannot be done yet, polls every `near` seconds
while it may be, and every `dense` seconds once it is among the last to finish. Until an endpoint has
taught anything, `PollPolicy.delay`'s plain backoff is used.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from bot.runpod import JobState, JobStatus


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
    # A job RunPod has accepted is followed through an outage until it ends or its deadline passes: it may be
    # running and billing. After this many failed polls in a row (each already retried by the client) the
    # member is told RunPod is not answering, and polls back off to at most `outage_interval` seconds apart.
    outage_after: int = 2
    outage_interval: float = 30.0
    # Only jobs still running pay for dense polls, and late finishes are the likeliest among those still
    # running: dense for the last finishes only (tuned with benchmarks/cadence.py, confirmed by
    # benchmarks/polling.py: see RESULTS.md).
    near: float = 0.85
    dense: float = 0.2
    dense_share: float = 0.4
    progress_every: float = 2.0  # a worker that reports progress gets its bar moved at least this often
    sparse_factor: float = 4.0  # learned waits are at most this many times the plain backoff's longest
    # While RunPod's webhook is expected (bot/push.py) a poll only catches a lost one, or moves a progress bar.
    push_fallback: float = 8.0
    after_wake: tuple[float, ...] = (0.25, 0.5, 1.0)  # a webhook may beat /status to the job's end: look again soon

    def outage_delay(self, failures: int) -> float:
        """The wait after `failures` failed polls in a row: capped backoff, from the running cadence."""
        return min(self.outage_interval, self.running[0] * self.growth ** min(failures, 64))

    def delay(self, state: JobState, unchanged_polls: int) -> float:
        first, longest = self.queued if state is JobState.IN_QUEUE else self.running
        # The exponent is capped: a job unchanged for hours must not overflow the float.
        return min(longest, first * self.growth ** min(unchanged_polls, 64))

    def push_delay(self, learned: float, *, since_wake: int | None, progress: bool) -> float:
        """The wait while a webhook is expected: quick looks just after one rang (`since_wake` polls ago) while
        /status does not show the end yet, every `progress_every` s for a worker that reports progress, else the
        sparse `push_fallback`; never longer than the learned wait would have been when that is sparser still."""
        if since_wake is not None and since_wake < len(self.after_wake):
            return self.after_wake[since_wake]
        if progress:
            return min(learned, self.progress_every)
        return max(learned, self.push_fallback)

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
