"""Real `python -m bot` processes against the doubles, for start-up, signal and restart tests."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bot.storage import Storage
from doubles.harness import TEST_ENCRYPTION_KEY
from tests.conftest import API_KEY, ENDPOINT

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BotProcess:
    process: asyncio.subprocess.Process
    output: list[str]
    reader: asyncio.Task[None]

    async def finish(self, timeout: float = 20.0) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            raise AssertionError(f"the bot did not exit within {timeout}s; its log ends:\n{self.log[-3000:]}") from None

    @property
    def log(self) -> str:
        return "".join(self.output)


async def start_bot(tmp_path, discord_double, runpod, *args: str, **env: str) -> BotProcess:
    """`python -m bot` against the doubles; the database is a SQLite file in tmp_path unless DATABASE_URL given."""
    environment = {
        "PATH": os.environ["PATH"],
        "BOT_ENCRYPTION_KEY": TEST_ENCRYPTION_KEY.reveal(),
        "DATABASE_URL": f"sqlite:///{tmp_path}/bot.db",
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": discord_double.token,
        "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_ENDPOINT_ID": ENDPOINT,
        "RUNPOD_API_URL": runpod.api_url,
        "DISCORD_DOUBLE_REST": discord_double.rest_base,
        "DISCORD_DOUBLE_GATEWAY": discord_double.gateway_url,
        "LOG_LEVEL": "DEBUG",
    } | env
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "doubles.launch", *args,
        cwd=tmp_path, env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output: list[str] = []

    async def collect() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            output.append(line.decode())

    bot = BotProcess(process, output, asyncio.create_task(collect()))
    STARTED.append(bot)
    return bot


STARTED: list[BotProcess] = []  # reaped after every test (tests/conftest.py), even one that failed midway


async def reap() -> None:
    while STARTED:
        bot = STARTED.pop()
        if bot.process.returncode is None:
            bot.process.kill()
            await bot.process.wait()
        bot.reader.cancel()


async def ready(discord_double, connections: int = 1) -> None:
    """Wait until this many gateway sessions have become ready (a restarted bot opens a new one)."""
    await discord_double.wait_for(
        lambda: sum(conn.ready for conn in discord_double.connections) >= connections, timeout=20
    )


async def set_policy(database_url: str, guild_id: int, **policy: object) -> None:
    """Write a guild's policy into the bot's database before the bot starts."""
    storage = await Storage.open(database_url)
    try:
        await storage.save_guild_policy(guild_id, policy)
    finally:
        await storage.close()
