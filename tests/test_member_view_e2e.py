"""What a member sees of a job, end to end with the real bot against the doubles: a job that outlives its interaction
hands its first card over to a reply, every result says what it is, the status's numbers agree with each other, and
durations read as a person says them."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from doubles import outputs
from doubles.discord import DEFAULT_CHANNEL_ID, DEFAULT_GUILD_ID, UserSpec
from doubles.faults import RESET
from doubles.harness import button, fast_options, field_value, png_for, running_bot
from doubles.outputs import make_png
from doubles.runpod import Script

BOB = UserSpec(id=4242, username="bob", global_name="Bob")


def painted(job_input: dict[str, Any]) -> Script:
    """A worker that paints as many pictures as asked, each its own."""
    count = job_input.get("num_images") or 1
    pngs = [png_for(f"{job_input.get('prompt')}|{job_input.get('seed')}|{n}") for n in range(count)]
    return Script(queue_s=0.05, run_s=0.1, output=outputs.sdxl(*pngs))


def paced(queue_s: float, run_s: float):
    """`painted`, at this pace."""
    return lambda job_input: Script(queue_s=queue_s, run_s=run_s, output=painted(job_input).output)


def custom_ids(message) -> list[list[str]]:
    return [[component["custom_id"] for component in row["components"]] for row in message.components]


def looks(harness, interaction) -> list[dict[str, Any]]:
    """Every embed the bot showed for this interaction's job, in order: the reply's edits, then the channel's."""
    embeds = []
    for call in harness.discord.calls:
        routes = ("edit_original", "edit_followup", "followup")
        if call.token == interaction.token and call.route in routes and isinstance(call.json, dict):
            embeds.extend(call.json.get("embeds") or [])
    return embeds


def shown_field(harness, interaction, name: str) -> str | None:
    """A field of the card the member sees for this job now; None while there is none (or no card yet)."""
    message = harness.shown(interaction)
    return field_value(message, name) if message is not None and message.embeds else None


async def click(harness, message, action: str, **kwargs):
    interaction = harness.discord.click(button(message, action), message_id=message.id, **kwargs)
    await harness.discord.send(interaction)
    return interaction


# --- the 15-minute hand-over ---------------------------------------------------------------------------


async def test_a_job_past_the_interaction_token_hands_its_first_card_over_to_a_reply(runpod):
    """Six seconds of token left, handed over three before it dies: the first card says where the job went on and
    keeps only Info; the job goes on in a reply to it; nothing is left with a Cancel or an estimate."""
    async with running_bot(runpod, options=fast_options(expiry_margin=timedelta(seconds=3))) as harness:
        png = png_for("a long night")
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.1, run_s=5.0, progress=[(0.2, "2/10"), (2.0, "6/10")], output=outputs.sdxl(png)
        )
        created = datetime.now(UTC) - timedelta(minutes=15) + timedelta(seconds=6)
        interaction = await harness.imagine("a long night", created_at=created)
        final = await harness.finished(interaction, timeout=20)

    original = harness.discord.original_message(interaction.token)
    assert original.embeds[0]["title"] == "⤵️ Continued below"
    link = f"https://discord.com/channels/{DEFAULT_GUILD_ID}/{DEFAULT_CHANNEL_ID}/{final.id}"
    assert f"]({link})" in field_value(original, "Where it continues")
    assert custom_ids(original) == [[f"imagine:info:{interaction.id}"]]  # no live Cancel left behind
    assert [field["name"] for field in original.embeds[0]["fields"]] == ["Where it continues"]  # no estimate
    assert all(call.status == 200 for call in harness.edits(interaction))  # handed over while the token worked

    # The continuation is a reply to the first card, and took over as a live status before the picture came.
    assert (final.reply_to, final.interaction_token) == (original.id, None)
    (continued,) = harness.discord.calls_for("channel_message")[:1]
    assert int(continued.json["message_reference"]["message_id"]) == original.id
    assert continued.json["embeds"][0]["title"] == "🎨 Painting…"
    assert continued.json["components"][0]["components"][0]["custom_id"] == f"imagine:cancel:{interaction.id}"
    assert final.embeds[0]["title"] == "✅ Done"
    assert [attachment.data for attachment in final.attachments] == [png]
    for message in harness.discord.messages.values():
        assert not any("cancel" in custom_id for row in custom_ids(message) for custom_id in row)


