"""Whether 300 `/imagine` arriving within 5 s are all acknowledged in time: `python -m benchmarks.ack`.

The real bot (`doubles.harness.running_bot`: the real discord.py client, the bot's real runner options) runs
in this process against both loopback doubles. The Discord double enforces Discord's 3 s deadline for
answering an interaction (a later callback answers 404/10062 "Unknown interaction") and Discord's rate
limits; the RunPod double plays the workers.

Workload: N different members of one server each send `/imagine` once, at moments drawn uniformly from a
window of W seconds (seeded), so they arrive in the bursts a busy server sees. The server's limits are
raised so that every job may run at once (`GuildPolicy`: member and guild concurrency, the queue), and no
quota is set. Every job queues 0.5-3 s and runs 2-8 s on RunPod (uniform, seeded), reports progress about
once a second, and answers with the member's own picture (`doubles.harness.png_for` of its prompt); the
jobs that arrived first are being polled, edited and delivered while the last ones arrive.

Measured: interactions acknowledged in time (the callback reached the Discord double and was accepted);
the ack latency, from the moment the double wrote the interaction to the gateway (`Interaction.dispatched_at`)
to the moment the callback request reached it (`Recorded.at`), both on this process's monotonic clock;
whether every member got their own picture, and each picture was posted exactly once; and, to tell where
the time goes when an ack is slow, how late the event loop ran a 10 ms timer during the arrival window, and
the ack split at the moment the bot's client received the interaction (discord.py's `on_interaction`): the
gateway's part before, the bot's answer and its way to the double after.
`--profile FILE` writes a cProfile of the arrival window (the first ack-deadline after the last arrival).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord

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
from benchmarks.workload import job_index, prompt_for
from bot.jobs import RunnerOptions
from bot.policy import GuildPolicy
from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID, DEFAULT_USER_ID, DiscordDouble, Interaction, RateLimits, UserSpec
from doubles.harness import API_KEY, ENDPOINT, FINAL_TITLES, Harness, png_for, running_bot
from doubles.runpod import RunPodDouble, Script

ACK_DEADLINE_S = 3.0
DONE_TITLE = "✅ Done"
TARGET_P50_S = 0.1
TARGET_P99_S = 0.5
TICK_S = 0.01  # the event-loop probe's timer


@dataclass(frozen=True)
class Arrival:
    index: int
    at_s: float  # after the first
    queue_s: float
    run_s: float


def make_arrivals(n: int, window_s: float, *, seed: int, quick: bool) -> list[Arrival]:
    """`--quick` keeps the shape at a tenth of the RunPod times."""
    scale = 0.1 if quick else 1.0
    rng = random.Random(seed)
    moments = sorted(rng.uniform(0.0, window_s) for _ in range(n))
    if moments:
        moments[0] = 0.0  # the window starts with the first arrival
    return [
        Arrival(i, at, rng.uniform(0.5 * scale, 3.0 * scale), rng.uniform(2.0 * scale, 8.0 * scale))
        for i, at in enumerate(moments)
    ]


def script_for(arrival: Arrival) -> Script:
    """Its worker: progress about once a second of its run, then the member's own picture."""
    updates = max(2, round(arrival.run_s))
    progress = [(arrival.run_s * k / updates, f"{30 * k // updates}/30") for k in range(1, updates)]
    return Script(
        queue_s=arrival.queue_s,
        run_s=arrival.run_s,
        output=outputs.sdxl(png_for(prompt_for(arrival.index))),
        progress=progress,
        worker_id=f"worker-{arrival.index % 16}",
    )


