"""Shared fixtures: the RunPod double on loopback, and clients pointed at it with fast retry timings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
import sqlalchemy as sa

from bot.config import Secret
from bot.engine import RunPodContext
from bot.images import ImageFetcher
from bot.polling import PollPolicy
from bot.runpod import RetryPolicy, RunPodClient
from bot.storage import Storage, metadata
from doubles.discord import DEFAULT_CHANNEL_ID, DEFAULT_GUILD_ID, ChannelSpec, DiscordDouble, GuildSpec
from doubles.harness import API_KEY, ENDPOINT
from doubles.runpod import RunPodDouble

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
FAST_POLL = PollPolicy(queued=(0.01, 0.04), running=(0.01, 0.04))


@pytest.fixture
async def runpod() -> AsyncIterator[RunPodDouble]:
    async with RunPodDouble(api_keys=[API_KEY], endpoints=[ENDPOINT, "other-endpoint"]) as double:
        yield double


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    async with ImageFetcher() as image_fetcher:
        yield image_fetcher


@pytest.fixture
def context(runpod: RunPodDouble, session: aiohttp.ClientSession, fetcher: ImageFetcher) -> RunPodContext:
    """This test's own RunPod context: nothing learned or rate-limited leaks in from another test."""
    return RunPodContext(session, fetcher, api_url=runpod.api_url, retry=FAST_RETRY, request_timeout=2.0)


@pytest.fixture
def client(context: RunPodContext) -> RunPodClient:
    return context.client(Secret(API_KEY), ENDPOINT)


@pytest.fixture
async def discord_double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as double:
        yield double


SHARD1_GUILD = DEFAULT_GUILD_ID  # (id >> 22) % 2 == 1
SHARD0_GUILD = DEFAULT_GUILD_ID + (1 << 22)  # (id >> 22) % 2 == 0
SHARD0_CHANNEL = DEFAULT_CHANNEL_ID + 50


@pytest.fixture
async def sharded_double() -> AsyncIterator[DiscordDouble]:
    """The Discord double with two guilds, one on each shard of two."""
    guilds = [GuildSpec(), GuildSpec(id=SHARD0_GUILD, name="Zero", channels=[ChannelSpec(id=SHARD0_CHANNEL)])]
    async with DiscordDouble(guilds=guilds, shard_count=2) as double:
        yield double


POSTGRES_URL = os.environ.get("TEST_DATABASE_URL")


async def empty_database(url: str) -> None:
    """Drop what an earlier test left, so every test starts from an empty database."""
    storage = await Storage.open(url, migrate=False)
    async with storage.engine.begin() as connection:
        # Every table of today's schema, and those of earlier revisions that migrations dropped.
        for table in (*(table.name for table in metadata.sorted_tables), "guild_settings", "alembic_version"):
            await connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    await storage.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path) -> str:
    """Each database the bot supports: a SQLite file, and the PostgreSQL server .ci/run starts."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/bot.db"
    if not POSTGRES_URL:
        pytest.skip("TEST_DATABASE_URL is not set (.ci/run starts PostgreSQL and sets it)")
    await empty_database(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture(autouse=True)
async def reap_bot_processes() -> AsyncIterator[None]:
    """A test that fails midway must not leave a real bot process running behind it."""
    yield
    from tests.processes import reap

    await reap()
