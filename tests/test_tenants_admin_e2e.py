"""No server can starve another, the admin side (issue 21): a month of ledger rows cannot freeze the loop during
`/runpod usage`, a refused word cannot hide in the negative prompt, a hostile key cannot crash setup, every admin
reply fits Discord's limits, and a server that removes the bot stops its jobs and leaves no key behind."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bot.config import Secret
from bot.policy import MAX_PATTERN_LENGTH
from bot.storage import jobs
from bot.usage import gpu_time
from doubles.discord import (
    DEFAULT_CHANNEL_ID,
    DEFAULT_GUILD_ID,
    DEFAULT_USER_ID,
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    ChannelSpec,
    GuildSpec,
    UserSpec,
    two_guilds,
)
from doubles.harness import fast_options, running_bot
from doubles.runpod import Script
from tests.conftest import ENDPOINT

MANAGE_GUILD = 1 << 5
ADMIN = UserSpec(id=DEFAULT_USER_ID + 900, username="admin", global_name="Admin")
NSFW_CHANNEL_ID = DEFAULT_CHANNEL_ID + 7
GUILD_KEY = "rpa_GUILD_OWN_KEY_0123456789"
GUILD_ENDPOINT = "other-endpoint"


@pytest.fixture
async def harness(runpod, tmp_path):
    guilds = [
        GuildSpec(channels=[ChannelSpec(), ChannelSpec(id=NSFW_CHANNEL_ID, name="after-dark", nsfw=True)]),
        two_guilds()[1],
    ]
    runpod.api_keys.add(GUILD_KEY)
    async with running_bot(runpod, guilds=guilds, database_url=f"sqlite:///{tmp_path}/bot.db") as running:
        yield running


async def private_reply(harness, interaction, timeout: float = 10.0) -> str:
    await harness.discord.wait_for(lambda: harness.private_replies(interaction), timeout=timeout)
    return harness.private_replies(interaction)[-1]


async def admin_command(harness, subcommand: str, guild_id: int = DEFAULT_GUILD_ID, **options):
    channel_id = OTHER_CHANNEL_ID if guild_id == OTHER_GUILD_ID else DEFAULT_CHANNEL_ID
    interaction = harness.discord.slash(
        "runpod", options, subcommand=subcommand, user=ADMIN, permissions=MANAGE_GUILD,
        guild_id=guild_id, channel_id=channel_id,
    )  # fmt: skip
    await harness.discord.send(interaction)
    return interaction


def everything_sent(harness) -> str:
    """Every request body the bot sent Discord, as one text: what anyone could ever have seen."""
    return "\n".join(json.dumps(call.json, ensure_ascii=False) for call in harness.discord.calls if call.json)


# --- 2. moderation covers the negative prompt ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "options"),
    [("a quiet harbour --no dragon", {}), ("a quiet harbour", {"negative_prompt": "blur, Dragon"})],
    ids=["--no flag", "negative_prompt option"],
)
async def test_a_refused_word_in_the_without_part_is_refused_privately_and_never_reaches_runpod(
    harness, prompt, options
):
    await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"banned_words": ["dragon"]})
    interaction = await harness.imagine(prompt, **options)
    text = await private_reply(harness, interaction)
    assert text == "This server does not allow “dragon” in prompts (in the “without” part: --no or negative_prompt)."
    assert harness.runpod.requests == []
    public = [m for m in harness.discord.messages.values() if not m.ephemeral and not m.deleted]
    assert not any("dragon" in json.dumps([m.content, m.embeds]).lower() for m in public)


async def test_patterns_and_nsfw_only_words_judge_the_without_part_too(harness):
    await harness.bot.storage.save_guild_policy(
        DEFAULT_GUILD_ID, {"banned_patterns": ["s[a4]nd ?worm"], "nsfw_only_words": ["gore"]}
    )
    by_pattern = await harness.imagine("a desert", negative_prompt="sand worm")
    assert await private_reply(harness, by_pattern) == (
        "This server's rules do not allow that prompt (in the “without” part: --no or negative_prompt)."
    )
    nsfw_only = await harness.imagine("a battle --no gore")
    assert await private_reply(harness, nsfw_only) == (
        "“gore” is only allowed in this server's NSFW channels (in the “without” part: --no or negative_prompt)."
    )
    assert harness.runpod.requests == []
    allowed = harness.discord.slash("imagine", {"prompt": "a battle --no gore"}, channel_id=NSFW_CHANNEL_ID)
    await harness.discord.send(allowed)
    assert (await harness.finished(allowed)).embeds[0]["title"] == "✅ Done"
    (job,) = harness.runpod.jobs.values()
    assert job.input["negative_prompt"] == "gore"


# --- 3. a hostile key in the setup form ---------------------------------------------------------------------


async def submit_setup(harness, values: dict[str, str]) -> str:
    setup = await admin_command(harness, "setup")
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", setup.token))
    submitted = harness.discord.submit_modal(harness.form_id(setup), values, user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(submitted)
    return await private_reply(harness, submitted)


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (
            {"api_key": "rpa_GUILD_OWN\r\nX-Injected: 1", "endpoint_id": GUILD_ENDPOINT},
            "❌ That is not a RunPod API key: a key is letters, digits, _ and - only (like `rpa_…`), with no spaces or "
            "line breaks. Copy it again from RunPod → Settings → API Keys. Nothing was saved.",
        ),
        (
            {"api_key": "rpa_GUILD_OWN KEY\u00e9", "endpoint_id": GUILD_ENDPOINT},
            "❌ That is not a RunPod API key:",
        ),
        (
            {"api_key": GUILD_KEY, "endpoint_id": "other\r\nendpoint"},
            "❌ What you typed as the endpoint id is not a RunPod endpoint id: it is letters, digits, - and _ only",
        ),
    ],
    ids=["key with CR/LF", "key with a space and an accent", "endpoint id with CR/LF"],
)
async def test_a_key_or_endpoint_id_runpod_never_gives_is_refused_in_one_line_before_any_request(
    harness, caplog, values, refusal
):
    with caplog.at_level(logging.ERROR):
        reply = await submit_setup(harness, values)
    assert reply.startswith(refusal)
    assert "Nothing was saved." in reply
    assert values["api_key"] not in everything_sent(harness)
    assert harness.runpod.requests == []
    assert await harness.bot.storage.guild_endpoint(DEFAULT_GUILD_ID) is None
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


async def test_keys_and_endpoint_ids_of_every_shape_runpod_gives_still_connect(harness):
    for key, endpoint in ((GUILD_KEY, GUILD_ENDPOINT), ("ABCDEF0123456789ABCDEF0123456789", "test_endpoint")):
        harness.runpod.api_keys.add(key)
        harness.runpod.endpoints.add(endpoint)
        reply = await submit_setup(harness, {"api_key": f" {key}\n", "endpoint_id": endpoint})
        assert reply.startswith(f"✅ Connected endpoint `{endpoint}` (sdxl) with key `…{key[-4:]}`.")


# --- 5. a server that removes the bot -----------------------------------------------------------------------

OTHER_KEY = "rpa_OTHER_GUILD_KEY_9876543210"


async def eventually(check, timeout: float = 5.0) -> None:
    """Wait until the async `check()` is true (the bot handles gateway events in tasks of its own)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_server_that_removes_the_bot_has_its_jobs_cancelled_and_its_keys_deleted(harness, caplog):
    """Two servers with their own keys and a job each on RunPod. The other server becomes unavailable (an
    outage): nothing changes for it. This server removes the bot: its job is cancelled on RunPod with its own
    key, and both of its stored models are deleted; the other server's job and key are untouched."""
    harness.runpod.api_keys.add(OTHER_KEY)
    harness.runpod.default_script = lambda job_input: Script(queue_s=600)
    for name in ("default", "turbo"):
        await harness.bot.endpoints.connect(
            DEFAULT_GUILD_ID, name, Secret(GUILD_KEY), GUILD_ENDPOINT, "sdxl", None, by=ADMIN.id
        )
    await harness.bot.endpoints.connect(OTHER_GUILD_ID, "default", Secret(OTHER_KEY), ENDPOINT, "sdxl", None, by=1)
    ours = await harness.imagine("ours")
    theirs = harness.discord.slash(
        "imagine", {"prompt": "theirs"}, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID
    )
    await harness.discord.send(theirs)
    # Both on RunPod, and known to be (a cancel in the moment between RunPod taking a job and the bot recording
    # its id is the job runner's own affair, bot/jobs.py).
    live = harness.bot.runner.live
    await harness.discord.wait_for(lambda: len(live) == 2 and all(job.record.runpod_job_ids for job in live.values()))
    jobs = {job.input["prompt"]: job for job in harness.runpod.jobs.values()}
    assert (jobs["ours"].api_key, jobs["theirs"].api_key) == (GUILD_KEY, OTHER_KEY)

    with caplog.at_level(logging.INFO, logger="cogs.admin"):
        await harness.discord.dispatch(
            "GUILD_DELETE", {"id": str(OTHER_GUILD_ID), "unavailable": True}, guild_id=OTHER_GUILD_ID
        )
        await harness.discord.dispatch("GUILD_DELETE", {"id": str(DEFAULT_GUILD_ID)}, guild_id=DEFAULT_GUILD_ID)
        await harness.discord.wait_for(lambda: harness.runpod.requests_for("cancel"))
        await eventually(lambda: _no_models(harness, DEFAULT_GUILD_ID))
    # Only ours, with its own key (under load a cancel may be sent twice: a retry, or the runner's own).
    cancels = harness.runpod.requests_for("cancel")
    assert {(c.job_id, c.endpoint_id, c.headers["Authorization"]) for c in cancels} == {
        (jobs["ours"].id, GUILD_ENDPOINT, f"Bearer {GUILD_KEY}")
    }
    said = [record.getMessage() for record in caplog.records if record.name == "cogs.admin"]
    assert said == [f"guild {DEFAULT_GUILD_ID} removed the bot: 1 job(s) cancelled, 2 stored key(s) deleted"]

    # The server that was only unavailable keeps its key and its job, which is still followed.
    assert [saved.name for saved in await harness.bot.storage.guild_endpoints(OTHER_GUILD_ID)] == ["default"]
    await harness.discord.wait_for(lambda: harness.title(ours) == "🚫 Cancelled" and len(live) == 1)
    (still,) = live.values()
    assert still.record.guild_id == OTHER_GUILD_ID
    assert harness.runpod.requests_for("cancel", jobs["theirs"].id) == []


