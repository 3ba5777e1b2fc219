"""Every outcome accounted for, with the real bot against the doubles: a cancel in the middle of a set, a restart
while a worker still has to fetch its picture, a wall clock that steps, a ledger row the bot cannot read."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import aiohttp
import sqlalchemy as sa

from bot.policy import start_of_day, start_of_month
from bot.runpod import RetryPolicy
from bot.storage import JobRecord, KeySource
from doubles import outputs
from doubles.discord import DEFAULT_CHANNEL_ID, DEFAULT_GUILD_ID
from doubles.faults import RESET
from doubles.harness import ENDPOINT, button, fast_options, field_value, png_for, running_bot
from doubles.runpod import Script


def painted(job_input, run_s: float = 0.1) -> Script:
    """As many pictures as asked, each its own (prompt, seed and index in the job)."""
    count = job_input.get("num_images") or 1
    pngs = [png_for(f"{job_input.get('prompt')}|{job_input.get('seed')}|{n}") for n in range(count)]
    return Script(queue_s=0.05, run_s=run_s, output=outputs.sdxl(*pngs))


def shows(harness, interaction, field: str, value: str) -> bool:
    message = harness.shown(interaction)
    return message is not None and bool(message.embeds) and field_value(message, field) == value


async def counters_match_the_ledger(harness) -> None:
    """The per-day counters kept by the ledger's moves equal what a rebuild from the jobs finds."""
    storage, now = harness.bot.storage, datetime.now(UTC)
    kept = await storage.usage(DEFAULT_GUILD_ID, 0, start_of_day(now), start_of_month(now))
    await storage.rebuild_usage()
    assert await storage.usage(DEFAULT_GUILD_ID, 0, start_of_day(now), start_of_month(now)) == kept


async def test_a_cancel_after_part_1_of_a_set_posts_what_arrived_and_counts_its_gpu_time(runpod):
    async with running_bot(runpod) as harness:
        harness.runpod.default_script = lambda job_input: painted(job_input, 0.1 if job_input["seed"] == 7 else 60)
        interaction = await harness.imagine("half a set, then enough", count=4, seed=7)
        await harness.discord.wait_for(lambda: shows(harness, interaction, "Pictures", "2 of 4 ready"))
        _, second = harness.runpod.jobs.values()
        message = harness.shown(interaction)
        await harness.discord.send(harness.discord.click(button(message, "cancel"), message_id=message.id))
        final = await harness.finished(interaction)

        assert final.embeds[0]["title"] == "✅ Done"
        assert [a.data for a in final.attachments] == [png_for(f"half a set, then enough|7|{n}") for n in range(2)]
        assert field_value(final, "Note") == "2 of 4 pictures arrived before Member cancelled."
        assert harness.runpod.jobs[second.id].status(harness.runpod.clock()) == "CANCELLED"  # it stops billing
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})
        record = await harness.bot.storage.job(interaction.id)
        assert (record.state, record.pictures, record.execution_ms) == ("delivered", 2, 100)  # part 1's GPU time
        await counters_match_the_ledger(harness)


async def test_a_restart_never_removes_the_picture_a_queued_upscale_still_has_to_fetch(
    runpod, discord_double, tmp_path
):
    url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        harness.runpod.default_script = painted
        final = await harness.finished(await harness.imagine("upscale me later"))
        harness.runpod.default_script = lambda job_input: Script(queue_s=1.5, output=painted(job_input).output)
        upscale = harness.discord.click(button(final, "upscale"), message_id=final.id)
        await harness.discord.send(upscale)
        await harness.discord.wait_for(lambda: harness.title(upscale) == "⏳ In queue")
        (job,) = [job for job in harness.runpod.jobs.values() if "image_url" in job.input]
    restarting = discord_double.original_message(upscale.token)
    assert restarting.embeds[0]["title"] == "🔄 Bot restarting"
    assert [a.filename for a in restarting.attachments] == ["start.png"]
    async with aiohttp.ClientSession() as session, session.get(job.input["image_url"]) as response:
        assert response.status == 200  # what the worker fetches when its turn comes
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        done = await harness.finished(upscale)
        assert done.embeds[0]["title"] == "✅ Done"
        assert [a.data for a in done.attachments] == [png_for(f"upscale me later|{job.input['seed']}|0")]


def posted_in_channel(harness, title: str) -> bool:
    """Whether a job's status went on in a channel message (no interaction token to edit) that reads `title`."""
    shown = (m for m in harness.discord.messages.values() if m.interaction_token is None and m.embeds)
    return any(message.embeds[0].get("title") == title for message in shown)


