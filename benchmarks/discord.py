"""What 50 `/imagine` jobs at once in one channel cost on Discord's side: `python -m benchmarks.discord`.

The real bot (`doubles.harness.running_bot`: the real discord.py client, the bot's real runner options) runs
in this process against both loopback doubles. The Discord double enforces Discord's rate limits
(`doubles.discord.RateLimits`: 50 requests/s per bot token, 5 per 2 s per interaction token, 5 per
5 s per channel for channel messages, 30 per 60 s per channel for webhook messages) and the 3 s deadline
for answering an interaction; the RunPod double plays the workers.

Workload: N members each send `/imagine` in the same channel at the same moment. Every job queues 0-5 s
and runs 4-12 s on RunPod (uniform, from a seed), reports its progress about once a second while it runs
(so the live status message always has a reason to change), and answers with its own 1024x1024 PNG of about
1.6 MB in worker-sdxl's shape. Two rounds, each with a fresh bot and fresh doubles: the guild lets all N run
at once, then only as many as the default guild policy does (6), so the rest wait in the bot's fair queue
with their place in it on show, and the long waits earn their members a ping (`--concurrent` picks rounds).

Measured: jobs delivered (the member's message shows the worker's exact picture); Discord requests per job
split into status edits, the final upload and the rest (the defer, reading the reply back, pings); edits per
job; 429s received, by bucket; the time from the RunPod double marking a job COMPLETED to the upload (the
multipart request carrying the picture) reaching the Discord double, split into the wait until the bot's
first /status that saw it done and the rest (fetching, decoding, uploading); how close two status edits of
one message came; edits that changed nothing; and how soon each interaction was deferred.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.report import (
    command_line,
    describe_machine,
    machine,
    now_utc,
    number,
    peak_in_window,
    publish,
    quantile,
    quiet_logging,
    table,
)
from benchmarks.workload import job_index, make_png, prompt_for, worker_output
from bot.jobs import RunnerOptions
from bot.policy import GuildPolicy
from doubles.discord import (
    DEFAULT_GUILD_ID,
    DEFAULT_USER_ID,
    DiscordDouble,
    Interaction,
    RateLimitHit,
    RateLimits,
    Recorded,
    UserSpec,
)
from doubles.harness import API_KEY, ENDPOINT, Harness, running_bot
from doubles.runpod import RunPodDouble, Script

DONE_TITLE = "✅ Done"
ACK_DEADLINE_S = 3.0
STEPS = 30
EDIT_TOLERANCE_S = 0.05  # two edits sent 1.5 s apart may arrive a little closer than that


@dataclass(frozen=True)
class JobPlan:
    index: int
    queue_s: float
    run_s: float


@dataclass(frozen=True)
class Workload:
    jobs: tuple[JobPlan, ...]
    queue_range: tuple[float, float]
    run_range: tuple[float, float]
    picture_size: int


def make_workload(n: int, *, seed: int, quick: bool) -> Workload:
    """`--quick` keeps the shape at a tenth of the times, with small pictures."""
    scale = 0.1 if quick else 1.0
    queue_range, run_range = (0.0, 5.0 * scale), (4.0 * scale, 12.0 * scale)
    rng = random.Random(seed)
    jobs = tuple(JobPlan(i, rng.uniform(*queue_range), rng.uniform(*run_range)) for i in range(n))
    return Workload(jobs, queue_range, run_range, 128 if quick else 1024)


def script_for(plan: JobPlan, png: bytes) -> Script:
    """The worker of one job: "k/30" progress about once a second of its run, then its picture."""
    updates = max(2, round(plan.run_s))
    progress = [(plan.run_s * k / updates, f"{STEPS * k // updates}/{STEPS}") for k in range(1, updates)]
    return Script(
        queue_s=plan.queue_s,
        run_s=plan.run_s,
        output=worker_output("sdxl", png, seed=plan.index),
        progress=progress,
        worker_id=f"worker-{plan.index % 8}",
    )


def member(index: int) -> UserSpec:
    # One member per job, so the per-member limits of the guild's policy never hold a job back.
    return UserSpec(id=DEFAULT_USER_ID + index, username=f"member{index}", global_name=f"Member {index}")


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class JobMeasure:
    index: int
    delivered: bool
    status_edits: int  # edits of its reply without a file: the live status
    uploads: int  # requests carrying the picture (more than one if one was refused)
    other: int  # the defer, reading the reply back, followups (pings)
    rate_limited: int  # of those, answered 429
    redundant_edits: int  # status edits identical to the one before
    closest_edits_s: float | None  # the shortest gap between two status edits of its message
    ack_s: float | None  # from the interaction being sent to its callback reaching the double
    lag_s: float | None  # from COMPLETED on RunPod to the upload reaching Discord
    seen_s: float | None  # the part of lag_s until the bot's first /status that found it done
    busiest_window: int  # most requests on its interaction-token bucket within one of that bucket's windows
    status_edits_by_title: dict[str, int] = field(default_factory=dict)  # what each status edit showed

    @property
    def requests(self) -> int:
        return self.status_edits + self.uploads + self.other

    @property
    def edits(self) -> int:
        return self.status_edits + self.uploads


@dataclass
class Scenario:
    """One round: all jobs sent at once, `concurrent` of them allowed on RunPod at a time."""

    concurrent: int
    jobs: list[JobMeasure]
    rate_limit_hits: dict[str, int]  # "route / bucket" -> 429s
    unattributed_requests: dict[str, int]  # requests not made for one job (start-up, channel messages), by route
    busiest_channel_window: int  # most webhook messages (followups) into the channel in one of its windows
    duration_s: float


@dataclass
class Report:
    date: str
    machine: dict[str, Any]
    command: str
    settings: dict[str, Any]
    scenarios: list[Scenario]
    duration_s: float


@dataclass
class ScenarioRun:
    scenario: Scenario
    discord: DiscordDouble
    runpod: RunPodDouble
    interactions: list[Interaction]


@dataclass
class Run:
    """A finished benchmark and everything the doubles recorded, for a test to check the report against."""

    report: Report
    rounds: list[ScenarioRun]
    pngs: list[bytes]


EDIT_ROUTES = ("edit_original", "edit_followup")  # the bot edits its reply by id, which is the followup route


def _is_edit(call: Recorded) -> bool:
    return call.route in EDIT_ROUTES


def _title_of(call: Recorded) -> str:
    embeds = call.json.get("embeds") if isinstance(call.json, dict) else None
    return str(embeds[0].get("title")) if embeds else "(no embed)"


def measure_job(
    index: int,
    interaction: Interaction,
    sent_at: float,
    harness: Harness,
    png: bytes,
    calls: Sequence[Recorded],
    limits: RateLimits,
) -> JobMeasure:
    """One job's numbers from what the doubles recorded; `calls` are the Discord requests made with its token."""
    shown = harness.shown(interaction)
    delivered = (
        shown is not None
        and bool(shown.embeds)
        and shown.embeds[0].get("title") == DONE_TITLE
        and [attachment.data for attachment in shown.attachments] == [png]
    )
    status = [call for call in calls if _is_edit(call) and not call.files]
    uploads = [call for call in calls if _is_edit(call) and call.files]
    accepted = [call for call in status if call.status != 429]  # a 429 and its retry are one edit
    redundant = sum(1 for before, after in itertools.pairwise(accepted) if before.json == after.json)
    gaps = [after.at - before.at for before, after in itertools.pairwise(accepted)]
    callback = next((call for call in calls if call.route == "callback"), None)
    job = next((job for job in harness.runpod.jobs.values() if job_index(job.input) == index), None)
    now = time.monotonic()
    finished = job.finished_at(now) if job is not None else None
    lag = seen = None
    if finished is not None and uploads:
        lag = uploads[0].at - finished
        polls = harness.runpod.requests_for("status", job.id if job else None)
        first_seen = next((poll.at for poll in polls if poll.at >= finished), None)
        seen = first_seen - finished if first_seen is not None else None
    return JobMeasure(
        index=index,
        delivered=delivered,
        status_edits=len(status),
        uploads=len(uploads),
        other=len(calls) - len(status) - len(uploads),
        rate_limited=sum(1 for call in calls if call.status == 429),
        redundant_edits=redundant,
        closest_edits_s=min(gaps, default=None),
        ack_s=callback.at - sent_at if callback is not None else None,
        lag_s=lag,
        seen_s=seen,
        status_edits_by_title=dict(Counter(_title_of(call) for call in status)),
        busiest_window=peak_in_window(
            [call.at for call in calls if call.route != "callback"],  # the callback has a bucket of its own
            limits.interaction.per,
        ),
    )


