"""The job engine against the double: every way a job can end, as the person waiting would see it."""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import replace

import aiohttp
import pytest

from bot import engine
from bot.config import Secret
from bot.engine import JobResult, JobUpdate, RunPodContext, follow_job, parse_progress, submit_job
from bot.errors import JobCancelled, JobExpired, JobFailed, JobTimedOut, OutputError
from bot.images import ImageFetcher
from bot.params import GenerationParams
from bot.polling import EndpointStats, PollPolicy
from bot.presets import PRESETS
from bot.runpod import JobState, JobStatus, RunPodClient
from doubles import outputs
from doubles.outputs import make_png
from doubles.runpod import RunPodDouble, Script
from tests.conftest import API_KEY, ENDPOINT, FAST_POLL


async def run_job(context, client, *, timeout=None, poll=FAST_POLL, job_input=None):
    job = await client.run(job_input or {"prompt": "a lighthouse"})
    events = [event async for event in follow_job(context, client, job.id, timeout=timeout, poll=poll)]
    return job.id, events


async def test_a_job_is_followed_from_queue_through_progress_to_pictures(client, runpod, context):
    png = make_png(48, 32, seed=9)
    runpod.script_next(
        Script(
            queue_s=0.1,
            run_s=0.3,
            progress=[(0.0, {"progress": "4/10"}), (0.15, "8/10")],
            output=outputs.sdxl(png, seed=42),
        )
    )
    job_id, events = await run_job(context, client)
    *updates, result = events
    assert [update.state for update in updates][0] is JobState.IN_QUEUE
    running = [update for update in updates if update.state is JobState.IN_PROGRESS]
    assert [update.progress.text for update in running if update.progress] == ["4/10", "8/10"]
    assert running[-1].progress.fraction == pytest.approx(0.8)
    assert running[0].worker_id == "462u6mrq9s28h6" and running[0].delay_ms >= 100
    assert len(updates) == len({update.view for update in updates})  # only changes are reported
    assert isinstance(result, JobResult) and result.job_id == job_id
    assert [image.png for image in result.images] == [png]
    assert result.images[0].seed == 42
    assert result.execution_ms is not None


async def test_the_run_answer_stands_for_the_first_poll(client, runpod, context):
    png = make_png(16, 16, seed=3)
    runpod.script_next(Script(queue_s=0.2, run_s=0.2, output=outputs.sdxl(png)))
    job = await client.run({"prompt": "a lighthouse"})
    events = follow_job(context, client, job.id, poll=FAST_POLL, submitted=job)
    first = await anext(events)
    assert first.state is JobState.IN_QUEUE and first.job_id == job.id
    assert runpod.requests_for("status") == []  # the person sees "in queue" without RunPod being asked again
    *_, result = [event async for event in events]
    assert [image.png for image in result.images] == [png]
    assert runpod.requests_for("status")


async def test_progress_output_that_looks_like_an_image_is_never_taken_for_one(client, runpod, context):
    decoy, final = make_png(8, 8, seed=1), make_png(16, 16, seed=2)
    runpod.script_next(Script(run_s=0.2, progress=[(0.0, outputs.sdxl(decoy))], output=outputs.sdxl(final)))
    _, events = await run_job(context, client)
    assert [image.png for image in events[-1].images] == [final]


async def test_worker_error_message_is_shown_without_its_traceback(client, runpod, context):
    runpod.script_next(Script(run_s=0.05, outcome="FAILED", error=outputs.RUNPOD_PYTHON_ERROR))
    with pytest.raises(JobFailed) as caught:
        await run_job(context, client)
    message = str(caught.value)
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in message
    assert "Traceback" not in message and "handler.py" not in message
    assert caught.value.job_id


