"""Fair use end to end: limits, the fair queue, quotas, preflight, moderation, sweeping, models, usage."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from io import BytesIO

import discord
import pytest
from PIL import Image

from bot.lifecycle import LedgerState
from bot.storage import JobRecord, KeySource
from bot.usage import gpu_time
from doubles import outputs
from doubles.discord import (
    APP_PERMISSIONS,
    DEFAULT_CHANNEL_ID,
    DEFAULT_GUILD_ID,
    DEFAULT_USER_ID,
    ChannelSpec,
    GuildSpec,
    UserSpec,
)
from doubles.harness import button, fast_options, field_value, png_for, running_bot
from doubles.runpod import Script
from tests.conftest import API_KEY, ENDPOINT

NSFW_CHANNEL_ID = DEFAULT_CHANNEL_ID + 7
MANAGE_GUILD = 1 << 5
ADMIN = UserSpec(id=DEFAULT_USER_ID + 900, username="admin", global_name="Admin")


class Clock:
    """The runner's idea of now, moved by the test: quotas count days by it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def harness(runpod):
    guild = GuildSpec(channels=[ChannelSpec(), ChannelSpec(id=NSFW_CHANNEL_ID, name="after-dark", nsfw=True)])
    async with running_bot(runpod, guilds=[guild]) as running:
        yield running


async def set_policy(harness, **policy):
    await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, policy)


async def refused(harness, interaction) -> str:
    await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    return harness.private_replies(interaction)[0]


def most_at_once(spans: list[tuple[str, float, float]]) -> int:
    """The largest number of these (who, start, end) jobs that were running at the same moment."""
    events = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    running = peak = 0
    for _, change in events:  # at a tie, an end (-1) sorts before a start (+1)
        running += change
        peak = max(peak, running)
    return peak


def member(n: int) -> UserSpec:
    return UserSpec(id=DEFAULT_USER_ID + n, username=f"member{n}", global_name=f"Member {n}")


async def test_many_members_at_once_get_fair_turns_within_the_limits(harness):
    await set_policy(harness, member_concurrent=1, guild_concurrent=2, member_waiting=3)
    harness.runpod.default_script = lambda job_input: Script(
        queue_s=0.05, run_s=0.3, output=outputs.sdxl(png_for(job_input["prompt"]))
    )
    members = [member(n) for n in range(3)]
    interactions = []
    for n, user in enumerate(members):  # each member asks for three in a row, m0 first, then m1, then m2
        mine = [await harness.imagine(f"m{n} job {round_}", user=user) for round_ in range(3)]
        await harness.discord.wait_for(lambda mine=mine: all(harness.title(i) for i in mine), timeout=5)
        interactions += mine
    # Someone waits, and is told their place.
    await harness.discord.wait_for(
        lambda: any(harness.title(i) == "🕒 Waiting for your turn" for i in interactions), timeout=5
    )
    waiting = next(i for i in interactions if harness.title(i) == "🕒 Waiting for your turn")
    assert re.fullmatch(r"\d+(st|nd|rd|th) in this server's line", field_value(harness.shown(waiting), "Your place"))
    finals = await asyncio.gather(*(harness.finished(i, timeout=30) for i in interactions))
    assert all(final.embeds[0]["title"] == "✅ Done" for final in finals)

    # What RunPod saw: never two jobs of one member at once, never more than two for the guild.
    jobs = list(harness.runpod.jobs.values())
    spans = [(job.input["prompt"][:2], job.submitted_at, job.finished_at(harness.runpod.clock())) for job in jobs]
    assert most_at_once(spans) <= 2
    for who in ("m0", "m1", "m2"):
        assert most_at_once([span for span in spans if span[0] == who]) == 1
    # Round-robin: m2, who asked last, gets a first turn before m0 (who asked first) gets a third. Jobs
    # admitted at the same moment may reach RunPod in either order, so only whole rounds are compared.
    order = [job.input["prompt"][:2] for job in sorted(jobs, key=lambda job: job.submitted_at)]
    turns = {who: [at for at, whose in enumerate(order) if whose == who] for who in ("m0", "m1", "m2")}
    assert max(mine[0] for mine in turns.values()) < min(mine[2] for mine in turns.values()), order


