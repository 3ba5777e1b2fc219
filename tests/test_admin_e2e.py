"""Server admins connect their own RunPod endpoint; each guild's jobs use exactly its own key."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bot.config import Secret
from doubles import outputs
from doubles.discord import (
    DEFAULT_GUILD_ID,
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    DiscordDouble,
    UserSpec,
)
from doubles.discord import (
    two_guilds as both_servers,
)
from doubles.harness import png_for, running_bot, settings_for
from doubles.runpod import Script
from tests.conftest import API_KEY, ENDPOINT

GUILD_KEY = "rpa_GUILD_OWN_KEY_0123456789"
GUILD_ENDPOINT = "other-endpoint"
MANAGE_GUILD = 1 << 5
ADMIN = UserSpec(id=1_200_000_000_000_000_900, username="admin", global_name="Admin")


@pytest.fixture
async def two_guilds():
    guilds = both_servers()
    async with DiscordDouble(guilds=guilds) as double:
        yield double


@pytest.fixture
async def harness(runpod, two_guilds, tmp_path):
    runpod.api_keys.add(GUILD_KEY)
    async with running_bot(runpod, discord_double=two_guilds, database_url=f"sqlite:///{tmp_path}/bot.db") as running:
        yield running


async def open_setup(harness, worker=None, permissions=MANAGE_GUILD):
    options = {"worker": worker} if worker else {}
    interaction = harness.discord.slash("runpod", options, subcommand="setup", user=ADMIN, permissions=permissions)
    await harness.discord.send(interaction)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", interaction.token))
    return interaction


async def submit(harness, values, setup, permissions=MANAGE_GUILD):
    """Submit the setup form the bot opened for `setup` (each opening has a custom_id of its own)."""
    interaction = harness.discord.submit_modal(harness.form_id(setup), values, user=ADMIN, permissions=permissions)
    await harness.discord.send(interaction)
    await harness.discord.wait_for(lambda: harness.private_replies(interaction), timeout=10)
    return harness.private_replies(interaction)[-1]


async def test_an_admin_connects_a_key_and_members_jobs_use_exactly_it(harness, tmp_path):
    setup = await open_setup(harness)
    (modal_call,) = harness.discord.calls_for("callback", setup.token)
    assert modal_call.json["type"] == 9
    inputs = [row["components"][0]["custom_id"] for row in modal_call.json["data"]["components"]]
    assert inputs == ["api_key", "endpoint_id"]

    reply = await submit(harness, {"api_key": GUILD_KEY, "endpoint_id": GUILD_ENDPOINT}, setup)
    assert reply.startswith(f"✅ Connected endpoint `{GUILD_ENDPOINT}` (sdxl) with key `…6789`.")
    assert GUILD_KEY not in reply
    (health_check,) = harness.runpod.requests_for("health")
    assert health_check.headers["Authorization"] == f"Bearer {GUILD_KEY}"
    assert health_check.endpoint_id == GUILD_ENDPOINT

    mine = await harness.imagine("ours")
    theirs = harness.discord.slash(
        "imagine", {"prompt": "theirs"}, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID
    )
    await harness.discord.send(theirs)
    await harness.finished(mine)
    await harness.discord.wait_for(lambda: harness.title(theirs) == "✅ Done")
    jobs = {job.input["prompt"]: job for job in harness.runpod.jobs.values()}
    assert (jobs["ours"].api_key, jobs["ours"].endpoint_id) == (GUILD_KEY, GUILD_ENDPOINT)
    assert (jobs["theirs"].api_key, jobs["theirs"].endpoint_id) == (API_KEY, ENDPOINT)  # the operator's default

    database = (tmp_path / "bot.db").read_bytes()
    assert GUILD_KEY.encode() not in database
    assert mine.token.encode() not in database
    assert theirs.token.encode() not in database
    with sqlite3.connect(tmp_path / "bot.db") as connection:
        (stored_key,) = connection.execute("SELECT api_key_encrypted FROM guild_endpoints").fetchone()
        tokens = [row[0] for row in connection.execute("SELECT token_encrypted FROM jobs")]
    assert stored_key.startswith("gAAAA")  # a Fernet token
    assert all(token.startswith("gAAAA") for token in tokens)


async def test_a_member_without_manage_server_gets_no_modal(harness):
    interaction = await open_setup(harness, permissions=0)
    (callback,) = harness.discord.calls_for("callback", interaction.token)
    assert callback.json["type"] == 4  # a message, not a modal
    assert harness.private_replies(interaction) == ["You need the Manage Server permission for this."]


async def test_an_admin_who_lost_manage_server_before_submitting_saves_nothing(harness):
    setup = await open_setup(harness)
    reply = await submit(harness, {"api_key": GUILD_KEY, "endpoint_id": GUILD_ENDPOINT}, setup, permissions=0)
    assert reply == "You need the Manage Server permission for this."
    assert harness.runpod.requests == []
    assert await harness.bot.storage.guild_endpoint(DEFAULT_GUILD_ID) is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_key": "rpa_WRONG_KEY_000", "endpoint_id": GUILD_ENDPOINT}, "❌ RunPod refused that API key (401)."),
        ({"api_key": GUILD_KEY, "endpoint_id": "no-such-endpoint"}, "❌ RunPod has no endpoint `no-such-endpoint`"),
        ({"api_key": GUILD_KEY, "endpoint_id": "https://evil/x"}, "is not a RunPod endpoint id"),
    ],
)
async def test_a_bad_key_or_endpoint_is_refused_before_saving(harness, values, message):
    setup = await open_setup(harness)
    reply = await submit(harness, values, setup)
    assert message in reply
    assert "Nothing was saved" in reply
    assert await harness.bot.storage.guild_endpoint(DEFAULT_GUILD_ID) is None


async def test_comfyui_setup_takes_a_workflow_and_uses_it(harness):
    setup = await open_setup(harness, worker="comfyui")
    (modal_call,) = harness.discord.calls_for("callback", setup.token)
    inputs = [row["components"][0]["custom_id"] for row in modal_call.json["data"]["components"]]
    assert inputs == ["api_key", "endpoint_id", "workflow"]
    workflow = '{"6": {"inputs": {"text": "{{prompt}}", "seed": "{{seed}}"}}}'
    values = {"api_key": GUILD_KEY, "endpoint_id": GUILD_ENDPOINT, "workflow": workflow}
    assert (await submit(harness, values, setup)).startswith("✅ Connected")
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(png_for("cat")))
    final = await harness.finished(await harness.imagine("cat", seed=5))
    assert final.attachments[0].data == png_for("cat")
    (job,) = harness.runpod.jobs.values()
    assert job.input == {"workflow": {"6": {"inputs": {"text": "cat", "seed": 5}}}}


async def test_status_shows_the_key_masked_and_remove_forgets_it(harness):
    setup = await open_setup(harness)
    await submit(harness, {"api_key": GUILD_KEY, "endpoint_id": GUILD_ENDPOINT}, setup)
    status = harness.discord.slash("runpod", {}, subcommand="status", user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(status)
    await harness.discord.wait_for(lambda: harness.private_replies(status))
    (text,) = harness.private_replies(status)
    assert f"**model “default”:** endpoint `{GUILD_ENDPOINT}` (worker sdxl), key `…6789`." in text
    assert "Workers:" in text
    assert GUILD_KEY not in text

    remove = harness.discord.slash("runpod", {}, subcommand="remove", user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(remove)
    await harness.discord.wait_for(lambda: harness.private_replies(remove))
    assert harness.private_replies(remove) == ["Removed: the key is forgotten."]
    await harness.finished(await harness.imagine("after removal"))
    assert next(j for j in harness.runpod.jobs.values() if j.input["prompt"] == "after removal").api_key == API_KEY


async def test_without_an_encryption_key_setup_explains_what_the_operator_must_set(runpod):
    async with running_bot(runpod, settings=settings_for(runpod, encryption_keys=())) as harness:
        interaction = await open_setup(harness)
        await harness.discord.wait_for(lambda: harness.private_replies(interaction))
        (reply,) = harness.private_replies(interaction)
    assert "BOT_ENCRYPTION_KEY" in reply
    assert harness.discord.calls_for("callback", interaction.token)[0].json["type"] == 4


async def test_without_any_endpoint_members_are_told_to_ask_an_admin(runpod):
    settings = settings_for(
        runpod, runpod_api_key=None, runpod_endpoint_id=None, encryption_keys=(Secret("x" * 43 + "="),)
    )
    async with running_bot(runpod, settings=settings) as harness:
        interaction = await harness.imagine()
        await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    assert "A server admin must run /runpod setup first." in harness.private_replies(interaction)[0]


async def test_rotating_the_encryption_key_reencrypts_stored_keys_at_start(runpod, tmp_path):
    from cryptography.fernet import Fernet

    from bot.crypto import Vault
    from bot.storage import GuildEndpoint, Storage

    old, new = (Secret(Fernet.generate_key().decode()) for _ in range(2))
    url = f"sqlite:///{tmp_path}/bot.db"
    storage = await Storage.open(url)
    stored = Vault((old,)).encrypt(GUILD_KEY)
    await storage.save_guild_endpoint(GuildEndpoint(DEFAULT_GUILD_ID, "default", GUILD_ENDPOINT, stored, "sdxl"))
    await storage.close()

    runpod.api_keys.add(GUILD_KEY)
    async with running_bot(runpod, database_url=url, settings=settings_for(runpod, encryption_keys=(new, old))) as h:
        final = await h.finished(await h.imagine("after rotation"))
        assert final.embeds[0]["title"] == "✅ Done"
        rotated = (await h.bot.storage.guild_endpoint(DEFAULT_GUILD_ID)).api_key_encrypted
    assert rotated != stored
    assert Vault((new,)).decrypt(rotated).reveal() == GUILD_KEY  # the old key can now be dropped
    (job,) = runpod.jobs.values()
    assert job.api_key == GUILD_KEY


OTHER_ADMIN = UserSpec(id=1_200_000_000_000_000_901, username="other-admin", global_name="Other admin")
OTHER_KEY = "rpa_OTHER_GUILD_KEY_9876543210"


async def test_two_servers_submitting_setup_at_once_each_save_their_own_key(harness):
    """Two admins in two servers fill in the setup form at the same moment: each server gets its own
    endpoint and key, and each server's jobs are billed to its own key."""
    harness.runpod.api_keys.add(OTHER_KEY)
    ours = harness.discord.slash("runpod", {}, subcommand="setup", user=ADMIN, permissions=MANAGE_GUILD)
    theirs = harness.discord.slash(
        "runpod", {}, subcommand="setup", user=OTHER_ADMIN, permissions=MANAGE_GUILD,
        guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID,
    )  # fmt: skip
    for setup in (ours, theirs):
        await harness.discord.send(setup)
    await harness.discord.wait_for(lambda: all(harness.discord.calls_for("callback", s.token) for s in (ours, theirs)))
    assert harness.form_id(ours) != harness.form_id(theirs)

    submits = [
        harness.discord.submit_modal(
            harness.form_id(ours), {"api_key": GUILD_KEY, "endpoint_id": GUILD_ENDPOINT},
            user=ADMIN, permissions=MANAGE_GUILD,
        ),
        harness.discord.submit_modal(
            harness.form_id(theirs), {"api_key": OTHER_KEY, "endpoint_id": ENDPOINT},
            user=OTHER_ADMIN, permissions=MANAGE_GUILD, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID,
        ),
    ]  # fmt: skip
    for submit_form in submits:
        await harness.discord.send(submit_form)
    await harness.discord.wait_for(lambda: all(harness.private_replies(s) for s in submits), timeout=10)
    assert harness.private_replies(submits[0])[-1].startswith(f"✅ Connected endpoint `{GUILD_ENDPOINT}`")
    assert harness.private_replies(submits[1])[-1].startswith(f"✅ Connected endpoint `{ENDPOINT}`")

    mine = await harness.imagine("ours")
    other = harness.discord.slash("imagine", {"prompt": "theirs"}, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID)
    await harness.discord.send(other)
    await harness.finished(mine)
    await harness.discord.wait_for(lambda: harness.title(other) == "✅ Done")
    jobs = {job.input["prompt"]: job for job in harness.runpod.jobs.values()}
    assert (jobs["ours"].api_key, jobs["ours"].endpoint_id) == (GUILD_KEY, GUILD_ENDPOINT)
    assert (jobs["theirs"].api_key, jobs["theirs"].endpoint_id) == (OTHER_KEY, ENDPOINT)


