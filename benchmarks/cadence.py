"""The polling benchmark's workload replayed through the engine's cadence on a virtual clock, in a second:
`python -m benchmarks.cadence`.

For tuning `PollPolicy` before spending minutes on `benchmarks.polling`. Each job of
`benchmarks.workload` is followed by `bot.polling.Cadence` exactly as `follow_job` does (the `/run`
answer stands for the first poll; every job of an endpoint shares its `EndpointStats`, which learns from
each finished job), but RunPod's answers are the loopback double's (`doubles.runpod.Job.view`) at
the virtual moment instead of fetched, a poll takes `--rtt` and a finished picture `--handle` seconds.
No sockets, no pictures, no CPU contention: it measures the schedule only. On 2026-11-23 it came within
3 % of the real benchmark's status requests per job and within 0.01 s of its lag p50 and p99, at N = 100
and 1000.
"""

from __future__ import annotations

import argparse
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.report import number, quantile, table
from benchmarks.workload import ENDPOINTS, JobSpec, Workload, make_workload
from bot.polling import Cadence, EndpointStats, PollPolicy
from bot.runpod import parse_status
from doubles.runpod import Job, Script


@dataclass(frozen=True)
class CadenceResult:
    n: int
    status_per_job: float
    lag_p50: float
    lag_p99: float
    lag_max: float
    status_per_job_by_endpoint: dict[str, float]


def double_job(job: JobSpec) -> Job:
    """The RunPod double's own job for this script, submitted when the workload says."""
    script = Script(queue_s=job.queue_s, run_s=job.run_s)
    return Job(str(job.index), "bench", {}, None, None, "", script, submitted_at=job.arrival_s)


def simulate(
    policy: PollPolicy, workload: Workload, *, learned: bool = True, rtt: float = 0.01, handle: float = 0.02
) -> CadenceResult:
    stats = [EndpointStats() for _ in ENDPOINTS]
    if learned:
        for endpoint_stats, spec in zip(stats, ENDPOINTS, strict=True):
            for run_s in workload.history[spec.name]:
                endpoint_stats.record(run_s=run_s)
    jobs = workload.jobs
    doubles = [double_job(job) for job in jobs]
    cadences = [Cadence(policy, stats[job.endpoint], None) for job in jobs]
    views: list[object] = [None] * len(jobs)
    unchanged = [0] * len(jobs)
    polls = [0] * len(jobs)
    lags: list[float] = []
    # (when, job index, whether it is a poll): the /run answer arrives as each job is submitted.
    events = [(job.arrival_s, index, False) for index, job in enumerate(jobs)]
    heapq.heapify(events)
    while events:
        sent, index, is_poll = heapq.heappop(events)
        received = sent + rtt if is_poll else sent
        polls[index] += is_poll
        double = doubles[index]
        status = parse_status(double.view(sent), "status")
        finished = double.finished_at(sent)
        if finished is not None:
            cadences[index].finished(status)
            lags.append(received + handle - finished)
            continue
        cadence = cadences[index]
        cadence.observe(status, sent, received)
        view = (status.state, status.delay_ms)
        unchanged[index] = unchanged[index] + 1 if view == views[index] else 0
        views[index] = view
        delay = cadence.delay(received, status.state, unchanged[index])
        heapq.heappush(events, (received + delay, index, True))
    by_endpoint = {
        spec.name: sum(polls[i] for i, job in enumerate(jobs) if job.endpoint == position)
        / max(1, sum(1 for job in jobs if job.endpoint == position))
        for position, spec in enumerate(ENDPOINTS)
    }
    return CadenceResult(
        n=len(jobs),
        status_per_job=sum(polls) / len(jobs),
        lag_p50=quantile(lags, 0.5) or 0.0,
        lag_p99=quantile(lags, 0.99) or 0.0,
        lag_max=max(lags),
        status_per_job_by_endpoint=by_endpoint,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = PollPolicy()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cadence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--history", type=int, default=32, help="earlier run times per endpoint; 0: learns none")
    parser.add_argument("--near", type=float, default=defaults.near)
    parser.add_argument("--dense", type=float, default=defaults.dense)
    parser.add_argument("--dense-share", type=float, default=defaults.dense_share)
    parser.add_argument("--rtt", type=float, default=0.01, help="seconds a poll takes")
    parser.add_argument("--handle", type=float, default=0.02, help="seconds to fetch and check a picture")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[CadenceResult]:
    args = parse_args(argv)
    policy = PollPolicy(near=args.near, dense=args.dense, dense_share=args.dense_share)
    results = []
    for n in args.jobs:
        workload = make_workload(n, seed=args.seed, history=max(1, args.history))
        results.append(simulate(policy, workload, learned=args.history > 0, rtt=args.rtt, handle=args.handle))
    header = ["N", "status req/job", *(f"{spec.name} req/job" for spec in ENDPOINTS), "lag p50 s", "p99 s", "max s"]
    rows = [
        [
            str(result.n),
            number(result.status_per_job, 2),
            *(number(result.status_per_job_by_endpoint[spec.name], 2) for spec in ENDPOINTS),
            number(result.lag_p50, 3),
            number(result.lag_p99, 3),
            number(result.lag_max, 3),
        ]
        for result in results
    ]
    print(f"{policy}\n\n{table(header, rows)}")
    return results


if __name__ == "__main__":
    main()