def member(index: int) -> UserSpec:
    return UserSpec(id=DEFAULT_USER_ID + 1 + index, username=f"member{index}", global_name=f"Member {index}")


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class AckMeasure:
    index: int
    dispatched_late_s: float  # how far behind its planned moment the double sent it
    callbacks: int  # callback requests for it (more than one would be a retry)
    status: int | None  # the double's answer to the first callback: 204 in time, 404 too late
    ack_s: float | None  # dispatched -> callback request reached the double
    received_s: float | None  # dispatched -> the bot's client received it (`on_interaction`)
    title: str | None  # what the member's message shows at the end
    own_picture: bool  # the member's message carries exactly their own picture
    uploads: int  # accepted requests that carried this member's picture, wherever they went
    picture_s: float | None  # dispatched -> the request carrying the picture reached the double
    lag_s: float | None  # COMPLETED on the RunPod double -> the request carrying the picture reached Discord
    submit_s: float | None  # dispatched -> the job's /run reached the RunPod double

    @property
    def in_time(self) -> bool:
        return self.status is not None and self.status < 300

    @property
    def delivered_once(self) -> bool:
        return self.own_picture and self.uploads == 1


@dataclass
class Report:
    date: str
    machine: dict[str, Any]
    command: str
    settings: dict[str, Any]
    acks: list[AckMeasure]
    arrival_span_s: float  # first to last dispatch, as it happened
    misplaced: int  # pictures on a message that is not their member's
    loop_lag_s: list[float]  # how late a 10 ms timer fired, during the arrival window
    rate_limited: int
    requests: dict[str, int]  # Discord requests by route
    status_polls: int  # /status requests the RunPod double answered
    busiest_status_window: int  # of those, the most in any 10 s (RunPod allows 2000; the bot keeps 10 % under)
    duration_s: float


@dataclass
class Run:
    """A finished benchmark and what the doubles recorded, for a test to check the report against."""

    report: Report
    discord: DiscordDouble
    runpod: RunPodDouble
    interactions: list[Interaction]


async def _probe_loop(lags: list[float], stop: asyncio.Event) -> None:
    """How late the loop runs a timer: the time every other task had to wait for its turn, too."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lags.append(max(0.0, time.perf_counter() - before - TICK_S))


async def _send_all(double: DiscordDouble, arrivals: Sequence[Arrival], sent: list[tuple[Interaction, float]]) -> None:
    """Each member's `/imagine` at its moment; built when sent, so its snowflake (which the double measures
    the 3 s from) is its dispatch time."""
    start = time.monotonic()
    for arrival in arrivals:
        delay = start + arrival.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        interaction = double.slash("imagine", {"prompt": prompt_for(arrival.index)}, user=member(arrival.index))
        await double.send(interaction)
        assert interaction.dispatched_at is not None
        sent.append((interaction, interaction.dispatched_at - (start + arrival.at_s)))


async def _all_final(harness: Harness, interactions: Sequence[Interaction], timeout: float) -> None:
    """Wait for every reply to reach a final title, looking twice a second: the harness's own `finished`
    scans every message a hundred times a second per job, which would load the loop it measures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(harness.title(interaction) in FINAL_TITLES for interaction in interactions):
            return
        await asyncio.sleep(0.5)


async def _quiet(double: DiscordDouble, for_s: float = 1.0, at_most_s: float = 10.0) -> None:
    deadline = time.monotonic() + at_most_s
    seen = -1
    while len(double.calls) != seen and time.monotonic() < deadline:
        seen = len(double.calls)
        await asyncio.sleep(for_s)