async def _no_models(harness, guild_id: int) -> bool:
    return await harness.bot.storage.guild_endpoints(guild_id) == []


# --- 4. every admin reply fits Discord's limits -------------------------------------------------------------


def pattern(n: int) -> str:
    return f"p{n:02d}" + "a" * (MAX_PATTERN_LENGTH - 3)


async def test_moderation_with_ten_long_patterns_still_answers_and_keeps_answering(harness):
    """Each of ten patterns of 200 characters is added with a reply (past the sixth, the whole list is over
    Discord's 2000 characters): every reply arrives, fits, and the full rules come beside it as a file."""
    await private_reply(harness, await admin_command(harness, "moderation", ban="dragon"))
    for n in range(10):
        added = await admin_command(harness, "moderation", ban_pattern=pattern(n))
        text = await private_reply(harness, added)
        assert len(text) <= 2000
        assert text.startswith("Refused words: `dragon`\nRefused patterns: `p00")
    viewing = await admin_command(harness, "moderation")
    text = await private_reply(harness, viewing)
    assert len(text) <= 2000
    assert "Refused patterns: `p00" in text and "… and " in text and " more\n" in text
    assert "Spoilers outside NSFW channels: off\n(Too long for one message: every rule is in moderation.txt.)" in text
    (message,) = [m for m in harness.discord.messages.values() if m.interaction_token == viewing.token]
    (rules,) = message.attachments
    assert rules.filename == "moderation.txt"
    assert all(f"`{pattern(n)}`" in rules.data.decode() for n in range(10))
    policy = await harness.bot.endpoints.policy(DEFAULT_GUILD_ID)
    assert policy.banned_patterns == tuple(pattern(n) for n in range(10))

    # An unban (copied from the file) still answers, and so does a short list, without a file.
    for n in range(10):
        await private_reply(harness, await admin_command(harness, "moderation", unban=pattern(n)))
    short = await admin_command(harness, "moderation")
    assert await private_reply(harness, short) == (
        "Refused words: `dragon`\nRefused patterns: none\nOnly in NSFW channels: none\n"
        "Spoilers outside NSFW channels: off"
    )


