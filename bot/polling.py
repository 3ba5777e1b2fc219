"""How often to poll a job: the schedule, and what an endpoint's jobs teach it. No I/O here.

`EndpointStats` (one per endpoint, shared by all its jobs through `bot.engine.RunPodContext`) learns how
long jobs queue and run: from finished jobs, and from jobs still running, whose age is a lower bound on
their run (a censored sample: without it, a bot that just started learns only from its shortest jobs,
which finish first). A job's start is known precisely from `delayTime` (submission plus queue time), so
`Cadence` does not poll while the job cannot be done yet, polls every `near` seconds while it may be, and
every `dense` seconds once it is among the last to finish. Until an endpoint has taught anything,
`PollPolicy.delay`'s plain backoff is used.
"""

from __future__ import annotations

import math
import statistics
import weakref
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
    No wait is ever longer than `longest`. While a webhook is expected, `push_delay`."""

    queued: tuple[float, float] = (1.5, 4.0)  # first and longest interval while IN_QUEUE
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
    # While the runs seen are only the quick ones (a bot that just started, with many jobs running), a job
    # that may be ending is polled this often: no faster than once a second until enough runs are known.
    blind: float = 1.0
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
    def blind_interval(self) -> float:
        return min(self.blind, self.running[1])

    @property
    def dense_interval(self) -> float:
        return min(self.dense, self.near_interval)

    @property
    def longest(self) -> float:
        return self.sparse_factor * max(self.queued[1], self.running[1])


@dataclass(frozen=True)
class RunBand:
    """When a job of this endpoint finishes, in seconds after it starts running. `dense_from` and `high` are
    infinite while the jobs still running say the runs seen so far were only the quick ones."""

    low: float  # none has finished sooner (less a margin)
    dense_from: float  # the last `PollPolicy.dense_share` of runs ended after this
    high: float  # none has run longer (plus a margin)


def _quantile(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * min(1.0, max(0.0, q))
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _survival_quantile(runs: list[float], censored: list[float], share: float) -> float | None:
    """The run time beyond which only `share` of jobs still run, by Kaplan-Meier: a job still running at age
    `a` counts among those that could end at any time up to `a`, and no further. None while more than `share`
    of them outlive every run seen."""
    events = sorted([(run, 0) for run in runs] + [(age, 1) for age in censored])  # an end before a censoring
    at_risk, surviving = len(events), 1.0
    for value, is_censored in events:
        if not is_censored:
            surviving *= 1 - 1 / at_risk
            if surviving <= share + 1e-12:
                return value
        at_risk -= 1
    return None


class EndpointStats:
    """Queue and run times of one endpoint's jobs, finished and running. Shared by all its jobs; no Discord.

    The runs learned from are one cohort, so that jobs still running can be weighed against them: every
    completed run kept (`size` at most) and every job running that started after the last run let go
    (those let go started no later than that, so none of the cohort's finished runs is missing)."""

    # The band with jobs still running moves with time: recomputed at most this often (seconds of the
    # callers' clock), so that a thousand jobs in flight do not sort each other on every poll.
    REFRESH = 0.25

    def __init__(self, size: int = 64) -> None:
        self._runs: deque[tuple[float, float]] = deque(maxlen=size)  # (run, start; -inf when not known)
        self._waits: deque[float] = deque(maxlen=size)
        self._cohort_from = -math.inf  # the latest start among runs let go
        self._running: weakref.WeakSet[Cadence] = weakref.WeakSet()
        self._bands: dict[float, RunBand | None] = {}
        self._live: dict[float, tuple[float, RunBand | None]] = {}  # by share: (computed at, band)

    def record(
        self, *, run_s: float | None = None, wait_s: float | None = None, started_at: float | None = None
    ) -> None:
        if run_s is not None and run_s >= 0:
            if len(self._runs) == self._runs.maxlen:
                self._cohort_from = max(self._cohort_from, self._runs[0][1])
            self._runs.append((run_s, -math.inf if started_at is None else started_at))
            self._bands.clear()  # `_live` ages out by itself: at a peak, runs end dozens of times a second
        if wait_s is not None and wait_s >= 0:
            self._waits.append(wait_s)

    def record_status(self, status: JobStatus, started_at: float | None = None) -> None:
        """Learn from a COMPLETED job (failures end early and would teach the wrong run time)."""
        if status.state is JobState.COMPLETED:
            self.record(
                run_s=status.execution_ms / 1000 if status.execution_ms is not None else None,
                wait_s=status.delay_ms / 1000 if status.delay_ms is not None else None,
                started_at=started_at,
            )

    def running(self, cadence: Cadence) -> None:
        """`cadence`'s job is running: its age counts until `ended` (or until the cadence is dropped)."""
        self._running.add(cadence)

    def ended(self, cadence: Cadence) -> None:
        self._running.discard(cadence)

    @property
    def runs(self) -> int:
        return len(self._runs)

    @property
    def typical_run(self) -> float | None:
        return statistics.median(run for run, _ in self._runs) if self._runs else None

    @property
    def typical_wait(self) -> float | None:
        return statistics.median(self._waits) if self._waits else None

    def band(self, policy: PollPolicy | None = None, now: float | None = None) -> RunBand | None:
        """None until a run was seen end, or (with `now`) a job seen running. The margins shrink as more jobs
        are seen: one run says little about the next, least of all how much quicker it may be (the first few
        may all have been slow ones). With `now` (on the clock the cadences' times are on), the jobs running
        then are weighed in too."""
        share = (policy or PollPolicy()).dense_share
        if now is None:
            if share not in self._bands:
                self._bands[share] = self._band(share, []) if self._runs else None
            return self._bands[share]
        computed = self._live.get(share)
        if computed is None or not 0 <= now - computed[0] < self.REFRESH:
            ages = [
                cadence.seen_running - cadence.started_at
                for cadence in self._running
                if cadence.started_at is not None
                and cadence.seen_running is not None
                and cadence.started_at > self._cohort_from
            ]
            computed = self._live[share] = (now, self._band(share, ages))
        return computed[1]

    def _band(self, share: float, censored: list[float]) -> RunBand | None:
        censored = sorted(age for age in censored if age > 0)
        if not self._runs:
            if not censored:
                return None
            # None has ended yet: nothing ends sooner than the age that many reached without ending.
            return RunBand(_lowest(censored, math.inf), math.inf, math.inf)
        runs = sorted(run for run, _ in self._runs)
        slower = 0.05 + 0.3 / len(runs)
        high = runs[-1] * (1 + slower)
        if not censored:
            return RunBand(_lowest(runs, runs[0]), _quantile(runs, 1 - share), high)
        # Runs learned before (no start known) are a whole cohort of their own; of those that started no
        # later than the last let go, the quick ones are gone: they would make the runs seem longer.
        cohort = [run for run, start in self._runs if start == -math.inf or start > self._cohort_from]
        low = _lowest(sorted(cohort + censored), min(cohort, default=runs[0]))
        dense_from = _survival_quantile(cohort, censored, share)
        if dense_from is not None:
            return RunBand(low, dense_from, max(high, dense_from))
        if self._cohort_from == -math.inf:
            # More than `share` of every job since the start outlived every run seen: the runs seen were the
            # quick ones, and where the others end is not known yet.
            return RunBand(low, math.inf, math.inf)
        # The cohort is too recent to have seen the longest runs end: the runs kept, as they are.
        return RunBand(low, _quantile(runs, 1 - share), high)


def _lowest(ordered: list[float], first_end: float) -> float:
    """How soon a run may end: `first_end` (the quickest end seen) or any age below it, less a margin that
    shrinks with how many jobs were seen reach it (the more went that far without ending, the surer)."""
    best, count = 0.0, len(ordered)
    for position, value in enumerate(ordered):
        if value > first_end:
            break
        reached = count - position
        best = max(best, value * (1 - min(0.9, 0.05 + 1 / reached)))
    return best


class Cadence:
    """One job's polling schedule: where its run started, and so how soon it can finish."""

    def __init__(self, policy: PollPolicy, stats: EndpointStats, submitted_at: float | None) -> None:
        self.policy = policy
        self.stats = stats
        self.submitted_at = submitted_at
        self.queued_at: float | None = None  # when a poll last found it queued
        self.started_at: float | None = None  # estimated start of its run
        self.seen_running: float | None = None  # when a poll last found it running
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
        if status.state is JobState.IN_PROGRESS and self.started_at is not None:
            self.seen_running = sent  # it was still running when asked: its run is at least this long
            self.stats.running(self)

    def finished(self, status: JobStatus) -> None:
        """The job ended (`status` is its terminal answer): what it taught goes to the endpoint's stats."""
        self.stats.ended(self)
        self.stats.record_status(status, self.started_at)

    def delay(self, now: float, state: JobState, unchanged: int) -> float:
        policy = self.policy
        fallback = policy.delay(state, unchanged)
        near, dense = policy.near_interval, policy.dense_interval
        band = self.stats.band(policy, now)
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
            step = policy.blind_interval if band.dense_from == math.inf else near
            wait = max(dense, min(soonest + step, max(soonest, band.dense_from)) - elapsed)
        if state is JobState.IN_QUEUE:
            wait = max(wait, min(fallback, near))
        elif self.progress:
            wait = min(wait, policy.progress_every)
        return max(0.0, min(wait, policy.longest))
