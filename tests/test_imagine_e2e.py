"""`/imagine` end to end: the real discord.py bot against the Discord double and the RunPod double."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import discord
import pytest

from bot.config import Secret
from bot.ratelimit import RateLimit
from bot.runpod import RetryPolicy
from doubles import outputs
from doubles.discord import DEFAULT_CHANNEL_ID, DEFAULT_GUILD_ID, DEFAULT_USER_ID, Limit, RateLimits, UserSpec
from doubles.harness import button, fast_options, field_value, png_for, running_bot, settings_for
from doubles.outputs import make_png, pixels
from doubles.runpod import Script
from tests.conftest import API_KEY


@pytest.fixture
async def harness(runpod):
    async with running_bot(runpod) as running:
        yield running


def conversation(harness, interaction) -> list[str]:
    """Every call the bot made for this interaction, as the member would experience it."""
    lines = []
    for call in harness.discord.calls:
        if call.token != interaction.token:
            continue
        body = (
            call.json.get("data", call.json) if call.route == "callback" and isinstance(call.json, dict) else call.json
        )
        embeds = (body or {}).get("embeds") or []
        title = embeds[0].get("title") if embeds else None
        files = ", ".join(f"{f.filename} ({len(f.data)} bytes)" for f in call.files)
        kind = f"callback type {call.json.get('type')}" if call.route == "callback" else call.route
        lines.append(" | ".join(part for part in (kind, title, files) if part))
    return lines


async def test_the_full_conversation_from_defer_to_the_picture(harness):
    png = png_for("a lighthouse at dusk")
    harness.runpod.default_script = lambda job_input: Script(
        queue_s=0.3, run_s=0.4, progress=[(0.0, "3/10"), (0.2, "7/10")], output=outputs.sdxl(png, seed=1234)
    )
    interaction = await harness.imagine("a lighthouse at dusk --ar 16:9", seed=1234)
    final = await harness.finished(interaction)

    (callback, *_) = [call for call in harness.discord.calls if call.token == interaction.token]
    assert callback.route == "callback"
    assert callback.json["type"] == 5  # deferred: "the bot is thinking"
    titles = [call.json["embeds"][0]["title"] for call in harness.edits(interaction)]
    assert titles[0] == "⏳ In queue"
    assert "🎨 Painting…" in titles
    assert titles[-1] == "✅ Done"
    progress_shown = [
        embed_field["value"]
        for call in harness.edits(interaction)
        for embed_field in call.json["embeds"][0].get("fields", [])
        if embed_field["name"] == "Progress"
    ]
    assert progress_shown[-1].endswith(" 70%")

    assert final.embeds[0]["title"] == "✅ Done"
    assert field_value(final, "Seed") == "1234"
    (attachment,) = final.attachments
    assert attachment.filename == "a_lighthouse_at_dusk_1234.png"
    assert attachment.data == png  # the worker's own bytes, untouched
    assert pixels(attachment.data) == pixels(png)
    (job,) = harness.runpod.jobs.values()
    rows = [[button["custom_id"] for button in row["components"]] for row in final.components]
    assert rows == [
        [
            f"imagine:{action}:{interaction.id}"
            for action in ("vary:subtle", "vary:strong", "upscale:subtle", "upscale:creative")
        ],
        [f"imagine:{action}:{interaction.id}" for action in ("reroll", "edit", "info", "delete")],
    ]
    assert job.api_key == API_KEY
    assert job.input == {
        "prompt": "a lighthouse at dusk",
        "width": 1344,
        "height": 768,
        "seed": 1234,
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "num_images": 1,
    }
    print("\n".join(conversation(harness, interaction)))


async def test_queued_status_shows_cold_start_and_cancel_button(harness):
    harness.runpod.default_script = lambda job_input: Script(queue_s=5)
    interaction = await harness.imagine("slow one")
    await harness.discord.wait_for(lambda: harness.title(interaction) == "⏳ In queue")
    shown = harness.shown(interaction)
    assert field_value(shown, "Your place") == "1st of 1 waiting"
    assert field_value(shown, "Workers") == "none running yet"
    assert "RunPod is starting one" in field_value(shown, "Why the wait")
    assert field_value(shown, "Waiting since").startswith("<t:")
    (job_id,) = harness.runpod.jobs
    assert shown.components[0]["components"][0]["custom_id"] == f"imagine:cancel:{interaction.id}"
    assert job_id  # submitted to RunPod, while the button names the request: it exists before the job does


@pytest.mark.parametrize("count", [2, 4])
async def test_several_images_arrive_as_attachments_in_order(runpod, count):
    pngs = [make_png(seed=n) for n in range(count)]
    async with running_bot(runpod, settings=settings_for(runpod, runpod_worker="a1111")) as harness:
        harness.runpod.default_script = lambda job_input: Script(output=outputs.a1111(*pngs))
        interaction = await harness.imagine("four cats", count=count)
        final = await harness.finished(interaction)
    assert [attachment.data for attachment in final.attachments] == pngs
    assert [attachment.filename for attachment in final.attachments] == [
        f"four_cats_{runpod.jobs[next(iter(runpod.jobs))].input['seed']}-{n}.png" for n in range(1, count + 1)
    ]
    assert next(iter(runpod.jobs.values())).input["batch_size"] == count


@pytest.mark.parametrize(
    "shape",
    [outputs.sdxl, outputs.comfyui, outputs.comfyui_legacy, outputs.a1111, outputs.sd_v1, outputs.sdxl_turbo],
    ids=["sdxl", "comfyui", "comfyui-legacy", "a1111", "sd-v1", "sdxl-turbo"],
)
async def test_every_worker_output_shape_is_posted(harness, shape):
    png = make_png(seed=77)
    harness.runpod.default_script = lambda job_input: Script(output=shape(png))
    final = await harness.finished(await harness.imagine())
    assert [attachment.data for attachment in final.attachments] == [png]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (Script(outcome="FAILED", error=outputs.RUNPOD_PYTHON_ERROR), "The GPU ran out of memory painting this."),
        (Script(outcome="TIMED_OUT"), "RunPod timed the job out"),
        (Script(outcome="CANCELLED"), "The job was cancelled on RunPod."),
        (Script(output=outputs.NO_IMAGES), "without saving an image"),
        (Script(output={"images": ["bm90IGFuIGltYWdl"]}), "is not a PNG, JPEG or WebP image"),
        (Script(output=outputs.LOCAL_PATH_FALLBACK), "path on the worker's own disk"),
    ],
    ids=["worker-error", "timed-out", "cancelled", "no-images", "not-an-image", "local-path"],
)
async def test_every_job_failure_ends_with_a_clear_message(harness, script, expected):
    harness.runpod.default_script = lambda job_input: script
    final = await harness.finished(await harness.imagine())
    explanation = field_value(final, "What happened")
    assert expected in explanation
    assert "Traceback" not in explanation
    assert final.attachments == []
    # ...and the bot keeps serving everyone else.
    harness.runpod.default_script = lambda job_input: Script(output=outputs.sdxl(png_for("next")))
    next_final = await harness.finished(await harness.imagine("next"))
    assert next_final.attachments[0].data == png_for("next")


async def test_oversized_output_is_refused_clearly(runpod):
    async with running_bot(runpod) as harness:
        harness.context.fetcher.max_pixels = 100
        final = await harness.finished(await harness.imagine())
    assert "over the 100 allowed; refused" in field_value(final, "What happened")


async def test_result_expired_mid_job(harness):
    harness.runpod.default_script = lambda job_input: Script(queue_s=30)
    interaction = await harness.imagine()
    await harness.discord.wait_for(lambda: harness.title(interaction) == "⏳ In queue")
    harness.runpod.expire(next(iter(harness.runpod.jobs)))
    final = await harness.finished(interaction)
    assert "RunPod no longer has this job" in field_value(final, "What happened")
    assert "Run /imagine again" in field_value(final, "What happened")


async def test_bad_key_is_explained_with_what_to_do(runpod):
    async with running_bot(runpod, settings=settings_for(runpod, runpod_api_key=Secret("wrong"))) as harness:
        final = await harness.finished(await harness.imagine())
    explanation = field_value(final, "What happened")
    assert "RunPod refused the API key (401)" in explanation
    assert "/runpod setup" in explanation
    assert "wrong" not in str(final.embeds)


async def test_unknown_endpoint_and_unreachable_runpod(runpod):
    async with running_bot(runpod, settings=settings_for(runpod, runpod_endpoint_id="gone")) as harness:
        final = await harness.finished(await harness.imagine())
        assert "does not know endpoint gone (404)" in field_value(final, "What happened")
    async with running_bot(runpod, settings=settings_for(runpod, runpod_api_url="http://127.0.0.1:9/v2")) as harness:
        final = await harness.finished(await harness.imagine())
        assert "RunPod could not be reached" in field_value(final, "What happened")


async def test_a_job_that_outlives_the_interaction_token_continues_in_the_channel(runpod):
    async with running_bot(runpod, token_ttl=1.0) as harness:
        png = png_for("patience")
        harness.runpod.default_script = lambda job_input: Script(queue_s=0.3, run_s=1.5, output=outputs.sdxl(png))
        interaction = await harness.imagine("patience")
        final = await harness.finished(interaction)
        assert final.interaction_token is None  # a channel message, sent with the bot token
        assert final.channel_id == DEFAULT_CHANNEL_ID
        assert [attachment.data for attachment in final.attachments] == [png]
        rejected = [call for call in harness.edits(interaction) if call.status == 401]
        assert rejected  # Discord said the token was gone, and the bot moved on
        await harness.discord.wait_for(lambda: len(harness.discord.calls_for("channel_message")) >= 2)
        ping = harness.discord.calls_for("channel_message")[-1].json
        assert ping["content"].startswith(f"<@{DEFAULT_USER_ID}> your picture is ready")
        assert ping["allowed_mentions"] == {"parse": [], "users": [DEFAULT_USER_ID]}


async def test_an_interaction_already_near_expiry_goes_to_the_channel_at_once(runpod):
    options = fast_options(expiry_margin=timedelta(minutes=1))
    async with running_bot(runpod, options=options) as harness:
        interaction = await harness.imagine("late", created_at=datetime.now(UTC) - timedelta(minutes=14, seconds=30))
        final = await harness.finished(interaction)
        assert final.interaction_token is None
        # The "thinking…" placeholder is not left behind: it points at the reply where the job went on.
        original = harness.discord.original_message(interaction.token)
        assert original.embeds[0]["title"] == "⤵️ Continued below"
        assert final.reply_to == original.id
        assert [call.status for call in harness.edits(interaction)] == [200]


async def test_when_the_channel_refuses_too_the_loss_is_logged(runpod, caplog):
    async with running_bot(runpod, token_ttl=0.5) as harness:
        harness.discord.denied_channels.add(DEFAULT_CHANNEL_ID)
        harness.runpod.default_script = lambda job_input: Script(run_s=1.0, output=outputs.sdxl(make_png()))
        interaction = await harness.imagine("nowhere to go")
        await harness.discord.wait_for(lambda: "could not be posted anywhere" in caplog.text, timeout=10)
        record = await harness.bot.storage.job(interaction.id)
        # A final state, its GPU time still counted: never taken up again, never cancelled on RunPod.
        assert (record.state, record.delivered_at is not None, record.execution_ms is not None) == (
            "undeliverable",
            True,
            True,
        )
        await harness.bot.recovery.sweep()
        assert harness.runpod.requests_for("cancel") == []
    (job_id,) = runpod.jobs
    assert f"job {job_id}" in caplog.text


async def test_a_discord_429_is_waited_out_and_the_picture_still_arrives(harness):
    harness.discord.fail_next("edit_followup", 429, retry_after=0.2, count=2)
    interaction = await harness.imagine("rate limited")
    final = await harness.finished(interaction)
    assert final.attachments[0].data == png_for("rate limited")
    statuses = [call.status for call in harness.edits(interaction)]
    assert statuses.count(429) == 2


async def test_edits_are_coalesced_and_paced(runpod):
    progress = [(n * 0.01, f"{n}/150") for n in range(150)]
    async with running_bot(runpod, options=fast_options(edit_interval=0.4)) as harness:
        harness.runpod.default_script = lambda job_input: Script(
            run_s=1.6, progress=progress, output=outputs.sdxl(make_png())
        )
        interaction = await harness.imagine()
        await harness.finished(interaction)
    edits = harness.edits(interaction)
    polls = len(runpod.requests_for("status"))
    assert len(edits) < polls / 2  # far fewer edits than status changes seen
    status_edits = edits[:-1]  # the final edit goes out at once
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(status_edits)]
    assert all(gap >= 0.35 for gap in gaps), gaps


async def test_cancel_by_the_requester_cancels_on_runpod(harness):
    harness.runpod.default_script = lambda job_input: Script(queue_s=30)
    interaction = await harness.imagine("never mind")
    await harness.discord.wait_for(lambda: harness.title(interaction) == "⏳ In queue")
    (job_id,) = harness.runpod.jobs
    message = harness.shown(interaction)
    click = harness.discord.click(button(message, "cancel"), message_id=message.id)
    await harness.discord.send(click)
    final = await harness.finished(interaction)
    assert final.embeds[0]["title"] == "🚫 Cancelled"
    assert "Cancelled by Member" in field_value(final, "What happened")
    assert [request.job_id for request in harness.runpod.requests_for("cancel")] == [job_id]
    assert harness.private_replies(click) == ["Cancelled."]


async def test_cancel_is_refused_for_someone_else_but_allowed_for_a_moderator(harness):
    harness.runpod.default_script = lambda job_input: Script(queue_s=30)
    interaction = await harness.imagine("mine")
    await harness.discord.wait_for(lambda: harness.title(interaction) == "⏳ In queue")
    message = harness.shown(interaction)
    stranger = UserSpec(id=DEFAULT_USER_ID + 1, username="stranger", global_name="Stranger")
    click = harness.discord.click(button(message, "cancel"), message_id=message.id, user=stranger)
    await harness.discord.send(click)
    await harness.discord.wait_for(lambda: harness.private_replies(click))
    assert "Only the member who asked" in harness.private_replies(click)[0]
    assert harness.runpod.requests_for("cancel") == []

    moderator = UserSpec(id=DEFAULT_USER_ID + 2, username="mod", global_name="Mod")
    click = harness.discord.click(
        button(message, "cancel"), message_id=message.id, user=moderator, permissions=(1 << 13) | (1 << 10) | (1 << 11)
    )
    await harness.discord.send(click)
    final = await harness.finished(interaction)
    assert "Cancelled by Mod" in field_value(final, "What happened")


async def test_mentions_in_prompts_never_ping(harness):
    interaction = await harness.imagine("@everyone and <@&123> and <@456> look")
    final = await harness.finished(interaction)
    assert "@everyone" not in final.embeds[0]["description"].replace("@\u200beveryone", "")
    guarded = [
        call for call in harness.discord.calls if isinstance(call.json, dict) and "allowed_mentions" in call.json
    ]
    assert len(guarded) >= 2  # every edit carries the lock-down, not just the first
    for call in guarded:
        mentions = call.json["allowed_mentions"]
        assert mentions["parse"] == []
        assert mentions.get("users", []) in ([], [DEFAULT_USER_ID])
        assert not mentions.get("roles")


async def test_a_long_job_pings_the_requester_and_only_them(runpod):
    async with running_bot(runpod, options=fast_options(notify_after=0.0)) as harness:
        interaction = await harness.imagine("@everyone wake up")
        await harness.finished(interaction)
        final = await harness.finished(interaction)
        await harness.discord.wait_for(lambda: pings(harness, final))
    (ping,) = pings(harness, final)
    assert ping.content == f"<@{DEFAULT_USER_ID}> your picture is ready."  # a reply: one click leads to the picture
    (call,) = [
        call for call in harness.discord.calls if call.route == "channel_message" and call.json.get("message_reference")
    ]
    assert call.json["allowed_mentions"] == {"parse": [], "users": [DEFAULT_USER_ID]}


def pings(harness, result):
    """Replies to a result message: the ready pings."""
    return [message for message in harness.discord.messages.values() if message.reply_to == result.id]


async def test_pings_into_one_channel_keep_under_its_webhook_limit_and_all_arrive(runpod):
    # Discord's quoted 30 a minute per channel, scaled down: 2 a second, and the bot paces itself at 2 per 1.2 s.
    options = fast_options(notify_after=0.0, pings_per_channel=RateLimit(2, 1.2))
    limits = RateLimits(webhook_channel=Limit(2, 1.0))
    async with running_bot(runpod, options=options, rate_limits=limits) as harness:
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"member_concurrent": 5})
        interactions = await asyncio.gather(*(harness.imagine(f"lighthouse {n}") for n in range(5)))
        for interaction in interactions:
            await harness.finished(interaction)

        results = [harness.shown(i) for i in interactions]
        await harness.discord.wait_for(lambda: all(pings(harness, result) for result in results), timeout=10.0)
    assert [len(pings(harness, result)) for result in results] == [1] * 5
    assert all(
        pings(harness, result)[0].content == f"<@{DEFAULT_USER_ID}> your picture is ready." for result in results
    )
    assert harness.discord.rate_limit_hits == []  # paced, not refused and retried


async def test_twenty_concurrent_jobs_from_five_members_reach_the_right_people(harness):
    await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"member_concurrent": 4, "guild_concurrent": 20})
    users = [UserSpec(id=DEFAULT_USER_ID + n, username=f"user{n}", global_name=f"User {n}") for n in range(5)]
    harness.runpod.default_script = lambda job_input: Script(
        queue_s=0.1, run_s=0.2, output=outputs.sdxl(png_for(job_input["prompt"]))
    )
    interactions = await asyncio.gather(
        *(harness.imagine(f"picture {n} for {users[n % 5].username}", user=users[n % 5]) for n in range(20))
    )
    finals = await asyncio.gather(*(harness.finished(interaction, timeout=20) for interaction in interactions))
    for n, (interaction, final) in enumerate(zip(interactions, finals, strict=True)):
        prompt = f"picture {n} for {users[n % 5].username}"
        assert final.embeds[0]["title"] == "✅ Done"
        assert final.interaction_token == interaction.token
        assert final.embeds[0]["footer"]["text"] == f"Requested by User {n % 5}"  # no RunPod job id for all to see
        assert [attachment.data for attachment in final.attachments] == [png_for(prompt)]
    assert len(harness.runpod.jobs) == 20


async def test_pictures_over_the_upload_limit_are_reencoded_with_a_note(harness):
    big = make_png(300, 300, seed=3)  # noise compresses badly: about 270 KB as PNG
    harness.runpod.default_script = lambda job_input: Script(output=outputs.sdxl(big))
    interaction = await harness.imagine("big", attachment_size_limit=120_000)
    final = await harness.finished(interaction)
    (attachment,) = final.attachments
    assert attachment.filename.endswith(".jpg")
    assert len(attachment.data) <= 120_000
    assert "to fit Discord's 117 KB upload limit" in field_value(final, "Note")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strength": 0.5}, "add one with the image option"),
        ({"prompt": "cat --seed lucky"}, "--seed needs a whole number"),
        ({"prompt": "cat --ar 5:4"}, "Aspect ratio '5:4' is not one of"),
    ],
)
async def test_bad_parameters_are_refused_privately_without_paying(harness, options, message):
    prompt = options.pop("prompt", "cat")
    interaction = await harness.imagine(prompt, **options)
    await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    assert message in harness.private_replies(interaction)[0]
    assert harness.runpod.requests == []


async def test_without_an_endpoint_the_member_is_told_an_admin_must_set_one_up(runpod):
    settings = settings_for(runpod, runpod_api_key=None, runpod_endpoint_id=None)
    async with running_bot(runpod, settings=settings) as harness:
        interaction = await harness.imagine()
        await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    assert harness.private_replies(interaction) == [
        "No RunPod endpoint is set up for this server. A server admin must run /runpod setup first."
    ]


async def test_registered_command_schema(harness):
    command = harness.bot.tree.get_command("imagine").to_dict(harness.bot.tree)
    options = {option["name"]: option for option in command["options"]}
    assert list(options) == [
        "prompt", "negative_prompt", "aspect_ratio", "seed", "steps", "guidance", "count", "model", "image", "strength"
    ]  # fmt: skip
    assert options["model"]["autocomplete"] is True
    assert options["count"]["autocomplete"] is True  # only the counts this server allows are offered
    assert options["image"]["type"] == 11  # an attachment
    assert (options["strength"]["min_value"], options["strength"]["max_value"]) == (0, 1)
    assert options["prompt"]["required"] is True
    assert (options["prompt"]["min_length"], options["prompt"]["max_length"]) == (1, 1000)
    assert [choice["value"] for choice in options["aspect_ratio"]["choices"]] == [
        "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"
    ]  # fmt: skip
    assert (options["seed"]["min_value"], options["seed"]["max_value"]) == (0, 4294967295)
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
    assert (options["steps"]["min_value"], options["steps"]["max_value"]) == (1, 150)
    assert all(not option.get("required") for name, option in options.items() if name != "prompt")
    assert command["contexts"] == [0]  # guilds only


async def result_of(harness, prompt="a lighthouse at dusk"):
    interaction = await harness.imagine(prompt)
    final = await harness.finished(interaction)
    (job,) = harness.runpod.jobs.values()
    return interaction, final, job


async def test_reroll_runs_the_same_parameters_with_a_new_seed(harness):
    _, final, job = await result_of(harness, "same again --ar 3:2 --no fog")
    click = harness.discord.click(button(final, "reroll"), message_id=final.id)
    await harness.discord.send(click)
    rerolled = await harness.finished(click)
    (second,) = [other for other in harness.runpod.jobs.values() if other.id != job.id]
    assert {k: v for k, v in second.input.items() if k != "seed"} == {k: v for k, v in job.input.items() if k != "seed"}
    assert second.input["seed"] != job.input["seed"]
    assert rerolled.embeds[0]["title"] == "✅ Done"
    assert rerolled.interaction_token == click.token  # a new reply under the button, the first result untouched
    assert harness.discord.messages[final.id].attachments == final.attachments


async def info_fields(harness, final, **click_options) -> dict[str, str]:
    click = harness.discord.click(button(final, "info"), message_id=final.id, **click_options)
    await harness.discord.send(click)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", click.token))
    (callback,) = harness.discord.calls_for("callback", click.token)
    assert callback.json["data"]["flags"] & 64
    return {field["name"]: field["value"] for field in callback.json["data"]["embeds"][0]["fields"]}


async def test_info_shows_the_full_parameters_privately(harness):
    interaction, final, job = await result_of(harness, "details please --seed 99")
    await harness.recorded_as(interaction, "delivered")
    fields = await info_fields(harness, final, user=UserSpec(id=DEFAULT_USER_ID + 5))
    assert fields["Seed"] == "99"
    assert fields["Worker"] == "sdxl"
    # The numbers the worker was sent, not "worker default"; the state in words, not "completed".
    assert (fields["Steps"], fields["Guidance"], fields["Size"]) == ("25", "7.5", "1:1 · 1024×1024")
    assert (fields["Pictures"], fields["State"]) == ("1", "Posted")
    assert "RunPod" not in fields  # RunPod's ids are for the requester and the server's moderators only
    assert job.id not in str(final.embeds) + str(final.components)  # never in the public result
    assert fields["Run time"].endswith(" s") and "." not in fields["Run time"]

    ids = f"job `{job.id}`\nendpoint `{job.endpoint_id}`"  # for whoever asks RunPod's support
    assert (await info_fields(harness, final))["RunPod"] == ids  # the requester
    moderator = UserSpec(id=DEFAULT_USER_ID + 6, username="mod", global_name="Mod")
    manage_messages = int(discord.Permissions(manage_messages=True).value)
    assert (await info_fields(harness, final, user=moderator, permissions=manage_messages))["RunPod"] == ids


async def test_delete_is_for_the_requester_or_a_moderator(harness):
    _, final, _ = await result_of(harness, "delete me")
    stranger = UserSpec(id=DEFAULT_USER_ID + 1, username="stranger", global_name="Stranger")
    refused = harness.discord.click(button(final, "delete"), message_id=final.id, user=stranger)
    await harness.discord.send(refused)
    await harness.discord.wait_for(lambda: harness.private_replies(refused))
    assert "Only the member who asked" in harness.private_replies(refused)[0]
    assert not harness.discord.messages[final.id].deleted

    allowed = harness.discord.click(button(final, "delete"), message_id=final.id)
    await harness.discord.send(allowed)
    await harness.discord.wait_for(lambda: harness.private_replies(allowed))
    assert harness.private_replies(allowed) == [
        "Delete this picture for everyone in the channel? This cannot be undone."
    ]
    assert not harness.discord.messages[final.id].deleted  # asked first
    question = harness.discord.original_message(allowed.token)
    confirmed = harness.discord.click(button(question, "delete"), message_id=question.id)
    await harness.discord.send(confirmed)
    await harness.discord.wait_for(lambda: harness.discord.messages[final.id].deleted)
    # The question becomes the answer (after the deletion, so wait for it too).
    await harness.discord.wait_for(lambda: harness.discord.original_message(confirmed.token).content == "Deleted.")


async def test_the_same_interaction_delivered_twice_pays_once(harness):
    interaction = await harness.imagine("only once")
    await harness.discord.send(interaction)  # a gateway replay of the very same INTERACTION_CREATE
    await harness.finished(interaction)
    await asyncio.sleep(0.3)
    assert len(harness.runpod.jobs) == 1


async def test_a_database_locked_while_the_job_runs_delays_the_ledger_but_loses_no_picture(runpod, tmp_path):
    """Another process holds the SQLite file for 7 s (longer than SQLite's 5 s busy wait) while the job moves
    from queued to running to done: the ledger writes wait it out, and the picture is posted exactly once."""
    import sqlite3

    async with running_bot(runpod, database_url=f"sqlite:///{tmp_path}/bot.db") as harness:
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.3, run_s=1.0, output=outputs.sdxl(png_for("x"))
        )
        interaction = await harness.imagine("x")
        await harness.discord.wait_for(lambda: harness.runpod.jobs)
        locker = sqlite3.connect(tmp_path / "bot.db", timeout=30, isolation_level=None, check_same_thread=False)
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")  # off the loop: the bot's writes go on
        try:
            await asyncio.sleep(7)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        final = await harness.finished(interaction, timeout=30)
        assert final.embeds[0]["title"] == "✅ Done"
        assert [attachment.data for attachment in final.attachments] == [png_for("x")]
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})
        record = await harness.bot.storage.job(interaction.id)
        assert (record.state, record.delivered_at is not None) == ("delivered", True)
    edits_with_pictures = [call for call in harness.edits(interaction) if call.files]
    assert len(edits_with_pictures) == 1


async def test_a_runpod_outage_mid_job_is_said_honestly_and_the_picture_still_arrives(runpod):
    """RunPod answers 503 to every poll for a while: the member is told RunPod is not answering and that the
    job goes on (never "try again" while it may be running and billing); then the picture arrives, once."""
    fast_retry = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
    async with running_bot(runpod, retry=fast_retry) as harness:
        harness.runpod.default_script = lambda job_input: Script(run_s=3.0, output=outputs.sdxl(png_for("outage")))
        interaction = await harness.imagine("outage")
        await harness.discord.wait_for(lambda: harness.title(interaction) == "🎨 Painting…")
        harness.runpod.fail_next("status", 503, count=30)
        await harness.discord.wait_for(lambda: field_value(harness.shown(interaction), "RunPod is not answering"))
        final = await harness.finished(interaction, timeout=15)
    assert final.embeds[0]["title"] == "✅ Done"
    assert [attachment.data for attachment in final.attachments] == [png_for("outage")]
    assert [call for call in harness.edits(interaction) if call.files][1:] == []  # posted once
    assert harness.runpod.requests_for("cancel") == []
