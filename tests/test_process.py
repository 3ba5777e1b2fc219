"""The bot as a real process (`python -m bot`) against both doubles: start-up, sync, SIGTERM, logs."""

from __future__ import annotations

import signal
import time

from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID
from doubles.runpod import Script
from tests.conftest import API_KEY
from tests.processes import ready, start_bot


async def test_sigterm_mid_job_closes_cleanly_and_tells_the_member(tmp_path, discord_double, runpod):
    runpod.default_script = Script(queue_s=60)
    bot = await start_bot(tmp_path, discord_double, runpod, DISCORD_GUILD_IDS=str(DEFAULT_GUILD_ID))
    await ready(discord_double)
    await discord_double.wait_for(lambda: discord_double.commands(DEFAULT_GUILD_ID), timeout=15)
    assert [command["name"] for command in discord_double.commands(DEFAULT_GUILD_ID)] == [
        "imagine",
        "runpod",
        "settings",
    ]

    interaction = discord_double.slash("imagine", {"prompt": "a slow lighthouse"})
    await discord_double.send(interaction)

    def title():
        message = discord_double.original_message(interaction.token)
        return message.embeds[0]["title"] if message and message.embeds else None

    await discord_double.wait_for(lambda: title() == "⏳ In queue", timeout=15)
    started = time.monotonic()
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0
    assert time.monotonic() - started < 10
    assert title() == "🔄 Bot restarting"
    assert "SIGTERM received" in bot.log
    # Nothing secret in a DEBUG log: not the bot token, not the RunPod key, not the interaction token.
    for secret in (discord_double.token, API_KEY, interaction.token):
        assert secret not in bot.log, [line for line in bot.output if secret in line][:3]
    assert "Traceback" not in bot.log


async def test_a_job_completes_through_the_real_process(tmp_path, discord_double, runpod):
    png = outputs.make_png(seed=21)
    runpod.default_script = Script(queue_s=0.2, run_s=0.5, output=outputs.sdxl(png))
    bot = await start_bot(tmp_path, discord_double, runpod, DISCORD_GUILD_IDS=str(DEFAULT_GUILD_ID))
    await ready(discord_double)
    interaction = discord_double.slash("imagine", {"prompt": "quick"})
    await discord_double.send(interaction)

    def attachments():
        message = discord_double.original_message(interaction.token)
        return [attachment.data for attachment in message.attachments] if message else []

    await discord_double.wait_for(lambda: attachments() == [png], timeout=15)
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0


async def test_sync_publishes_commands_globally(tmp_path, discord_double, runpod):
    bot = await start_bot(tmp_path, discord_double, runpod, "sync")
    assert await bot.finish() == 0
    assert [command["name"] for command in discord_double.commands(None)] == ["imagine", "runpod", "settings"]
    assert "published 3 global command(s): imagine, runpod, settings" in bot.log


async def test_missing_or_refused_token_is_one_clear_line(tmp_path, discord_double, runpod):
    bot = await start_bot(tmp_path, discord_double, runpod, DISCORD_TOKEN="")
    assert await bot.finish() == 2
    assert bot.log.strip().splitlines()[-1].startswith("configuration error: DISCORD_TOKEN is not set")
    bot = await start_bot(tmp_path, discord_double, runpod, DISCORD_TOKEN="not-the-token")
    assert await bot.finish() == 2
    assert bot.log.strip().splitlines()[-1] == (
        "configuration error: DISCORD_TOKEN was refused by Discord: reset it in the developer portal"
    )
    assert "Traceback" not in bot.log


async def test_on_a_paas_a_sqlite_ledger_is_warned_about_at_start(tmp_path, discord_double, runpod):
    bot = await start_bot(tmp_path, discord_double, runpod, DYNO="worker.1")
    await ready(discord_double)
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0
    assert "SQLite file on the dyno's disk, which is wiped at every restart" in bot.log
    quiet = await start_bot(tmp_path, discord_double, runpod)  # not on a PaaS: nothing to warn about
    await ready(discord_double, connections=2)
    quiet.process.send_signal(signal.SIGTERM)
    assert await quiet.finish() == 0
    assert "dyno" not in quiet.log


async def test_keys_typed_into_the_setup_form_never_reach_a_debug_log(tmp_path, discord_double, runpod):
    """discord.py's gateway logger prints every incoming interaction at DEBUG, form values included: a key
    that was saved and a key RunPod refused must both stay out of the log."""
    saved, refused = "rpa_SAVED_GUILD_KEY_0123456789", "rpa_REFUSED_GUILD_KEY_9876543210"
    runpod.api_keys.add(saved)
    bot = await start_bot(tmp_path, discord_double, runpod)  # LOG_LEVEL=DEBUG
    await ready(discord_double)
    replies = []
    for key in (saved, refused):
        setup = discord_double.slash("runpod", {}, subcommand="setup", permissions=1 << 5)
        await discord_double.send(setup)
        await discord_double.wait_for(lambda setup=setup: discord_double.calls_for("callback", setup.token), timeout=15)
        form = discord_double.calls_for("callback", setup.token)[0].json["data"]["custom_id"]
        submit = discord_double.submit_modal(
            form, {"api_key": key, "endpoint_id": "other-endpoint"}, permissions=1 << 5
        )
        await discord_double.send(submit)
        await discord_double.wait_for(lambda submit=submit: discord_double.calls_for("followup", submit.token), 15)
        replies.append(discord_double.calls_for("followup", submit.token)[-1].json["content"])
    assert replies[0].startswith("✅ Connected endpoint `other-endpoint`")
    assert replies[1].startswith("❌ RunPod refused that API key (401). Nothing was saved.")
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0
    assert "WebSocket Event" in bot.log  # the gateway's DEBUG lines are there, the keys are not
    for secret in (saved, refused):
        assert secret not in bot.log, [line for line in bot.output if secret in line][:2]