async def test_a_restart_after_the_token_died_still_continues_as_a_reply_to_the_first_card(
    runpod, discord_double, tmp_path
):
    """When the token died while the bot was down, the first card is edited as the bot's own message instead, and
    the job goes on in a reply to it: the channel reads as one story."""
    url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.1, run_s=4.0, output=painted(job_input).output
        )
        interaction = await harness.imagine("across a restart")
        await harness.discord.wait_for(lambda: harness.title(interaction) == "🎨 Painting…")
    discord_double.token_ttl = 0.0  # the token is gone by the time the bot is back
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        final = await harness.finished(interaction, timeout=15)
    original = discord_double.original_message(interaction.token)
    assert original.embeds[0]["title"] == "⤵️ Continued below"  # edited as the bot's own message: no token needed
    assert custom_ids(original) == [[f"imagine:info:{interaction.id}"]]
    assert (final.reply_to, final.embeds[0]["title"]) == (original.id, "✅ Done")
    edits = [call for call in discord_double.calls_for("edit_channel_message") if call.message_id == original.id]
    assert [call.status for call in edits] == [200]


# --- every result names itself ---------------------------------------------------------------------------


async def test_v3_by_another_member_is_labelled_and_shows_its_start_as_a_thumbnail(runpod):
    async with running_bot(runpod, worker=painted) as harness:
        final = await harness.finished(await harness.imagine("three boats", count=4, seed=3))
        source = harness.discord.message_json(final)["attachments"][2]["url"]
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.3, run_s=0.3, output=painted(job_input).output
        )
        v3 = await click(harness, final, "vary:3", user=BOB)
        varied = await harness.finished(v3)

    label = "Variations (strong) of picture 3 · by Bob"
    assert varied.embeds[0]["author"]["name"] == label
    assert varied.embeds[0]["title"] == "✅ Done"
    running = [embed for embed in looks(harness, v3) if embed["title"] != "✅ Done"]
    assert running, "the variation's status was never shown"
    for embed in running:  # the picture it starts from is a thumbnail, never a full-size picture on the card
        assert embed["author"]["name"] == label
        assert embed["thumbnail"]["url"] == source
    assert all(not call.files for call in harness.edits(v3)[:-1])
    assert "thumbnail" not in varied.embeds[0]  # the result is the picture


async def test_an_upscale_is_labelled_with_its_size_and_never_shows_an_internal_step(runpod):
    async with running_bot(runpod, worker=painted) as harness:
        final = await harness.finished(await harness.imagine("one tower"))
        big = make_png(80, 80, seed=8)
        harness.runpod.default_script = lambda job_input: Script(queue_s=0.4, run_s=0.2, output=outputs.sdxl(big))
        upscale = await click(harness, final, "upscale:subtle")
        done = await harness.finished(upscale)

    assert done.embeds[0]["author"]["name"] == "Upscaled 2× (subtle) · 80×80"  # clicked by the requester: no "by"
    statuses = [embed for embed in looks(harness, upscale) if embed["title"] != "✅ Done"]
    titles = {embed["title"] for embed in statuses}
    assert "⏳ Starting" in titles and not any("RunPod" in title for title in titles)
    (posted,) = [call for call in harness.edits(upscale)[:-1] if call.files]  # the start picture, for the worker
    (start,) = posted.files
    for embed in statuses[statuses.index(posted.json["embeds"][0]) :]:
        assert embed["thumbnail"]["url"] == f"attachment://{start.filename}"  # drawn small, inside the card
        assert embed["author"]["name"] == "Upscale 2× (subtle)"
        assert start.filename not in str(embed.get("fields"))
    assert [attachment.data for attachment in done.attachments] == [big]  # the start picture is gone


