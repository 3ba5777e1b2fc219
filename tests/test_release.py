"""Deploying: the release phase (`python -m bot release`), a generated BOT_ENCRYPTION_KEY, and a start without
a route to Discord, with real `python -m bot` processes against the doubles."""

from __future__ import annotations

import re
import signal
import socket
import tomllib
from pathlib import Path

import aiohttp
import pytest

from bot.bot import ImagineBot
from bot.engine import RunPodContext
from bot.images import ImageFetcher
from bot.release import Publication, publish_commands
from bot.storage import Storage
from doubles.harness import settings_for
from tests.processes import ready, start_bot

GENERATED = "0123456789abcdef" * 4  # what a PaaS's "generator": "secret" makes: 64 hex characters
VOICE_WARNING = "voice will NOT be supported"


async def test_release_migrates_then_publishes_only_when_the_commands_changed(tmp_path, discord_double, runpod):
    first = await start_bot(tmp_path, discord_double, runpod, "release", BOT_ENCRYPTION_KEY=GENERATED)
    assert await first.finish() == 0
    assert "database migrated: schema at revision 0010" in first.log
    assert "published 3 global command(s): imagine, runpod, settings" in first.log
    assert [command["name"] for command in discord_double.commands(None)] == ["imagine", "runpod", "settings"]
    assert len(discord_double.calls_for("sync_global")) == 1

    second = await start_bot(tmp_path, discord_double, runpod, "release", BOT_ENCRYPTION_KEY=GENERATED)
    assert await second.finish() == 0
    unchanged = "slash commands unchanged since the last publish (imagine, runpod, settings): not published again"
    assert unchanged in second.log
    assert len(discord_double.calls_for("sync_global")) == 1  # nothing sent to Discord the second time

    # `sync` publishes whatever was published before, and the next release knows it
    forced = await start_bot(tmp_path, discord_double, runpod, "sync")
    assert await forced.finish() == 0
    assert len(discord_double.calls_for("sync_global")) == 2
    for process in (first, second, forced):
        assert "Traceback" not in process.log
        assert VOICE_WARNING not in process.log


async def test_a_changed_command_is_published_by_the_next_release(tmp_path, discord_double, runpod, monkeypatch):
    discord_double.install(monkeypatch)
    storage = await Storage.open(f"sqlite:///{tmp_path}/bot.db")
    async with aiohttp.ClientSession() as session, ImageFetcher() as fetcher:
        context = RunPodContext(session, fetcher, api_url=runpod.api_url)

        async def release(description: str | None = None) -> Publication:
            bot = ImagineBot(settings_for(runpod), storage=storage, runpod=context)
            async with bot:
                await bot.login(discord_double.token)
                imagine = bot.tree.get_command("imagine")
                assert imagine is not None
                if description is not None:  # what a new version of the bot would say
                    imagine.description = description
                return await publish_commands(bot, storage, only_if_changed=True)

        try:
            assert (await release()).published
            assert not (await release()).published
            changed = await release("Paint a picture from your words")
            assert changed == Publication(("imagine", "runpod", "settings"), published=True)
            assert not (await release("Paint a picture from your words")).published
            assert (await release()).published  # and back again
        finally:
            await storage.close()
    published = discord_double.calls_for("sync_global")
    assert len(published) == 3
    descriptions = [next(c["description"] for c in call.json if c["name"] == "imagine") for call in published]
    assert descriptions[1] == "Paint a picture from your words"
    assert descriptions[0] == descriptions[2] != descriptions[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: a connection there is refused, as without a route to Discord."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("command", ["run", "sync", "release"])
async def test_without_a_route_to_discord_one_clear_line(tmp_path, discord_double, runpod, closed_port, command):
    unreachable = f"http://127.0.0.1:{closed_port}/api/v10"
    bot = await start_bot(tmp_path, discord_double, runpod, command, DISCORD_DOUBLE_REST=unreachable)
    assert await bot.finish() == 1
    last = bot.log.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach Discord (Cannot connect to host 127.0.0.1:{closed_port} ")
    assert last.endswith(
        "check this machine's network (DNS, firewall, proxy), or Discord's status at https://discordstatus.com"
    )
    assert "Traceback" not in bot.log  # LOG_LEVEL=DEBUG
    assert discord_double.calls == []


async def test_a_generated_key_runs_and_a_missing_key_is_one_warning_at_start(tmp_path, discord_double, runpod):
    generated = await start_bot(tmp_path, discord_double, runpod, BOT_ENCRYPTION_KEY=GENERATED)
    await ready(discord_double)
    generated.process.send_signal(signal.SIGTERM)
    assert await generated.finish() == 0
    assert "BOT_ENCRYPTION_KEY" not in generated.log
    assert "runpod-imagine-bot 0.5.0 starting" in generated.log
    assert VOICE_WARNING not in generated.log

    missing = await start_bot(tmp_path, discord_double, runpod, BOT_ENCRYPTION_KEY="")
    await ready(discord_double, connections=2)
    missing.process.send_signal(signal.SIGTERM)
    assert await missing.finish() == 0
    warnings = [line for line in missing.output if "BOT_ENCRYPTION_KEY" in line]
    assert len(warnings) == 1
    assert (
        " WARNING bot: BOT_ENCRYPTION_KEY is not set: server admins cannot connect their own RunPod keys"
        in (warnings[0])
    )
    assert "at least 32 characters" in warnings[0]


async def test_a_short_key_stops_the_start_with_one_line(tmp_path, discord_double, runpod):
    bot = await start_bot(tmp_path, discord_double, runpod, BOT_ENCRYPTION_KEY="a-password-too-short")
    assert await bot.finish() == 2
    assert bot.log.strip().splitlines() == [
        "configuration error: BOT_ENCRYPTION_KEY entry 1 is too short (20 characters): give a Fernet key or a "
        'random secret of at least 32 characters; make one with: python -c "import secrets; '
        'print(secrets.token_hex(32))"'
    ]


def test_the_lockfile_pins_every_dependency_with_hashes():
    """requirements.txt is what a PaaS installs: each of pyproject.toml's dependencies pinned, every pin hashed,
    and no local directory (pip's hash mode refuses one; the Procfile runs the bot from the checkout instead)."""
    root = Path(__file__).resolve().parent.parent
    wanted = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = (root / "requirements.txt").read_text()
    lines = (line.strip() for line in lock.replace("\\\n", " ").splitlines())
    requirements = [line for line in lines if line and not line.startswith("#")]
    pinned = {canonical(line.split("==")[0]) for line in requirements}
    assert {canonical(re.split(r"[\[<>=~ ]", spec)[0]) for spec in wanted} <= pinned
    for line in requirements:
        assert "==" in line and "--hash=sha256:" in line, line
    assert not any(line.strip() in (".", "-e .") for line in lock.splitlines())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


async def test_the_published_hash_is_kept_per_application(database_url):
    storage = await Storage.open(database_url)
    try:
        assert await storage.published_commands(1) is None
        await storage.commands_published(1, "a" * 64)
        await storage.commands_published(2, "b" * 64)
        await storage.commands_published(1, "c" * 64)  # a later publish replaces the first
        assert (await storage.published_commands(1), await storage.published_commands(2)) == ("c" * 64, "b" * 64)
    finally:
        await storage.close()


def test_the_version_is_pyprojects_and_printed(capsys):
    import bot
    from bot.__main__ import main

    root = Path(__file__).resolve().parent.parent
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert bot.__version__ == version
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"python -m bot {version}\n"
    assert f"## [{version}] - " in (root / "CHANGELOG.md").read_text()  # every version says what it changed
