"""Midjourney's moves end to end: sets of N pictures from workers that make fewer per job, U<n> and V<n> on a
set, Vary (subtle/strong) and Upscale on one picture, image prompts, Retry on a failed card; all through the real
bot against the Discord and RunPod doubles."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time

import aiohttp
import pytest
from PIL import Image

from bot.buttons import Variation
from bot.crypto import Vault
from bot.images import ImageHeader, prepare_bytes, start_size
from bot.params import UPSCALE_STRENGTHS
from bot.presets import PRESETS
from bot.runpod import RUN_BODY_LIMIT, RetryPolicy
from bot.start_picture import from_discord
from bot.storage import GuildEndpoint
from cogs.imagine import VARY_STRENGTH
from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID, DEFAULT_USER_ID, UserSpec
from doubles.harness import (
    API_KEY,
    ENDPOINT,
    TEST_ENCRYPTION_KEY,
    button,
    fast_options,
    field_value,
    png_for,
    running_bot,
    settings_for,
)
from doubles.outputs import make_png
from doubles.runpod import Script


def painted(job_input) -> Script:
    """A worker that paints as many pictures as asked, each its own (prompt, seed and index in the job)."""
    count = job_input.get("num_images") or job_input.get("num_outputs") or 1
    pngs = [png_for(f"{job_input.get('prompt')}|{job_input.get('seed')}|{n}") for n in range(count)]
    return Script(queue_s=0.05, run_s=0.1, output=outputs.sdxl(*pngs))


@pytest.fixture
async def harness(runpod):
    async with running_bot(runpod) as running:
        running.runpod.default_script = painted
        yield running


def custom_ids(message) -> list[list[str]]:
    return [[component["custom_id"] for component in row["components"]] for row in message.components]


def jobs_after(harness, known: set[str]):
    return [job for job in harness.runpod.jobs.values() if job.id not in known]


async def click(harness, message, action: str, **kwargs):
    interaction = harness.discord.click(button(message, action), message_id=message.id, **kwargs)
    await harness.discord.send(interaction)
    return interaction


async def test_count_4_on_sdxl_runs_2_jobs_and_posts_one_set_of_4(harness):
    interaction = await harness.imagine("four lighthouses", count=4, seed=100)
    final = await harness.finished(interaction)

    first, second = harness.runpod.jobs.values()  # worker-sdxl makes at most 2 a job
    assert (first.input["num_images"], first.input["seed"]) == (2, 100)
    assert (second.input["num_images"], second.input["seed"]) == (2, 102)  # no picture repeats
    expected = [png_for(f"four lighthouses|{seed}|{n}") for seed in (100, 102) for n in range(2)]
    assert [attachment.data for attachment in final.attachments] == expected  # one message, in order
    assert final.embeds[0]["title"] == "✅ Done"
    request = interaction.id
    assert custom_ids(final) == [
        [f"imagine:pick:{n}:{request}" for n in range(1, 5)],
        [f"imagine:vary:{n}:{request}" for n in range(1, 5)],
        [f"imagine:{action}:{request}" for action in ("reroll", "edit", "info", "delete")],
    ]
    record = await harness.bot.storage.job(request)
    assert record.runpod_job_ids == (first.id, second.id)
    assert record.pictures == 4  # what quotas count


async def test_a_set_whose_second_job_fails_posts_what_arrived_and_says_why(harness):
    def second_fails(job_input):
        if job_input["seed"] != 7:
            return Script(outcome="FAILED", error="CUDA out of memory")
        return painted(job_input)

    harness.runpod.default_script = second_fails
    final = await harness.finished(await harness.imagine("half a set", count=4, seed=7))
    assert final.embeds[0]["title"] == "✅ Done"
    assert len(final.attachments) == 2
    note = field_value(final, "Note")
    assert note.startswith("2 of 4 pictures arrived. The GPU ran out of memory")


async def test_u2_posts_picture_2_alone_with_the_single_picture_buttons(harness):
    interaction = await harness.imagine("pick one", count=4, seed=5)
    final = await harness.finished(interaction)
    u2 = await click(harness, final, "pick:2")
    await harness.discord.wait_for(lambda: getattr(harness.discord.original_message(u2.token), "attachments", None))
    picked = harness.discord.original_message(u2.token)
    (attachment,) = picked.attachments
    assert attachment.data == final.attachments[1].data  # picture 2, the very bytes
    assert picked.embeds[0]["title"] == "🖼️ Picture 2 of 4"
    assert custom_ids(picked)[0] == [
        f"imagine:{action}:{interaction.id}"
        for action in ("vary:subtle", "vary:strong", "upscale:subtle", "upscale:creative")
    ]
    assert len(harness.runpod.jobs) == 2  # posting a picture costs no GPU time


async def test_v1_on_a_set_makes_variations_of_picture_1_from_its_url(harness):
    await harness.bot.storage.save_member_settings(DEFAULT_GUILD_ID, DEFAULT_USER_ID, {"count": 2})  # /settings
    final = await harness.finished(await harness.imagine("vary me", count=2, seed=9))
    known = set(harness.runpod.jobs)
    v1 = await click(harness, final, "vary:1")
    varied = await harness.finished(v1)

    new = jobs_after(harness, known)
    assert len(new) == 2  # worker-sdxl makes one picture per image job: two jobs for a set of two
    source_url = harness.discord.message_json(final)["attachments"][0]["url"]
    for job in new:
        assert job.input["image_url"] == source_url
        assert job.input["strength"] == VARY_STRENGTH[Variation.STRONG]
        assert job.input["prompt"] == "vary me"
    assert len({job.input["seed"] for job in new}) == 2
    assert len(varied.attachments) == 2


async def test_vary_subtle_on_one_picture_sends_its_picture_and_a_low_strength(harness):
    final = await harness.finished(await harness.imagine("subtle"))
    known = set(harness.runpod.jobs)
    await harness.finished(await click(harness, final, "vary:subtle"))
    (job,) = jobs_after(harness, known)
    assert job.input["image_url"] == harness.discord.message_json(final)["attachments"][0]["url"]
    assert job.input["strength"] == VARY_STRENGTH[Variation.SUBTLE]


async def test_upscale_on_a_url_worker_sends_the_picture_enlarged_twice_where_the_worker_can_fetch_it(harness):
    final = await harness.finished(await harness.imagine("upscale me"))
    known = set(harness.runpod.jobs)
    harness.runpod.default_script = lambda job_input: Script(queue_s=0.5, output=painted(job_input).output)
    upscale = await click(harness, final, "upscale:subtle")
    await harness.discord.wait_for(lambda: jobs_after(harness, known))
    (job,) = jobs_after(harness, known)
    assert job.input["strength"] == UPSCALE_STRENGTHS["subtle"]
    async with aiohttp.ClientSession() as session, session.get(job.input["image_url"]) as response:
        start = await response.read()  # fetched as the worker fetches it, while the job waits
    done = await harness.finished(upscale)
    source = Image.open(io.BytesIO(final.attachments[0].data))
    enlarged = Image.open(io.BytesIO(start))
    assert enlarged.size == (source.width * 2, source.height * 2)
    assert done.embeds[0]["title"] == "✅ Done"
    assert [a.data for a in done.attachments] == [png_for(f"upscale me|{job.input['seed']}|0")]  # not the start


async def test_buttons_on_a_result_posted_before_a_restart_still_vary_it(runpod, discord_double, tmp_path):
    url, double = f"sqlite:///{tmp_path}/bot.db", discord_double
    async with running_bot(runpod, database_url=url, discord_double=double) as harness:
        final = await harness.finished(await harness.imagine("before the restart"))
        known = set(runpod.jobs)
    async with running_bot(runpod, database_url=url, discord_double=double) as harness:
        await harness.finished(await click(harness, final, "vary:strong"))
        (job,) = jobs_after(harness, known)
    assert job.input["image_url"] == double.message_json(final)["attachments"][0]["url"]
    assert job.input["prompt"] == "before the restart"


@pytest.mark.parametrize(
    ("worker", "fields"),
    [
        ("sdxl", lambda url, data: {"image_url": url, "strength": 0.4}),
        ("sd15", lambda url, data: {"init_image": url, "prompt_strength": 0.4}),
    ],
)
async def test_an_image_prompt_reaches_runpod_in_the_worker_s_own_fields(runpod, worker, fields):
    async with running_bot(runpod, settings=settings_for(runpod, runpod_worker=worker)) as harness:
        harness.runpod.default_script = painted
        start = make_png(64, 64, seed=4)
        option = harness.discord.attachment_option(start, "start.png", "image/png")
        interaction = await harness.imagine("from a sketch", image=option, strength=0.4)
        await harness.finished(interaction)
    (job,) = runpod.jobs.values()
    url = interaction.payload["data"]["resolved"]["attachments"][option["value"]]["url"]
    assert {key: job.input[key] for key in fields(url, start)} == fields(url, start)


async def test_an_image_prompt_on_a_base64_worker_sends_the_bytes(harness):
    workflow = '{"1": {"inputs": {"text": "{{prompt}}", "image": "{{image}}", "denoise": "{{strength}}"}}}'
    vault = Vault((TEST_ENCRYPTION_KEY,))
    await harness.bot.storage.save_guild_endpoint(
        GuildEndpoint(DEFAULT_GUILD_ID, "default", ENDPOINT, vault.encrypt(API_KEY), "comfyui", workflow)
    )
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(png_for("comfy")))
    start = make_png(48, 32, seed=8)
    option = harness.discord.attachment_option(start, "sketch.png", "image/png")
    final = await harness.finished(await harness.imagine("from bytes", image=option, strength=0.25))
    (job,) = harness.runpod.jobs.values()
    ((name, data),) = [(entry["name"], entry["image"]) for entry in job.input["images"]]
    assert base64.b64decode(data) == start  # the member's picture, byte for byte
    assert job.input["workflow"] == {"1": {"inputs": {"text": "from bytes", "image": name, "denoise": 0.25}}}
    assert final.attachments[0].data == png_for("comfy")


async def test_an_image_prompt_on_a_worker_without_image_to_image_is_refused(runpod):
    async with running_bot(runpod, settings=settings_for(runpod, runpod_worker="a1111")) as harness:
        option = harness.discord.attachment_option(make_png(8, 8), "start.png", "image/png")
        interaction = await harness.imagine("from a picture", image=option)
        await harness.discord.wait_for(lambda: harness.private_replies(interaction))
        assert harness.private_replies(interaction) == ["This server's worker (a1111) cannot start from a picture."]
        assert harness.runpod.requests == []


async def test_an_image_prompt_that_is_not_a_picture_is_refused_before_any_gpu_time(harness):
    option = harness.discord.attachment_option(b"%PDF-1.7 not a picture", "notes.pdf", "application/pdf")
    interaction = await harness.imagine("from a pdf", image=option)
    await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    assert harness.private_replies(interaction) == ["The picture to start from must be a PNG, JPEG or WebP file."]
    assert harness.runpod.requests == []


async def test_an_image_prompt_over_10_mb_is_refused_before_any_gpu_time(harness):
    option = harness.discord.attachment_option(b"\x89PNG" + bytes(10 * 1024 * 1024), "huge.png", "image/png")
    interaction = await harness.imagine("from a huge one", image=option)
    await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    assert "the most is 10 MB" in harness.private_replies(interaction)[0]
    assert harness.runpod.requests == []


async def test_a_failed_card_has_retry_and_retry_runs_the_same_job_again(harness):
    harness.runpod.default_script = lambda job_input: Script(outcome="FAILED", error="CUDA out of memory")
    interaction = await harness.imagine("try again", seed=77)
    failed = await harness.finished(interaction)
    assert failed.embeds[0]["title"] == "⚠️ No picture this time"
    ended = ("retry", "edit", "info", "delete")
    assert custom_ids(failed) == [[f"imagine:{action}:{interaction.id}" for action in ended]]
    (first,) = harness.runpod.jobs.values()

    harness.runpod.default_script = painted
    retried = await harness.finished(await click(harness, failed, "retry"))
    second = next(job for job in harness.runpod.jobs.values() if job.id != first.id)
    assert second.input == first.input  # the same job, seed and all
    assert retried.embeds[0]["title"] == "✅ Done"
    assert retried.attachments[0].data == png_for("try again|77|0")


async def test_no_public_message_carries_a_runpod_job_id(harness):
    final = await harness.finished(await harness.imagine("ids stay private", count=4))
    ids = list(harness.runpod.jobs)
    public = [m for m in harness.discord.messages.values() if not m.ephemeral]
    assert public
    for message in public:
        shown = str(message.embeds) + str(message.content) + str(message.components)
        assert not any(job_id in shown for job_id in ids)
    assert final.embeds[0]["footer"]["text"] == "Requested by Member"
    info = await click(harness, final, "info")  # privately, the ids are there for whoever asks RunPod's support
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", info.token))
    (callback,) = harness.discord.calls_for("callback", info.token)
    fields = {field["name"]: field["value"] for field in callback.json["data"]["embeds"][0]["fields"]}
    assert fields["RunPod"] == f"jobs `{ids[0]}`, `{ids[1]}`\nendpoint `{ENDPOINT}`"
    assert callback.json["data"]["flags"] & 64


_TIMESTAMP = re.compile(r"<t:(\d+):R>")


async def test_a_cold_start_status_never_shows_a_start_in_the_past_and_the_place_only_moves_up(runpod):
    options = fast_options(status_refresh=0.05, health_interval=0.05)
    async with running_bot(runpod, options=options) as harness:
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"member_concurrent": 2})
        harness.context.stats(ENDPOINT, DEFAULT_GUILD_ID).record(wait_s=3.9, run_s=0.5)  # what earlier jobs taught
        runpod.health_workers = {"idle": 0, "initializing": 1, "ready": 0, "running": 0, "throttled": 0}
        runpod.default_script = lambda job_input: Script(
            queue_s=4.2 + 0.3 * len(runpod.jobs),
            run_s=0.8,
            progress=[(0.0, "1/4"), (0.4, "3/4")],
            output=painted(job_input).output,
        )
        first = await harness.imagine("first in line")
        await harness.discord.wait_for(lambda: len(runpod.jobs) == 1)
        second = await harness.imagine("second in line", user=UserSpec(id=99, username="b", global_name="B"))
        seen: list[tuple[float, dict[str, str]]] = []
        deadline = time.monotonic() + 15
        while harness.title(second) not in ("✅ Done", "⚠️ No picture this time") and time.monotonic() < deadline:
            message = harness.shown(second)
            if message is not None and message.embeds:
                fields = {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}
                seen.append((time.time(), fields | {"title": message.embeds[0]["title"]}))
            await asyncio.sleep(0.02)
        await harness.finished(first)

    queued = [fields for _, fields in seen if fields["title"] == "⏳ In queue"]
    assert queued, "the status never showed the queue"
    places = [fields["Your place"] for fields in queued if "Your place" in fields]
    assert places[0].startswith("2nd") and places[-1].startswith("1st")
    assert [int(place[0]) for place in places] == sorted((int(place[0]) for place in places), reverse=True)
    assert any("starting a worker (a cold start)" in fields.get("Why the wait", "") for fields in queued)
    starts = [(at, fields["Expected start"]) for at, fields in seen if "Expected start" in fields]
    assert any(_TIMESTAMP.match(value) for _, value in starts), "a countdown was shown at first"
    assert starts[-1][1] == "any moment now"
    for at, value in starts:  # never "4 seconds ago": a shown countdown is always ahead of the moment it is seen
        if match := _TIMESTAMP.match(value):
            assert int(match[1]) >= int(at) - 1, f"expected start {value} shown at {at:.0f}"
    painting = [fields for _, fields in seen if fields["title"] == "🎨 Painting…"]
    assert painting and all(fields["Painting since"].startswith("<t:") for fields in painting)
    assert {fields["Progress"][-3:] for fields in painting} >= {"25%", "75%"}
    assert all("Expected done" in fields for fields in painting)  # from the run times the endpoint taught


async def test_count_offers_only_what_the_server_allows(harness):
    async def offered() -> list[int]:
        complete = harness.discord.autocomplete("imagine", {"prompt": "x", "count": 1}, focused="count")
        await harness.discord.send(complete)
        await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", complete.token))
        return [
            choice["value"]
            for choice in harness.discord.calls_for("callback", complete.token)[0].json["data"]["choices"]
        ]

    assert await offered() == [1, 2, 3, 4]  # worker-sdxl makes 2 a job, but a set of 4 is two jobs
    await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"max_count": 2})
    assert await offered() == [1, 2]


async def test_an_image_prompt_that_only_claims_to_be_a_picture_is_refused_before_any_gpu_time(harness):
    option = harness.discord.attachment_option(b"%PDF-1.7 dressed up", "sneaky.png", "image/png")
    final = await harness.finished(await harness.imagine("from a fake", image=option))
    assert final.embeds[0]["title"] == "⚠️ No picture this time"
    assert "The picture to start from is not a PNG, JPEG or WebP image." in field_value(final, "What happened")
    assert harness.runpod.requests_for("run") == []


async def test_runpod_failing_while_a_set_is_sent_cancels_the_part_already_sent_and_says_so(runpod):
    async with running_bot(runpod, retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)) as harness:
        harness.runpod.default_script = painted
        runpod.delay_next("run", 0.5)
        interaction = await harness.imagine("half sent", count=4)
        await harness.discord.wait_for(lambda: runpod.requests_for("run"))
        runpod.fail_next("run", 503, count=10)  # the second part's /run, after the first was taken
        failed = await harness.finished(interaction)
    (sent,) = runpod.jobs.values()
    assert [request.job_id for request in runpod.requests_for("cancel")] == [sent.id]  # it would bill for nothing
    assert failed.embeds[0]["title"] == "⚠️ No picture this time"
    assert "RunPod" in field_value(failed, "What happened")
    ended = ("retry", "edit", "info", "delete")
    assert custom_ids(failed) == [[f"imagine:{action}:{interaction.id}" for action in ended]]


async def test_buttons_of_another_server_s_job_do_nothing_here(harness):
    final = await harness.finished(await harness.imagine("ours"))
    other_guild = harness.discord.click(
        button(final, "vary:subtle"), message_id=final.id, guild_id=DEFAULT_GUILD_ID + 1
    )
    known = set(harness.runpod.jobs)
    await harness.discord.send(other_guild)
    await harness.discord.wait_for(lambda: harness.private_replies(other_guild))
    assert harness.private_replies(other_guild) == ["I have no record of this job any more."]
    assert jobs_after(harness, known) == []


async def test_a_confirmed_delete_is_still_only_for_the_requester_or_a_moderator(harness):
    final = await harness.finished(await harness.imagine("mine"))
    asked = await click(harness, final, "delete")
    await harness.discord.wait_for(lambda: harness.private_replies(asked))
    question = harness.discord.original_message(asked.token)
    stranger = UserSpec(id=DEFAULT_USER_ID + 7, username="stranger", global_name="Stranger")
    forged = await click(harness, question, "delete", user=stranger)  # a confirm button's custom_id, replayed
    await harness.discord.wait_for(lambda: harness.private_replies(forged))
    assert "Only the member who asked" in harness.private_replies(forged)[0]
    assert not harness.discord.messages[final.id].deleted


async def test_jobs_waiting_on_one_endpoint_share_its_health_instead_of_each_asking(runpod):
    options = fast_options(status_refresh=0.02, health_interval=0.02)
    async with running_bot(runpod, options=options, health_ttl=0.5) as harness:
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"member_concurrent": 6, "guild_concurrent": 6})
        runpod.default_script = lambda job_input: Script(queue_s=1.2, output=painted(job_input).output)
        interactions = [await harness.imagine(f"waiting {n}") for n in range(6)]
        for interaction in interactions:
            await harness.finished(interaction)
    # Six jobs redrawing every 20 ms for over a second would ask hundreds of times; one answer serves them all.
    assert 1 <= len(runpod.requests_for("health")) <= 5


async def test_upscale_on_a_base64_worker_sends_the_enlarged_bytes(harness):
    workflow = '{"1": {"inputs": {"text": "{{prompt}}", "image": "{{image}}", "denoise": "{{strength}}"}}}'
    vault = Vault((TEST_ENCRYPTION_KEY,))
    await harness.bot.storage.save_guild_endpoint(
        GuildEndpoint(DEFAULT_GUILD_ID, "default", ENDPOINT, vault.encrypt(API_KEY), "comfyui", workflow)
    )
    start = make_png(40, 30, seed=2)
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(start))
    option = harness.discord.attachment_option(make_png(8, 8), "seed.png", "image/png")
    final = await harness.finished(await harness.imagine("enlarge", image=option))
    known = set(harness.runpod.jobs)
    await harness.finished(await click(harness, final, "upscale:creative"))
    (job,) = jobs_after(harness, known)
    (entry,) = job.input["images"]
    assert Image.open(io.BytesIO(base64.b64decode(entry["image"]))).size == (80, 60)  # twice the picture posted
    assert job.input["workflow"]["1"]["inputs"]["denoise"] == UPSCALE_STRENGTHS["creative"]


def test_only_discord_s_own_addresses_are_fetched_as_a_picture_to_start_from():
    assert from_discord("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1&is=2&hm=3")
    assert from_discord("https://media.discordapp.net/attachments/1/2/a.png")
    assert not from_discord("http://169.254.169.254/latest/meta-data/")
    assert not from_discord("https://cdn.discordapp.com.evil.example/a.png")
    assert not from_discord("https://evil.example/?https://cdn.discordapp.com/a.png")


async def test_a_picture_deleted_before_its_variation_is_sent_ends_clearly_without_paying(harness):
    final = await harness.finished(await harness.imagine("soon gone"))
    known = set(harness.runpod.jobs)
    vary = harness.discord.click(button(final, "vary:strong"), message_id=final.id)  # the click carries its URL
    harness.discord.messages[final.id].attachments = []  # then the picture is gone from Discord's CDN
    await harness.discord.send(vary)
    failed = await harness.finished(vary)
    assert failed.embeds[0]["title"] == "⚠️ No picture this time"
    assert "The picture to start from could not be read from Discord (404)" in field_value(failed, "What happened")
    assert jobs_after(harness, known) == []
    assert custom_ids(failed)[0][0] == f"imagine:retry:{vary.id}"


# --- pictures to start from, fitted to the worker and to RunPod (issue 21) ------------------------------------

MB = 1024 * 1024
COMFY_WORKFLOW = '{"1": {"inputs": {"text": "{{prompt}}", "image": "{{image}}", "denoise": "{{strength}}"}}}'


def held_from_budget(harness) -> list[tuple[int, str, object]]:
    """Every work the bot ran on its pictures' thread: (bytes held from the budget, the work, its tenant)."""
    budget = harness.context.fetcher.budget
    real, held = budget.run, []

    async def run(amount, work, **kwargs):
        held.append((amount, getattr(work, "func", work).__name__, kwargs.get("tenant")))
        return await real(amount, work, **kwargs)

    budget.run = run
    return held