async def test_after_a_restart_the_start_picture_stays_a_thumbnail(runpod, discord_double, tmp_path):
    """The picture an upscale starts from is attached to its status message for the worker; a restarted bot,
    which did not attach it, still draws it as a thumbnail rather than as a full-size picture below the card."""
    url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=url, discord_double=discord_double, worker=painted) as harness:
        final = await harness.finished(await harness.imagine("one tower"))
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=4.0, run_s=0.2, output=painted(job_input).output
        )
        upscale = await click(harness, final, "upscale")
        await harness.discord.wait_for(lambda: harness.title(upscale) == "⏳ In queue")
    (start,) = discord_double.original_message(upscale.token).attachments
    restarted_at = len(discord_double.calls)
    # The restarted bot learns the picture is attached from the first status it shows, and draws it small from the
    # next (drawn again at least every `status_refresh`).
    options = fast_options(status_refresh=0.2)
    async with running_bot(runpod, database_url=url, discord_double=discord_double, options=options) as harness:
        done = await harness.finished(upscale, timeout=15)
    statuses = [
        call.json["embeds"][0]
        for call in discord_double.calls[restarted_at:]
        if call.token == upscale.token and call.json and call.json["embeds"][0]["title"] == "⏳ In queue"
    ]
    assert statuses, "the status was never shown after the restart"
    assert statuses[-1]["thumbnail"]["url"] == f"attachment://{start.filename}"  # small, inside the card
    assert done.embeds[0]["title"] == "✅ Done" and start.filename not in [a.filename for a in done.attachments]


async def test_an_image_prompt_and_a_picked_picture_say_what_they_are(runpod):
    async with running_bot(runpod, worker=painted) as harness:
        option = harness.discord.attachment_option(make_png(64, 64, seed=4), "sketch.png", "image/png")
        from_sketch = await harness.finished(await harness.imagine("from a sketch", image=option, strength=0.6))
        assert from_sketch.embeds[0]["author"]["name"] == "Image prompt · strength 0.6"

        final = await harness.finished(await harness.imagine("pick one", count=4))
        u2 = await click(harness, final, "pick:2", user=BOB)
        await harness.discord.wait_for(lambda: getattr(harness.discord.original_message(u2.token), "embeds", None))
        picked = harness.discord.original_message(u2.token)
    assert picked.embeds[0]["title"] == "🖼️ Picture 2 of 4"
    assert picked.embeds[0]["author"]["name"] == "Picture 2 of 4 · by Bob"
    assert "author" not in final.embeds[0]  # a plain /imagine needs no label


# --- one source of truth for the status ------------------------------------------------------------------


async def test_a_set_never_shows_100_percent_beside_pictures_still_to_come(runpod):
    sent = iter(range(100))

    def second_runs_longer(job_input: dict[str, Any]) -> Script:
        run_s = 0.6 if next(sent) == 0 else 1.6  # so the second job's own progress is shown after the first's
        progress = [(0.0, "1/4"), (run_s / 2, "4/4")]
        return Script(queue_s=0.05, run_s=run_s, progress=progress, output=painted(job_input).output)

    async with running_bot(runpod, options=fast_options(status_refresh=0.05)) as harness:
        harness.runpod.default_script = second_runs_longer
        interaction = await harness.imagine("four at once", count=4)  # worker-sdxl: two jobs of two
        await harness.finished(interaction)
    shown = []
    for embed in looks(harness, interaction):
        fields = {field["name"]: field["value"] for field in embed.get("fields", [])}
        if "Progress" in fields:
            shown.append((fields["Progress"], fields.get("Pictures")))
    assert shown, "no progress was shown"
    for progress, pictures in shown:
        if pictures is not None and not pictures.startswith("4 of 4"):
            assert not progress.endswith(" 100%"), (progress, pictures)
    assert any(pictures == "2 of 4 ready" for _, pictures in shown)  # the second job's turn was shown


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            {"member_concurrent": 1, "guild_concurrent": 6},
            "This server paints at most 1 picture of each member's at once, and 1 picture of yours is painting",
        ),
        ({"member_concurrent": 4, "guild_concurrent": 1}, "This server paints at most 1 picture at once"),
    ],
    ids=["the member's own limit", "the server's limit"],
)
async def test_why_the_wait_names_the_limit_that_applies(runpod, policy, expected):
    async with running_bot(runpod) as harness:
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, policy)
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.1, run_s=1.5, output=painted(job_input).output
        )
        first = await harness.imagine("first")
        await harness.discord.wait_for(lambda: harness.title(first) == "🎨 Painting…")
        second = await harness.imagine("second")
        await harness.discord.wait_for(lambda: harness.title(second) == "🕒 Waiting for your turn")
        assert shown_field(harness, second, "Why the wait").startswith(expected)
        await harness.finished(second)


