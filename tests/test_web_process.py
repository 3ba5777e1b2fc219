"""The web server of real `python -m bot` processes (PORT, PUBLIC_URL): health and metrics as a PaaS sees them,
and a webhook that reaches the process which does not follow its job (shards over one PostgreSQL ledger)."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from doubles import outputs
from doubles.discord import DiscordDouble
from doubles.harness import free_port, png_for, running_bot, settings_for
from doubles.runpod import Script
from tests.processes import ready, start_bot
from tests.test_check import check
from tests.test_restart import title
from tests.test_web_e2e import get


async def healthy(url: str, timeout: float = 15.0) -> list[int]:
    """Ask /healthz until it says 200 (the bot is ready once its guilds have arrived); every answer, in order
    (0: not listening yet)."""
    answers: list[int] = []
    async with asyncio.timeout(timeout):
        while not answers or answers[-1] != 200:
            try:
                answers.append((await get(url))[0])
            except aiohttp.ClientConnectorError:
                answers.append(0)
            await asyncio.sleep(0.1)
    return answers


async def test_a_bot_process_answers_healthz_and_metrics_on_port(tmp_path, runpod):
    async with DiscordDouble() as discord_double:
        port = free_port()
        bot = await start_bot(tmp_path, discord_double, runpod, PORT=str(port))
        await discord_double.wait_for(lambda: "web server listening on port" in bot.log, timeout=10)
        answers = await healthy(f"http://127.0.0.1:{port}/healthz")
        await ready(discord_double)
        status, health = await get(f"http://127.0.0.1:{port}/healthz")
        metrics_status, metrics = await get(f"http://127.0.0.1:{port}/metrics")
        bot.process.send_signal(signal.SIGTERM)
        assert await bot.finish() == 0
    assert set(answers[:-1]) <= {503}  # before the gateway is ready: up, and saying it is not ready yet
    assert status == 200, health
    assert '"gateway": "ready"' in health
    assert metrics_status == 200
    assert "imagine_discord_requests_total" in metrics
    assert discord_double.token not in metrics


async def test_a_webhook_reaching_the_other_shard_wakes_the_job_through_postgresql(
    tmp_path, sharded_double, runpod, database_url
):
    if not database_url.startswith("postgresql"):
        pytest.skip("processes share a ledger on PostgreSQL only (LISTEN/NOTIFY)")
    runpod.default_script = lambda job_input: Script(
        queue_s=0.2, run_s=0.3, output=outputs.sdxl(png_for(job_input["prompt"]))
    )
    zero_port, one_port = free_port(), free_port()
    # Every webhook goes to process zero, as a load balancer may send it: the job is process one's.
    env = {"SHARD_COUNT": "2", "DATABASE_URL": database_url, "PUBLIC_URL": f"http://127.0.0.1:{zero_port}"}
    for folder in ("zero", "one"):
        (tmp_path / folder).mkdir()
    zero = await start_bot(tmp_path / "zero", sharded_double, runpod, SHARD_IDS="0", PORT=str(zero_port), **env)
    await healthy(f"http://127.0.0.1:{zero_port}/healthz")  # one at a time: both would migrate the database
    one = await start_bot(tmp_path / "one", sharded_double, runpod, SHARD_IDS="1", PORT=str(one_port), **env)
    await healthy(f"http://127.0.0.1:{one_port}/healthz")

    for_one = sharded_double.slash("imagine", {"prompt": "shard one"})  # the default guild is shard one's
    await sharded_double.send(for_one)
    await sharded_double.wait_for(lambda: title(sharded_double, for_one) == "✅ Done", timeout=6)

    (job_id,) = runpod.jobs
    assert [call.status for call in runpod.webhooks_for(job_id)] == [200]
    assert runpod.webhook_calls[0].url.startswith(f"http://127.0.0.1:{zero_port}/runpod/webhook/")
    # Its follower (in process one) polls every 8 s while a webhook is expected: the one /status was the wake-up.
    assert len(runpod.requests_for("status", job_id)) == 1
    _, zero_metrics = await get(f"http://127.0.0.1:{zero_port}/metrics")
    assert 'imagine_webhooks_total{outcome="woke"} 1.0' in zero_metrics
    assert "shard one" not in zero.log
    for process in (zero, one):
        process.process.send_signal(signal.SIGTERM)
        assert await process.finish() == 0


async def test_check_says_whether_public_url_reaches_the_bot(tmp_path, discord_double, runpod):
    port = free_port()
    settings = settings_for(runpod, port=port, public_url=f"http://127.0.0.1:{port}")
    async with running_bot(runpod, settings=settings) as harness:
        answering = await check(tmp_path, discord_double, runpod, PUBLIC_URL=str(harness.web_url))
    silent = await check(tmp_path, discord_double, runpod, PUBLIC_URL=f"http://127.0.0.1:{free_port()}")
    (line,) = [line for line in answering.lines if " webhooks: " in line]
    assert line.startswith(f"ok   webhooks: {harness.web_url}/healthz answers 200: RunPod's webhooks can reach the bot")
    (line,) = [line for line in silent.lines if " webhooks: " in line]
    assert line.startswith("warn webhooks: http://127.0.0.1:")
    assert "does not answer" in line
    assert "jobs are found by polling alone" in line


async def test_a_port_already_taken_is_one_clear_line(tmp_path, discord_double, runpod):
    taken = await asyncio.start_server(lambda reader, writer: None, "0.0.0.0", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        bot = await start_bot(tmp_path, discord_double, runpod, PORT=str(port))
        code = await bot.finish()
    finally:
        taken.close()
        await taken.wait_closed()
    assert code == 2
    assert f"configuration error: PORT {port}: cannot listen there" in bot.log
    assert "Traceback" not in bot.log