async def test_nobody_else_can_submit_an_admins_setup_form(harness):
    """A member who learns an admin's form id (or another server's admin) submits it: refused, nothing
    checked against RunPod, nothing saved; the admin's own submission still works afterwards."""
    setup = await open_setup(harness)
    member = UserSpec(id=1_200_000_000_000_000_555, username="member", global_name="Member")
    forged = [
        harness.discord.submit_modal(
            harness.form_id(setup), {"api_key": OTHER_KEY, "endpoint_id": ENDPOINT}, user=member, permissions=0
        ),
        harness.discord.submit_modal(
            harness.form_id(setup), {"api_key": OTHER_KEY, "endpoint_id": ENDPOINT}, user=ADMIN,
            permissions=MANAGE_GUILD, guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID,
        ),
    ]  # fmt: skip
    for submit_form in forged:
        await harness.discord.send(submit_form)
        await harness.discord.wait_for(lambda form=submit_form: harness.private_replies(form))
        assert harness.private_replies(submit_form) == ["This form was opened by someone else; open your own."]
    assert harness.runpod.requests == []
    assert await harness.bot.storage.guild_endpoint(DEFAULT_GUILD_ID) is None
    assert await harness.bot.storage.guild_endpoint(OTHER_GUILD_ID) is None

    reply = await submit(harness, {"api_key": GUILD_KEY, "endpoint_id": GUILD_ENDPOINT}, setup)
    assert reply.startswith(f"✅ Connected endpoint `{GUILD_ENDPOINT}`")


