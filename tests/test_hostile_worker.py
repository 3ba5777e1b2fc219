"""A server owner may point the bot at any endpoint, so at a hostile worker: whatever its output holds, the bot
spends a bounded amount of memory on it, ends that job with a clear message for that server, and serves everyone
else as before. The real bot against both doubles, and a real `python -m bot` process whose memory is measured."""

from __future__ import annotations

import random
import re
import signal
from io import BytesIO

import pytest
from PIL import Image

from doubles import outputs
from doubles.discord import UserSpec
from doubles.harness import field_value, png_for, running_bot
from doubles.runpod import Script
from tests.processes import ready, start_bot

MB = 1024 * 1024


async def test_eleven_images_end_the_job_with_a_clear_message_and_it_stays_ended(runpod, discord_double, tmp_path):
    database_url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=database_url, discord_double=discord_double) as harness:
        pictures = [outputs.make_png(seed=n) for n in range(11)]
        harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(*pictures))
        interaction = await harness.imagine("a flood of pictures")
        final = await harness.finished(interaction)
        assert final.embeds[0]["title"] == "⚠️ No picture this time"
        assert "more than 10 images, and Discord takes at most 10 in one message" in field_value(final, "What happened")
        assert final.attachments == []
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})  # the card shows before the claim
        assert await harness.bot.storage.undelivered_jobs() == []  # ended for good: nothing left to deliver

        harness.runpod.default_script = lambda job_input: Script(output=outputs.sdxl(png_for("next")))
        following = await harness.finished(await harness.imagine("next"))
        assert [attachment.data for attachment in following.attachments] == [png_for("next")]

    (job_id, _) = runpod.jobs
    polls = len(runpod.requests_for("status", job_id))
    async with running_bot(runpod, database_url=database_url, discord_double=discord_double) as restarted:
        assert restarted.bot._resuming is not None
        await restarted.bot._resuming  # a restarted bot takes up what was left undelivered: nothing here
        assert restarted.bot.runner.live == {}
    assert len(runpod.requests_for("status", job_id)) == polls
    assert restarted.title(interaction) == "⚠️ No picture this time"


# --- the real process, measured ------------------------------------------------------------------


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Pictures a few bytes or a megabyte long that decoders inflate to hundreds of megabytes."""
    canvas = Image.new("RGBA", (6000, 6000), (40, 50, 60, 255))  # 36 megapixels, under the bot's pixel cap
    noise = random.Random(5).randbytes(6000 * 50 * 4)  # 1.2 MB that does not compress
    canvas.paste(Image.frombytes("RGBA", (6000, 50), noise))
    buffer = BytesIO()
    canvas.save(buffer, "PNG", compress_level=1)
    return {
        "giant webp": outputs.make_webp(16383, 2400),  # 39 megapixels: 600 MB as libwebp decodes it
        "large webp": outputs.make_webp(2000, 2000),  # 4 megapixels: within the bot's memory for pictures
        "wide png": buffer.getvalue(),
    }


async def test_a_hostile_worker_costs_the_bot_process_a_bounded_memory_and_its_server_a_clear_message(
    tmp_path, discord_double, runpod, bombs
):
    def title(interaction) -> str | None:
        message = discord_double.original_message(interaction.token)
        return message.embeds[0].get("title") if message and message.embeds else None

    async def imagine(output, **options) -> str:
        """A job whose worker returns `output` (None: as the double's stream says); what the member is told."""
        runpod.default_script = lambda job_input: Script(output=output)
        interaction = discord_double.slash("imagine", {"prompt": "anything"}, **options)
        await discord_double.send(interaction)
        await discord_double.wait_for(lambda: title(interaction) in ("✅ Done", "⚠️ No picture this time"), 60)
        message = discord_double.original_message(interaction.token)
        assert message is not None
        if title(interaction) == "✅ Done":
            return f"{len(message.attachments)} pictures"
        return str(field_value(message, "What happened"))

    bot = await start_bot(tmp_path, discord_double, runpod)
    await ready(discord_double)
    assert await imagine({"images": [outputs.b64(outputs.make_webp(64, 64))]}) == "1 pictures"  # Pillow loaded
    idle = peak_rss(bot.process.pid)

    runpod.stream_next("status", outputs.streamed_status(830 * MB))
    told = await imagine(None)
    assert told.startswith("RunPod's answer for this job is over 64 MB, so it was not read.")
    after_answer = peak_rss(bot.process.pid)

    told = await imagine({"images": [outputs.b64(bombs["giant webp"])] * 10})
    assert "is a 16383×2400 WEBP: decoding it would take about 1050 MB of memory, over the 256 MB the bot" in told

    assert await imagine({"images": [outputs.b64(bombs["large webp"])] * 10}) == "10 pictures"  # in turn

    told = await imagine({"images": [outputs.b64(bombs["wide png"])]}, attachment_size_limit=MB)
    assert told.startswith("The pictures are over Discord's 1 MB upload limit, and re-encoding them to fit would")

    assert await imagine(outputs.sdxl(outputs.make_png(seed=8))) == "1 pictures"  # and the bot serves on
    peak = peak_rss(bot.process.pid)
    print(f"\npeak RSS: idle {idle / MB:.0f} MB, after the 830 MB answer {after_answer / MB:.0f} MB, "
          f"after the pictures {peak / MB:.0f} MB")  # fmt: skip
    assert peak - idle < 300 * MB
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0
    assert "Traceback" not in bot.log


async def test_sigterm_drops_the_picture_work_queued_and_the_operator_sets_the_memory_for_pictures(
    tmp_path, discord_double, runpod
):
    """Queued picture work ran to its end before the bot could exit: SIGTERM took 19 s (PaaS kill at 30 s)."""
    members = [UserSpec(id=1_200_000_000_000_000_100 + n, username=f"m{n}", global_name=f"M{n}") for n in range(3)]
    jpeg = outputs.make_jpeg(1500, 1500, seed=4)
    bot = await start_bot(tmp_path, discord_double, runpod, PICTURE_MEMORY_MB="64")
    await ready(discord_double)
    runpod.default_script = lambda job_input: Script(output={"images": [outputs.b64(outputs.make_webp(2000, 2000))]})
    interaction = discord_double.slash("imagine", {"prompt": "a large webp"})
    await discord_double.send(interaction)
    await discord_double.wait_for(lambda: "over the 64 MB the bot allows for pictures" in bot.log, 30)

    runpod.default_script = lambda job_input: Script(run_s=0.2, output=outputs.comfyui(*[jpeg] * 10))
    for n in range(6):  # 60 pictures of 2.2 megapixels to decode, a few at a time
        await discord_double.send(discord_double.slash("imagine", {"prompt": f"flood {n}"}, user=members[n % 3]))
    await discord_double.wait_for(lambda: bot.log.count("ended COMPLETED") >= 2, 30)
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.finish() == 0
    (line,) = [line for line in bot.log.splitlines() if "were dropped" in line]
    turns, work = map(int, re.search(r"(\d+) picture turn\(s\) and (\d+) picture work\(s\)", line).groups())
    assert turns + work > 0  # there was picture work waiting, and it was dropped rather than done
    assert "Traceback" not in bot.log