@pytest.mark.parametrize(
    ("error", "output", "expected"),
    [
        ("RuntimeError: NSFW content detected", None, "NSFW content detected"),
        (None, None, "without saying why"),
        ("Job processing failed", {"details": ["Node 3: model not found"]}, "Node 3: model not found"),
        ('Traceback (most recent call last):\n  File "x"\nValueError: bad size', None, "ValueError: bad size"),
        ("x" * 5000, None, "…"),
        ('{"error_message": ' + "[" * 5000 + "]" * 5000 + "}", None, r"The worker failed: \{\"error_message\": \[\[\["),
    ],
    ids=["plain", "none", "comfyui-details", "traceback", "long", "nested-too-deep"],
)
async def test_every_failure_payload_gives_a_short_clear_message(client, runpod, context, error, output, expected):
    script = Script(outcome="FAILED", error=error)
    if output is not None:
        script.output = output
    runpod.script_next(script)
    with pytest.raises(JobFailed, match=expected) as caught:
        await run_job(context, client)
    assert len(str(caught.value)) < 400
    assert "Traceback" not in str(caught.value)


async def test_cancelled_and_timed_out_jobs_say_so(client, runpod, context):
    runpod.script_next(Script(run_s=0.05, outcome="CANCELLED"), Script(run_s=0.05, outcome="TIMED_OUT"))
    with pytest.raises(JobCancelled, match="cancelled"):
        await run_job(context, client)
    with pytest.raises(JobTimedOut, match="timed the job out"):
        await run_job(context, client)


async def test_execution_timeout_from_the_policy_ends_timed_out(client, runpod, context):
    runpod.script_next(Script(run_s=30))
    job = await submit_job(client, GenerationParams("x", seed=1), PRESETS["sdxl"], execution_timeout_s=0.1)
    assert runpod.jobs[job.id].policy == {"executionTimeout": 100}
    with pytest.raises(JobTimedOut):
        async for _ in follow_job(context, client, job.id, poll=FAST_POLL):
            pass


async def test_our_deadline_cancels_the_job_on_runpod(client, runpod, context):
    runpod.script_next(Script(queue_s=60))
    with pytest.raises(JobTimedOut, match="cancelled on RunPod") as caught:
        await run_job(context, client, timeout=0.2)
    job_id = caught.value.job_id
    assert [request.job_id for request in runpod.requests_for("cancel")] == [job_id]
    assert runpod.jobs[job_id].status(runpod.clock()) == "CANCELLED"


async def test_stuck_in_progress_job_is_cancelled_at_the_deadline(client, runpod, context):
    runpod.script_next(Script(run_s=0.05, stuck=True, progress=[(0.0, "finishing")], output=outputs.sdxl(make_png())))
    with pytest.raises(JobTimedOut):
        await run_job(context, client, timeout=0.3)
    assert runpod.requests_for("cancel")  # tried, within the patience a deadline leaves it


async def test_deadline_when_cancel_also_fails_says_the_job_may_still_run(client, runpod, context):
    runpod.script_next(Script(queue_s=60))
    runpod.fail_next("cancel", 503, count=10)
    with pytest.raises(JobTimedOut, match="may still run"):
        await run_job(context, client, timeout=0.1)


async def test_result_past_retention_is_expired(client, runpod, context):
    runpod.script_next(Script(queue_s=60))
    job = await client.run({"prompt": "x"})
    runpod.expire(job.id)
    with pytest.raises(JobExpired, match="30 minutes"):
        async for _ in follow_job(context, client, job.id, poll=FAST_POLL):
            pass


async def test_completed_with_no_output_or_no_image_is_an_output_error(client, runpod, context):
    runpod.script_next(Script(), Script(output=outputs.NO_IMAGES), Script(output={"images": ["bm90IGFuIGltYWdl"]}))
    for expected in ("no output", "SaveImage", "not a PNG"):
        with pytest.raises(OutputError, match=expected) as caught:
            await run_job(context, client)
        assert caught.value.job_id


async def test_an_answer_too_large_to_read_ends_the_job_at_once_and_cancels_it(client, runpod, context):
    runpod.script_next(Script(queue_s=60))
    job = await client.run({"prompt": "x"})
    runpod.stream_next("status", outputs.streamed_status(200 * 1024 * 1024, job.id))
    with pytest.raises(
        OutputError, match=r"^RunPod's answer for this job is over 64 MB, so it was not read\.$"
    ) as caught:
        async for _ in follow_job(context, client, job.id, poll=FAST_POLL):
            pass
    assert caught.value.job_id == job.id
    assert "check the endpoint's worker" in caught.value.explanation
    assert len(runpod.requests_for("status", job.id)) == 1  # a failure of the job, not of one poll: never asked again
    assert [request.job_id for request in runpod.requests_for("cancel")] == [job.id]  # it may still be billing


