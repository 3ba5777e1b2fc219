"""`python -m bot check` as a real process against both doubles: each misconfiguration gives its line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from bot.check import inspector_class
from bot.config import Secret
from bot.crypto import Vault
from bot.engine import RunPodContext
from bot.images import ImageFetcher
from bot.storage import GuildEndpoint, Storage
from doubles.discord import APP_ID
from doubles.harness import TEST_ENCRYPTION_KEY, settings_for
from tests.conftest import API_KEY
from tests.processes import start_bot

INVITE = f"https://discord.com/oauth2/authorize?client_id={APP_ID}&scope=bot+applications.commands&permissions=117760"
MARKS = ("ok", "warn", "FAIL", "skip")


@dataclass
class Report:
    code: int
    lines: list[str]

    def line(self, subject: str) -> str:
        """The one check line about `subject`."""
        found = [line for line in self.lines if line.split(maxsplit=1)[-1].startswith(subject)]
        assert len(found) == 1, f"{subject!r} in:\n" + "\n".join(self.lines)
        return found[0]

    @property
    def checks(self) -> list[str]:
        return [line for line in self.lines if line.startswith(MARKS)]


async def check(tmp_path, discord_double, runpod, secrets: tuple[str, ...] = (), **env: str) -> Report:
    bot = await start_bot(tmp_path, discord_double, runpod, "check", **({"LOG_LEVEL": "INFO"} | env))
    code = await bot.finish(timeout=30)
    await bot.reader
    lines = bot.log.strip().splitlines()
    # Nothing secret, whatever went wrong: not the token, a RunPod key, an encryption key, a password.
    for secret in (discord_double.token, API_KEY, TEST_ENCRYPTION_KEY.reveal(), *secrets):
        assert not any(secret in line for line in lines), lines
    assert "Traceback" not in bot.log
    assert lines[-1].startswith("summary: ")
    return Report(code, lines)


async def synced(tmp_path, discord_double, runpod) -> None:
    """Publish the commands (which also migrates the default database), as an operator would first."""
    bot = await start_bot(tmp_path, discord_double, runpod, "sync")
    assert await bot.finish() == 0


async def quickly_synced(tmp_path, discord_double, runpod) -> None:
    """The same state as `synced`, made in this process: a second `python -m bot` start costs seconds."""
    settings = settings_for(runpod, database_url=Secret(f"sqlite:///{tmp_path}/bot.db"))
    storage = await Storage.open(settings.database_url.reveal())  # migrates
    try:
        async with aiohttp.ClientSession() as session, ImageFetcher() as fetcher:
            runpod_context = RunPodContext(session, fetcher, api_url=settings.runpod_api_url)
            bot = inspector_class()(settings, storage=storage, runpod=runpod_context)
            with discord_double.patch_discord():
                async with bot:
                    await bot.login(discord_double.token)
                    await bot.tree.sync()
    finally:
        await storage.close()


async def test_all_good(tmp_path, discord_double, runpod):
    await synced(tmp_path, discord_double, runpod)
    report = await check(tmp_path, discord_double, runpod)
    assert report.code == 0
    assert report.lines == [*report.checks, report.lines[-1]], "only check lines and the summary"
    assert all(line.startswith("ok ") for line in report.checks), report.lines
    subjects = [line.split(maxsplit=1)[1].split(":")[0] for line in report.checks]
    assert subjects == [
        "configuration", "DISCORD_TOKEN", "slash commands", "database", "BOT_ENCRYPTION_KEY",
        "RunPod endpoint test-endpoint", "permissions",
    ]  # fmt: skip
    assert "imagine, runpod, settings published globally" in report.line("slash commands")
    assert "schema at the latest revision" in report.line("database")
    assert "0 in queue" in report.line("RunPod endpoint")
    permissions = report.line("permissions")
    assert "View Channel, Send Messages, Embed Links, Attach Files, Read Message History" in permissions
    assert permissions.endswith(INVITE)
    assert report.lines[-1] == "summary: 7 ok, 0 warnings, 0 failed"


async def test_wrong_discord_token(tmp_path, discord_double, runpod):
    token = "not-the-right-token"
    report = await check(tmp_path, discord_double, runpod, secrets=(token,), DISCORD_TOKEN=token)
    assert report.code == 1
    assert report.line("DISCORD_TOKEN").startswith("FAIL DISCORD_TOKEN: token refused")
    assert report.line("slash commands").startswith("skip")
    assert report.line("permissions").startswith("skip")  # no application id, so no usable invite
    assert INVITE not in "\n".join(report.lines)


async def test_commands_not_synced(tmp_path, discord_double, runpod):
    report = await check(tmp_path, discord_double, runpod)
    assert report.code == 1
    line = report.line("slash commands")
    assert line.startswith("FAIL slash commands: not published globally: imagine, runpod, settings")
    assert "python -m bot sync" in line
    assert report.line("DISCORD_TOKEN").startswith("ok")


async def test_runpod_key_refused(tmp_path, discord_double, runpod):
    key = "rp_not_a_valid_key_42"
    report = await check(tmp_path, discord_double, runpod, secrets=(key,), RUNPOD_API_KEY=key)
    assert report.code == 1
    assert report.line("RunPod endpoint").startswith("FAIL RunPod endpoint test-endpoint: key refused")
    assert report.line("DISCORD_TOKEN").startswith("ok")  # one bad key spoils nothing else


async def test_unknown_endpoint(tmp_path, discord_double, runpod):
    report = await check(tmp_path, discord_double, runpod, RUNPOD_ENDPOINT_ID="no-such-endpoint")
    assert report.code == 1
    assert report.line("RunPod endpoint").startswith("FAIL RunPod endpoint no-such-endpoint: endpoint unknown")


async def test_no_default_endpoint_is_a_warning(tmp_path, discord_double, runpod):
    await quickly_synced(tmp_path, discord_double, runpod)
    report = await check(tmp_path, discord_double, runpod, RUNPOD_API_KEY="", RUNPOD_ENDPOINT_ID="")
    assert report.code == 0
    line = report.line("RunPod default endpoint")
    assert line.startswith("warn RunPod default endpoint: not configured")
    assert "ask an admin" in line
    assert report.lines[-1] == "summary: 6 ok, 1 warning, 0 failed"
    assert runpod.requests == []


async def test_missing_encryption_key_is_a_warning(tmp_path, discord_double, runpod):
    await quickly_synced(tmp_path, discord_double, runpod)
    report = await check(tmp_path, discord_double, runpod, BOT_ENCRYPTION_KEY="")
    assert report.code == 0
    line = report.line("BOT_ENCRYPTION_KEY")
    assert line == (
        "warn BOT_ENCRYPTION_KEY: not set: server admins cannot connect their own RunPod keys (/runpod setup "
        "refuses); set a random secret of at least 32 characters, made with: "
        'python -c "import secrets; print(secrets.token_hex(32))"'
    )


async def test_a_generated_encryption_key_is_checked_like_a_fernet_key(tmp_path, discord_double, runpod):
    """What a PaaS's "generator": "secret" makes (64 hex characters) is a key: check reads the rows stored with it."""
    generated = "5f" * 32
    await quickly_synced(tmp_path, discord_double, runpod)
    storage = await Storage.open(f"sqlite:///{tmp_path}/bot.db")
    stored = Vault((Secret(generated),)).encrypt("rpa_guild_key")
    await storage.save_guild_endpoint(GuildEndpoint(1, "default", "guild-endpoint", stored, "sdxl"))
    await storage.close()
    report = await check(tmp_path, discord_double, runpod, BOT_ENCRYPTION_KEY=generated)
    assert report.line("BOT_ENCRYPTION_KEY") == "ok   BOT_ENCRYPTION_KEY: 1 key set; all 1 stored server key(s) decrypt"
    assert generated not in "\n".join(report.lines)