def measure(
    harness: Harness,
    arrivals: Sequence[Arrival],
    sent: Sequence[tuple[Interaction, float]],
    received: dict[int, float] | None = None,
) -> tuple[list[AckMeasure], int]:
    """(each interaction's numbers, pictures found on another member's message)."""
    double = harness.discord
    pictures = {png_for(prompt_for(arrival.index)): arrival.index for arrival in arrivals}
    uploads: Counter[int] = Counter()
    first_upload: dict[int, float] = {}
    for call in double.calls:
        if call.status < 300:
            for index in {pictures[file.data] for file in call.files if file.data in pictures}:
                uploads[index] += 1
                first_upload.setdefault(index, call.at)
    now = time.monotonic()
    finished = {job_index(job.input): job.finished_at(now) for job in harness.runpod.jobs.values()}
    submitted = {job_index(job.input): job.submitted_at for job in harness.runpod.jobs.values()}
    measures = []
    for arrival, (interaction, late) in zip(arrivals, sent, strict=True):
        done, uploaded = finished.get(arrival.index), first_upload.get(arrival.index)
        callbacks = double.calls_for("callback", interaction.token)
        first = callbacks[0] if callbacks else None
        shown = harness.shown(interaction)
        own = png_for(prompt_for(arrival.index))
        measures.append(
            AckMeasure(
                index=arrival.index,
                dispatched_late_s=late,
                callbacks=len(callbacks),
                status=first.status if first is not None else None,
                ack_s=first.at - interaction.dispatched_at
                if first is not None and interaction.dispatched_at is not None
                else None,
                received_s=(received or {})[int(interaction.id)] - interaction.dispatched_at
                if int(interaction.id) in (received or {}) and interaction.dispatched_at is not None
                else None,
                title=harness.title(interaction),
                own_picture=shown is not None and [attachment.data for attachment in shown.attachments] == [own],
                uploads=uploads[arrival.index],
                picture_s=uploaded - interaction.dispatched_at
                if uploaded is not None and interaction.dispatched_at is not None
                else None,
                lag_s=uploaded - done if uploaded is not None and done is not None else None,
                submit_s=submitted[arrival.index] - interaction.dispatched_at
                if arrival.index in submitted and interaction.dispatched_at is not None
                else None,
            )
        )
    # Whose picture is on whose message: the member named in the footer must be the picture's.
    misplaced = 0
    owners = {interaction.token: arrival.index for arrival, (interaction, _) in zip(arrivals, sent, strict=True)}
    for message in double.messages.values():
        if message.deleted:
            continue
        for attachment in message.attachments:
            whose = pictures.get(attachment.data)
            owner = owners.get(message.interaction_token or "")
            if whose is not None and owner is not None and owner != whose:
                misplaced += 1
    return measures, misplaced


# --- the benchmark ------------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace) -> Run:
    begun = time.monotonic()
    arrivals = make_arrivals(args.members, args.window, seed=args.seed, quick=args.quick)
    scripts = [script_for(arrival) for arrival in arrivals]
    options = RunnerOptions()  # the bot's own: its real polling, 1.5 s between edits
    limits = RateLimits()
    discord_double = DiscordDouble(rate_limits=limits, enforce_ack_deadline=True)
    runpod = RunPodDouble(api_keys=[API_KEY], endpoints=[ENDPOINT])
    n = len(arrivals)
    sent: list[tuple[Interaction, float]] = []
    lags: list[float] = []
    async with runpod, discord_double, running_bot(runpod, options=options, discord_double=discord_double) as harness:
        runpod.default_script = lambda job_input: scripts[job_index(job_input)]
        # Limits raised so that every member's job may run at once: only the ack is measured here.
        policy = GuildPolicy(guild_concurrent=max(n, 1), member_concurrent=n, member_waiting=n)
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, policy.to_json())
        received: dict[int, float] = {}

        async def on_interaction(interaction: discord.Interaction[Any]) -> None:
            received.setdefault(interaction.id, time.monotonic())

        harness.bot.add_listener(on_interaction)
        print(f"{n} members send /imagine within {args.window:g} s...", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe_loop(lags, stop))
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        await _send_all(discord_double, arrivals, sent)
        await asyncio.sleep(ACK_DEADLINE_S)  # the last arrivals' acks are due within this
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        stop.set()
        await probe
        interactions = [interaction for interaction, _ in sent]
        horizon = max((a.queue_s + a.run_s for a in arrivals), default=0.0) + 60.0
        await _all_final(harness, interactions, horizon)
        await _quiet(discord_double)
        measures, misplaced = measure(harness, arrivals, sent, received)
    polls = [request.at for request in runpod.requests_for("status")]
    dispatched = [interaction.dispatched_at for interaction in interactions if interaction.dispatched_at is not None]
    settings = {
        "members": n,
        "window_s": args.window,
        "seed": args.seed,
        "queue_s": (min((a.queue_s for a in arrivals), default=0.0), max((a.queue_s for a in arrivals), default=0.0)),
        "run_s": (min((a.run_s for a in arrivals), default=0.0), max((a.run_s for a in arrivals), default=0.0)),
        "policy": policy,
        "edit_interval_s": options.edit_interval,
        "notify_after_s": options.notify_after,
    }
    report = Report(
        date=now_utc(),
        machine=machine(),
        command=command_line("benchmarks.ack", args.argv),
        settings=settings,
        acks=measures,
        arrival_span_s=max(dispatched) - min(dispatched) if dispatched else 0.0,
        misplaced=misplaced,
        loop_lag_s=lags,
        rate_limited=len(discord_double.rate_limit_hits),
        requests=dict(Counter(call.route for call in discord_double.calls)),
        status_polls=len(polls),
        busiest_status_window=peak_in_window(polls, 10.0),
        duration_s=time.monotonic() - begun,
    )
    return Run(report, discord_double, runpod, interactions)