class SteppingClock:
    """A wall clock an NTP correction can move."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def test_a_wall_clock_that_steps_forward_cancels_no_healthy_part_of_a_set(runpod):
    clock = SteppingClock()
    async with running_bot(runpod, options=fast_options(clock=clock)) as harness:
        await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"max_wall_seconds": 120})
        harness.runpod.default_script = lambda job_input: painted(job_input, 1.5)
        interaction = await harness.imagine("through a clock step", count=4, seed=3)
        await harness.discord.wait_for(lambda: len(harness.runpod.jobs) == 2)
        clock.offset = timedelta(hours=2)  # far past the server's 2-minute limit, by the wall clock alone
        final = await harness.finished(interaction)
        assert final.embeds[0]["title"] == "✅ Done"
        assert len(final.attachments) == 4
        assert harness.runpod.requests_for("cancel") == []


async def test_a_ledger_row_the_bot_cannot_read_stops_no_other_job(runpod, discord_double, tmp_path, caplog):
    """A row in a state this version does not know (a rollback after a newer one) is skipped with one warning
    naming it; another server's job that finished while the bot was down is still posted, and the sweeper runs."""
    url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        harness.runpod.default_script = painted
        await harness.finished(await harness.imagine("warm up"))  # the schema, and one finished job
        finished = (await harness.context.client(harness.bot.settings.runpod_api_key, ENDPOINT).run({})).id
        storage = harness.bot.storage
        for request_id, state, runpod_job_id in ((51, "queued", "from-the-future"), (52, "queued", finished)):
            await storage.record_job(
                JobRecord(
                    request_id=request_id, channel_id=DEFAULT_CHANNEL_ID, user_id=9, user_name="Other",
                    params={"prompt": f"row {request_id}"}, endpoint_id=ENDPOINT, worker="sdxl",
                    key_source=KeySource.DEFAULT, runpod_job_id=runpod_job_id, state=state,
                    created_at=datetime.now(UTC) - timedelta(hours=1),
                )
            )  # fmt: skip
        async with storage.engine.begin() as connection:
            await connection.execute(sa.text("UPDATE jobs SET state = 'zombie' WHERE request_id = 51"))
    caplog.set_level(logging.WARNING)
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        await harness.discord.wait_for(lambda: posted_in_channel(harness, "✅ Done"))
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})
        assert (await harness.bot.storage.job(52)).state == "delivered"
        await harness.bot.recovery.sweep()
        await harness.bot.recovery.sweep()
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert warnings == ["job row 51 cannot be read ('zombie' is not a valid LedgerState); skipped"]


async def test_a_connection_reset_while_posting_the_picture_is_tried_again_and_it_is_delivered_once(runpod, caplog):
    """The request that carries the finished picture is hung up on (a TCP reset, which discord.py lets through
    as an OSError / aiohttp error): the bot tries again, the picture is posted once, the ledger says delivered
    and the GPU time RunPod billed is counted."""
    async with running_bot(runpod) as harness:
        harness.runpod.default_script = painted
        harness.discord.fail_next("edit_followup", RESET, with_files=True)  # the reply, edited by its id
        interaction = await harness.imagine("through a reset")
        final = await harness.finished(interaction)
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})

        assert final.embeds[0]["title"] == "✅ Done"
        (job,) = harness.runpod.jobs.values()
        assert [a.data for a in final.attachments] == [png_for(f"through a reset|{job.input['seed']}|0")]
        with_files = [call for call in harness.edits(interaction) if call.files]
        assert [call.chaos for call in with_files] == ["reset", None]  # hung up on once, then posted once
        record = await harness.bot.storage.job(interaction.id)
        assert (record.state, record.execution_ms) == ("delivered", 100)
        now = datetime.now(UTC)
        usage = await harness.bot.storage.usage(DEFAULT_GUILD_ID, 0, start_of_day(now), start_of_month(now))
        assert (usage.guild_today, usage.gpu_seconds_today) == (1, 0.1)
        await counters_match_the_ledger(harness)
    assert "Something went wrong" not in caplog.text


async def test_a_reset_during_a_status_edit_is_logged_once_and_the_next_change_is_still_shown(runpod, caplog):
    async with running_bot(runpod) as harness:
        harness.runpod.default_script = lambda job_input: Script(
            queue_s=0.5, run_s=1.0, progress=[(0.3, "3/10"), (0.6, "6/10")], output=painted(job_input).output
        )
        harness.discord.fail_next("edit_followup", RESET)  # the first status edit after the "thinking" reply
        interaction = await harness.imagine("a status through a reset")
        final = await harness.finished(interaction)
        edits = harness.edits(interaction)
        hung_up = next(n for n, call in enumerate(edits) if call.chaos == "reset")
        later = [call.json["embeds"][0]["title"] for call in edits[hung_up + 1 :] if call.status == 200 and call.json]
        assert "🎨 Painting…" in later  # the status went on after the reset
        assert final.embeds[0]["title"] == "✅ Done"
    said = [r.getMessage() for r in caplog.records if "status could not be shown" in r.getMessage()]
    assert len(said) == 1
    assert "ServerDisconnectedError" in said[0] or "ClientOSError" in said[0]


async def test_a_part_that_finished_before_the_rest_of_its_set_failed_to_be_sent_is_still_posted(runpod):
    """RunPod refuses the second part's /run after the first part was taken and had already finished: the first
    is cancelled to be safe (a no-op once finished), followed anyway, and its paid pictures posted with a note."""
    async with running_bot(runpod, retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)) as harness:
        harness.runpod.default_script = lambda job_input: Script(output=painted(job_input).output)  # done at once
        runpod.delay_next("run", 0.3)
        interaction = await harness.imagine("half sent, half paid", count=4, seed=5)
        await harness.discord.wait_for(lambda: runpod.requests_for("run"))
        runpod.fail_next("run", 503, count=10)  # the second part's /run
        final = await harness.finished(interaction)
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})
        (sent,) = runpod.jobs.values()
        assert [request.job_id for request in runpod.requests_for("cancel")] == [sent.id]
        assert final.embeds[0]["title"] == "✅ Done"
        assert [a.data for a in final.attachments] == [png_for(f"half sent, half paid|5|{n}") for n in range(2)]
        assert field_value(final, "Note").startswith("2 of 4 pictures arrived. RunPod answered 503 to /run.")
        record = await harness.bot.storage.job(interaction.id)
        assert (record.state, record.pictures) == ("delivered", 2)
        await counters_match_the_ledger(harness)