async def use_comfyui(harness) -> None:
    vault = Vault((TEST_ENCRYPTION_KEY,))
    await harness.bot.storage.save_guild_endpoint(
        GuildEndpoint(DEFAULT_GUILD_ID, "default", ENDPOINT, vault.encrypt(API_KEY), "comfyui", COMFY_WORKFLOW)
    )


def run_body_bytes(harness, job) -> int:
    (request,) = [request for request in harness.runpod.requests_for("run") if request.job_id == job.id]
    return len(json.dumps(request.body, separators=(",", ":")))


async def test_upscale_of_a_result_posted_as_jpeg_is_paid_for_at_its_real_size_and_sent_at_the_worker_s_size(harness):
    """It failed with "Something went wrong on our side" (the budget's ValueError), and so did Retry."""
    harness.runpod.default_script = lambda job_input: Script(output=outputs.sdxl(make_png(1500, 1500, seed=3)))
    final = await harness.finished(await harness.imagine("posted as jpeg", attachment_size_limit=2 * MB))
    assert final.attachments[0].filename.endswith(".jpg")  # 6.8 MB of PNG, over the limit: posted as JPEG
    held = held_from_budget(harness)
    known = set(harness.runpod.jobs)
    harness.runpod.default_script = lambda job_input: Script(queue_s=0.5, output=painted(job_input).output)
    upscale = await click(harness, final, "upscale")
    await harness.discord.wait_for(lambda: jobs_after(harness, known))
    (job,) = jobs_after(harness, known)
    async with aiohttp.ClientSession() as session, session.get(job.input["image_url"]) as response:
        start = Image.open(io.BytesIO(await response.read()))  # fetched as the worker fetches it
    assert job.input["image_url"].split("?")[0].endswith(f"/start.{'jpg' if start.format == 'JPEG' else 'png'}")
    done = await harness.finished(upscale)
    assert done.embeds[0]["title"] == "✅ Done"
    assert start.size == start_size(1500, 1500, factor=2, max_pixels=PRESETS["sdxl"].max_start_pixels)
    assert start.width > 1500 and start.width * start.height <= 2048 * 2048  # enlarged, to what worker-sdxl takes
    header = ImageHeader(1500, 1500, "JPEG")
    assert (prepare_bytes(header, start.size), "fit_start", DEFAULT_GUILD_ID) in held
    assert prepare_bytes(header, start.size) >= 1500 * 1500 * 12 + start.width * start.height * 4


