"""What an endpoint's jobs teach its polling schedule: finished runs, jobs still running, and a webhook on its way.

The schedule is pure (no I/O), so it is driven here directly and on the cadence benchmark's virtual clock; the
real follower against the RunPod double is in tests/test_engine.py."""

from __future__ import annotations

import gc
import math
from dataclasses import replace

from benchmarks.cadence import simulate
from benchmarks.polling import cold_workload
from benchmarks.workload import ENDPOINTS
from bot.polling import Cadence, EndpointStats, PollPolicy
from bot.runpod import JobState, JobStatus


def running_since(stats: EndpointStats, started_at: float, seen_at: float) -> Cadence:
    """A job of `stats`' endpoint whose run began at `started_at`, last seen running at `seen_at`."""
    cadence = Cadence(PollPolicy(), stats, submitted_at=started_at)
    cadence.observe(JobStatus("j", JobState.IN_PROGRESS, delay_ms=0), started_at, started_at)
    cadence.observe(JobStatus("j", JobState.IN_PROGRESS, delay_ms=0), seen_at, seen_at)
    return cadence


def completed(cadence: Cadence, run_s: float) -> None:
    cadence.finished(JobStatus("j", JobState.COMPLETED, delay_ms=0, execution_ms=round(run_s * 1000)))


def test_the_first_quick_finishes_of_a_fresh_bot_do_not_set_where_the_last_finishes_are():
    """Fifty jobs start together; two end at 3 s while 48 still run at 5 s. Taken alone, those two would put
    the last finishes at 3 s and have every job polled densely from then on."""
    stats = EndpointStats()
    jobs = [running_since(stats, 0.0, 5.0) for _ in range(50)]
    completed(jobs[0], 3.0)
    completed(jobs[1], 3.2)
    assert stats.band().dense_from < 3.3  # the finished runs alone (what the bot learned before)
    band = stats.band(now=5.0)
    assert band.dense_from == band.high == math.inf  # not known yet: the runs seen were the quick ones
    assert 2.5 < band.low < 3.0  # ...but 50 jobs went 3 s without ending: none is likely sooner
    assert len(jobs) == 50


def test_jobs_still_running_count_as_runs_at_least_their_age():
    """Ten jobs: seven ended after 1..7 s, three still run at 8 s. Six of ten ended by 6 s, so the last 40 %
    end after it; the seven runs alone would say after 4.6 s."""
    stats = EndpointStats()
    jobs = [running_since(stats, 0.0, 8.0) for _ in range(10)]
    for run_s, job in zip(range(1, 8), jobs, strict=False):
        completed(job, float(run_s))
    assert stats.band().dense_from == 4.6
    band = stats.band(now=8.0)
    assert band.dense_from == 6.0
    assert band.high > 7.0


def test_a_job_that_ended_or_was_dropped_no_longer_counts_as_running():
    stats = EndpointStats()
    done = running_since(stats, 0.0, 1.0)
    completed(done, 2.0)
    failed = running_since(stats, 0.0, 9.0)
    failed.finished(JobStatus("j", JobState.FAILED, delay_ms=0, execution_ms=9000))
    dropped = running_since(stats, 0.0, 9.0)
    assert stats.band(now=9.0).dense_from == math.inf  # the job still followed outlived the only run
    del dropped  # a follower that stopped (cancelled, expired) leaves nothing behind
    gc.collect()
    assert stats.band(now=9.0 + EndpointStats.REFRESH).dense_from == 2.0
    assert stats.runs == 1  # the failure taught no run time


def test_a_fresh_bot_with_fifty_jobs_at_once_polls_them_about_as_cheaply_as_one_that_knew_their_run_times():
    """The issue's cold start on the cadence benchmark's virtual clock (no sockets, no CPU): before jobs still
    running were learned from, it cost 12.8 polls a job (14.3 measured by benchmarks.polling); a poll every second,
    the official client's way, costs about 8 (each job lives 3-12 s)."""
    policy = PollPolicy()
    cold = simulate(policy, cold_workload(50, seed=6, history=0, scale=1.0), learned=False)
    known = cold_workload(50, seed=6, history=32, scale=1.0)
    warm = simulate(
        policy, replace(known, history={spec.name: known.history["cold"] for spec in ENDPOINTS}), learned=True
    )
    assert cold.n == warm.n == 50
    assert cold.status_per_job < 8.5  # was 12.8
    assert cold.status_per_job < 1.4 * warm.status_per_job
    assert cold.lag_p50 <= policy.near / 3  # most ends found well within a `near` interval
    assert cold.lag_p99 <= policy.blind + 0.1


def test_with_a_webhook_on_its_way_a_job_likely_to_end_is_still_polled_sparsely():
    """The learned schedule would poll a job at 8 s of an 8 s endpoint's run every 0.2 s; with a webhook
    expected (`PollPolicy.push_delay`, as the follower composes them) only a progress bar or a lost webhook is
    polled for."""
    policy, stats = PollPolicy(), EndpointStats()
    for run_s in (7.6, 7.8, 8.0, 8.2) * 8:
        stats.record(run_s=run_s)
    cadence = Cadence(policy, stats, submitted_at=0.0)
    cadence.observe(JobStatus("j", JobState.IN_PROGRESS, delay_ms=500), 5.0, 5.0)
    learned = cadence.delay(0.5 + 8.0, JobState.IN_PROGRESS, 0)
    assert learned == policy.dense_interval
    assert policy.push_delay(learned, since_wake=None, progress=cadence.progress) == policy.push_fallback
    cadence.observe(JobStatus("j", JobState.IN_PROGRESS, execution_ms=3000, has_output=True), 9.0, 9.0)
    learned = cadence.delay(9.0, JobState.IN_PROGRESS, 0)
    assert policy.push_delay(learned, since_wake=None, progress=cadence.progress) == policy.progress_every