async def test_an_answer_nested_too_deep_ends_the_job_with_a_clear_message(client, runpod, context):
    job = await client.run({"prompt": "x"})
    nested = "[" * 5000 + "]" * 5000
    answer = f'{{"id": "{job.id}", "status": "COMPLETED", "output": {{"images": {nested}}}}}'.encode()
    runpod.fail_next("status", 200, body=answer, content_type="application/json")
    with pytest.raises(
        OutputError, match="RunPod's answer for this job nests deeper than 64 levels, so it was refused"
    ):
        async for _ in follow_job(context, client, job.id, poll=FAST_POLL):
            pass
    assert len(runpod.requests_for("status", job.id)) == 1


@pytest.mark.parametrize(
    "output",
    [
        outputs.sdxl(make_png(seed=3)),
        outputs.comfyui(make_png(seed=3)),
        outputs.comfyui_legacy(make_png(seed=3)),
        outputs.a1111(make_png(seed=3)),
        outputs.sd_v1(make_png(seed=3)),
    ],
    ids=["sdxl", "comfyui", "comfyui-legacy", "a1111", "sd-v1"],
)
async def test_every_worker_shape_through_the_engine(client, runpod, context, output):
    runpod.script_next(Script(output=output))
    _, events = await run_job(context, client)
    assert [image.png for image in events[-1].images] == [make_png(seed=3)]


async def test_polling_rides_out_a_short_outage(client, runpod, context):
    runpod.script_next(Script(run_s=0.2, output=outputs.sdxl(make_png())))
    runpod.fail_next("status", 503, count=6)  # more than one call's retries, fewer than the engine's patience
    _, events = await run_job(context, client)
    assert isinstance(events[-1], JobResult)


async def test_an_outage_never_ends_a_paid_job_it_says_so_and_recovers(client, runpod, context):
    """RunPod answering 503 for many polls in a row: the job, which may be running and billing, is followed
    on; the watcher is told RunPod is not answering, then sees it recover and gets the picture."""
    png = make_png(seed=9)
    runpod.script_next(Script(run_s=3.0, output=outputs.sdxl(png)))  # still running once RunPod answers again
    job = await client.run({"prompt": "x"})
    runpod.fail_next("status", 503, count=40)  # ten polls' worth of the client's own retries
    poll = PollPolicy((0.001, 0.001), (0.001, 0.001), outage_interval=0.01)
    events = [event async for event in follow_job(context, client, job.id, poll=poll, submitted=job)]
    assert [event.unanswered for event in events if isinstance(event, JobUpdate)][:2] == [False, True]
    assert not events[-2].unanswered  # answering again before the end
    assert isinstance(events[-1], JobResult)
    assert events[-1].images[0].png == png
    assert runpod.requests_for("cancel") == []


async def test_a_deadline_bounds_the_request_in_flight_too(client, runpod, context):
    """RunPod stops answering altogether (each /status hangs): the job is given up at its deadline, not after
    the client's retries of a 20 s request; the cancel is tried but cannot hold the caller either."""
    runpod.script_next(Script(queue_s=60))
    job = await client.run({"prompt": "x"})
    runpod.delay_next("status", 60, count=100)
    runpod.delay_next("cancel", 60, count=100)
    started = asyncio.get_running_loop().time()
    with pytest.raises(JobTimedOut, match="cancelling it on RunPod failed, so it may still run"):
        async for _ in follow_job(context, client, job.id, timeout=0.5, poll=FAST_POLL, submitted=job):
            pass
    assert asyncio.get_running_loop().time() - started < 0.5 + engine.CANCEL_PATIENCE + 1.0
    assert runpod.requests_for("cancel")  # tried, within the patience a deadline leaves it