async def test_upscale_on_a_base64_worker_sends_a_run_body_runpod_takes_and_pays_for_the_png(harness):
    """Enlarged twice, 1600x1600 of noise was a 30 MB PNG: 41 MB of base64 in one /run, which RunPod refuses."""
    await use_comfyui(harness)
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(make_png(1600, 1600, seed=6)))
    option = harness.discord.attachment_option(make_png(8, 8), "seed.png", "image/png")
    final = await harness.finished(await harness.imagine("enlarge a big one", image=option))
    held = held_from_budget(harness)
    known = set(harness.runpod.jobs)
    done = await harness.finished(await click(harness, final, "upscale"))
    assert done.embeds[0]["title"] == "✅ Done"
    (job,) = jobs_after(harness, known)
    assert run_body_bytes(harness, job) < RUN_BODY_LIMIT
    (entry,) = job.input["images"]
    sent = Image.open(io.BytesIO(base64.b64decode(entry["image"])))
    size = start_size(1600, 1600, factor=2, max_pixels=PRESETS["comfyui"].max_start_pixels)
    assert sent.size == size and sent.width > 1600
    # A PNG counts as what it inflates to: 8 bytes a pixel decoded, and more for the picture made of it.
    assert (prepare_bytes(ImageHeader(1600, 1600, "PNG"), size), "fit_start", DEFAULT_GUILD_ID) in held
    assert prepare_bytes(ImageHeader(1600, 1600, "PNG"), size) >= 1600 * 1600 * 8