def _hits_by_bucket(hits: Sequence[RateLimitHit]) -> dict[str, int]:
    return dict(Counter(f"{hit.route} / {hit.bucket}" for hit in hits))


async def _quiet(double: DiscordDouble, for_s: float = 1.0, at_most_s: float = 10.0) -> None:
    """Wait until the bot has sent nothing for `for_s`: the pings that follow a delivery come after it."""
    deadline = time.monotonic() + at_most_s
    seen = -1
    while len(double.calls) != seen and time.monotonic() < deadline:
        seen = len(double.calls)
        await asyncio.sleep(for_s)


# --- the benchmark ------------------------------------------------------------------------------


async def run_scenario(
    workload: Workload, pngs: Sequence[bytes], concurrent: int, options: RunnerOptions, limits: RateLimits
) -> ScenarioRun:
    begun = time.monotonic()
    scripts = [script_for(plan, png) for plan, png in zip(workload.jobs, pngs, strict=True)]
    discord_double = DiscordDouble(rate_limits=limits, enforce_ack_deadline=True)
    runpod = RunPodDouble(api_keys=[API_KEY], endpoints=[ENDPOINT])
    n = len(workload.jobs)
    async with runpod, discord_double, running_bot(runpod, options=options, discord_double=discord_double) as harness:
        # running_bot installs the tests' default worker; these jobs bring their own.
        runpod.default_script = lambda job_input: replace(scripts[job_index(job_input)])
        policy = GuildPolicy(guild_concurrent=concurrent, member_concurrent=1, member_waiting=1)
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, policy.to_json())
        before = len(discord_double.calls)
        interactions = [
            discord_double.slash("imagine", {"prompt": prompt_for(plan.index)}, user=member(plan.index))
            for plan in workload.jobs
        ]
        horizon = max(plan.queue_s + plan.run_s for plan in workload.jobs) * -(-n // concurrent)
        print(f"{n} jobs, {concurrent} at once: about {horizon:.0f} s...", file=sys.stderr, flush=True)
        sent_at = time.monotonic()
        await asyncio.gather(*(discord_double.send(interaction) for interaction in interactions))
        results = await asyncio.gather(
            *(harness.finished(interaction, timeout=horizon + 60.0) for interaction in interactions),
            return_exceptions=True,  # a job that never finished is counted as not delivered
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, TimeoutError):
                raise result
        await _quiet(discord_double)
        by_token: dict[str, list[Recorded]] = {interaction.token: [] for interaction in interactions}
        unattributed: Counter[str] = Counter()
        for call in discord_double.calls[before:]:
            if call.token in by_token:
                by_token[call.token].append(call)
            else:
                unattributed[call.route] += 1
        unattributed.update(call.route for call in discord_double.calls[:before])
        jobs = [
            measure_job(plan.index, interaction, sent_at, harness, png, by_token[interaction.token], limits)
            for plan, interaction, png in zip(workload.jobs, interactions, pngs, strict=True)
        ]
    webhook_messages = [call.at for call in discord_double.calls if call.route == "followup"]
    scenario = Scenario(
        concurrent=concurrent,
        jobs=jobs,
        rate_limit_hits=_hits_by_bucket(discord_double.rate_limit_hits),
        unattributed_requests=dict(unattributed),
        busiest_channel_window=peak_in_window(webhook_messages, limits.webhook_channel.per),
        duration_s=time.monotonic() - begun,
    )
    return ScenarioRun(scenario, discord_double, runpod, interactions)


async def benchmark(args: argparse.Namespace) -> Run:
    begun = time.monotonic()
    workload = make_workload(args.jobs, seed=args.seed, quick=args.quick)
    pngs = [make_png(plan.index, workload.picture_size) for plan in workload.jobs]
    options = RunnerOptions()  # the bot's own: 1.5 s between edits, its real polling, pings after 20 s
    limits = RateLimits()
    rounds = [await run_scenario(workload, pngs, concurrent, options, limits) for concurrent in args.concurrent]
    settings = {
        "jobs": args.jobs,
        "seed": args.seed,
        "queue_s": workload.queue_range,
        "run_s": workload.run_range,
        "picture": f"{workload.picture_size}x{workload.picture_size} PNG, "
        f"{sum(map(len, pngs)) / len(pngs) / 1e6:.2f} MB",
        "edit_interval_s": options.edit_interval,
        "notify_after_s": options.notify_after,
        "rate_limits": limits,
    }
    report = Report(
        date=now_utc(),
        machine=machine(),
        command=command_line("benchmarks.discord", args.argv),
        settings=settings,
        scenarios=[round_.scenario for round_ in rounds],
        duration_s=time.monotonic() - begun,
    )
    return Run(report, rounds, pngs)


# --- reporting ----------------------------------------------------------------------------------


def _spread(values: Sequence[float], digits: int = 2) -> str:
    return " / ".join(number(quantile(values, q), digits) for q in (0.5, 0.99)) + f" / {number(max(values), digits)}"


@dataclass
class Summary:
    """A round's numbers, computed once for the tables and for whoever checks them."""

    jobs: int
    delivered: int
    requests: int
    status_edits: int
    uploads: int
    other: int
    edits_max: int
    rate_limited: int  # 429s the bot received
    lags: list[float]
    seen: list[float]
    handled: list[float]  # lag less seen
    acks: list[float]
    redundant_edits: int
    closest_edits_s: float | None
    close_edits: int  # messages with two status edits closer than the bot's own edit interval allows
    busiest_token_window: int
    busiest_channel_window: int
    unattributed: int
    status_edits_by_title: dict[str, int]


def summarise(scenario: Scenario, edit_interval: float) -> Summary:
    jobs = scenario.jobs
    closest = [job.closest_edits_s for job in jobs if job.closest_edits_s is not None]
    return Summary(
        jobs=len(jobs),
        delivered=sum(job.delivered for job in jobs),
        requests=sum(job.requests for job in jobs),
        status_edits=sum(job.status_edits for job in jobs),
        uploads=sum(job.uploads for job in jobs),
        other=sum(job.other for job in jobs),
        edits_max=max((job.edits for job in jobs), default=0),
        rate_limited=sum(scenario.rate_limit_hits.values()),
        lags=[job.lag_s for job in jobs if job.lag_s is not None],
        seen=[job.seen_s for job in jobs if job.seen_s is not None],
        handled=[job.lag_s - job.seen_s for job in jobs if job.lag_s is not None and job.seen_s is not None],
        acks=[job.ack_s for job in jobs if job.ack_s is not None],
        redundant_edits=sum(job.redundant_edits for job in jobs),
        closest_edits_s=min(closest, default=None),
        close_edits=sum(1 for gap in closest if gap < edit_interval - EDIT_TOLERANCE_S),
        busiest_token_window=max((job.busiest_window for job in jobs), default=0),
        busiest_channel_window=scenario.busiest_channel_window,
        unattributed=sum(scenario.unattributed_requests.values()),
        status_edits_by_title=dict(sum((Counter(job.status_edits_by_title) for job in jobs), Counter())),
    )


def _or_dash(values: Sequence[float]) -> str:
    return _spread(values) if values else "-"


def main_table(summary: Summary) -> str:
    n = summary.jobs or 1
    rows = [
        ["jobs delivered (the worker's exact picture on the member's message)", f"{summary.delivered}/{summary.jobs}",
         f"{summary.jobs}/{summary.jobs}"],
        ["Discord requests per job", number(summary.requests / n, 1), ""],
        ["- status edits", number(summary.status_edits / n, 1), ""],
        *[[f"- status edits, of which showing “{title}”", number(count / n, 1), ""]
          for title, count in summary.status_edits_by_title.items()],
        ["- final upload", number(summary.uploads / n, 2), "1"],
        ["- other (defer, read back the reply, pings)", number(summary.other / n, 1), ""],
        ["edits per job (status + upload): mean / max", f"{number((summary.status_edits + summary.uploads) / n, 1)} / "
         f"{summary.edits_max}", ""],
        ["429s received", str(summary.rate_limited), "0"],
        ["COMPLETED on RunPod -> upload reaches Discord, s: p50 / p99 / max", _or_dash(summary.lags), ""],
    ]  # fmt: skip
    return table(["measure", "value", "target"], rows)


def detail_table(summary: Summary, edit_interval: float, limits: RateLimits) -> str:
    n = summary.jobs or 1
    token, channel = limits.interaction, limits.webhook_channel
    rows = [
        ["lag, part 1: until the bot's first /status that saw it done, s: p50 / p99 / max", _or_dash(summary.seen)],
        ["lag, part 2: fetch, decode, upload, s: p50 / p99 / max", _or_dash(summary.handled)],
        ["interaction sent -> defer reaches Discord, s: p50 / p99 / max (deadline 3 s)", _or_dash(summary.acks)],
        ["closest two status edits of one message, s", number(summary.closest_edits_s)],
        [f"messages with two status edits under {edit_interval - EDIT_TOLERANCE_S:g} s apart "
         f"({edit_interval:g} s less {EDIT_TOLERANCE_S:g} s for the trip)", str(summary.close_edits)],
        ["status edits identical to the one before", str(summary.redundant_edits)],
        [f"busiest interaction token: requests in any {token.per:g} s (limit {token.requests})",
         str(summary.busiest_token_window)],
        [f"webhook messages (pings) into the channel in any {channel.per:g} s (limit {channel.requests})",
         str(summary.busiest_channel_window)],
        ["requests not made for one job (start-up, channel), total", str(summary.unattributed)],
        ["requests per job, all included", number((summary.requests + summary.unattributed) / n, 1)],
    ]  # fmt: skip
    return table(["measure", "value"], rows)


def _title(scenario: Scenario, jobs: int) -> str:
    if scenario.concurrent >= jobs:
        return f"All {jobs} at once"
    default = " (the default guild policy)" if scenario.concurrent == GuildPolicy().guild_concurrent else ""
    return (
        f"{scenario.concurrent} at once{default}: the other {jobs - scenario.concurrent} wait in the bot's fair "
        "queue, their status showing their place"
    )


def markdown(report: Report) -> str:
    s = report.settings
    limits: RateLimits = s["rate_limits"]
    parts = [
        "# Discord benchmark: latest results",
        "",
        f"Run on {report.date} by `{report.command}` ({report.duration_s:.0f} s).",
        "",
        describe_machine(report.machine),
        "",
        f"Workload: {s['jobs']} members send `/imagine` in one channel at the same moment; each job queues "
        f"{s['queue_s'][0]:g}-{s['queue_s'][1]:g} s and runs {s['run_s'][0]:g}-{s['run_s'][1]:g} s on the RunPod "
        f"double (uniform, seed {s['seed']}), reports progress about once a second while it runs, and returns its "
        f"own {s['picture']} (worker-sdxl). The real bot, with its real runner options (at most one status edit "
        f"per {s['edit_interval_s']:g} s and only on change; a ping for jobs that took over "
        f"{s['notify_after_s']:g} s), runs the real discord.py client against the Discord double, which enforces "
        "Discord's rate limits as docs/discord-notes.md quotes them: "
        f"{limits.bot_global.requests}/{limits.bot_global.per:g} s per bot token (interaction routes exempt), "
        f"{limits.interaction.requests}/{limits.interaction.per:g} s per interaction token, "
        f"{limits.channel_message.requests}/{limits.channel_message.per:g} s per channel for channel messages "
        f"(and as much for their edits), {limits.webhook_channel.requests}/{limits.webhook_channel.per:g} s per "
        "channel for webhook messages, and the 3 s deadline for the defer. Everything runs in one process.",
        "",
        "Lag: from the moment the RunPod double marks a job COMPLETED to the moment the request carrying its "
        "picture reaches the Discord double.",
    ]
    for scenario in report.scenarios:
        summary = summarise(scenario, s["edit_interval_s"])
        parts += [
            "",
            f"## {_title(scenario, s['jobs'])} ({scenario.duration_s:.0f} s)",
            "",
            main_table(summary),
            "",
            detail_table(summary, s["edit_interval_s"], limits),
        ]
        if scenario.rate_limit_hits:
            rows = [[key, str(count)] for key, count in sorted(scenario.rate_limit_hits.items())]
            parts += ["", "429s by route and bucket:", "", table(["route / bucket", "429s"], rows)]
        if scenario.unattributed_requests:
            rows = [[route, str(count)] for route, count in sorted(scenario.unattributed_requests.items())]
            parts += ["", "Requests not made for one job:", "", table(["route", "requests"], rows)]
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.discord", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs sent at once (default 50; 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 jobs, small pictures, short runs")
    parser.add_argument(
        "--concurrent",
        type=int,
        nargs="+",
        default=None,
        help="one round per value: the guild's jobs on RunPod at once (default: all of them, then the default "
        "guild policy's limit; with --quick all of them only)",
    )
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--results", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.jobs is None:
        args.jobs = 5 if args.quick else 50
    if args.concurrent is None:
        args.concurrent = [args.jobs] if args.quick else [args.jobs, GuildPolicy().guild_concurrent]
    if args.jobs < 1 or min(args.concurrent) < 1:
        parser.error("--jobs and --concurrent must be at least 1")
    args.concurrent = [min(value, args.jobs) for value in args.concurrent]
    return args


def main(argv: Sequence[str] | None = None) -> Report:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    quiet_logging()
    run = asyncio.run(benchmark(args))
    text = markdown(run.report)
    publish(text, args.results)
    return run.report


if __name__ == "__main__":
    main()