async def test_poll_cadence_backs_off_while_nothing_changes():
    policy = PollPolicy(queued=(1.0, 4.0), running=(0.5, 2.0), growth=2)
    assert [policy.delay(JobState.IN_QUEUE, n) for n in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert [policy.delay(JobState.IN_PROGRESS, n) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]


async def test_a_long_queue_is_not_polled_every_tick(client, runpod, context):
    runpod.script_next(Script(queue_s=0.6, output=outputs.sdxl(make_png())))
    await run_job(context, client, poll=PollPolicy(queued=(0.02, 0.2), running=(0.02, 0.2)))
    assert len(runpod.requests_for("status")) < 0.6 / 0.02 / 2


async def test_submit_builds_the_presets_input(client, runpod):
    params = GenerationParams("a lighthouse", aspect_ratio="9:16", seed=5)
    job = await submit_job(client, params, PRESETS["a1111"])
    assert runpod.jobs[job.id].input == PRESETS["a1111"].build_input(params)


@pytest.mark.parametrize(
    ("value", "text", "fraction"),
    [
        ({"progress": "4/10"}, "4/10", 0.4),
        ("step 3/4", "step 3/4", None),
        ("3/4 denoising", "3/4 denoising", 0.75),
        ("45%", "45%", 0.45),
        (0.5, "50%", 0.5),
        (75, "75%", 0.75),
        ({"step": 5, "total": 20}, "5/20", 0.25),
        ({"percent": 30}, "30%", 0.3),
        ("discrete_diarization;None;None", "discrete_diarization;None;None", None),
    ],
)
def test_progress_values_workers_send(value, text, fraction):
    progress = parse_progress(value)
    assert progress.text == text
    assert progress.fraction == (pytest.approx(fraction) if fraction is not None else None)


def test_unreadable_progress_is_ignored():
    assert parse_progress({"weird": [1]}) is None
    assert parse_progress(True) is None


def test_updates_are_values():
    assert JobUpdate("a", JobState.IN_QUEUE) == JobUpdate("a", JobState.IN_QUEUE)


# --- adaptive polling ------------------------------------------------------------------------------------


class VirtualClock:
    """Time that passes only when the one job being followed sleeps, shared with the double: minutes of
    polling run in milliseconds, and every request's time is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def virtual():
    clock = VirtualClock()
    async with RunPodDouble(api_keys=[API_KEY], endpoints=[ENDPOINT], clock=clock) as double:
        yield clock, double


def virtual_client(double, session, clock):
    return RunPodClient(
        session, api_key=Secret(API_KEY), endpoint_id=ENDPOINT, api_url=double.api_url, sleep=clock.sleep
    )


def learned(*runs: float) -> EndpointStats:
    stats = EndpointStats()
    for run_s in runs:
        stats.record(run_s=run_s)
    return stats


async def follow_virtually(virtual, session, fetcher, script, *, stats, poll=None, submitted_at=None, late=0.0):
    context = RunPodContext(session, fetcher, api_url=virtual[1].api_url)
    """Submit one scripted job, optionally start following it `late` s after, and return the poll times
    (seconds after submission) and the events."""
    clock, double = virtual
    client = virtual_client(double, session, clock)
    double.script_next(script)
    job = await client.run({"prompt": "x"})
    submitted = clock()
    clock.now += late
    events = [
        event
        async for event in follow_job(
            context, client, job.id, clock=clock, sleep=clock.sleep, stats=stats, poll=poll, submitted_at=submitted_at
        )
    ]
    return [request.at - submitted for request in double.requests_for("status")], events


TYPICAL_8S = (7.6, 7.8, 8.0, 8.0, 8.2, 8.4) * 5


async def test_a_learned_endpoint_is_polled_rarely_early_and_densely_near_the_finish(virtual, session, fetcher):
    stats = learned(*TYPICAL_8S)
    script = Script(queue_s=1.5, run_s=8.1, output=outputs.sdxl(make_png()))
    polls, events = await follow_virtually(virtual, session, fetcher, script, stats=stats)
    finish, band, policy = 1.5 + 8.1, stats.band(), PollPolicy()
    assert isinstance(events[-1], JobResult)
    # Nothing between the first poll and the quickest run seen: the job cannot be done before.
    assert [at for at in polls[1:] if at < band.low] == []
    # Once a finish is plausible, never more than `near` apart; from the likely finish on, `dense` apart.
    gaps = [(at, later - at) for at, later in itertools.pairwise(polls)]
    assert all(gap <= policy.near + 1e-9 for at, gap in gaps if at >= 1.5 + band.low)
    assert all(gap <= policy.dense + 1e-9 for at, gap in gaps if at >= 1.5 + band.dense_from)
    assert 0 <= polls[-1] - finish <= policy.dense  # found done within one dense interval
    assert len(polls) <= 0.6 * (finish + 1)  # what a poll every second (the official client) would make


async def test_a_few_runs_spread_widely_do_not_hide_a_quicker_finish(virtual, session, fetcher):
    """Three runs of 6-11.5 s say little about the quickest possible: a 4.3 s run is still found within `near`."""
    script = Script(queue_s=0.5, run_s=4.3, output=outputs.sdxl(make_png()))
    polls, events = await follow_virtually(virtual, session, fetcher, script, stats=learned(6.0, 9.0, 11.5))
    assert isinstance(events[-1], JobResult)
    assert 0 <= polls[-1] - 4.8 <= PollPolicy().near


async def test_until_an_endpoint_has_taught_anything_polling_backs_off_as_before(virtual, session, fetcher):
    stats = EndpointStats()
    script = Script(queue_s=1.5, run_s=8.1, output=outputs.sdxl(make_png()))
    polls, _ = await follow_virtually(virtual, session, fetcher, script, stats=stats)
    policy = PollPolicy()
    gaps = [later - at for at, later in itertools.pairwise(polls)]
    assert gaps[0] == pytest.approx(policy.queued[0])
    assert max(gaps) <= policy.queued[1] + 1e-9
    assert all(gap <= policy.running[1] + 1e-9 for at, gap in zip(polls, gaps, strict=False) if at > 3)
    # ...and the finished job taught it.
    assert stats.runs == 1 and stats.typical_run == pytest.approx(8.1)
    assert stats.typical_wait == pytest.approx(1.5)


async def test_learning_saves_requests_without_losing_the_finish(virtual, session, fetcher):
    """The same job on an endpoint that knows its run times and on one that does not."""
    script = Script(queue_s=0.5, run_s=8.0, output=outputs.sdxl(make_png()))
    blind, _ = await follow_virtually(virtual, session, fetcher, script, stats=EndpointStats())
    _, double = virtual
    double.requests.clear()
    taught, _ = await follow_virtually(virtual, session, fetcher, replace(script), stats=learned(*TYPICAL_8S))
    assert len(taught) < 0.6 * len(blind)
    assert taught[-1] - 8.5 <= PollPolicy().dense < blind[-1] - 8.5 + PollPolicy().near


async def test_a_cold_start_queue_is_polled_no_faster_than_the_quickest_run(virtual, session, fetcher):
    stats = learned(*TYPICAL_8S)
    script = Script(queue_s=25.0, run_s=8.0, output=outputs.sdxl(make_png()))
    polls, _ = await follow_virtually(virtual, session, fetcher, script, stats=stats)
    queued = [at for at in polls if at < 25.0]
    assert all(later - at >= stats.band().low - 1e-9 for at, later in itertools.pairwise(queued))
    assert len(queued) <= 1 + 25.0 / stats.band().low
    assert polls[-1] - 33.0 <= PollPolicy().dense


async def test_a_job_outrunning_every_run_seen_is_polled_ever_less_often(virtual, session, fetcher):
    stats = learned(2.0, 2.1, 2.2)
    script = Script(run_s=120.0, output=outputs.sdxl(make_png()))
    polls, events = await follow_virtually(virtual, session, fetcher, script, stats=stats)
    policy = PollPolicy()
    gaps = [later - at for at, later in itertools.pairwise(polls)]
    assert isinstance(events[-1], JobResult)
    assert max(gaps) <= policy.longest + 1e-9
    late = [gap for at, gap in zip(polls, gaps, strict=False) if at > 10]
    assert late == sorted(late)  # backing off, not hammering a stuck job
    assert len(polls) < 40  # a poll every second would make 120


async def test_a_worker_reporting_progress_has_its_bar_moved_regularly(virtual, session, fetcher):
    stats = learned(60.0, 62.0, 64.0)
    progress = [(second, f"{second}/60") for second in range(0, 60, 5)]
    script = Script(run_s=61.0, progress=progress, output=outputs.sdxl(make_png()))
    polls, events = await follow_virtually(virtual, session, fetcher, script, stats=stats)
    running = [at for at in polls if at > 0.5]
    assert all(later - at <= PollPolicy().progress_every + 1e-9 for at, later in itertools.pairwise(running))
    assert len({event.progress.text for event in events[:-1] if event.progress}) >= 6


async def test_a_resumed_job_uses_its_real_submission_time(virtual, session, fetcher):
    """Followed 5 s after it was submitted: the run's start, hence the finish, is still placed exactly."""
    stats = learned(*TYPICAL_8S)
    script = Script(queue_s=6.0, run_s=8.0, output=outputs.sdxl(make_png()))
    clock, _ = virtual
    polls, events = await follow_virtually(
        virtual, session, fetcher, script, stats=stats, submitted_at=clock(), late=5.0
    )
    assert isinstance(events[-1], JobResult)
    assert polls[-1] - 14.0 <= PollPolicy().dense


async def test_the_cadence_stays_within_a_fast_policy_whatever_was_learned(virtual, session, fetcher):
    """Tests and the bot's fast policies keep their pace even after learning from slow jobs."""
    fast = PollPolicy(queued=(0.02, 0.05), running=(0.02, 0.05))
    script = Script(queue_s=0.3, run_s=0.6, output=outputs.sdxl(make_png()))
    polls, _ = await follow_virtually(virtual, session, fetcher, script, stats=learned(30.0, 31.0), poll=fast)
    assert max(later - at for at, later in itertools.pairwise(polls)) <= fast.longest + 1e-9


def test_endpoint_stats_learn_only_from_completed_jobs():
    stats = EndpointStats()
    assert stats.band() is None and stats.typical_run is None
    stats.record_status(JobStatus("a", JobState.COMPLETED, delay_ms=2000, execution_ms=10_000))
    stats.record_status(JobStatus("b", JobState.FAILED, delay_ms=100, execution_ms=300))
    stats.record_status(JobStatus("c", JobState.COMPLETED, delay_ms=4000, execution_ms=12_000))
    assert stats.runs == 2
    assert (stats.typical_run, stats.typical_wait) == (pytest.approx(11.0), pytest.approx(3.0))
    band = stats.band()
    assert band.low < 10.0 < band.dense_from < 12.0 < band.high


def test_a_job_unchanged_for_hours_keeps_the_longest_interval():
    policy = PollPolicy()
    assert policy.delay(JobState.IN_PROGRESS, 100_000) == policy.running[1]
    assert policy.delay(JobState.IN_QUEUE, 100_000) == policy.queued[1]


def test_the_band_tightens_as_runs_accumulate():
    few, many = learned(10.0), learned(*[10.0] * 50)
    assert few.band().low < many.band().low < 10.0 < many.band().high < few.band().high


async def test_jobs_of_one_endpoint_share_what_it_taught(client, runpod, context):
    runpod.script_next(Script(run_s=0.2, output=outputs.sdxl(make_png())))
    assert context.stats(ENDPOINT).runs == 0  # a context of its own: nothing leaks in from other tests
    await run_job(context, client)
    other = context.client(Secret("another-key"), ENDPOINT)
    assert context.stats(other.endpoint_id) is context.stats(client.endpoint_id)
    assert context.stats(ENDPOINT).runs == 1
    assert context.stats("other-endpoint").runs == 0


async def test_many_pictures_finishing_at_once_are_decoded_a_few_at_a_time(client, runpod, session):
    """Large answers are read and decoded a few at a time; the rest wait or are fetched again, and all arrive."""
    png = make_png(300, 300, seed=4)  # well over the size that counts as large once base64-encoded
    assert len(outputs.b64(png)) > 256 * 1024

    class CountingFetcher(ImageFetcher):
        now = peak = 0

        async def decode_all(self, sources, *, tenant=None):
            CountingFetcher.now += 1
            CountingFetcher.peak = max(CountingFetcher.peak, CountingFetcher.now)
            try:
                await asyncio.sleep(0.05)  # a slow decode, so that answers pile up behind it
                return await super().decode_all(sources, tenant=tenant)
            finally:
                CountingFetcher.now -= 1

    jobs = []
    for _ in range(12):
        runpod.script_next(Script(run_s=0.2, output=outputs.sdxl(png)))
        jobs.append((await client.run({"prompt": "x"})).id)
    async with CountingFetcher() as fetcher:
        context = RunPodContext(session, fetcher, api_url=runpod.api_url)
        results = await asyncio.gather(
            *(_last(follow_job(context, client, job_id, poll=FAST_POLL, stats=EndpointStats())) for job_id in jobs)
        )
    assert all(isinstance(result, JobResult) and result.images[0].png == png for result in results)
    assert CountingFetcher.peak <= max(2, os.cpu_count() or 1)


async def _last(events):
    last = None
    async for event in events:
        last = event
    return last


async def test_jobs_waiting_for_a_picture_turn_hold_no_connection_and_one_key_never_takes_the_pool(runpod):
    """150 finished jobs waiting for a picture turn held every pooled connection: another server's /run waited."""
    png = make_png(300, 300, seed=5)  # a large answer once base64-encoded: it needs a picture turn
    runpod.api_keys.add("other-key")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session,
        ImageFetcher() as fetcher,
    ):
        context = RunPodContext(session, fetcher, api_url=runpod.api_url, picture_turns=1)
        assert context.key_requests == 2  # a quarter of the pool
        client = context.client(Secret(API_KEY), ENDPOINT)
        jobs = []
        for _ in range(12):
            runpod.script_next(Script(output=outputs.sdxl(png)))
            jobs.append((await client.run({"prompt": "x"})).id)
        await context.picture_turns.acquire("someone else")  # every turn is taken
        following = [
            asyncio.ensure_future(_last(follow_job(context, client, job_id, poll=FAST_POLL, tenant=1)))
            for job_id in jobs
        ]
        await wait_until(lambda: all(runpod.requests_for("status", job_id) for job_id in jobs))
        assert context.picture_turns.waiting == 12  # each saw its pictures were in, and waits for a turn
        assert not any(task.done() for task in following)
        other = context.client(Secret("other-key"), ENDPOINT)
        runpod.script_next(Script(output=outputs.sdxl(make_png())))
        async with asyncio.timeout(10):  # waiting for a connection forever is the failure
            assert (await other.run({"prompt": "another server"})).state is JobState.IN_QUEUE
        context.picture_turns.release("someone else")
        results = await asyncio.gather(*following)
    assert all(isinstance(result, JobResult) and result.images[0].png == png for result in results)
    # A job that waited asked for its answer again once its turn had come: twice at most, never more.
    assert all(len(runpod.requests_for("status", job_id)) <= 2 for job_id in jobs)


async def test_a_key_has_at_most_its_share_of_requests_in_flight(runpod):
    runpod.api_keys.add("other-key")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session,
        ImageFetcher() as fetcher,
    ):
        context = RunPodContext(session, fetcher, api_url=runpod.api_url)
        runpod.delay_next("health", 1.0, count=6)
        asking = [asyncio.ensure_future(context.client(Secret(API_KEY), ENDPOINT).health()) for _ in range(6)]
        await wait_until(lambda: len(runpod.requests_for("health")) >= 2)
        other = context.client(Secret("other-key"), ENDPOINT)
        runpod.script_next(Script(output=outputs.sdxl(make_png())))
        await other.run({"prompt": "another server"})  # its own share: not behind the first key's requests
        assert len(runpod.requests_for("health")) == 2  # the first key's others wait for one of its two to end
        await asyncio.gather(*asking)
    assert len(runpod.requests_for("health")) == 6


async def wait_until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (a condition on the double, which has no event for it)
            await asyncio.sleep(0.01)
