"""Kill the bot at any moment and start it again: nothing is lost and nothing is posted twice.

Real `python -m bot` processes share one SQLite ledger and the two doubles; the RunPod double keeps
running the jobs while the bot is down, as RunPod would.
"""

from __future__ import annotations

import asyncio
import signal

from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID
from doubles.harness import button, field_value, png_for
from doubles.runpod import Script
from tests.processes import ready, set_policy, start_bot

RESULT_TITLE = "✅ Done"


def script(queue_s: float, run_s: float):
    """Every job paints its prompt's own picture, so each delivery can be traced to its job."""
    return lambda job_input: Script(queue_s=queue_s, run_s=run_s, output=outputs.sdxl(png_for(job_input["prompt"])))


def title(discord_double, interaction) -> str | None:
    message = discord_double.original_message(interaction.token)
    return message.embeds[0].get("title") if message and message.embeds else None


def deliveries(discord_double, prompt: str) -> list[int]:
    """Ids of every message that shows this prompt's picture: exactly one when delivered once."""
    png = png_for(prompt)
    return [
        message.id
        for message in discord_double.messages.values()
        if not message.deleted and any(attachment.data == png for attachment in message.attachments)
    ]


async def imagine(discord_double, prompt: str):
    interaction = discord_double.slash("imagine", {"prompt": prompt})
    await discord_double.send(interaction)
    return interaction


async def kill_and_restart(tmp_path, discord_double, runpod, bot, sig=signal.SIGKILL):
    bot.process.send_signal(sig)
    code = await bot.finish()
    restarted = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double, connections=2)
    return code, restarted


async def assert_delivered_once(discord_double, prompts: list[str]) -> None:
    await discord_double.wait_for(lambda: all(deliveries(discord_double, p) for p in prompts), timeout=30)
    await asyncio.sleep(1.0)  # give a duplicate, if there were one, the time to show up
    for prompt in prompts:
        assert len(deliveries(discord_double, prompt)) == 1, prompt


