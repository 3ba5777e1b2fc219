"""What members see, played as they would play it: the real bot against the Discord and RunPod doubles
(doubles.harness.running_bot, as the end-to-end tests run it), each message captured as the double holds it at
the moment worth showing."""

from __future__ import annotations

import asyncio
import copy
import io
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from bot.lifecycle import LedgerState
from bot.storage import JobRecord, KeySource
from doubles import outputs
from doubles.discord import (
    BOT_USER,
    DEFAULT_CHANNEL_ID,
    DEFAULT_GUILD_ID,
    DEFAULT_USER_ID,
    Interaction,
    Message,
    UserSpec,
)
from doubles.harness import API_KEY, ENDPOINT, Harness, running_bot
from doubles.runpod import RunPodDouble, Script

from .draw import Invocation

PROMPT = "a lighthouse at dusk, oil painting"
STORM_PROMPT = "a lighthouse in a storm, huge waves, 8k"
MANAGE_GUILD = 1 << 5
ANN = UserSpec(id=DEFAULT_USER_ID + 1, username="ann", global_name="Ann")
BEN = UserSpec(id=DEFAULT_USER_ID + 2, username="ben", global_name="Ben")
CLOE = UserSpec(id=DEFAULT_USER_ID + 3, username="cloe", global_name="Cloé")
DANA = UserSpec(id=DEFAULT_USER_ID + 4, username="dana", global_name="Dana")
USERS = (ANN, BEN, CLOE, DANA)
# Who made the month the usage report counts (written to the ledger as the bot writes it).
HISTORY_MEMBERS = ((ANN, 5), (BEN, 3), (CLOE, 2), (DANA, 1))  # (member, how keen: jobs on a busy day)
GPU_PRICE_PER_SECOND = 0.00044  # an L4-class GPU's price, for the report's cost column
PAINTING_SECONDS = 12.0  # how long the live status's job takes to report all its steps
STEPS = 30


@dataclass(frozen=True)
class Scene:
    """One message worth a picture: a copy of it as the double held it, and how the channel showed it."""

    name: str  # the picture's file name, without .png
    message: Message
    invocation: Invocation
    at: datetime  # the moment it was captured: its relative times ("in 12 seconds") are counted from here

    @property
    def author(self) -> str:
        return BOT_USER.global_name or BOT_USER.username