async def test_an_8_mb_image_prompt_on_a_base64_worker_is_re_encoded_to_fit_runpod_s_body_limit(harness):
    """8 MB passed the bot's 10 MB check and became 10.7 MB of base64 on the wire: RunPod's raw 400."""
    await use_comfyui(harness)
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(png_for("comfy")))
    start = make_png(1700, 1700, seed=9)
    assert 8 * MB < len(start) < 10 * MB
    option = harness.discord.attachment_option(start, "big.png", "image/png")
    final = await harness.finished(await harness.imagine("from a big one", image=option))
    assert final.embeds[0]["title"] == "✅ Done"
    (job,) = harness.runpod.jobs.values()
    assert run_body_bytes(harness, job) < RUN_BODY_LIMIT
    (entry,) = job.input["images"]
    sent = Image.open(io.BytesIO(base64.b64decode(entry["image"])))
    assert (sent.format, sent.size) == ("JPEG", (1700, 1700))  # the same picture, as JPEG
    assert entry["name"].endswith(".jpg")


async def test_an_image_prompt_larger_than_sd15_takes_is_sent_scaled_down_to_it(runpod):
    """The SD v1 worker runs out of GPU memory past 1024x768 worth of pixels (docs/image-to-image.md)."""
    async with running_bot(runpod, settings=settings_for(runpod, runpod_worker="sd15")) as harness:
        # the worker paints an image job at the size of the picture it fetched
        painted_size = PRESETS["sd15"].painted_size(start_size(1600, 1200, max_pixels=1024 * 768))
        harness.runpod.default_script = lambda job_input: Script(output=outputs.sd_v1(make_png(*painted_size)))
        option = harness.discord.attachment_option(make_png(1600, 1200, seed=4), "large.png", "image/png")
        interaction = await harness.imagine("from a large one", image=option)
        await harness.discord.wait_for(lambda: harness.runpod.jobs)
        (job,) = harness.runpod.jobs.values()
        async with aiohttp.ClientSession() as session, session.get(job.input["init_image"]) as response:
            sent = Image.open(io.BytesIO(await response.read()))
        assert (await harness.finished(interaction)).embeds[0]["title"] == "✅ Done"
    member_url = interaction.payload["data"]["resolved"]["attachments"][option["value"]]["url"]
    assert job.input["init_image"] != member_url
    assert sent.size == start_size(1600, 1200, max_pixels=1024 * 768)
    assert sent.width * sent.height <= 1024 * 768 and sent.width > sent.height
