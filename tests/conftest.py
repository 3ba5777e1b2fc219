"""Shared fixtures: the RunPod double on loopback, and clients pointed at it with fast retry timings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.config import Secret
from bot.engine import PollPolicy
from bot.images import ImageFetcher
from bot.runpod import RetryPolicy, RunPodClient
from tests.doubles.discord import DiscordDouble
from tests.doubles.runpod import RunPodDouble

API_KEY = "rp_test_key_0123456789"
ENDPOINT = "test-endpoint"
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
def client(runpod: RunPodDouble, session: aiohttp.ClientSession) -> RunPodClient:
    return RunPodClient(
        session,
        api_key=Secret(API_KEY),
        endpoint_id=ENDPOINT,
        api_url=runpod.api_url,
        retry=FAST_RETRY,
        request_timeout=2.0,
    )


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    async with ImageFetcher() as image_fetcher:
        yield image_fetcher


@pytest.fixture
async def discord_double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as double:
        yield double
