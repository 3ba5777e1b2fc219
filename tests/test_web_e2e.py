"""The bot's web server (PORT) with the real bot against both doubles: /healthz, /metrics, and RunPod's webhooks
(PUBLIC_URL) as wake-up calls that never decide what is posted."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import pytest

from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID, DEFAULT_USER_ID, OTHER_CHANNEL_ID, OTHER_GUILD_ID, UserSpec, two_guilds
from doubles.harness import (
    API_KEY,
    fast_options,
    free_port,
    png_for,
    running_bot,
    settings_for,
)
from doubles.runpod import RunPodDouble, Script

SLOW_FALLBACK = 60.0  # a poll this far apart cannot be what found the job's end in these tests


def push_options(**overrides: Any):
    options = fast_options(**overrides)
    return dataclasses.replace(options, poll=dataclasses.replace(options.poll, push_fallback=SLOW_FALLBACK))


def push_settings(runpod: RunPodDouble, **overrides: Any):
    port = free_port()
    return settings_for(runpod, port=port, public_url=f"http://127.0.0.1:{port}", **overrides)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def post(url: str, body: Any = None) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status


def uploaded_pngs(message) -> list[bytes]:
    return [attachment.data for attachment in message.attachments]


def other_request(url: str) -> str:
    base, request_id, part, token = url.rsplit("/", 3)
    return f"{base}/{int(request_id) + 1}/{part}/{token}"


def run_request(runpod: RunPodDouble) -> dict[str, Any]:
    (request,) = runpod.requests_for("run")
    return request.body


async def test_healthz_says_ok_once_the_gateway_is_ready_and_the_database_answers(runpod):
    async with running_bot(runpod, settings=push_settings(runpod)) as harness:
        assert harness.web_url is not None
        status, text = await get(f"{harness.web_url}/healthz")
    assert status == 200
    assert '"status": "ok"' in text
    assert '"gateway": "ready"' in text
    assert '"database": "ok"' in text


async def test_healthz_is_503_when_the_database_does_not_answer(runpod, monkeypatch):
    async with running_bot(runpod, settings=push_settings(runpod)) as harness:

        async def unreachable() -> None:  # no double can take a SQLite file away mid-run: a plain stand-in
            raise OSError("connection refused")

        monkeypatch.setattr(harness.bot.storage, "ping", unreachable)
        status, text = await get(f"{harness.web_url}/healthz")
    assert status == 503
    assert '"database": "unavailable"' in text


async def test_metrics_count_runpod_and_discord_requests_and_the_delivery_and_reveal_no_secret(runpod):
    secret_prompt = "a very private lighthouse prompt"
    async with running_bot(runpod, settings=push_settings(runpod)) as harness:
        await harness.finished(await harness.imagine(secret_prompt))
        status, text = await get(f"{harness.web_url}/metrics")
    assert status == 200
    assert 'imagine_runpod_requests_total{operation="run",status="200"} 1.0' in text
    assert 'imagine_runpod_requests_total{operation="status",status="200"}' in text
    assert 'imagine_discord_requests_total{status="200"}' in text
    assert "imagine_delivery_lag_seconds_count 1.0" in text
    assert 'imagine_live_jobs{state="running"} 0.0' in text
    assert "imagine_fair_queue_length 0.0" in text
    assert 'imagine_webhooks_total{outcome="woke"} 1.0' in text
    for secret in (API_KEY, "test-token", secret_prompt, "lighthouse"):
        assert secret not in text


async def test_a_webhook_wakes_the_follower_which_posts_what_status_says(runpod):
    settings = push_settings(runpod)
    worker = lambda job_input: Script(queue_s=0.1, run_s=0.2, output=outputs.sdxl(png_for(job_input["prompt"])))  # noqa: E731
    async with running_bot(runpod, settings=settings, options=push_options(), worker=worker) as harness:
        message = await harness.finished(await harness.imagine("a lighthouse at dusk"))
    assert message.embeds[0]["title"] == "✅ Done"
    assert uploaded_pngs(message) == [png_for("a lighthouse at dusk")]
    webhook = run_request(runpod)["webhook"]
    assert webhook.startswith(f"{settings.public_url}/runpod/webhook/")
    (job_id,) = runpod.jobs
    assert [call.status for call in runpod.webhooks_for(job_id)] == [200]
    # The /run answer stood for the first look; the only /status was the one the webhook asked for.
    assert len(runpod.requests_for("status", job_id)) == 1


async def test_a_lost_webhook_is_caught_by_the_fallback_poll(runpod):
    options = fast_options()
    options = dataclasses.replace(options, poll=dataclasses.replace(options.poll, push_fallback=0.3))
    runpod.lose_webhooks(1)
    async with running_bot(runpod, settings=push_settings(runpod), options=options) as harness:
        message = await harness.finished(await harness.imagine("a lighthouse at dusk"))
    assert message.embeds[0]["title"] == "✅ Done"
    assert runpod.webhook_calls == []
    assert "webhook" in run_request(runpod)


async def test_a_forged_webhook_body_cannot_put_a_picture_in_the_channel(runpod):
    """Whoever learns a job's address can post anything there: it only makes the bot ask /status."""
    real = png_for("a lighthouse at dusk")
    forged = outputs.make_png(40, 40, seed=666)
    runpod.webhook_delay_s = 0.5  # RunPod's own webhook comes after the forgery
    async with running_bot(runpod, settings=push_settings(runpod), options=push_options()) as harness:
        runpod.script_next(Script(queue_s=0.1, run_s=1.0, output=outputs.sdxl(real)))
        interaction = await harness.imagine("a lighthouse at dusk")
        await harness.discord.wait_for(lambda: bool(runpod.requests_for("run")), timeout=5)
        address = run_request(runpod)["webhook"]
        (job_id,) = runpod.jobs
        lie = {"id": job_id, "status": "COMPLETED", "output": outputs.sdxl(forged)}
        assert await post(address, lie) == 200  # a real job's address: the follower wakes, and asks
        await harness.discord.wait_for(lambda: len(runpod.requests_for("status", job_id)) >= 1, timeout=5)
        assert harness.title(interaction) != "✅ Done"  # RunPod said it is still running
        message = await harness.finished(interaction)
    assert uploaded_pngs(message) == [real]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url[:-1] + ("0" if url[-1] != "0" else "1"),  # a guessed token
        lambda url: url.replace("/0/", "/1/"),  # another part of the same request
        lambda url: other_request(url),  # the same token on another request's address
        lambda url: url + "/extra",
    ],
    ids=["token", "part", "request", "path"],
)
async def test_a_wrong_webhook_address_gets_404_and_changes_nothing(runpod, tamper):
    async with running_bot(runpod, settings=push_settings(runpod), options=push_options()) as harness:
        runpod.lose_webhooks(1)  # only the tampered call arrives
        runpod.script_next(Script(queue_s=0.05, run_s=0.1, output=outputs.sdxl(png_for("x"))))
        interaction = await harness.imagine("x")
        await harness.discord.wait_for(lambda: bool(runpod.requests_for("run")), timeout=5)
        address = run_request(runpod)["webhook"]
        assert await post(tamper(address), {"status": "COMPLETED"}) == 404
        (job_id,) = runpod.jobs
        assert runpod.requests_for("status", job_id) == []  # nobody was woken
        assert await post(address, {}) == 200  # the right one still works
        await harness.finished(interaction)
        _, metrics = await get(f"{harness.web_url}/metrics")
    assert 'imagine_webhooks_total{outcome="refused"} 1.0' in metrics