async def test_unreachable_database(tmp_path, discord_double, runpod):
    url = "postgresql://bot:s3cret-db-pass@127.0.0.1:9/x"  # nothing listens on port 9 (discard)
    report = await check(tmp_path, discord_double, runpod, secrets=("s3cret-db-pass",), DATABASE_URL=url)
    assert report.code == 1
    assert report.line("database").startswith("FAIL database: DATABASE_URL: cannot open the database")


async def test_database_not_migrated(tmp_path, discord_double, runpod):
    (tmp_path / "fresh.db").touch()
    report = await check(tmp_path, discord_double, runpod, DATABASE_URL=f"sqlite:///{tmp_path}/fresh.db")
    line = report.line("database")
    assert line.startswith("warn database:")
    assert "run the bot once to migrate" in line
    assert (tmp_path / "fresh.db").stat().st_size == 0  # the check never migrates


async def test_jobs_an_operator_should_hear_of_are_reported(tmp_path, discord_double, runpod):
    """After a key change, unfinished jobs whose interaction token no key reads; and pictures that could be
    posted nowhere. Neither line appears when there is nothing to say (see test_all_good)."""
    from datetime import UTC, datetime

    from cryptography.fernet import Fernet

    from bot.crypto import Vault
    from bot.lifecycle import LedgerState
    from bot.storage import JobRecord, KeySource

    await synced(tmp_path, discord_double, runpod)
    storage = await Storage.open(f"sqlite:///{tmp_path}/bot.db")
    other_key = Vault((Secret(Fernet.generate_key().decode()),))
    for request_id, state, token in (
        (1, LedgerState.QUEUED, other_key.encrypt("itok-1")),
        (2, LedgerState.RUNNING, Vault((TEST_ENCRYPTION_KEY,)).encrypt("itok-2")),  # readable: not reported
        (3, LedgerState.UNDELIVERABLE, None),
    ):
        await storage.record_job(
            JobRecord(
                request_id=request_id, channel_id=555, user_id=1, user_name="m", params={"prompt": "x"},
                endpoint_id="ep", worker="sdxl", key_source=KeySource.DEFAULT, state=state,
                token_encrypted=token, created_at=datetime.now(UTC),
                delivered_at=datetime.now(UTC) if state is LedgerState.UNDELIVERABLE else None,
            )
        )  # fmt: skip
    await storage.record_job(
        JobRecord(request_id=4, channel_id=555, user_id=1, user_name="m", params={"prompt": "x"}, endpoint_id="ep",
                  worker="sdxl", key_source=KeySource.DEFAULT, state=LedgerState.QUEUED, created_at=datetime.now(UTC))
    )  # fmt: skip
    async with storage.engine.begin() as connection:  # a state this version does not know (after a rollback)
        await connection.execute(sa.text("UPDATE jobs SET state = 'zombie' WHERE request_id = 4"))
    await storage.close()
    report = await check(tmp_path, discord_double, runpod)
    assert report.line("unfinished jobs").startswith("warn unfinished jobs: 1 unfinished job(s) hold an interaction")
    assert report.line("undeliverable pictures").startswith("warn undeliverable pictures: 1 finished picture(s)")
    assert report.line("undeliverable pictures").endswith("channels 555")
    assert report.line("unreadable jobs") == (
        "warn unreadable jobs: 1 job row(s) the bot cannot read, skipped by resume and the sweeper: "
        "4 ('zombie' is not a valid LedgerState)"
    )


