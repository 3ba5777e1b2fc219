"""Make pictures fit Discord's upload limit: `fit_within` re-encodes (Pillow) the pictures that need it on the
pictures' thread, within the bot's memory budget for pictures."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from bot.errors import OutputError
from bot.images import DecodedImage, MemoryBudget, jpeg_within
from bot.text import size_text

# Discord refuses requests over 25 MiB (docs/discord-notes.md, Upload limits); room is kept for the JSON part.
MAX_REQUEST_BYTES = 24 * 1024 * 1024
# Re-encoding a picture to fit inflates it: Pillow holds it at 4 bytes a pixel (1 with a palette), its RGB copy
# takes 4 more, and the JPEG encoder keeps the whole picture's coefficients: 8 to 12 bytes a pixel measured with
# Pillow 12 on pictures of noise. `reencoding_bytes` counts it against the bot's memory for pictures.
REENCODE_BYTES_PER_PIXEL = 14


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    note: str | None = None  # said to the member when the picture had to change to fit


def upload_stem(prompt: str, seed: int | None, *, spoiler: bool = False) -> str:
    """A file name a member recognises: the prompt's first words and the seed (Discord blurs SPOILER_ files)."""
    words = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:40].rstrip("_")
    return f"{'SPOILER_' if spoiler else ''}{words or 'imagine'}_{seed}"


def upload_budget(count: int, per_file_limit: int) -> int:
    """The most each of `count` pictures posted together may take."""
    return min(per_file_limit, MAX_REQUEST_BYTES // max(1, count))


def reencoding_bytes(pictures: Sequence[tuple[int, int, int]], *, per_file_limit: int) -> int:
    """The memory `fit_for_upload` takes for pictures of these (bytes, width, height): it re-encodes only those over
    the budget, one at a time, so the largest of them; 0 when all fit as they are."""
    budget = upload_budget(len(pictures), per_file_limit)
    return max(
        (width * height * REENCODE_BYTES_PER_PIXEL for size, width, height in pictures if size > budget), default=0
    )


async def fit_within(
    budget: MemoryBudget,
    pictures: Sequence[DecodedImage],
    *,
    per_file_limit: int,
    stem: str,
    job_id: str,
    tenant: object = None,
) -> list[Upload]:
    """The pictures as `fit_for_upload` makes them, each re-encoded on the pictures' thread in `tenant`'s turn (the
    job's guild) with its memory held from the bot's budget for pictures; an `OutputError` when re-encoding them to
    fit would take more than the whole budget."""
    needed = reencoding_bytes([(len(p.png), p.width, p.height) for p in pictures], per_file_limit=per_file_limit)
    if needed > budget.limit:
        raise OutputError(
            f"The pictures are over Discord's {size_text(per_file_limit)} upload limit, and re-encoding them to fit "
            f"would take about {size_text(needed)} of memory, over the {size_text(budget.limit)} the bot allows "
            "for pictures.",
            job_id,
        )
    # One picture at a time on the pictures' thread, each in the tenant's turn: ten large pictures of one server are
    # re-encoded between other servers' work, never as one long stretch before it.
    limit = upload_budget(len(pictures), per_file_limit)
    uploads = []
    for picture, (name, label) in zip(pictures, _named(stem, len(pictures)), strict=True):
        if len(picture.png) <= limit:
            uploads.append(Upload(f"{name}.png", picture.png))
            continue
        memory, fit = picture.width * picture.height * REENCODE_BYTES_PER_PIXEL, functools.partial(_fit, picture.png)
        uploads.append(await budget.run(memory, functools.partial(fit, limit, name, label), tenant=tenant))
    return uploads


def fit_for_upload(pngs: list[bytes], *, per_file_limit: int, stem: str) -> list[Upload]:
    """Each picture as PNG when it fits, else as JPEG, else downscaled JPEG; all under the limits (blocking)."""
    limit = upload_budget(len(pngs), per_file_limit)
    return [_fit(png, limit, name, label) for png, (name, label) in zip(pngs, _named(stem, len(pngs)), strict=True)]


def _named(stem: str, count: int) -> list[tuple[str, str]]:
    """Each picture's file name (without its extension) and how a note names it."""
    if count == 1:
        return [(stem, "The image")]
    return [(f"{stem}-{number}", f"Image {number}") for number in range(1, count + 1)]


def _fit(png: bytes, budget: int, name: str, label: str) -> Upload:
    if len(png) <= budget:
        return Upload(f"{name}.png", png)
    limit_text = size_text(budget)
    rgb: Image.Image = Image.open(BytesIO(png))
    if rgb.mode != "RGB":  # converting copies the whole picture: only when JPEG needs it
        rgb = rgb.convert("RGB")
    data, size = jpeg_within(rgb, budget)
    if size == rgb.size:
        return Upload(f"{name}.jpg", data, f"{label} was sent as JPEG to fit Discord's {limit_text} upload limit.")
    return Upload(
        f"{name}.jpg",
        data,
        f"{label} was scaled down to {size[0]}×{size[1]} to fit Discord's {limit_text} upload limit.",
    )