async def test_the_webhook_of_an_ended_job_gets_404(runpod):
    async with running_bot(runpod, settings=push_settings(runpod), options=push_options()) as harness:
        await harness.finished(await harness.imagine("a lighthouse at dusk"))
        address = run_request(runpod)["webhook"]
        await harness.discord.wait_for(lambda: not harness.bot.runner.live, timeout=5)
        assert await post(address, {"status": "COMPLETED"}) == 404
        _, metrics = await get(f"{harness.web_url}/metrics")
    assert 'imagine_webhooks_total{outcome="stale"} 1.0' in metrics


async def test_without_public_url_no_webhook_is_asked_for_and_polling_alone_follows(runpod):
    settings = settings_for(runpod, port=free_port())
    async with running_bot(runpod, settings=settings) as harness:
        await harness.finished(await harness.imagine("a lighthouse at dusk"))
        status, _ = await get(f"{harness.web_url}/healthz")
    assert status == 200
    assert "webhook" not in run_request(runpod)


async def test_each_part_of_a_set_has_its_own_webhook(runpod):
    worker = lambda job_input: Script(  # noqa: E731
        queue_s=0.05, run_s=0.1, output=outputs.sdxl(*[png_for(f"{job_input['seed']}-{n}") for n in range(2)])
    )
    async with running_bot(runpod, settings=push_settings(runpod), options=push_options(), worker=worker) as harness:
        message = await harness.finished(await harness.imagine("a set", count=4), timeout=15)
    assert len(uploaded_pngs(message)) in (1, 4)  # a grid, or the four pictures
    addresses = [request.body["webhook"] for request in runpod.requests_for("run")]
    assert len(addresses) == 2
    assert [address.split("/")[-2] for address in addresses] == ["0", "1"]
    for job_id in runpod.jobs:  # each part woken by its own webhook, not found by the 60 s poll
        assert [call.status for call in runpod.webhooks_for(job_id)] == [200]
        # one look when woken; the second part may also be looked at once while the first is followed, to tell
        # the status whether it is painting (never reading its pictures then)
        assert 1 <= len(runpod.requests_for("status", job_id)) <= 2