async def test_sigkill_while_queued(tmp_path, discord_double, runpod):
    runpod.default_script = script(queue_s=4, run_s=0.3)
    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    interaction = await imagine(discord_double, "queued when killed")
    await discord_double.wait_for(lambda: title(discord_double, interaction) == "⏳ In queue", timeout=15)
    _, bot = await kill_and_restart(tmp_path, discord_double, runpod, bot)
    await assert_delivered_once(discord_double, ["queued when killed"])
    assert title(discord_double, interaction) == RESULT_TITLE  # the same reply, edited: nothing new
    assert len(runpod.jobs) == 1  # resumed, not resubmitted
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_sigkill_while_running(tmp_path, discord_double, runpod, database_url):
    runpod.default_script = script(queue_s=0.2, run_s=4)
    bot = await start_bot(tmp_path, discord_double, runpod, DATABASE_URL=database_url)
    await ready(discord_double)
    interaction = await imagine(discord_double, "running when killed")
    await discord_double.wait_for(lambda: title(discord_double, interaction) == "🎨 Painting…", timeout=15)
    bot.process.send_signal(signal.SIGKILL)
    await bot.finish()
    bot = await start_bot(tmp_path, discord_double, runpod, DATABASE_URL=database_url)
    await assert_delivered_once(discord_double, ["running when killed"])
    assert title(discord_double, interaction) == RESULT_TITLE
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_sigkill_then_the_job_completes_while_the_bot_is_down(tmp_path, discord_double, runpod):
    runpod.default_script = script(queue_s=0.2, run_s=1.5)
    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    interaction = await imagine(discord_double, "finished while down")
    await discord_double.wait_for(lambda: title(discord_double, interaction) == "🎨 Painting…", timeout=15)
    bot.process.send_signal(signal.SIGKILL)
    await bot.finish()
    (job,) = runpod.jobs.values()
    await discord_double.wait_for(lambda: job.status(runpod.clock()) == "COMPLETED", timeout=15)
    assert deliveries(discord_double, "finished while down") == []  # completed on RunPod, not yet uploaded
    bot = await start_bot(tmp_path, discord_double, runpod)
    await assert_delivered_once(discord_double, ["finished while down"])
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_sigterm_in_the_middle_of_ten_jobs_then_each_is_delivered_once(tmp_path, discord_double, runpod):
    runpod.default_script = script(queue_s=5, run_s=0.5)
    await set_policy(f"sqlite:///{tmp_path}/bot.db", DEFAULT_GUILD_ID, member_concurrent=10, guild_concurrent=10)
    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    prompts = [f"job number {n}" for n in range(10)]
    interactions = [await imagine(discord_double, prompt) for prompt in prompts]
    await discord_double.wait_for(
        lambda: all(title(discord_double, i) == "⏳ In queue" for i in interactions), timeout=15
    )
    code, bot = await kill_and_restart(tmp_path, discord_double, runpod, bot, sig=signal.SIGTERM)
    assert code == 0
    await assert_delivered_once(discord_double, prompts)
    for interaction, prompt in zip(interactions, prompts, strict=True):
        message = discord_double.original_message(interaction.token)
        assert [attachment.data for attachment in message.attachments] == [png_for(prompt)]
    assert len(runpod.jobs) == 10
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_sigterm_tells_every_waiting_member_their_job_goes_on(tmp_path, discord_double, runpod):
    runpod.default_script = script(queue_s=60, run_s=1)
    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    interactions = [await imagine(discord_double, f"patient {n}") for n in range(3)]
    # Two on RunPod, and the third waiting its turn in the bot (two per member at once, by default).
    shown = sorted(["⏳ In queue", "⏳ In queue", "🕒 Waiting for your turn"])
    await discord_double.wait_for(
        lambda: sorted(str(title(discord_double, i)) for i in interactions) == shown, timeout=15
    )
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish(timeout=15) == 0
    for interaction in interactions:
        message = discord_double.original_message(interaction.token)
        assert message.embeds[0]["title"] == "🔄 Bot restarting"
        assert "will be posted here" in message.embeds[0]["fields"][0]["value"]