async def test_a_place_in_the_fair_queue_that_grows_says_why(runpod):
    """Alice has one painting and one waiting (her limit is 1); two other members join and go before her next one,
    as the line takes turns: her place grows from 1st to 3rd, and the card says why."""
    alice, carol = UserSpec(id=1001, username="alice", global_name="Alice"), UserSpec(id=1003, global_name="Carol")
    async with running_bot(runpod) as harness:
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"member_concurrent": 1, "guild_concurrent": 1})
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.1, run_s=2.0, output=painted(job_input).output
        )
        await harness.imagine("alice one", user=alice)
        await asyncio.sleep(0.3)
        waiting = await harness.imagine("alice two", user=alice)
        await harness.discord.wait_for(lambda: shown_field(harness, waiting, "Your place") is not None)
        assert shown_field(harness, waiting, "Your place") == "1st in this server's line"
        await harness.imagine("bob one", user=BOB)
        await harness.imagine("carol one", user=carol)
        await harness.discord.wait_for(lambda: (shown_field(harness, waiting, "Your place") or "").startswith("3rd"))
        why = shown_field(harness, waiting, "Why your place moved")
        assert why is not None and "takes turns between members" in why


async def test_painting_since_survives_a_restart(runpod, discord_double, tmp_path):
    url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.1, run_s=5.0, progress=[(0.1, "1/10"), (3.0, "6/10")], output=painted(job_input).output
        )
        interaction = await harness.imagine("a slow painting")
        await harness.discord.wait_for(lambda: shown_field(harness, interaction, "Painting since") is not None)
        before = shown_field(harness, interaction, "Painting since")
    await asyncio.sleep(1.5)  # the restart takes a while: a status counting from it would say so
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        await harness.discord.wait_for(lambda: harness.title(interaction) == "🎨 Painting…", timeout=10)
        await harness.discord.wait_for(lambda: shown_field(harness, interaction, "Painting since") is not None)
        after = shown_field(harness, interaction, "Painting since")
        await harness.finished(interaction)
    assert after == before  # since the real start, kept in the ledger


async def test_durations_read_as_people_say_them_and_the_time_limit_is_named(runpod):
    async with running_bot(runpod) as harness:
        final = await harness.finished(await harness.imagine("quick"))
        assert re.fullmatch(r"\d+ s", field_value(final, "Took"))
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"max_wall_seconds": 1})
        harness.runpod.default_script = lambda job_input: Script(queue_s=30)
        timed_out = await harness.finished(await harness.imagine("too slow"), timeout=15)
    explanation = field_value(timed_out, "What happened")
    assert explanation.startswith("No result after 1 s, this server's time limit; it was cancelled on RunPod")
    assert custom_ids(timed_out)[0][-1] == f"imagine:delete:{harness.sent[-1].id}"


