"""Many servers, one bot: one server's pictures cannot starve another's of the pictures' thread, its memory or a
picture turn (issue 21). The real bot against both doubles."""

from __future__ import annotations

import pytest

from bot.config import load_settings
from bot.errors import ConfigError
from bot.images import PICTURE_MEMORY
from doubles import outputs
from doubles.discord import (
    DEFAULT_GUILD_ID,
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    DiscordDouble,
    UserSpec,
    two_guilds,
)
from doubles.harness import png_for, running_bot
from doubles.runpod import Script

MEMBERS = [UserSpec(id=1_200_000_000_000_000_100 + n, username=f"m{n}", global_name=f"M{n}") for n in range(2)]
JPEG = outputs.make_jpeg(700, 700, seed=3)  # decoded and re-encoded to PNG: real work on the pictures' thread


def worker(job_input) -> Script:
    if str(job_input.get("prompt")).startswith("flood"):
        return Script(run_s=0.3, output=outputs.comfyui(*[JPEG] * 10))
    return Script(run_s=0.5, output=outputs.sdxl(png_for("innocent")))


@pytest.fixture
async def harness(runpod):
    guilds = two_guilds()
    async with DiscordDouble(guilds=guilds) as double, running_bot(runpod, discord_double=double) as running:
        yield running


async def test_a_server_flooding_the_pictures_thread_does_not_hold_up_another_server_s_picture(harness):
    harness.runpod.default_script = worker
    budget = harness.context.fetcher.budget
    real, events = budget.run, []

    async def run(amount, work, **kwargs):
        tenant = kwargs.get("tenant")
        events.append(("queued", tenant))

        def traced():
            events.append(("ran", tenant))
            return work()

        return await real(amount, traced, **kwargs)

    budget.run = run
    flood = [await harness.imagine(f"flood {n}", user=MEMBERS[n % 2]) for n in range(4)]  # 40 pictures to convert
    innocent = harness.discord.slash(
        "imagine", {"prompt": "innocent"}, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID
    )
    await harness.discord.send(innocent)
    done = await harness.finished(innocent, timeout=30)
    assert [attachment.data for attachment in done.attachments] == [png_for("innocent")]
    for interaction in flood:
        assert len((await harness.finished(interaction, timeout=30)).attachments) == 10
    assert {tenant for _, tenant in events} == {DEFAULT_GUILD_ID, OTHER_GUILD_ID}
    # Each of the other server's works ran after at most two of the flood's that were waiting when it came: the one
    # on the thread, and the flood's turn before it (round-robin), never all of them first come first served.
    for position, (kind, tenant) in enumerate(events):
        if kind == "queued" and tenant == OTHER_GUILD_ID:
            later = events[position + 1 :]
            ran = later.index(("ran", OTHER_GUILD_ID))
            assert sum(1 for event in later[:ran] if event == ("ran", DEFAULT_GUILD_ID)) <= 2
    waiting_when_it_came = [
        sum(1 for event in events[:position] if event == ("queued", DEFAULT_GUILD_ID))
        - sum(1 for event in events[:position] if event == ("ran", DEFAULT_GUILD_ID))
        for position, event in enumerate(events)
        if event == ("queued", OTHER_GUILD_ID)
    ]
    assert max(waiting_when_it_came) > 2  # the flood was there: served first come first, it would have waited


def test_the_memory_for_pictures_is_an_operator_setting():
    assert load_settings({}).picture_memory == PICTURE_MEMORY == 256 * 1024 * 1024
    assert load_settings({"PICTURE_MEMORY_MB": "512"}).picture_memory == 512 * 1024 * 1024
    for bad in ("lots", "16", "-1", "1.5"):
        with pytest.raises(ConfigError, match="PICTURE_MEMORY_MB must be a whole number of megabytes, at least 32"):
            load_settings({"PICTURE_MEMORY_MB": bad})