async def test_a_flood_of_webhooks_from_one_server_wakes_the_other_servers_job_on_its_own(runpod):
    """One server's 12 jobs end together with the other server's one: each is woken by its own webhook, and the
    other server's job is looked at once, when its own webhook comes, not when the flood's do."""
    worker = lambda job_input: Script(queue_s=0.05, run_s=0.3, output=outputs.sdxl(png_for(job_input["prompt"])))  # noqa: E731
    settings = push_settings(runpod)
    async with running_bot(runpod, settings=settings, options=push_options(), worker=worker, guilds=two_guilds()) as h:
        await h.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"member_concurrent": 12, "guild_concurrent": 12})
        flood = [
            await h.imagine(f"flood {n}", user=UserSpec(id=DEFAULT_USER_ID + n, username=f"m{n}", global_name=f"M{n}"))
            for n in range(12)
        ]
        other = h.discord.slash(
            "imagine", {"prompt": "meanwhile elsewhere"}, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID
        )
        await h.discord.send(other)
        finals = [await h.finished(interaction, timeout=20) for interaction in [*flood, other]]
    assert [final.embeds[0]["title"] for final in finals] == ["✅ Done"] * 13
    assert uploaded_pngs(finals[-1]) == [png_for("meanwhile elsewhere")]
    (other_job,) = [job_id for job_id, job in runpod.jobs.items() if job.input["prompt"] == "meanwhile elsewhere"]
    assert len(runpod.requests_for("status", other_job)) == 1
    assert all(call.status == 200 for call in runpod.webhook_calls) and len(runpod.webhook_calls) == 13


async def test_the_wake_up_s_status_refused_with_503_is_asked_again_soon(runpod):
    """RunPod answers the woken follower's /status with 503 (twice, after the client's own retries): the follower
    keeps asking on the outage backoff, not at the sparse fallback, and posts the picture."""
    async with running_bot(runpod, settings=push_settings(runpod), options=push_options()) as harness:
        runpod.webhook_delay_s = 0.2
        runpod.script_next(Script(queue_s=0.05, run_s=0.1, output=outputs.sdxl(png_for("through an outage"))))
        interaction = await harness.imagine("through an outage")
        await harness.discord.wait_for(lambda: bool(runpod.requests_for("run")), timeout=5)
        runpod.fail_next("status", 503, count=8)
        message = await harness.finished(interaction, timeout=15)
    assert message.embeds[0]["title"] == "✅ Done"
    assert uploaded_pngs(message) == [png_for("through an outage")]
    (job_id,) = runpod.jobs
    assert len(runpod.requests_for("status", job_id)) > 8  # the 503s, then the answer with the picture