async def test_status_with_many_models_fits_one_message_and_names_the_rest(harness):
    names = [f"model-{n:02d}-{'x' * 23}" for n in range(16)]
    endpoint = "endpoint-" + "e" * 60
    harness.runpod.endpoints.add(endpoint)
    for name in names:
        await harness.bot.endpoints.connect(DEFAULT_GUILD_ID, name, Secret(GUILD_KEY), endpoint, "sdxl", None, by=1)
    status = await admin_command(harness, "status")
    text = await private_reply(harness, status)
    assert len(text) <= 2000
    assert text.startswith(f"**model “{names[0]}”:** endpoint `{endpoint}` (worker sdxl), key `…6789`.\nWorkers:")
    shown = [name for name in names if f"**model “{name}”:**" in text]
    rest = names[len(shown) :]
    assert shown == names[: len(shown)] and rest
    assert f"…and {len(rest)} more models: `{rest[0]}`" in text
    assert GUILD_KEY not in text


async def test_removing_a_model_by_a_very_long_name_answers(harness):
    remove = await admin_command(harness, "remove", name="n" * 3000)
    assert await private_reply(harness, remove) == f"This server has no model “{'n' * 32}”."


# --- 1. /runpod usage on a long ledger ----------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
LEDGER_ROWS = 20_000