async def test_malformed_log_level(tmp_path, discord_double, runpod):
    report = await check(tmp_path, discord_double, runpod, LOG_LEVEL="chatty")
    assert report.code == 1
    assert report.lines == [
        "FAIL configuration: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'chatty'",
        "skip other checks: fix the configuration first",
        "summary: 0 ok, 0 warnings, 1 failed, 1 skipped",
    ]
    assert discord_double.calls == [] and runpod.requests == []  # nothing is tried with a broken configuration


async def test_every_malformed_variable_is_named_at_once(tmp_path, discord_double, runpod):
    report = await check(tmp_path, discord_double, runpod, LOG_LEVEL="chatty", DISCORD_GUILD_IDS="my-server")
    assert [line.split(":")[1].split()[0] for line in report.checks if line.startswith("FAIL")] == [
        "DISCORD_GUILD_IDS",
        "LOG_LEVEL",
    ]


def test_app_json_declares_the_configuration():
    """The deploy button's app.json: valid JSON, every variable of .env.example, the add-on and the worker."""
    root = Path(__file__).resolve().parent.parent
    app = json.loads((root / "app.json").read_text())
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z_]+)=", (root / ".env.example").read_text(), re.MULTILINE))
    # DATABASE_URL comes from the PostgreSQL add-on (declaring it too would clash with the attachment);
    # shard variables differ per process, which one button-made worker formation cannot express; the platform
    # sets PORT itself, for a web process.
    assert set(app["env"]) == documented - {"DATABASE_URL", "SHARD_COUNT", "SHARD_IDS", "PORT"}
    assert all(spec["description"] for spec in app["env"].values())
    assert app["env"]["DISCORD_TOKEN"]["required"] is True
    # The platform makes the key: a generated secret (64 hex characters) is one (bot/crypto.py derives a Fernet key).
    assert app["env"]["BOT_ENCRYPTION_KEY"]["generator"] == "secret"
    assert app["env"]["LOG_LEVEL"]["value"] == "INFO"
    assert app["addons"] == [{"plan": "heroku-postgresql"}]
    assert app["formation"] == {"worker": {"quantity": 1, "size": "basic"}}
    # Commands are published by the release phase of every deploy (when they changed), not once by a postdeploy.
    assert "scripts" not in app
    assert (root / "Procfile").read_text().splitlines() == ["release: python -m bot release", "worker: python -m bot"]