def painting(seed: int, width: int, height: int) -> bytes:
    """The worker double's picture of a lighthouse at dusk, different for each seed: something for the eye, so a
    set of 4 looks like one (drawn by code: RunPod's double paints no real model's pictures)."""
    rng = random.Random(seed)
    hue = rng.uniform(-1, 1)
    top = (int(40 + 30 * hue), 30, int(90 - 20 * hue))
    low = (255, int(140 + 50 * rng.random()), int(80 + 60 * hue))
    horizon = int(height * rng.uniform(0.58, 0.66))
    sky = Image.new("RGB", (1, horizon))
    for y in range(horizon):
        t = (y / max(1, horizon - 1)) ** 1.4
        sky.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, low, strict=True)))
    image = Image.new("RGB", (width, height), (20, 30, 60))
    image.paste(sky.resize((width, horizon)), (0, 0))
    draw = ImageDraw.Draw(image)
    sun_x, sun_r = int(width * rng.uniform(0.15, 0.45)), int(width * rng.uniform(0.06, 0.1))
    draw.ellipse((sun_x - sun_r, horizon - sun_r, sun_x + sun_r, horizon + sun_r), fill=(255, 214, 150))
    for y in range(horizon, height):  # the sea: darker towards the viewer, with the sun's streaks
        depth = (y - horizon) / max(1, height - horizon)
        draw.line((0, y, width, y), fill=(int(60 - 40 * depth), int(60 - 30 * depth), int(110 - 40 * depth)))
    for _ in range(60):
        y = rng.randint(horizon, height - 1)
        spread = sun_r * (1 + 3 * (y - horizon) / max(1, height - horizon))
        x = sun_x + rng.uniform(-spread, spread)
        draw.line((x - rng.uniform(4, 18), y, x + rng.uniform(4, 18), y), fill=(255, 190, 120), width=2)
    image = image.filter(ImageFilter.GaussianBlur(width / 200))
    draw = ImageDraw.Draw(image)
    base_x, base_w = int(width * rng.uniform(0.6, 0.78)), width * 0.07
    rock_top = horizon + int(height * 0.04)
    draw.ellipse((base_x - base_w * 2.5, rock_top, base_x + base_w * 2.5, rock_top + height * 0.12), fill=(25, 22, 30))
    tower_top = int(horizon - height * rng.uniform(0.3, 0.4))
    for band in range(6):  # a tapered tower in red and white bands
        y0 = tower_top + (rock_top + 6 - tower_top) * band / 6
        y1 = tower_top + (rock_top + 6 - tower_top) * (band + 1) / 6

        def half_width(y: float) -> float:
            return base_w * (0.55 + 0.45 * (y - tower_top) / (rock_top - tower_top))

        colour = (200, 50, 45) if band % 2 == 0 else (235, 225, 210)
        draw.polygon(
            [(base_x - half_width(y0), y0), (base_x + half_width(y0), y0), (base_x + half_width(y1), y1),
             (base_x - half_width(y1), y1)],
            fill=colour,
        )  # fmt: skip
    lamp = (base_x - base_w * 0.5, tower_top - base_w * 0.9, base_x + base_w * 0.5, tower_top)
    draw.rectangle(lamp, fill=(255, 240, 170))
    draw.polygon([(base_x - base_w * 0.7, lamp[1]), (base_x + base_w * 0.7, lamp[1]), (base_x, lamp[1] - base_w * 0.6)],
                 fill=(40, 35, 45))  # fmt: skip
    beam = Image.new("L", (width, height), 0)
    angle = rng.uniform(-0.35, 0.05)
    reach = width * 1.2
    centre = (base_x, (lamp[1] + lamp[3]) / 2)
    ImageDraw.Draw(beam).polygon(
        [centre, (centre[0] - reach * math.cos(angle - 0.08), centre[1] + reach * math.sin(angle - 0.08)),
         (centre[0] - reach * math.cos(angle + 0.08), centre[1] + reach * math.sin(angle + 0.08))],
        fill=90,
    )  # fmt: skip
    image.paste((255, 235, 170), (0, 0), beam.filter(ImageFilter.GaussianBlur(width / 60)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def worker(job_input: dict[str, Any]) -> Script:
    """The RunPod double as a worker-sdxl endpoint: a storm runs the GPU out of memory, a wide (16:9) picture is
    painted on and on with its steps reported, every other job paints as many pictures as asked."""
    prompt = str(job_input.get("prompt"))
    if "storm" in prompt:
        return Script(queue_s=0.05, run_s=0.3, outcome="FAILED", error=outputs.RUNPOD_PYTHON_ERROR)
    width, height = int(job_input.get("width") or 1024) // 2, int(job_input.get("height") or 1024) // 2
    if width > height:  # the live status's job
        step_s = PAINTING_SECONDS / STEPS
        progress = [(step * step_s, f"{step}/{STEPS}") for step in range(1, STEPS)]
        # Never finishing: however slow the machine, the status is caught painting; the bot's close ends it.
        return Script(queue_s=0.4, stuck=True, progress=progress)
    seed = int(job_input.get("seed") or 0)
    pictures = [painting(seed + n, width, height) for n in range(int(job_input.get("num_images") or 1))]
    return Script(queue_s=0.1, run_s=0.4, output=outputs.sdxl(*pictures, seed=seed))


def _snapshot(message: Message | None) -> Message:
    assert message is not None, "the bot posted nothing"
    return copy.deepcopy(message)


def _fields(message: Message | None) -> dict[str, str]:
    if message is None or not message.embeds:
        return {}
    return {str(item["name"]): str(item["value"]) for item in message.embeds[0].get("fields", [])}


def _used(interaction: Interaction, command: str) -> Invocation:
    user = interaction.payload["member"]["user"]
    return Invocation(user.get("global_name") or user["username"], command)


async def live_status(harness: Harness) -> Scene:
    """A job being painted, caught once its progress bar and expected end are both shown."""
    interaction = await harness.imagine(f"{PROMPT} --ar 16:9", user=ANN)

    def a_third_done() -> bool:
        fields = _fields(harness.shown(interaction))
        return "Progress" in fields and "<t:" in fields.get("Expected done", "") and _percent(fields) >= 30

    await harness.discord.wait_for(a_third_done, 20)
    return Scene("status", _snapshot(harness.shown(interaction)), _used(interaction, "/imagine"), datetime.now(UTC))


def _percent(fields: dict[str, str]) -> int:
    return int(fields["Progress"].rsplit(" ", 1)[-1].rstrip("%"))


async def set_of_4(harness: Harness) -> Scene:
    interaction = await harness.imagine(PROMPT, user=BEN, count=4, seed=1874)
    message = await harness.finished(interaction, timeout=15)
    return Scene("set-of-4", _snapshot(message), _used(interaction, "/imagine"), datetime.now(UTC))


async def variation(harness: Harness, of_set: Message) -> Scene:
    """Ann, whose /settings count is 4, clicks V2 on Ben's set: the variations are labelled with what they are and
    who asked for them."""
    await harness.bot.storage.save_member_settings(DEFAULT_GUILD_ID, ANN.id, {"count": 4})
    click = harness.discord.click(
        next(
            component["custom_id"]
            for row in of_set.components
            for component in row["components"]
            if component.get("custom_id", "").startswith("imagine:vary:2:")
        ),
        message_id=of_set.id,
        user=ANN,
    )
    await harness.discord.send(click)
    message = await harness.finished(click, timeout=20)
    return Scene("variation", _snapshot(message), _used(click, "V2"), datetime.now(UTC))


async def failure(harness: Harness) -> Scene:
    interaction = await harness.imagine(STORM_PROMPT, user=CLOE)
    message = await harness.finished(interaction, timeout=15)
    return Scene("failure", _snapshot(message), _used(interaction, "/imagine"), datetime.now(UTC))


async def usage(harness: Harness) -> Scene:
    """An admin's `/runpod usage` after a month of the server's jobs (written to the ledger as the bot writes
    them) and the jobs just played."""
    storage = harness.bot.storage
    await storage.save_guild_policy(DEFAULT_GUILD_ID, {"gpu_price_per_second": GPU_PRICE_PER_SECOND})
    rng = random.Random(30)
    now = datetime.now(UTC)
    request_id = 1
    for days_ago in range(1, 30):
        busy = 1.0 + 0.8 * math.sin(days_ago / 4.5) + (0.6 if (now - timedelta(days=days_ago)).weekday() >= 5 else 0)
        for member, keenness in HISTORY_MEMBERS:
            for _ in range(rng.randint(0, round(keenness * busy))):
                count = rng.choice((1, 1, 2, 4))
                failed = rng.random() < 0.06
                record = JobRecord(
                    request_id=request_id,
                    guild_id=DEFAULT_GUILD_ID,
                    channel_id=DEFAULT_CHANNEL_ID,
                    user_id=member.id,
                    user_name=member.global_name or member.username,
                    params={"prompt": PROMPT, "count": count},
                    endpoint_id=ENDPOINT,
                    worker="sdxl",
                    key_source=KeySource.DEFAULT,
                    state=LedgerState.FAILED if failed else LedgerState.DELIVERED,
                    execution_ms=round(rng.uniform(5_000, 9_000) * count),
                    created_at=now - timedelta(days=days_ago, minutes=rng.randint(0, 600)),
                )
                assert await storage.record_job(record)
                request_id += 1
    interaction = harness.discord.slash("runpod", {}, subcommand="usage", user=DANA, permissions=MANAGE_GUILD)
    await harness.discord.send(interaction)
    await harness.discord.wait_for(lambda: harness.discord.calls_for("followup", interaction.token), 15)
    message = _snapshot(harness.discord.original_message(interaction.token))
    return Scene("usage", message, _used(interaction, "/runpod usage"), datetime.now(UTC))


async def play() -> list[Scene]:
    """Every scene, in one run of the bot: the live status's job goes on painting while the others finish."""
    async with (
        RunPodDouble(api_keys=[API_KEY], endpoints=[ENDPOINT]) as runpod,
        running_bot(runpod, worker=worker) as harness,
    ):
        status_task = asyncio.create_task(live_status(harness))
        await asyncio.sleep(0.2)  # its job first, so it is RunPod's oldest and painting soonest
        of_4 = await set_of_4(harness)
        scenes = [of_4, await variation(harness, of_4.message), await failure(harness)]
        scenes.insert(0, await status_task)
        scenes.append(await usage(harness))
        return scenes
