"""The job engine against the double: every way a job can end, as the person waiting would see it."""

from __future__ import annotations

import pytest

from bot.engine import JobResult, JobUpdate, PollPolicy, follow_job, parse_progress, submit_job
from bot.errors import JobCancelled, JobExpired, JobFailed, JobTimedOut, OutputError, RunPodUnavailable
from bot.params import GenerationParams
from bot.presets import PRESETS
from bot.runpod import JobState
from tests.conftest import FAST_POLL
from tests.doubles import outputs
from tests.doubles.outputs import make_png
from tests.doubles.runpod import Script


async def run_job(client, fetcher, *, timeout=None, poll=FAST_POLL, job_input=None):
    job = await client.run(job_input or {"prompt": "a lighthouse"})
    events = [event async for event in follow_job(client, job.id, fetcher, timeout=timeout, poll=poll)]
    return job.id, events


async def test_a_job_is_followed_from_queue_through_progress_to_pictures(client, runpod, fetcher):
    png = make_png(48, 32, seed=9)
    runpod.script_next(
        Script(
            queue_s=0.1,
            run_s=0.3,
            progress=[(0.0, {"progress": "4/10"}), (0.15, "8/10")],
            output=outputs.sdxl(png, seed=42),
        )
    )
    job_id, events = await run_job(client, fetcher)
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


async def test_progress_output_that_looks_like_an_image_is_never_taken_for_one(client, runpod, fetcher):
    decoy, final = make_png(8, 8, seed=1), make_png(16, 16, seed=2)
    runpod.script_next(Script(run_s=0.2, progress=[(0.0, outputs.sdxl(decoy))], output=outputs.sdxl(final)))
    _, events = await run_job(client, fetcher)
    assert [image.png for image in events[-1].images] == [final]


async def test_worker_error_message_is_shown_without_its_traceback(client, runpod, fetcher):
    runpod.script_next(Script(run_s=0.05, outcome="FAILED", error=outputs.RUNPOD_PYTHON_ERROR))
    with pytest.raises(JobFailed) as caught:
        await run_job(client, fetcher)
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
    ],
)
async def test_every_failure_payload_gives_a_short_clear_message(client, runpod, fetcher, error, output, expected):
    script = Script(outcome="FAILED", error=error)
    if output is not None:
        script.output = output
    runpod.script_next(script)
    with pytest.raises(JobFailed, match=expected) as caught:
        await run_job(client, fetcher)
    assert len(str(caught.value)) < 400
    assert "Traceback" not in str(caught.value)


async def test_cancelled_and_timed_out_jobs_say_so(client, runpod, fetcher):
    runpod.script_next(Script(run_s=0.05, outcome="CANCELLED"), Script(run_s=0.05, outcome="TIMED_OUT"))
    with pytest.raises(JobCancelled, match="cancelled"):
        await run_job(client, fetcher)
    with pytest.raises(JobTimedOut, match="timed the job out"):
        await run_job(client, fetcher)


async def test_execution_timeout_from_the_policy_ends_timed_out(client, runpod, fetcher):
    runpod.script_next(Script(run_s=30))
    job = await submit_job(client, GenerationParams("x", seed=1), PRESETS["sdxl"], execution_timeout_s=0.1)
    assert runpod.jobs[job.id].policy == {"executionTimeout": 100}
    with pytest.raises(JobTimedOut):
        async for _ in follow_job(client, job.id, fetcher, poll=FAST_POLL):
            pass


async def test_our_deadline_cancels_the_job_on_runpod(client, runpod, fetcher):
    runpod.script_next(Script(queue_s=60))
    with pytest.raises(JobTimedOut, match="cancelled on RunPod") as caught:
        await run_job(client, fetcher, timeout=0.2)
    job_id = caught.value.job_id
    assert [request.job_id for request in runpod.requests_for("cancel")] == [job_id]
    assert runpod.jobs[job_id].status(runpod.clock()) == "CANCELLED"


async def test_stuck_in_progress_job_is_cancelled_at_the_deadline(client, runpod, fetcher):
    runpod.script_next(Script(run_s=0.05, stuck=True, progress=[(0.0, "finishing")], output=outputs.sdxl(make_png())))
    with pytest.raises(JobTimedOut):
        await run_job(client, fetcher, timeout=0.3)
    assert len(runpod.requests_for("cancel")) == 1


async def test_deadline_when_cancel_also_fails_says_the_job_may_still_run(client, runpod, fetcher):
    runpod.script_next(Script(queue_s=60))
    runpod.fail_next("cancel", 503, count=10)
    with pytest.raises(JobTimedOut, match="may still run"):
        await run_job(client, fetcher, timeout=0.1)


async def test_result_past_retention_is_expired(client, runpod, fetcher):
    runpod.script_next(Script(queue_s=60))
    job = await client.run({"prompt": "x"})
    runpod.expire(job.id)
    with pytest.raises(JobExpired, match="30 minutes"):
        async for _ in follow_job(client, job.id, fetcher, poll=FAST_POLL):
            pass


async def test_completed_with_no_output_or_no_image_is_an_output_error(client, runpod, fetcher):
    runpod.script_next(Script(), Script(output=outputs.NO_IMAGES), Script(output={"images": ["bm90IGFuIGltYWdl"]}))
    for expected in ("no output", "SaveImage", "not a PNG"):
        with pytest.raises(OutputError, match=expected) as caught:
            await run_job(client, fetcher)
        assert caught.value.job_id


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
async def test_every_worker_shape_through_the_engine(client, runpod, fetcher, output):
    runpod.script_next(Script(output=output))
    _, events = await run_job(client, fetcher)
    assert [image.png for image in events[-1].images] == [make_png(seed=3)]


async def test_polling_rides_out_a_short_outage(client, runpod, fetcher):
    runpod.script_next(Script(run_s=0.2, output=outputs.sdxl(make_png())))
    runpod.fail_next("status", 503, count=6)  # more than one call's retries, fewer than the engine's patience
    _, events = await run_job(client, fetcher)
    assert isinstance(events[-1], JobResult)


async def test_polling_gives_up_when_runpod_stays_down(client, runpod, fetcher):
    runpod.script_next(Script(queue_s=60))
    job = await client.run({"prompt": "x"})
    runpod.fail_next("status", 503, count=1000)
    with pytest.raises(RunPodUnavailable):
        async for _ in follow_job(
            client, job.id, fetcher, poll=PollPolicy((0.001, 0.001), (0.001, 0.001), max_failures=3)
        ):
            pass


async def test_poll_cadence_backs_off_while_nothing_changes():
    policy = PollPolicy(queued=(1.0, 4.0), running=(0.5, 2.0), growth=2)
    assert [policy.delay(JobState.IN_QUEUE, n) for n in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert [policy.delay(JobState.IN_PROGRESS, n) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]


async def test_a_long_queue_is_not_polled_every_tick(client, runpod, fetcher):
    runpod.script_next(Script(queue_s=0.6, output=outputs.sdxl(make_png())))
    await run_job(client, fetcher, poll=PollPolicy(queued=(0.02, 0.2), running=(0.02, 0.2)))
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