# --- reporting ----------------------------------------------------------------------------------


@dataclass
class Summary:
    members: int
    in_time: int
    late: int  # callbacks the double refused as too late
    unanswered: int  # interactions with no callback at all
    acks: list[float]
    delivered_once: int
    own_picture: int
    duplicates: int  # members whose picture was posted more than once
    misplaced: int
    titles: dict[str, int]

    @property
    def p50(self) -> float | None:
        return quantile(self.acks, 0.5)

    @property
    def p99(self) -> float | None:
        return quantile(self.acks, 0.99)

    @property
    def targets_met(self) -> bool:
        p50, p99 = self.p50, self.p99
        return (
            self.in_time == self.members
            and p50 is not None
            and p99 is not None
            and p50 <= TARGET_P50_S
            and p99 <= TARGET_P99_S
        )


def summarise(report: Report) -> Summary:
    acks = report.acks
    return Summary(
        members=len(acks),
        in_time=sum(ack.in_time for ack in acks),
        late=sum(1 for ack in acks if ack.status is not None and not ack.in_time),
        unanswered=sum(1 for ack in acks if ack.status is None),
        acks=[ack.ack_s for ack in acks if ack.ack_s is not None],
        delivered_once=sum(ack.delivered_once for ack in acks),
        own_picture=sum(ack.own_picture for ack in acks),
        duplicates=sum(1 for ack in acks if ack.uploads > 1),
        misplaced=report.misplaced,
        titles=dict(Counter(ack.title or "(nothing)" for ack in acks)),
    )