def ledger_rows(count: int) -> list[dict]:
    """A busy month and a half of jobs (seeded): this server's and another's, most delivered, some failed or
    cancelled, some before the report's 30 days."""
    rng = random.Random(21)
    rows = []
    for n in range(count):
        user = rng.randrange(15)
        created = NOW - timedelta(seconds=rng.randrange(45 * 24 * 3600))
        rows.append(
            dict(
                request_id=10_000 + n, guild_id=DEFAULT_GUILD_ID if n % 10 else OTHER_GUILD_ID,
                channel_id=DEFAULT_CHANNEL_ID, user_id=DEFAULT_USER_ID + user, user_name=f"Member {user}",
                params={"prompt": "x"}, endpoint_id=ENDPOINT, worker="sdxl", key_source="default",
                state=rng.choice(["delivered"] * 8 + ["failed", "cancelled"]), execution_ms=rng.randrange(500, 9000),
                pictures=rng.randint(1, 4), created_at=created, updated_at=created,
            )
        )  # fmt: skip
    return rows


async def usage_reply(harness) -> str:
    usage = await admin_command(harness, "usage")
    await harness.discord.wait_for(lambda: harness.discord.calls_for("followup", usage.token), timeout=30)
    (reply,) = harness.discord.calls_for("followup", usage.token)
    assert len(reply.files) == 1  # the chart
    return reply.json["content"]


async def test_usage_on_a_long_ledger_reads_sums_never_the_months_rows(runpod, database_url):
    """20,000 job rows: the report is right, no job row is loaded for it (the rows' own pictures and GPU time can
    be rewritten behind the bot's back and the counted figures stay the counters'), and the uncounted figure is
    one sum over the ledger."""
    async with running_bot(runpod, database_url=database_url, options=fast_options(clock=lambda: NOW)) as harness:
        storage = harness.bot.storage
        rows = ledger_rows(LEDGER_ROWS)
        async with storage.engine.begin() as connection:
            await connection.execute(sa.insert(jobs), rows)
        await storage.rebuild_usage()
        loaded: list[int] = []
        rows_of_guild = storage.guild_jobs_since

        async def counted_load(guild_id, since):
            loaded.append(guild_id)
            return await rows_of_guild(guild_id, since)

        storage.guild_jobs_since = counted_load  # what the report must not call: it loads a month of rows

        first = datetime.combine((NOW - timedelta(days=29)).date(), datetime.min.time(), tzinfo=UTC)
        ours = [row for row in rows if row["guild_id"] == DEFAULT_GUILD_ID and row["created_at"] >= first]
        counted = [row for row in ours if row["state"] == "delivered"]
        pictures = sum(row["pictures"] for row in counted)
        gpu_seconds = sum(row["execution_ms"] for row in counted) / 1000
        by_member = {}
        for row in counted:
            by_member[row["user_name"]] = by_member.get(row["user_name"], 0) + row["execution_ms"]
        top = max(by_member, key=by_member.get)
        uncounted = sum(row["pictures"] for row in ours if row["state"] != "delivered")

        text = await usage_reply(harness)
        assert text.startswith(f"Last 30 days: {pictures:,} pictures, {gpu_time(gpu_seconds)}.\n")
        assert f"Failed or cancelled (not counted): {uncounted:,} pictures.\n" in text
        assert f"By member:\n• {top}: " in text
        assert text.endswith("…and 5 more members.")

        # The ledger's rows rewritten behind the bot's back, its counters not: the counted figures do not move.
        async with storage.engine.begin() as connection:
            await connection.execute(
                sa.update(jobs).where(jobs.c.state == "delivered").values(pictures=1, execution_ms=1)
            )
        assert await usage_reply(harness) == text
        assert loaded == []
