"""RunPod's own worker SDK in the loop: tests/worker/handler.py served by `--rp_serve_api` (RunPod's local
test server), and `generate` and the real bot pointed at it with RUNPOD_BASE_URL in local mode.

The loopback double models hosted RunPod; this is the truth for what a worker produces (its output shape,
the error string a raised exception becomes) and for how the local server answers (docs/runpod-api.md,
Local test server)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from bot import engine
from bot.config import LOCAL_ENDPOINT
from bot.params import params_from_request
from bot.presets import PRESETS
from doubles.harness import free_port, running_bot, settings_for
from tests.test_cli import generate

pytest.importorskip("runpod")  # the test extra installs it; `.ci/run` always has it

HANDLER = Path(__file__).resolve().parent / "worker" / "handler.py"


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    """The sample handler under RunPod's SDK, serving its local test API on a loopback port."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HANDLER), "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(120):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError("RunPod's local test server did not start within 30 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        await process.wait()


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


async def test_the_bot_posts_the_real_workers_picture(runpod, sdk):
    settings = settings_for(
        runpod, runpod_api_url=sdk, runpod_local=True, runpod_endpoint_id=LOCAL_ENDPOINT, runpod_api_key=None
    )
    async with running_bot(runpod, settings=settings) as harness:
        final = await harness.finished(await harness.imagine("a lighthouse", seed=7, aspect_ratio="3:2"), 30)
    assert final.embeds[0]["title"] == "✅ Done"
    (attachment,) = final.attachments
    with Image.open(BytesIO(attachment.data)) as picture:
        assert picture.size == PRESETS["sdxl"].size(params_from_request("a lighthouse", aspect_ratio="3:2"))
        assert picture.convert("RGB").getpixel((5, 5)) == colour(7)
    assert runpod.requests == []  # the hosted double was never asked


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