def _spread(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "-"
    return " / ".join(number(quantile(values, q), digits) for q in (0.5, 0.99)) + f" / {number(max(values), digits)}"


def main_table(summary: Summary) -> str:
    n = summary.members
    rows = [
        ["interactions acknowledged in time (callback accepted within 3 s)", f"{summary.in_time}/{n}", f"{n}/{n}"],
        ["- callbacks refused as too late (404/10062)", str(summary.late), "0"],
        ["- interactions never answered", str(summary.unanswered), "0"],
        ["ack latency p50, s (dispatched -> callback reaches Discord)", number(summary.p50, 3),
         f"<= {TARGET_P50_S:g}"],
        ["ack latency p99, s", number(summary.p99, 3), f"<= {TARGET_P99_S:g}"],
        ["ack latency max, s", number(max(summary.acks, default=None), 3), ""],
        ["pictures delivered exactly once, each on its own member's message", f"{summary.delivered_once}/{n}",
         f"{n}/{n}"],
        ["- members whose picture was posted more than once", str(summary.duplicates), "0"],
        ["- pictures on another member's message", str(summary.misplaced), "0"],
    ]  # fmt: skip
    return table(["measure", "value", "target"], rows)


def detail_table(report: Report) -> str:
    lateness = [ack.dispatched_late_s for ack in report.acks]
    lags = report.loop_lag_s
    busy = sum(1 for lag in lags if lag > 0.05)
    received = [ack.received_s for ack in report.acks if ack.received_s is not None]
    answered = [
        ack.ack_s - ack.received_s for ack in report.acks if ack.ack_s is not None and ack.received_s is not None
    ]
    rows = [
        ["first to last interaction dispatched, s", number(report.arrival_span_s, 2)],
        ["interactions dispatched behind their planned moment, s: p50 / p99 / max", _spread(lateness)],
        [f"event loop: a {TICK_S * 1000:g} ms timer fired late by, s: p50 / p99 / max (arrivals + 3 s)",
         _spread(lags)],
        ["event loop: timers more than 50 ms late", f"{busy} of {len(lags)}"],
        ["ack, gateway's part: dispatched -> the bot's client has it, s: p50 / p99 / max", _spread(received)],
        ["ack, the bot's answer: the bot's client has it -> callback reaches Discord, s: p50 / p99 / max",
         _spread(answered)],
        ["interaction dispatched -> its picture reaches Discord, s: p50 / p99 / max",
         _spread([ack.picture_s for ack in report.acks if ack.picture_s is not None], 2)],
        ["interaction dispatched -> its /run reaches RunPod, s: p50 / p99 / max",
         _spread([ack.submit_s for ack in report.acks if ack.submit_s is not None], 2)],
        ["COMPLETED on RunPod -> its picture reaches Discord, s: p50 / p99 / max",
         _spread([ack.lag_s for ack in report.acks if ack.lag_s is not None], 2)],
        ["RunPod /status requests: all / busiest 10 s (RunPod's limit 2000, the bot keeps 10 % under)",
         f"{report.status_polls} / {report.busiest_status_window}"],
        [f"pings (followups: a job over {report.settings['notify_after_s']:g} s, or a private error)",
         str(report.requests.get("followup", 0))],
        ["final titles", ", ".join(f"{title} {count}" for title, count in sorted(summarise(report).titles.items()))],
        ["429s received", str(report.rate_limited)],
        ["Discord requests, all", str(sum(report.requests.values()))],
        ["Discord requests by route",
         ", ".join(f"{route} {count}" for route, count in sorted(report.requests.items()))],
    ]  # fmt: skip
    return table(["measure", "value"], rows)


def markdown(report: Report) -> str:
    s = report.settings
    policy: GuildPolicy = s["policy"]
    summary = summarise(report)
    verdict = "met" if summary.targets_met else "NOT met"
    parts = [
        "# Ack-under-load benchmark: latest results",
        "",
        f"Run on {report.date} by `{report.command}` ({report.duration_s:.0f} s).",
        "",
        describe_machine(report.machine),
        "",
        f"Workload: {s['members']} different members of one server each send `/imagine` once, within "
        f"{s['window_s']:g} s (moments uniform, seed {s['seed']}). The server's policy lets every job run at once "
        f"(guild_concurrent {policy.guild_concurrent}, member_concurrent {policy.member_concurrent}, "
        f"member_waiting {policy.member_waiting}; no quota). Each job queues "
        f"{s['queue_s'][0]:.2g}-{s['queue_s'][1]:.2g} s and runs {s['run_s'][0]:.2g}-{s['run_s'][1]:.2g} s on the "
        "RunPod double, reports progress about once a second, and returns the member's own small PNG. The real "
        f"bot (real runner options: real polling, a status edit at most every {s['edit_interval_s']:g} s) runs the "
        "real discord.py client against the Discord double, which enforces the 3 s deadline for the callback "
        "(later: 404/10062) and Discord's rate limits. Everything, both doubles included, runs in one process "
        "on one event loop.",
        "",
        "Ack latency: from the moment the Discord double wrote the interaction to the gateway "
        "(`Interaction.dispatched_at`) to the moment the bot's callback request reached it (`Recorded.at`).",
        "",
        f"Targets (the issue: all in time, p50 <= {TARGET_P50_S:g} s, p99 <= {TARGET_P99_S:g} s): **{verdict}**.",
        "",
        main_table(summary),
        "",
        detail_table(report),
    ]
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ack", description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=None, help="members, one /imagine each (300; 30 --quick)")
    parser.add_argument("--window", type=float, default=None, help="seconds they arrive within (5; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 members in 1 s, short jobs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of the arrival window here")
    parser.add_argument("--results", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.members is None:
        args.members = 30 if args.quick else 300
    if args.window is None:
        args.window = 1.0 if args.quick else 5.0
    if args.members < 1 or args.window < 0:
        parser.error("--members must be at least 1 and --window not negative")
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
