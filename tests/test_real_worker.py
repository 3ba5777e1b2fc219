"""RunPod's own worker SDK in the loop: tests/worker/handler.py served by `--rp_serve_api` (RunPod's local
test server), and `generate` and the real bot pointed at it with RUNPOD_BASE_URL in local mode.

The loopback double models hosted RunPod; this is the truth for what a worker produces (its output shape,
the error string a raised exception becomes) and for how the local server answers (docs/runpod-api.md,
Local test server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from bot import engine
from bot.config import LOCAL_ENDPOINT, Secret
from bot.engine import RunPodContext, follow_job
from bot.errors import JobExpired
from bot.images import UPSCALE_FACTOR, start_size
from bot.params import params_from_request
from bot.presets import PRESETS
from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID
from doubles.harness import button, field_value, free_port, running_bot, settings_for
from doubles.outputs import make_png
from doubles.runpod import Script
from tests.test_cli import generate, interrupt_when, start_generate

pytest.importorskip("runpod")  # the test extra installs it; `.ci/run` always has it

HANDLER = Path(__file__).resolve().parent / "worker" / "handler.py"


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    """The sample handler under RunPod's SDK, serving its local test API on a loopback port."""
    port = free_port()
    # The SDK downloads a picture to start from into ./jobs/, and only from public addresses unless told: the
    # Discord double's are on loopback.
    workdir = tempfile.TemporaryDirectory()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HANDLER), "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=workdir.name,
        env=os.environ | {"RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS": "true"},
    )  # fmt: skip
    try:
        for _ in range(240):  # the SDK's imports alone take seconds on a loaded machine
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError("RunPod's local test server did not start within 60 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        await process.wait()
        workdir.cleanup()


@pytest.fixture
async def sdk() -> AsyncIterator[str]:
    async with local_server() as url:
        yield url


def colour(seed: int) -> tuple[int, int, int]:
    return seed % 256, (seed // 256) % 256, 200  # as tests/worker/handler.py paints


async def test_generate_saves_exactly_what_the_real_worker_painted(tmp_path, sdk):
    finished = await generate(
        tmp_path, "--prompt", "a lighthouse --ar 16:9", "--seed", "42", env={"RUNPOD_BASE_URL": sdk}
    )
    assert finished.code == 0, finished.stderr
    assert "is RunPod's local test server" in finished.stderr
    (saved,) = [Path(line) for line in finished.stdout.split()]
    with Image.open(saved) as picture:
        expected = PRESETS["sdxl"].size(params_from_request("a lighthouse", aspect_ratio="16:9"))
        assert picture.size == expected
        assert picture.convert("RGB").getpixel((0, 0)) == colour(42)


async def test_the_log_leaves_out_what_the_local_server_does_not_tell(tmp_path, sdk):
    """The local server reports no queue or run time: the log line says nothing of them, rather than `None`."""
    finished = await generate(tmp_path, "--prompt", "a lighthouse", env={"RUNPOD_BASE_URL": sdk})
    assert finished.code == 0, finished.stderr
    (ended,) = [line for line in finished.stderr.splitlines() if " ended " in line]
    assert ended.endswith(" ended COMPLETED"), ended
    assert "None" not in finished.stderr


async def test_ctrl_c_against_the_local_server_offers_no_resume_and_blames_no_worker(tmp_path, sdk):
    process = await start_generate(tmp_path, "--prompt", "slow", env={"RUNPOD_BASE_URL": sdk})
    finished = await interrupt_when(process, "submitted")
    assert finished.code == 130
    last = finished.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: job test-")
    assert last.endswith(" may still run on RunPod's local test server, which can neither resume nor cancel a job")
    assert "--id" not in finished.stderr and "worker failed" not in finished.stderr
    # Asked anyway, it says why not, before asking the server (which would answer FAILED, "Job ID not found").
    job_id = last.removeprefix("interrupted: job ").split()[0]
    finished = await generate(tmp_path, "--id", job_id, env={"RUNPOD_BASE_URL": sdk})
    assert (finished.code, finished.stderr.strip().splitlines()[-1]) == (
        1,
        "error: RunPod's local test server cannot resume a job: it runs each job inside its first status request "
        "and then forgets it. --id works against hosted RunPod.",
    )


async def test_a_worker_that_raises_is_one_clear_line(tmp_path, sdk):
    finished = await generate(tmp_path, "--prompt", "please fail", env={"RUNPOD_BASE_URL": sdk})
    assert finished.code == 1
    assert finished.stderr.strip().splitlines()[-1] == (
        "error: The worker failed: CUDA out of memory: tried to allocate 2.00 GiB."
    )


async def test_the_timeout_holds_although_the_job_runs_inside_its_status_request(tmp_path, sdk):
    started = asyncio.get_running_loop().time()
    finished = await generate(tmp_path, "--prompt", "slow", "--timeout", "2", env={"RUNPOD_BASE_URL": sdk})
    assert finished.code == 1
    assert finished.stderr.strip().splitlines()[-1] == (
        "error: No result after 2 s; RunPod's local test server cannot cancel it, so it may still run."
    )
    assert asyncio.get_running_loop().time() - started < 2 + engine.CANCEL_PATIENCE + 5


async def test_the_bot_posts_the_real_workers_picture(runpod, sdk, caplog):
    settings = settings_for(
        runpod, runpod_api_url=sdk, runpod_local=True, runpod_endpoint_id=LOCAL_ENDPOINT, runpod_api_key=None
    )
    with caplog.at_level(logging.INFO, logger="bot"):
        async with running_bot(runpod, settings=settings) as harness:
            final = await harness.finished(await harness.imagine("a lighthouse", seed=7, aspect_ratio="3:2"), 30)
    # The local server tells no worker id, queue or run time: the log leaves them out rather than print a filler.
    logged = [record.getMessage() for record in caplog.records if record.name.startswith("bot")]
    assert any(" ended COMPLETED" in line for line in logged), logged
    for line in logged:
        assert not re.search(r"\bNone\b| -$| - |\(worker -\)|place -", line), line
    assert final.embeds[0]["title"] == "✅ Done"
    (attachment,) = final.attachments
    with Image.open(BytesIO(attachment.data)) as picture:
        assert picture.size == PRESETS["sdxl"].size(params_from_request("a lighthouse", aspect_ratio="3:2"))
        assert picture.convert("RGB").getpixel((5, 5)) == colour(7)
    assert runpod.requests == []  # the hosted double was never asked


def local_settings(runpod, sdk, worker: str):
    return settings_for(
        runpod,
        runpod_api_url=sdk,
        runpod_local=True,
        runpod_endpoint_id=LOCAL_ENDPOINT,
        runpod_api_key=None,
        runpod_worker=worker,
    )


async def image_prompt(harness, prompt: str, start: bytes, *, taken_away: bool = False):
    """`/imagine` from a picture; with `taken_away`, the picture is gone from Discord's CDN once the job is on
    RunPod (the bot has read it), before the worker fetches it, as an expired address would be."""
    option = harness.discord.attachment_option(start, "start.png", "image/png")
    interaction = await harness.imagine(prompt, image=option, seed=7)
    if taken_away:
        await harness.discord.wait_for(lambda: harness.title(interaction) not in (None, "Thinking…"), 30)
        del harness.discord.uploaded[int(option["value"])]
    return await harness.finished(interaction, 60)


async def test_the_sd15_worker_painting_from_the_start_picture_is_posted(runpod, sdk):
    async with running_bot(runpod, settings=local_settings(runpod, sdk, "sd15")) as harness:
        final = await image_prompt(harness, "a lighthouse", make_png(300, 200, seed=3))
    assert final.embeds[0]["title"] == "✅ Done"
    with Image.open(BytesIO(final.attachments[0].data)) as picture:
        assert picture.size == (296, 200)  # the start's size, as diffusers rounds it


async def test_the_sd15_worker_that_could_not_fetch_the_start_picture_is_refused(runpod, sdk):
    """Its SDK's download gives None, and the worker paints from the text alone: nothing is posted."""
    async with running_bot(runpod, settings=local_settings(runpod, sdk, "sd15")) as harness:
        final = await image_prompt(harness, "a late lighthouse", make_png(512, 512, seed=3), taken_away=True)
        assert final.embeds[0]["title"] == "⚠️ No picture this time"
        assert field_value(final, "What happened") == "The worker could not read the picture to start from."
        assert final.attachments == []


async def test_worker_sdxl_that_could_not_open_the_start_picture_is_one_sentence(runpod, sdk):
    async with running_bot(runpod, settings=local_settings(runpod, sdk, "sdxl")) as harness:
        final = await image_prompt(harness, "a late lighthouse", make_png(64, 64, seed=3), taken_away=True)
        assert field_value(final, "What happened") == "The worker could not read the picture to start from."
        info = await info_fields(harness, final)
    assert any("cannot identify image file <_io.BytesIO object at 0x" in value for value in info.values())


async def test_the_real_sdk_sends_its_webhook_to_the_address_the_bot_gave(runpod, sdk):
    """RunPod's local test server runs a job inside its /status and only then sends the webhook: the bot polls it
    (a wake-up could only come late), and the SDK's POST reaches the bot's server at a true address."""
    port = free_port()
    settings = settings_for(
        runpod,
        runpod_api_url=sdk,
        runpod_local=True,
        runpod_endpoint_id=LOCAL_ENDPOINT,
        runpod_api_key=None,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
    )
    async with running_bot(runpod, settings=settings) as harness:
        final = await harness.finished(await harness.imagine("a lighthouse", seed=7), 30)
        registry = harness.bot.metrics.registry

        def counted() -> dict[str, float]:
            outcomes = ("woke", "stale", "refused")
            return {o: registry.get_sample_value("imagine_webhooks_total", {"outcome": o}) or 0 for o in outcomes}

        await harness.discord.wait_for(lambda: sum(counted().values()) >= 1, 15)
        webhooks = counted()
    assert final.embeds[0]["title"] == "✅ Done"
    assert webhooks["refused"] == 0  # the SDK used the address the bot signed
    assert webhooks["woke"] + webhooks["stale"] == 1


async def test_check_recognises_the_local_test_server(tmp_path, discord_double, runpod, sdk):
    from tests.test_check import check

    report = await check(tmp_path, discord_double, runpod, RUNPOD_BASE_URL=sdk)
    line = report.line("RunPod local test server")
    assert line.startswith(f"warn RunPod local test server: {sdk} answers (RUNPOD_BASE_URL with no /v2/<id> path)")


async def test_a_job_the_local_server_forgot_is_not_the_workers_failure(sdk, session, fetcher):
    """What a restarted bot meets when it follows a job on again: the server answers FAILED, "Job ID not found"."""
    context = RunPodContext(session, fetcher, api_url=sdk, local=True)
    client = context.client(Secret(""), LOCAL_ENDPOINT)
    with pytest.raises(JobExpired) as ended:
        async for _ in follow_job(context, client, "test-forgotten", timeout=20):
            pass
    assert str(ended.value).startswith("RunPod's local test server no longer has this job")


# --- what the real workers do with a picture they cannot read (docs/image-to-image.md), on the RunPod double ---


async def info_fields(harness, message) -> dict[str, str]:
    click = harness.discord.click(button(message, "info"), message_id=message.id)
    await harness.discord.send(click)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", click.token))
    (callback,) = harness.discord.calls_for("callback", click.token)
    return {field["name"]: field["value"] for field in callback.json["data"]["embeds"][0]["fields"]}


async def test_sd15_painting_from_the_text_alone_is_refused_not_posted(runpod):
    """The SD v1 worker that cannot fetch `init_image` paints text-to-image at `width`/`height`, saying nothing. The
    bot sends a size unlike the start picture's (which its image path ignores), so the picture gives it away."""
    async with running_bot(runpod, settings=settings_for(runpod, runpod_worker="sd15")) as harness:
        harness.runpod.default_script = lambda job_input: Script(
            output=outputs.sd_v1(make_png(job_input["width"], job_input["height"]))  # from the text alone
        )
        option = harness.discord.attachment_option(make_png(512, 512, seed=4), "own.png", "image/png")
        interaction = await harness.imagine("from my picture", image=option)
        final = await harness.finished(interaction)
        assert final.embeds[0]["title"] == "⚠️ No picture this time"
        assert field_value(final, "What happened") == "The worker could not read the picture to start from."
        assert final.attachments == []
        (job,) = runpod.jobs.values()
        assert (job.input["width"], job.input["height"]) != (512, 512)  # 512x512 is what sd15 paints from text
        info = await info_fields(harness, final)
        assert any("from the text alone, not from the 512×512 picture to start from" in v for v in info.values())
        (record,) = await harness.bot.storage.guild_jobs_since(DEFAULT_GUILD_ID, datetime(2000, 1, 1, tzinfo=UTC))
        assert record.state.name == "FAILED"  # never counted in usage or quotas


async def test_sd15_painting_from_the_start_picture_is_posted(runpod):
    async with running_bot(runpod, settings=settings_for(runpod, runpod_worker="sd15")) as harness:
        painted = make_png(1000 - 1000 % 8, 744, seed=9)  # diffusers rounds each side down to a multiple of 8
        harness.runpod.default_script = lambda job_input: Script(output=outputs.sd_v1(painted))
        option = harness.discord.attachment_option(make_png(1000, 750, seed=4), "own.png", "image/png")
        final = await harness.finished(await harness.imagine("from my picture", image=option))
        assert final.embeds[0]["title"] == "✅ Done"
        assert final.attachments[0].data == painted


async def test_a_start_picture_the_worker_cannot_open_is_one_sentence_with_its_words_under_info(runpod):
    """worker-sdxl opens whatever its `image_url` answered with Pillow: an expired address gives an error page."""
    words = "cannot identify image file <_io.BytesIO object at 0x7f1c2b3a4d50>"
    async with running_bot(runpod) as harness:
        harness.runpod.default_script = lambda job_input: Script(outcome="FAILED", error=words)
        option = harness.discord.attachment_option(make_png(64, 64, seed=4), "own.png", "image/png")
        final = await harness.finished(await harness.imagine("from my picture", image=option))
        assert field_value(final, "What happened") == "The worker could not read the picture to start from."
        assert "BytesIO" not in str(final.embeds)
        info = await info_fields(harness, final)
        assert any(words in value for value in info.values())


@pytest.mark.parametrize("preset", sorted(name for name, p in PRESETS.items() if p.can_start_from_image))
def test_an_upscale_of_the_workers_own_picture_starts_within_its_documented_size(preset):
    """docs/image-to-image.md: at most 1024x768 worth of pixels for sd15, 2048x2048 for the others."""
    documented = {"sd15": 1024 * 768}.get(preset, 2048 * 2048)
    for ratio in ("1:1", "16:9", "2:3"):
        width, height = PRESETS[preset].size(params_from_request("x", aspect_ratio=ratio))
        wide, high = start_size(width, height, factor=UPSCALE_FACTOR, max_pixels=PRESETS[preset].max_start_pixels)
        assert wide * high <= documented
        assert (wide, high) != (width, height)  # still larger than the picture it enlarges


@pytest.mark.parametrize(
    ("start", "aspect_ratio", "sent"),
    [
        ((512, 512), "1:1", (512, 448)),  # an sd15 picture varied: what a text-to-image job would paint is avoided
        ((515, 517), "1:1", (512, 448)),  # ... also as diffusers rounds the start (512x512)
        ((640, 448), "1:1", (512, 512)),  # already unlike the start
    ],
)
def test_sd15_image_jobs_send_a_size_unlike_the_start_pictures(start, aspect_ratio, sent):
    params = params_from_request("x", aspect_ratio=aspect_ratio, seed=1, image_url="https://cdn.discordapp.com/a.png")
    job = PRESETS["sd15"].build_input(params, start_size=start)
    assert (job["width"], job["height"]) == sent
    assert job["width"] in PRESETS["sd15"].sides and job["height"] in PRESETS["sd15"].sides  # the schema's sides
    text_job = PRESETS["sd15"].build_input(params_from_request("x", aspect_ratio=aspect_ratio, seed=1))
    assert (text_job["width"], text_job["height"]) == PRESETS["sd15"].size(params)  # text jobs: unchanged