async def test_a_member_who_queues_too_many_is_refused_privately(harness):
    await set_policy(harness, member_concurrent=1, member_waiting=1)
    harness.runpod.default_script = lambda job_input: Script(queue_s=5)
    both = [await harness.imagine("one"), await harness.imagine("two")]
    await harness.discord.wait_for(lambda: any(harness.title(i) == "🕒 Waiting for your turn" for i in both))
    third = await harness.imagine("three")
    final = await harness.finished(third)
    assert "already have 1 pictures waiting" in field_value(final, "What happened")
    assert len(harness.runpod.jobs) == 1


async def test_daily_quota_across_midnight_with_failures_free(runpod):
    clock = Clock(datetime(2026, 11, 22, 23, 58, tzinfo=UTC))
    async with running_bot(runpod, options=fast_options(clock=clock)) as harness:
        await set_policy(harness, member_daily=2)
        harness.runpod.default_script = lambda job_input: Script(outcome="FAILED", error="CUDA error")
        await harness.finished(await harness.imagine("fails, so it is free"))
        harness.runpod.default_script = lambda job_input: Script(output=outputs.sdxl(png_for("ok")))
        for n in range(2):
            final = await harness.finished(await harness.imagine(f"counted {n}"))
            assert final.embeds[0]["title"] == "✅ Done"
        third = await harness.imagine("over the quota")
        text = await refused(harness, third)
        midnight = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp())
        assert text == f"You have used your 2 pictures for today; you can make more <t:{midnight}:R>."
        assert len(harness.runpod.jobs) == 3  # the refused one never reached RunPod

        clock.now += timedelta(minutes=3)  # 00:01, a new day
        final = await harness.finished(await harness.imagine("a new day"))
        assert final.embeds[0]["title"] == "✅ Done"
        # Another member was never limited by the first one's quota.
        assert len(harness.runpod.jobs) == 4


async def test_a_quota_of_one_holds_when_eight_members_ask_at_the_same_moment(harness):
    """The quota is counted where the job is written, under one lock per server: of 8 requests sent together
    against a daily limit of 1, exactly one reaches RunPod; the others are told privately, and the public
    "thinking" placeholder of each refused one is removed."""
    await set_policy(harness, guild_daily_jobs=1)
    requests = [harness.discord.slash("imagine", {"prompt": f"at once {n}"}, user=member(n)) for n in range(8)]
    await asyncio.gather(*(harness.discord.send(request) for request in requests))
    await harness.discord.wait_for(
        lambda: sum(bool(harness.private_replies(r)) for r in requests) == 7 and len(harness.runpod.jobs) == 1
    )
    (accepted,) = [request for request in requests if not harness.private_replies(request)]
    assert (await harness.finished(accepted)).embeds[0]["title"] == "✅ Done"
    for request in requests:
        if request is not accepted:
            assert harness.private_replies(request)[0].startswith("This server has used its 1 picture for today")
            assert harness.discord.calls_for("delete_original", request.token)
            assert harness.discord.original_message(request.token).deleted
    assert len(harness.runpod.jobs) == 1


