"""The picture an image job starts from (an image prompt, Vary, Upscale), read from Discord and put in the form its
worker takes, before any GPU time is paid for."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from urllib.parse import urlsplit

import discord

from bot.errors import BotError, OutputError
from bot.images import MemoryBudget, enlarge, read_header
from bot.live import TRANSPORT_ERRORS, describe
from bot.params import GenerationParams, InvalidParams
from bot.presenter import JobPresenter
from bot.presets import WorkerPreset

# Where Discord serves attachments; the API's own host too, which is Discord's unless a test points the client at
# a double (doubles/discord/server.py).
DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
_READ_PAUSES = (0.5, 2.0)  # a reset or a 5xx on the CDN is tried again after these pauses

_WHERE = "The picture to start from"


def from_discord(url: str) -> bool:
    host = urlsplit(url).hostname
    return host is not None and (host in DISCORD_CDN_HOSTS or host == urlsplit(discord.http.Route.BASE).hostname)


async def prepare(
    client: discord.Client,
    budget: MemoryBudget,
    presenter: JobPresenter,
    params: GenerationParams,
    preset: WorkerPreset,
) -> tuple[GenerationParams, bytes | None]:
    """The job's parameters and the bytes its worker takes as base64 (None where it fetches a URL itself).

    The picture is read and its header checked first, so a file that only claims to be a picture, or one deleted
    since, is refused before any GPU time is paid. An upscale starts from the picture enlarged here; a worker that
    fetches URLs finds that enlarged picture attached to the job's own status message."""
    if params.image_url is None:
        return params, None
    if not from_discord(params.image_url):  # only Discord's payloads put a URL here; never fetch another
        raise BotError(f"{_WHERE} is not on Discord's CDN, so it was not fetched.")
    data = await _read(client, params.image_url)
    try:
        header = await budget.run(0, functools.partial(read_header, data, _WHERE))
        if params.upscale:
            data = await budget.run(header.decode_bytes * 5, functools.partial(enlarge, data, _WHERE))
    except OutputError as error:  # the member's file, not the worker's output: no admin can fix it
        raise InvalidParams(str(error)) from None
    if preset.image_input == "base64":
        return params, data
    if not params.upscale:
        return params, None  # the worker fetches it from Discord itself
    url = await presenter.start_picture(data)
    if url is None:
        raise BotError("The enlarged picture could not be posted for the worker to fetch. Try again.")
    return dataclasses.replace(params, image_url=url), None


async def _read(client: discord.Client, url: str) -> bytes:
    for pause in (*_READ_PAUSES, None):
        try:
            return await client.http.get_from_cdn(url)
        except (*TRANSPORT_ERRORS, discord.HTTPException) as error:
            if isinstance(error, discord.HTTPException) and error.status < 500:
                raise BotError(f"{_WHERE} could not be read from Discord ({error.status}); was it deleted?") from None
            if pause is None:  # the network or the CDN failed every time
                raise BotError(f"{_WHERE} could not be read from Discord ({describe(error)}). Try again.") from None
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")