async def test_buttons_from_before_a_restart_still_work(tmp_path, discord_double, runpod):
    runpod.default_script = script(queue_s=0.1, run_s=0.2)
    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    done = await imagine(discord_double, "delivered before")
    await discord_double.wait_for(lambda: deliveries(discord_double, "delivered before"), timeout=15)
    runpod.default_script = script(queue_s=60, run_s=1)
    waiting = await imagine(discord_double, "still waiting")
    await discord_double.wait_for(lambda: title(discord_double, waiting) == "⏳ In queue", timeout=15)
    _, bot = await kill_and_restart(tmp_path, discord_double, runpod, bot)

    done_job = next(job for job in runpod.jobs.values() if job.input["prompt"] == "delivered before")
    result = discord_double.original_message(done.token)
    info = discord_double.click(button(result, "info"), message_id=result.id)
    await discord_double.send(info)
    await discord_double.wait_for(lambda: discord_double.calls_for("callback", info.token), timeout=15)
    (callback,) = discord_double.calls_for("callback", info.token)
    embed = callback.json["data"]["embeds"][0]
    assert embed["title"] == "ℹ️ Job details"
    assert {"name": "Seed", "value": str(done_job.input["seed"]), "inline": True} in embed["fields"]
    assert callback.json["data"]["flags"] & 64

    waiting_job = next(job for job in runpod.jobs.values() if job.input["prompt"] == "still waiting")
    status = discord_double.original_message(waiting.token)
    cancel = discord_double.click(button(status, "cancel"), message_id=status.id)
    await discord_double.send(cancel)
    await discord_double.wait_for(lambda: title(discord_double, waiting) == "🚫 Cancelled", timeout=15)
    assert [request.job_id for request in runpod.requests_for("cancel")] == [waiting_job.id]
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_a_restarted_bot_remembers_how_long_its_endpoint_keeps_jobs_waiting(
    tmp_path, discord_double, runpod, database_url
):
    runpod.default_script = script(queue_s=1.0, run_s=0.2)
    bot = await start_bot(tmp_path, discord_double, runpod, DATABASE_URL=database_url)
    await ready(discord_double)
    await imagine(discord_double, "teaches the queue time")
    await discord_double.wait_for(lambda: deliveries(discord_double, "teaches the queue time"), timeout=15)
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0

    runpod.default_script = script(queue_s=5.0, run_s=0.2)
    bot = await start_bot(tmp_path, discord_double, runpod, DATABASE_URL=database_url)
    await ready(discord_double, connections=2)
    interaction = await imagine(discord_double, "first job after the restart")

    def expected_start() -> str | None:
        message = discord_double.original_message(interaction.token)
        return field_value(message, "Expected start") if message and message.embeds else None

    await discord_double.wait_for(lambda: title(discord_double, interaction) == "⏳ In queue", timeout=15)
    await discord_double.wait_for(expected_start, timeout=5)
    # Shown only when the endpoint's usual wait is known: here, from the queue time the ledger kept. One second
    # of usual wait has come due by the time it is drawn, so it reads as due rather than as a countdown.
    assert expected_start() == "any moment now"
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_sigkill_in_the_middle_of_a_set_of_four_then_all_four_arrive_in_one_message(
    tmp_path, discord_double, runpod
):
    # worker-sdxl makes 2 a job: the set is two RunPod jobs; the first finishes, then the bot dies.
    runpod.default_script = lambda job_input: Script(
        queue_s=0.1 if not runpod.jobs else 3.0,
        run_s=0.2,
        output=outputs.sdxl(*(png_for(f"set|{job_input['seed']}|{n}") for n in range(job_input["num_images"]))),
    )
    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    interaction = discord_double.slash("imagine", {"prompt": "a set", "count": 4, "seed": 10})
    await discord_double.send(interaction)
    await discord_double.wait_for(lambda: len(runpod.jobs) == 2, timeout=15)
    first, _ = runpod.jobs.values()
    await discord_double.wait_for(lambda: first.status(runpod.clock()) == "COMPLETED", timeout=15)
    _, bot = await kill_and_restart(tmp_path, discord_double, runpod, bot)

    await discord_double.wait_for(lambda: title(discord_double, interaction) == RESULT_TITLE, timeout=30)
    result = discord_double.original_message(interaction.token)
    expected = [png_for(f"set|{seed}|{n}") for seed in (10, 12) for n in range(2)]
    assert [attachment.data for attachment in result.attachments] == expected
    assert len(runpod.jobs) == 2  # both parts resumed, neither sent again
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_sigkill_while_a_set_is_being_sent_delivers_the_parts_sent_and_says_so(tmp_path, discord_double, runpod):
    runpod.default_script = lambda job_input: Script(
        queue_s=0.1, run_s=0.2, output=outputs.sdxl(*(png_for(f"cut|{n}") for n in range(job_input["num_images"])))
    )
    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    runpod.delay_next("run", 0.5)  # the first part's /run, long enough to hold back the second's
    interaction = discord_double.slash("imagine", {"prompt": "cut short", "count": 4})
    await discord_double.send(interaction)
    await discord_double.wait_for(lambda: runpod.requests_for("run"), timeout=15)
    runpod.delay_next("run", 30)  # the second part's /run hangs: the bot is killed while it waits
    await discord_double.wait_for(lambda: len(runpod.requests_for("run")) == 2, timeout=15)
    _, bot = await kill_and_restart(tmp_path, discord_double, runpod, bot)

    await discord_double.wait_for(lambda: title(discord_double, interaction) == RESULT_TITLE, timeout=30)
    result = discord_double.original_message(interaction.token)
    assert [attachment.data for attachment in result.attachments] == [png_for("cut|0"), png_for("cut|1")]
    assert field_value(result, "Note").startswith("2 of 4 pictures arrived. The bot restarted while")
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0
