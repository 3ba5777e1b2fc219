"""Two servers on one bot, one of them doing the heaviest thing it may: the other's jobs go on as if alone."""

from __future__ import annotations

import asyncio

from bot.polling import PollPolicy
from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID, OTHER_CHANNEL_ID, OTHER_GUILD_ID, two_guilds
from doubles.harness import ENDPOINT, button, fast_options, field_value, png_for, running_bot
from doubles.runpod import Script

# How long the Discord double's attachment addresses work: long enough for a loaded machine to read a picture it
# has just been given, short enough to see one expire in a test.
ADDRESS_TTL = 5.0


def painted(job_input) -> Script:
    """As many pictures as asked, each its own (prompt, seed, index); half a second of painting."""
    count = job_input.get("num_images") or 1
    pngs = [png_for(f"{job_input.get('prompt')}|{job_input.get('seed')}|{n}") for n in range(count)]
    return Script(queue_s=0.05, run_s=0.5, output=outputs.sdxl(*pngs))


def titles_with_fields(harness, interaction) -> list[tuple[str, dict[str, str]]]:
    looks = []
    for call in harness.edits(interaction):
        if isinstance(call.json, dict) and call.json.get("embeds"):
            embed = call.json["embeds"][0]
            looks.append((embed.get("title"), {f["name"]: f["value"] for f in embed.get("fields", [])}))
    return looks


async def test_a_set_s_parts_count_against_the_limits_and_wait_their_turn(runpod):
    """`count:4` on sdxl (2 pictures a job) under limits of 1 at once runs one RunPod job at a time, says that a
    part waits for its turn, and still posts one set of 4; the other server's job starts at once meanwhile."""
    async with running_bot(runpod, worker=painted, guilds=two_guilds()) as harness:
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"member_concurrent": 1, "guild_concurrent": 1})
        interaction = await harness.imagine("one part at a time", count=4, seed=11)
        await harness.discord.wait_for(lambda: len(runpod.jobs) == 1)
        other = harness.discord.slash("imagine", {"prompt": "meanwhile elsewhere"}, guild_id=OTHER_GUILD_ID,
                                      channel_id=OTHER_CHANNEL_ID)  # fmt: skip
        await harness.discord.send(other)
        await harness.discord.wait_for(lambda: len(runpod.jobs) == 2)  # the other server's, not our second part
        assert [job.input["prompt"] for job in runpod.jobs.values()] == ["one part at a time", "meanwhile elsewhere"]

        final = await harness.finished(interaction)
        assert final.embeds[0]["title"] == "✅ Done"
        expected = [png_for(f"one part at a time|{seed}|{n}") for seed in (11, 13) for n in range(2)]
        assert [a.data for a in final.attachments] == expected
        first, _, second = runpod.jobs.values()
        assert second.submitted_at >= first.finished_at(runpod.clock())  # never two of ours on RunPod at once
        said = {fields.get("Waiting for a turn") for _, fields in titles_with_fields(harness, interaction)}
        assert (
            "The rest of this set (1 job) starts when this server's limits allow; nothing is paid for it yet." in said
        )
        assert (await harness.finished(other)).embeds[0]["title"] == "✅ Done"
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})
        record = await harness.bot.storage.job(interaction.id)
        assert (record.state, record.pictures, len(record.runpod_job_ids)) == ("delivered", 4, 2)


async def test_what_one_server_s_long_jobs_teach_never_slows_the_polling_of_another_s(runpod):
    """The operator's default endpoint serves both servers. One server's jobs taught the bot they take 25 s;
    the other server's 0.3-second job is still looked at within its first seconds and posted at once (with the
    learning shared, the bot's own polling policy would first look at it 16 s after it began)."""
    async with running_bot(runpod, guilds=two_guilds(), options=fast_options(poll=PollPolicy())) as harness:
        busy = harness.context.stats(ENDPOINT, DEFAULT_GUILD_ID)
        for _ in range(64):
            busy.record(run_s=25.0, wait_s=0.1)  # what 64 jobs of 25 s on this endpoint taught
        runpod.default_script = lambda job_input: Script(queue_s=0.05, run_s=0.3, output=painted(job_input).output)
        quick = harness.discord.slash("imagine", {"prompt": "quick one"}, guild_id=OTHER_GUILD_ID,
                                      channel_id=OTHER_CHANNEL_ID)  # fmt: skip
        await harness.discord.send(quick)
        final = await harness.finished(quick, timeout=6)
        assert final.embeds[0]["title"] == "✅ Done"
        assert harness.context.stats(ENDPOINT, OTHER_GUILD_ID).runs == 1  # it learns from its own jobs
        assert busy.runs == 64


async def test_retry_of_a_variation_reads_its_picture_again_after_its_address_expired(runpod):
    """Discord's attachment addresses expire (ex=); a Retry a day later must not reuse the stored one."""
    async with running_bot(runpod, worker=painted, attachment_url_ttl=ADDRESS_TTL) as harness:
        final = await harness.finished(await harness.imagine("vary me tomorrow"))
        runpod.default_script = lambda job_input: Script(outcome="FAILED", error="CUDA out of memory")
        vary = harness.discord.click(button(final, "vary:strong"), message_id=final.id)
        await harness.discord.send(vary)
        failed = await harness.finished(vary)
        assert failed.embeds[0]["title"] == "⚠️ No picture this time"
        (first,) = [job for job in runpod.jobs.values() if "image_url" in job.input]
        await asyncio.sleep(ADDRESS_TTL + 0.5)  # the address the variation was sent with has expired

        runpod.default_script = painted
        retry = harness.discord.click(button(failed, "retry"), message_id=failed.id)
        await harness.discord.send(retry)
        done = await harness.finished(retry)
        assert done.embeds[0]["title"] == "✅ Done", field_value(done, "What happened")
        second = [job for job in runpod.jobs.values() if "image_url" in job.input and job is not first][0]
        assert second.input["image_url"] != first.input["image_url"]  # the same picture, at a fresh address
        assert second.input["image_url"].split("?")[0] == first.input["image_url"].split("?")[0]