async def test_a_busy_worker_painting_the_members_own_set_is_said_to_be(runpod):
    """A set of four runs as two jobs; the second starts first, beside another member's job. While the first waits,
    its card counts one of the two busy workers as its own, and its place among RunPod's waiting jobs as 1st of 1."""

    def second_goes_first(job_input: dict[str, Any]) -> Script:
        queue_s = 2.5 if job_input["seed"] == 100 else 0.1
        return Script(queue_s=queue_s, run_s=3.0, output=painted(job_input).output)

    options = fast_options(status_refresh=0.05, health_interval=0.05)
    async with running_bot(runpod, options=options, worker=second_goes_first) as harness:
        await harness.imagine("someone else's", user=BOB, seed=5)
        await harness.discord.wait_for(lambda: len(runpod.jobs) == 1)
        interaction = await harness.imagine("my set", count=4, seed=100)
        await harness.discord.wait_for(lambda: shown_field(harness, interaction, "Workers") == "2 busy (1 on your set)")
        message = harness.shown(interaction)
        assert (message.embeds[0]["title"], field_value(message, "Your place")) == ("⏳ In queue", "1st of 1 waiting")
        assert field_value(message, "Why the wait") == (
            "Every worker is busy, 1 of them with the rest of your set: this part starts when one is free."
        )
        await harness.finished(interaction)


# --- Info and the ended cards --------------------------------------------------------------------------


async def test_a_short_sets_info_says_how_many_arrived_and_a_variation_says_where_it_started(runpod):
    def second_fails(job_input):
        if job_input.get("image_url") is None and job_input["seed"] != 7:
            return Script(outcome="FAILED", error="CUDA out of memory")
        return painted(job_input)

    async with running_bot(runpod, worker=second_fails) as harness:
        interaction = await harness.imagine("half a set", count=4, seed=7)
        final = await harness.finished(interaction)
        await harness.recorded_as(interaction, "delivered")
        info = await click(harness, final, "info")
        await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", info.token))
        fields = _fields(harness, info)
        assert fields["Pictures"] == "2 of 4 arrived"
        assert fields["State"] == "Posted"

        varied = await harness.finished(await click(harness, final, "vary:2"))
        info = await click(harness, varied, "info")
        await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", info.token))
        fields = _fields(harness, info)
    source = harness.discord.message_json(final)["attachments"][1]["url"]
    assert fields["Started from"] == f"[This picture]({source}) · strength 0.75"
    assert fields["Steps"] == "50"  # worker-sdxl's image path: its refiner's own default, as sent


async def test_a_failed_card_can_be_deleted_by_its_requester(runpod):
    async with running_bot(runpod) as harness:
        harness.runpod.default_script = lambda job_input: Script(outcome="FAILED", error="boom")
        failed = await harness.finished(await harness.imagine("doomed"))
        ask = await click(harness, failed, "delete")
        await harness.discord.wait_for(lambda: harness.private_replies(ask))
        assert harness.private_replies(ask)[0].startswith("Delete this message for everyone")
        question = harness.discord.original_message(ask.token)
        confirm = harness.discord.click(button(question, "delete"), message_id=question.id)
        await harness.discord.send(confirm)
        await harness.discord.wait_for(lambda: harness.discord.messages[failed.id].deleted)


def _fields(harness, interaction) -> dict[str, str]:
    (callback,) = harness.discord.calls_for("callback", interaction.token)
    return {field["name"]: field["value"] for field in callback.json["data"]["embeds"][0]["fields"]}


async def test_a_connection_reset_on_the_continuation_still_hands_over_to_a_reply(runpod):
    """Discord hangs up on the first post of the continuation: it is posted again, still as a reply to the first
    card, and the first card still says where the job went on."""
    async with running_bot(runpod, options=fast_options(expiry_margin=timedelta(seconds=3))) as harness:
        png = png_for("a long night")
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.1, run_s=5.0, progress=[(0.2, "2/10"), (2.0, "6/10")], output=outputs.sdxl(png)
        )
        harness.discord.fail_next("channel_message", RESET)
        created = datetime.now(UTC) - timedelta(minutes=15) + timedelta(seconds=6)
        interaction = await harness.imagine("a long night", created_at=created)
        final = await harness.finished(interaction, timeout=20)

    original = harness.discord.original_message(interaction.token)
    assert original.embeds[0]["title"] == "⤵️ Continued below"
    assert custom_ids(original) == [[f"imagine:info:{interaction.id}"]]
    assert final.reply_to == original.id
    assert [attachment.data for attachment in final.attachments] == [png]
    posted = harness.discord.calls_for("channel_message")
    assert len(posted) >= 2 and posted[0].chaos == "reset"  # the hang-up, then the continuation that arrived
