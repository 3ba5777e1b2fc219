"""Many servers, one bot: what one server's admin or members do cannot touch another server."""

from __future__ import annotations

import pytest

from doubles.discord import (
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    DiscordDouble,
    UserSpec,
    two_guilds,
)
from doubles.harness import running_bot

MANAGE_GUILD = 1 << 5
ADMIN = UserSpec(id=1_200_000_000_000_000_900, username="admin", global_name="Admin")


@pytest.fixture
async def harness(runpod):
    guilds = two_guilds()
    async with DiscordDouble(guilds=guilds) as double, running_bot(runpod, discord_double=double) as running:
        yield running


async def moderate(harness, **options) -> str:
    command = harness.discord.slash("runpod", options, subcommand="moderation", user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(command)
    await harness.discord.wait_for(lambda: harness.private_replies(command))
    return harness.private_replies(command)[-1]


async def test_a_backtracking_pattern_cannot_stall_the_bot_for_another_server(harness):
    """`(a+)+$` against 27 a's and a "!" backtracks for seconds under Python's `re`: the bot's event loop
    would stop, and the other server's /imagine would miss Discord's 3 s deadline (the double answers
    404 Unknown interaction to a late defer). Patterns run on RE2, which cannot backtrack."""
    assert (await moderate(harness, ban_pattern="(a+)+$")).startswith("Refused words: none\nRefused patterns: `(a+)+$`")
    stalling = await harness.imagine("a" * 27 + "!")
    other = harness.discord.slash(
        "imagine", {"prompt": "meanwhile"}, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID
    )
    await harness.discord.send(other)
    assert (await harness.finished(other)).embeds[0]["title"] == "✅ Done"
    assert (await harness.finished(stalling)).embeds[0]["title"] == "✅ Done"  # no match: it is not refused
    callbacks = harness.discord.calls_for("callback", other.token) + harness.discord.calls_for(
        "callback", stalling.token
    )
    assert [call.status for call in callbacks] == [200, 200]  # both deferred in time
    matching = await harness.imagine("aaaa")
    await harness.discord.wait_for(lambda: harness.private_replies(matching))
    assert harness.private_replies(matching) == ["This server's rules do not allow that prompt."]


async def test_patterns_the_linear_engine_cannot_run_are_refused_when_saved(harness):
    reply = await moderate(harness, ban_pattern=r"(cat)\1")
    assert reply.startswith(r"`(cat)\1` is not a valid regular expression here (invalid escape sequence: \1).")
    assert "no backreferences or lookarounds" in reply
    assert (await moderate(harness, ban_pattern="(?=x)y")).startswith("`(?=x)y` is not a valid regular expression")
    assert "Refused patterns: none" in await moderate(harness, spoiler=False)


async def test_a_server_keeps_at_most_twenty_patterns(harness):
    for number in range(20):
        assert "Refused patterns:" in await moderate(harness, ban_pattern=f"word{number}")
    assert await moderate(harness, ban_pattern="one-too-many") == (
        "This server already refuses 20 patterns; unban one first."
    )


async def test_imagine_outside_a_server_is_refused_by_the_bot_itself(harness):
    """Discord hides /imagine in DMs, but an interaction from a DM must not run on the operator's key unmetered."""
    direct = harness.discord.slash("imagine", {"prompt": "in a DM"}, guild_id=None, channel_id=None)
    await harness.discord.send(direct)
    await harness.discord.wait_for(lambda: harness.private_replies(direct))
    assert harness.private_replies(direct) == ["This command only works in a server."]
    assert harness.runpod.requests == []