def form_inputs(harness, interaction) -> dict[str, dict]:
    """The text inputs of the form (modal) the bot opened for `interaction`, by custom_id."""
    (modal_call,) = [c for c in harness.discord.calls_for("callback", interaction.token) if c.json["type"] == 9]
    return {row["components"][0]["custom_id"]: row["components"][0] for row in modal_call.json["data"]["components"]}


def buttons(message) -> dict[str, str]:
    """label -> custom_id of the buttons on a message."""
    return {c["label"]: c["custom_id"] for row in message.components for c in row["components"] if c.get("type") == 2}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_key": "rpa_WRONG_KEY_000", "endpoint_id": GUILD_ENDPOINT}, "❌ RunPod refused that API key (401)."),
        ({"api_key": "rpa_WRONG_KEY_000", "endpoint_id": "no-such-endpoint"}, "❌ RunPod "),
        ({"api_key": GUILD_KEY, "endpoint_id": "no-such-endpoint"}, "❌ RunPod has no endpoint `no-such-endpoint`"),
    ],
)
async def test_a_refused_setup_offers_try_again_with_the_endpoint_kept_and_the_key_not(harness, values, message):
    """The admin sees why, and a Try again button; it reopens the form with the endpoint id they typed and an
    empty key field; the key they typed appears in nothing the bot sent; the second try connects."""
    setup = await open_setup(harness)
    submitted = harness.discord.submit_modal(harness.form_id(setup), values, user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(submitted)
    await harness.discord.wait_for(lambda: harness.private_replies(submitted), timeout=10)
    (reply,) = harness.private_replies(submitted)
    assert reply.startswith(message)
    assert "Nothing was saved" in reply
    refusal = harness.discord.original_message(submitted.token)
    assert refusal.ephemeral
    assert list(buttons(refusal)) == ["Try again"]

    again = harness.discord.click(
        buttons(refusal)["Try again"], message_id=refusal.id, user=ADMIN, permissions=MANAGE_GUILD
    )
    await harness.discord.send(again)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", again.token))
    inputs = form_inputs(harness, again)
    assert list(inputs) == ["api_key", "endpoint_id"]
    assert inputs["endpoint_id"].get("value") == values["endpoint_id"]
    assert not inputs["api_key"].get("value")
    for call in harness.discord.calls:  # the key typed is never sent back, in any message, form or edit
        assert values["api_key"] not in json.dumps(call.json)

    retried = harness.discord.submit_modal(
        harness.form_id(again), {"api_key": GUILD_KEY, "endpoint_id": GUILD_ENDPOINT}, user=ADMIN,
        permissions=MANAGE_GUILD,
    )  # fmt: skip
    await harness.discord.send(retried)
    await harness.discord.wait_for(lambda: harness.private_replies(retried), timeout=10)
    assert harness.private_replies(retried)[-1].startswith(f"✅ Connected endpoint `{GUILD_ENDPOINT}`")
    assert (await harness.bot.storage.guild_endpoint(DEFAULT_GUILD_ID)).endpoint_id == GUILD_ENDPOINT


async def test_try_again_keeps_a_comfyui_workflow_and_belongs_to_the_admin_who_was_refused(harness):
    setup = await open_setup(harness, worker="comfyui")
    workflow = '{"6": {"inputs": {"text": "{{prompt}}"}}}'
    values = {"api_key": "rpa_WRONG_KEY_000", "endpoint_id": GUILD_ENDPOINT, "workflow": workflow}
    submitted = harness.discord.submit_modal(harness.form_id(setup), values, user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(submitted)
    await harness.discord.wait_for(lambda: harness.private_replies(submitted), timeout=10)
    refusal = harness.discord.original_message(submitted.token)

    member = UserSpec(id=1_200_000_000_000_000_555, username="member", global_name="Member")
    stranger = harness.discord.click(buttons(refusal)["Try again"], message_id=refusal.id, user=member)
    await harness.discord.send(stranger)
    await harness.discord.wait_for(lambda: harness.private_replies(stranger))
    assert harness.private_replies(stranger) == ["This button belongs to someone else's setup; run /runpod setup."]

    again = harness.discord.click(
        buttons(refusal)["Try again"], message_id=refusal.id, user=ADMIN, permissions=MANAGE_GUILD
    )
    await harness.discord.send(again)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", again.token))
    inputs = form_inputs(harness, again)
    assert (inputs["endpoint_id"].get("value"), inputs["workflow"].get("value")) == (GUILD_ENDPOINT, workflow)
    assert not inputs["api_key"].get("value")


async def limits(harness, **options) -> str:
    interaction = harness.discord.slash("runpod", options, subcommand="limits", user=ADMIN, permissions=MANAGE_GUILD)
    await harness.discord.send(interaction)
    await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    (reply,) = harness.private_replies(interaction)
    return reply


async def test_limits_read_with_units_and_a_change_says_what_changed(harness):
    shown = await limits(harness)
    assert shown.startswith("Running at once: 2 jobs per member, 6 jobs for the server; up to 3 jobs waiting")
    assert "Per member per day: no limit.\n" in shown
    assert "Server per day: no limit on pictures, no limit on GPU time.\n" in shown
    assert "Per job: at most 4 pictures and 150 steps; cancelled after 15 minutes.\n" in shown
    assert shown.endswith("Price: not set.")

    first = await limits(harness, member_daily=1, guild_monthly_gpu_seconds=36000)
    assert first.startswith(
        "Changed: per member per day from no limit to 1 picture.\n"
        "Changed: server GPU time per month from no limit to 36,000 GPU seconds.\n\n"
        "Running at once:"
    )
    assert "Per member per day: 1 picture.\n" in first
    assert "Server per month: no limit on pictures, 36,000 GPU seconds.\n" in first

    second = await limits(harness, member_daily=3, max_minutes=10, member_waiting=3, gpu_price_per_second=0.00031)
    assert second.startswith(
        "Changed: per member per day from 1 to 3 pictures.\n"
        "Changed: longest a job may take from 15 to 10 minutes.\n"
        "Changed: price from not set to $0.00031 per GPU second.\n\n"
    )  # member_waiting was 3 already: not a change
    assert "Per member per day: 3 pictures.\n" in second
    assert "cancelled after 10 minutes." in second
    assert second.endswith("Price: $0.00031 per GPU second.")

    same = await limits(harness, member_daily=3)
    assert same.startswith("Nothing changed: those are already this server's limits.\n\nRunning at once:")
    unlimited = await limits(harness, member_daily=0)
    assert unlimited.startswith("Changed: per member per day from 3 pictures to no limit.\n\n")
    policy = await harness.bot.endpoints.policy(DEFAULT_GUILD_ID)
    assert (policy.member_daily, policy.max_wall_seconds, policy.guild_monthly_gpu_seconds) == (0, 600, 36000)
