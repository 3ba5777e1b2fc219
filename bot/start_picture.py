"""The picture an image job starts from (an image prompt, Vary, Upscale), read from Discord and put in the form its
worker takes, before any GPU time is paid for."""

from __future__ import annotations

import dataclasses
import functools
from urllib.parse import urlsplit

import discord

from bot.errors import BotError, OutputError
from bot.images import (
    RESULT_BYTES_PER_PIXEL,
    UPSCALE_FACTOR,
    ImageHeader,
    MemoryBudget,
    fit_start,
    prepare_bytes,
    read_header,
    start_size,
    too_much_memory,
)
from bot.live import TRANSPORT_ERRORS, describe, retrying, transient
from bot.outpaint import canvas_size, make_canvas
from bot.params import GenerationParams, InvalidParams
from bot.presenter import JobPresenter
from bot.presets import WorkerPreset
from bot.runpod import RUN_BODY_LIMIT

# Where Discord serves attachments; the API's own host too, which is Discord's unless a test points the client at
# a double (doubles/discord/server.py).
DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
_READ_PAUSES = (0.5, 2.0)  # a reset or a 5xx on the CDN is tried again after these pauses

_WHERE = "The picture to start from"
# The most bytes of a picture the bot makes for a worker to start from. A worker that takes base64 gets it inside
# the `/run` body, which RunPod caps (RUN_BODY_LIMIT): base64 makes 4 bytes of 3, and the rest of the body (a
# ComfyUI workflow) is given 512 KB. A worker that fetches URLs finds it attached to a Discord message, and this is
# under Discord's smallest upload limit (10 MB) too.
MAX_START_BYTES = (RUN_BODY_LIMIT - 512 * 1024) * 3 // 4


def from_discord(url: str) -> bool:
    host = urlsplit(url).hostname
    return host is not None and (host in DISCORD_CDN_HOSTS or host == urlsplit(discord.http.Route.BASE).hostname)


async def prepare(
    client: discord.Client,
    budget: MemoryBudget,
    presenter: JobPresenter,
    params: GenerationParams,
    preset: WorkerPreset,
    *,
    tenant: object = None,
) -> tuple[GenerationParams, bytes | None, tuple[int, int] | None]:
    """The job's parameters, the bytes its worker takes as base64 (None where it fetches a URL itself) and the size
    of the picture sent (None for a text job): what the worker's picture is checked against (`painted_from_start`).

    The picture is read and its header checked first, so a file that only claims to be a picture, or one deleted
    since, is refused before any GPU time is paid. It is sent no larger than the worker takes
    (`WorkerPreset.max_start_pixels`) and in at most `MAX_START_BYTES`: a larger one is scaled down (an upscale is
    enlarged up to that size) and re-encoded here, on the pictures' thread in `tenant`'s turn, its memory held from
    the budget. A worker that fetches URLs finds a picture made here attached to the job's own status message."""
    if params.image_url is None:
        return params, None, None
    if not from_discord(params.image_url):  # only Discord's payloads put a URL here; never fetch another
        raise BotError(f"{_WHERE} is not on Discord's CDN, so it was not fetched.")
    data = await _read(client, params.image_url)
    try:
        header = await budget.run(0, functools.partial(read_header, data, _WHERE), tenant=tenant)
        if params.outpaint is not None:  # Zoom Out, Pan: only on a worker that takes base64 (bot/presets.py)
            canvas, size = await _canvas(budget, data, header, params.outpaint, preset, tenant)
            return params, canvas, size
        factor = UPSCALE_FACTOR if params.upscale else 1
        size = start_size(header.width, header.height, factor=factor, max_pixels=preset.max_start_pixels)
        as_sent = size == (header.width, header.height) and (
            preset.image_input == "url" or len(data) <= MAX_START_BYTES
        )
        if not as_sent:
            needed = prepare_bytes(header, size)
            if needed > budget.limit:
                raise OutputError(too_much_memory(_WHERE, header, needed, budget.limit, doing="preparing"))
            fit = functools.partial(fit_start, data, _WHERE, size=size, max_bytes=MAX_START_BYTES)
            data = await budget.run(needed, fit, tenant=tenant)
    except OutputError as error:  # the member's file, not the worker's output: no admin can fix it
        raise InvalidParams(str(error)) from None
    if preset.image_input == "base64":
        return params, data, size
    if as_sent:
        return params, None, size  # the worker fetches it from Discord itself
    url = await presenter.start_picture(data)
    if url is None:
        raise BotError("The picture to start from could not be posted for the worker to fetch. Try again.")
    return dataclasses.replace(params, image_url=url), None, size


async def _canvas(
    budget: MemoryBudget, data: bytes, header: ImageHeader, outpaint: str, preset: WorkerPreset, tenant: object
) -> tuple[bytes, tuple[int, int]]:
    """The picture on the canvas a Zoom Out or Pan paints, within the worker's size, made on the pictures' thread;
    and the canvas's size."""
    size = canvas_size(header.width, header.height, outpaint, max_pixels=preset.max_start_pixels)
    needed = prepare_bytes(header, size) + size[0] * size[1] * RESULT_BYTES_PER_PIXEL
    if needed > budget.limit:
        raise OutputError(too_much_memory(_WHERE, header, needed, budget.limit, doing="preparing"))
    make = functools.partial(
        make_canvas, data, _WHERE, outpaint, max_pixels=preset.max_start_pixels, max_bytes=MAX_START_BYTES
    )
    return await budget.run(needed, make, tenant=tenant), size


async def _read(client: discord.Client, url: str) -> bytes:
    try:
        return await retrying(lambda: client.http.get_from_cdn(url), _READ_PAUSES)
    except (*TRANSPORT_ERRORS, discord.HTTPException) as error:
        if isinstance(error, discord.HTTPException) and not transient(error):
            raise BotError(f"{_WHERE} could not be read from Discord ({error.status}); was it deleted?") from None
        raise BotError(f"{_WHERE} could not be read from Discord ({describe(error)}). Try again.") from None