async def test_guild_gpu_seconds_quota_counts_run_time(runpod):
    clock = Clock(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    async with running_bot(runpod, options=fast_options(clock=clock)) as harness:
        await set_policy(harness, guild_daily_gpu_seconds=1)
        harness.runpod.default_script = lambda job_input: Script(run_s=1.2, output=outputs.sdxl(png_for("x")))
        await harness.finished(await harness.imagine("uses 1.2 s"))
        text = await refused(harness, await harness.imagine("no more", user=member(3)))
        assert text.startswith("This server has used today's GPU time; more <t:")


async def test_preflight_refuses_without_attach_files_and_pays_nothing(harness):
    without_attach = APP_PERMISSIONS & ~discord.Permissions(attach_files=True).value
    interaction = harness.discord.slash("imagine", {"prompt": "x"}, app_permissions=without_attach)
    await harness.discord.send(interaction)
    text = await refused(harness, interaction)
    assert text == "I cannot post pictures in this channel: I am missing Attach Files. Ask an admin to allow it."
    assert harness.runpod.requests == []
    (callback,) = harness.discord.calls_for("callback", interaction.token)  # no public "thinking…" flashed first
    assert (callback.json["type"], callback.json["data"]["flags"] & 64) == (4, 64)


async def test_banned_words_and_the_nsfw_only_rule(harness):
    await set_policy(harness, banned_words=["dragon"], nsfw_only_words=["gore"])
    assert (
        await refused(harness, await harness.imagine("a red dragon"))
        == "This server does not allow “dragon” in prompts."
    )
    text = await refused(harness, await harness.imagine("gore everywhere"))
    assert text == "“gore” is only allowed in this server's NSFW channels."
    assert harness.runpod.requests == []
    allowed = harness.discord.slash("imagine", {"prompt": "gore everywhere"}, channel_id=NSFW_CHANNEL_ID)
    await harness.discord.send(allowed)
    assert (await harness.finished(allowed)).embeds[0]["title"] == "✅ Done"


async def test_results_outside_nsfw_channels_can_be_spoilered(harness):
    await set_policy(harness, spoiler_outside_nsfw=True)
    final = await harness.finished(await harness.imagine("surprise"))
    assert final.attachments[0].filename.startswith("SPOILER_surprise_")
    nsfw = harness.discord.slash("imagine", {"prompt": "surprise"}, channel_id=NSFW_CHANNEL_ID)
    await harness.discord.send(nsfw)
    assert not (await harness.finished(nsfw)).attachments[0].filename.startswith("SPOILER_")


async def test_size_limits_refuse_privately(harness):
    await set_policy(harness, max_count=1, max_steps=20)
    assert "at most 1 picture" in await refused(harness, await harness.imagine("x", count=2))
    assert "at most 20 steps" in await refused(harness, await harness.imagine("x", steps=30))
    assert harness.runpod.requests == []


async def test_a_job_past_the_guilds_wall_time_is_cancelled_on_runpod(harness):
    await set_policy(harness, max_wall_seconds=1)
    harness.runpod.default_script = lambda job_input: Script(queue_s=60)
    final = await harness.finished(await harness.imagine("stuck"))
    assert "it was cancelled on RunPod so it stops costing GPU time" in field_value(final, "What happened")
    (job,) = harness.runpod.jobs.values()
    assert [request.job_id for request in harness.runpod.requests_for("cancel")] == [job.id]


async def test_the_sweeper_cancels_a_stale_job_nobody_follows(harness, client):
    await set_policy(harness, max_wall_seconds=60)
    harness.runpod.default_script = lambda job_input: Script(queue_s=600)
    job = await client.run({"prompt": "orphan"})
    await harness.bot.storage.record_job(orphan(42, job.id, "queued"))
    await harness.bot.recovery.sweep()
    assert [request.job_id for request in harness.runpod.requests_for("cancel")] == [job.id]
    assert harness.runpod.requests_for("cancel")[0].headers["Authorization"] == f"Bearer {API_KEY}"
    record = await harness.bot.storage.job(42)
    assert record.state == "timed_out"
    assert "cancelled on RunPod to stop the billing" in record.notice
    notice = harness.discord.calls_for("channel_message")[-1].json
    assert notice["embeds"][0]["title"] == "⚠️ No picture this time"


async def test_the_sweeper_cancels_every_part_of_a_stale_set(harness, client):
    await set_policy(harness, max_wall_seconds=60)
    harness.runpod.default_script = lambda job_input: Script(queue_s=600)
    first, second = [await client.run({"prompt": f"orphan part {n}"}) for n in range(2)]
    await harness.bot.storage.record_job(orphan(43, first.id, "queued", more_job_ids=[second.id]))
    await harness.bot.recovery.sweep()
    assert [request.job_id for request in harness.runpod.requests_for("cancel")] == [first.id, second.id]
    assert (await harness.bot.storage.job(43)).state == "timed_out"


def orphan(request_id: int, runpod_job_id: str, state: str, **changes) -> JobRecord:
    """A job an earlier run of the bot left in the ledger, five minutes old, nobody following it."""
    values = dict(
        request_id=request_id, guild_id=DEFAULT_GUILD_ID, channel_id=DEFAULT_CHANNEL_ID, user_id=DEFAULT_USER_ID,
        user_name="Member", params={"prompt": "orphan", "seed": 1}, endpoint_id=ENDPOINT, worker="sdxl",
        key_source=KeySource.DEFAULT, runpod_job_id=runpod_job_id, state=LedgerState(state),
        created_at=datetime.now(UTC) - timedelta(minutes=5),
    )  # fmt: skip
    return JobRecord(**(values | changes))


async def test_the_sweeper_never_cancels_a_finished_job_and_one_bad_job_stops_nothing(harness, client):
    """A finished job waiting to be posted is not stale: no cancel, and its paid GPU time keeps counting. A job
    whose stored token no key can read any more is swept like any other, and stops nobody else's sweep."""
    await set_policy(harness, max_wall_seconds=60)
    harness.runpod.default_script = lambda job_input: Script(queue_s=600)
    finished, unreadable, stale = [(await client.run({"prompt": "orphan"})).id for _ in range(3)]
    await harness.bot.storage.record_job(orphan(41, finished, "completed", execution_ms=4200))
    await harness.bot.storage.record_job(orphan(42, unreadable, "queued", token_encrypted="gAAAAA-not-ours"))
    await harness.bot.storage.record_job(orphan(43, stale, "running"))
    await harness.bot.recovery.sweep()
    assert sorted(request.job_id for request in harness.runpod.requests_for("cancel")) == sorted([unreadable, stale])
    assert [(await harness.bot.storage.job(n)).state for n in (41, 42, 43)] == ["completed", "timed_out", "timed_out"]
    await harness.bot.recovery.sweep()  # nothing left to sweep: no second cancel
    assert len(harness.runpod.requests_for("cancel")) == 2


async def test_edit_opens_the_prompt_prefilled_and_runs_again(harness):
    interaction = await harness.imagine("a blue house --ar 16:9")
    final = await harness.finished(interaction)
    click = harness.discord.click(button(final, "edit"), message_id=final.id)
    await harness.discord.send(click)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", click.token))
    (modal,) = harness.discord.calls_for("callback", click.token)
    assert modal.json["type"] == 9
    text_input = modal.json["data"]["components"][0]["components"][0]
    assert (text_input["custom_id"], text_input["value"]) == ("prompt", "a blue house")
    submit = harness.discord.submit_modal(modal.json["data"]["custom_id"], {"prompt": "a red house"})
    await harness.discord.send(submit)
    await harness.finished(submit)
    first, second = sorted(harness.runpod.jobs.values(), key=lambda job: job.submitted_at)
    assert second.input["prompt"] == "a red house"
    assert (second.input["width"], second.input["height"]) == (first.input["width"], first.input["height"])


async def test_reroll_goes_through_the_same_limits(harness):
    final = await harness.finished(await harness.imagine("once"))
    await set_policy(harness, member_daily=1)
    click = harness.discord.click(button(final, "reroll"), message_id=final.id)
    await harness.discord.send(click)
    assert "You have used your 1 picture for today" in await refused(harness, click)
    assert len(harness.runpod.jobs) == 1


async def test_several_models_per_guild(harness):
    harness.runpod.api_keys.add("rpa_TURBO_KEY_0000000")
    setup = harness.discord.slash(
        "runpod", {"worker": "a1111", "name": "turbo"}, subcommand="setup", user=ADMIN, permissions=MANAGE_GUILD
    )
    await harness.discord.send(setup)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", setup.token))
    submit = harness.discord.submit_modal(
        harness.form_id(setup),
        {"api_key": "rpa_TURBO_KEY_0000000", "endpoint_id": "other-endpoint"},
        user=ADMIN,
        permissions=MANAGE_GUILD,
    )
    await harness.discord.send(submit)
    await harness.discord.wait_for(lambda: harness.private_replies(submit))
    assert "as model “turbo”" in harness.private_replies(submit)[0]

    complete = harness.discord.autocomplete("imagine", {"prompt": "x", "model": "tu"}, focused="model")
    await harness.discord.send(complete)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", complete.token))
    choices = harness.discord.calls_for("callback", complete.token)[0].json["data"]["choices"]
    assert choices == [{"name": "turbo (a1111)", "value": "turbo"}]

    final = await harness.finished(await harness.imagine("fast one", model="turbo"))
    assert final.embeds[0]["title"] == "✅ Done"
    (job,) = harness.runpod.jobs.values()
    assert (job.endpoint_id, job.api_key, "batch_size" in job.input) == (
        "other-endpoint",
        "rpa_TURBO_KEY_0000000",
        True,
    )
    assert "no model called “nope”" in await refused(harness, await harness.imagine("x", model="nope"))


async def test_usage_counts_pictures_and_cents_and_its_chart_is_a_png(harness):
    """A count-2 job is 2 pictures in the report; a fraction of a cent is "< $0.01", not $0.00; each member's
    pictures, GPU seconds and cost are listed."""
    await set_policy(harness, gpu_price_per_second=0.001)
    harness.runpod.default_script = lambda job_input: Script(
        run_s=0.3, output=outputs.sdxl(*[png_for("u")] * int(job_input.get("num_images", 1)))
    )
    for n, (user, count) in enumerate(((member(1), 2), (member(1), 1), (member(2), 1))):
        await harness.finished(await harness.imagine(f"usage {n}", user=user, count=count))
    harness.runpod.default_script = lambda job_input: Script(outcome="CANCELLED")
    await harness.finished(await harness.imagine("not counted", user=member(2)))

    usage = harness.discord.slash("runpod", {}, subcommand="usage", user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(usage)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("followup", usage.token))
    (reply,) = harness.discord.calls_for("followup", usage.token)
    (chart,) = reply.files
    with Image.open(BytesIO(chart.data)) as image:
        assert (image.format, image.size) == ("PNG", (800, 1100))  # tall: it reads at phone width

    records = await harness.bot.storage.guild_jobs_since(DEFAULT_GUILD_ID, datetime.now(UTC) - timedelta(days=1))
    counted = [r for r in records if r.state == "delivered"]
    gpu = sum(r.execution_ms for r in counted) / 1000
    mine = sum(r.execution_ms for r in counted if r.user_name == "Member 1") / 1000
    text = reply.json["content"]
    assert gpu * 0.001 < 0.005  # a few GPU seconds: a fraction of a cent, shown as one, not as $0.00
    assert text.startswith(f"Last 30 days: 4 pictures, {gpu_time(gpu)}, estimated cost < $0.01.\n")
    assert "Failed or cancelled (not counted): 1 picture." in text
    assert f"• Member 1: 3 pictures, {gpu_time(mine)}, < $0.01" in text
    assert "• Member 2: 1 picture, " in text


async def test_a_daily_quota_counts_pictures_not_jobs(harness):
    """A member allowed 3 pictures a day who asks for 2, then 1, has used them all: a third job is refused."""
    await set_policy(harness, member_daily=3)
    harness.runpod.default_script = lambda job_input: Script(
        output=outputs.sdxl(*[png_for("q")] * int(job_input.get("num_images", 1)))
    )
    assert (await harness.finished(await harness.imagine("a pair", count=2))).embeds[0]["title"] == "✅ Done"
    assert (await harness.finished(await harness.imagine("one more"))).embeds[0]["title"] == "✅ Done"
    text = await refused(harness, await harness.imagine("over the quota"))
    assert text.startswith("You have used your 3 pictures for today; you can make more <t:")
    assert len(harness.runpod.jobs) == 2  # the refused one never reached RunPod


async def test_limits_and_moderation_commands_show_and_change_the_rules(harness):
    limits = harness.discord.slash(
        "runpod", {"member_daily": 5, "max_minutes": 10}, subcommand="limits", user=ADMIN, permissions=MANAGE_GUILD
    )
    await harness.discord.send(limits)
    await harness.discord.wait_for(lambda: harness.private_replies(limits))
    text = harness.private_replies(limits)[0]
    assert text.startswith("Changed: per member per day from no limit to 5 pictures.\n")
    assert "Per member per day: 5 pictures." in text
    assert "cancelled after 10 minutes" in text
    moderation = harness.discord.slash(
        "runpod",
        {"ban": "Dragon", "ban_pattern": "[bad"},
        subcommand="moderation",
        user=ADMIN,
        permissions=MANAGE_GUILD,
    )
    await harness.discord.send(moderation)
    assert "is not a valid regular expression" in await refused(harness, moderation)
    moderation = harness.discord.slash(
        "runpod", {"ban": "Dragon"}, subcommand="moderation", user=ADMIN, permissions=MANAGE_GUILD
    )
    await harness.discord.send(moderation)
    await harness.discord.wait_for(lambda: harness.private_replies(moderation))
    assert "Refused words: `dragon`" in harness.private_replies(moderation)[0]
    policy = await harness.bot.endpoints.policy(DEFAULT_GUILD_ID)
    assert (policy.member_daily, policy.max_wall_seconds, policy.banned_words) == (5, 600, ("dragon",))
    member_try = harness.discord.slash("runpod", {"member_daily": 0}, subcommand="limits", permissions=0)
    await harness.discord.send(member_try)
    assert await refused(harness, member_try) == "You need the Manage Server permission for this."


async def test_cancel_while_waiting_takes_the_job_out_of_the_queue_unpaid(harness):
    await set_policy(harness, member_concurrent=1)
    harness.runpod.default_script = lambda job_input: Script(queue_s=30)
    both = [await harness.imagine("one"), await harness.imagine("two")]
    # The two requests race through the bot; whichever lost waits for its turn.
    await harness.discord.wait_for(lambda: any(harness.title(i) == "🕒 Waiting for your turn" for i in both))
    waiting = next(i for i in both if harness.title(i) == "🕒 Waiting for your turn")
    message = harness.shown(waiting)
    click = harness.discord.click(button(message, "cancel"), message_id=message.id)
    await harness.discord.send(click)
    final = await harness.finished(waiting)
    assert final.embeds[0]["title"] == "🚫 Cancelled"
    assert "before it started" in field_value(final, "What happened")
    (running,) = harness.runpod.jobs.values()
    assert running.input["prompt"] != waiting.payload["data"]["options"][0]["value"]
    assert harness.runpod.requests_for("cancel") == []


async def test_a_job_whose_token_no_key_can_read_is_followed_and_posted_in_the_channel(runpod, client, tmp_path):
    """After a change of BOT_ENCRYPTION_KEY the stored interaction token is unreadable: the job is still
    followed to its end and its picture posted once, in a channel message sent with the bot token."""
    from cryptography.fernet import Fernet

    from bot.config import Secret
    from bot.crypto import Vault
    from bot.storage import Storage

    runpod.script_next(Script(queue_s=0.1, run_s=0.2, output=outputs.sdxl(png_for("kept"))))
    job = await client.run({"prompt": "kept"})
    url = f"sqlite:///{tmp_path}/bot.db"
    storage = await Storage.open(url)
    old_key = Vault((Secret(Fernet.generate_key().decode()),))
    await storage.record_job(orphan(51, job.id, "queued", token_encrypted=old_key.encrypt("itok-gone"), message_id=7))
    await storage.close()
    async with running_bot(runpod, database_url=url) as harness:
        await harness.discord.wait_for(
            lambda: any(m.attachments for m in harness.discord.messages.values() if m.interaction_token is None)
        )
        (posted,) = [m for m in harness.discord.messages.values() if m.attachments]
        assert [attachment.data for attachment in posted.attachments] == [png_for("kept")]
        await harness.discord.wait_for(lambda: harness.bot.runner.live == {})
        assert (await harness.bot.storage.job(51)).delivered_at is not None
