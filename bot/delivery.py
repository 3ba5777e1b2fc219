"""Make pictures fit Discord's upload limit: `fit_within` runs the blocking `fit_for_upload` (Pillow) on the
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
    """`fit_for_upload` on the pictures' thread in `tenant`'s turn (the job's guild), its memory held from the bot's
    budget for pictures; an `OutputError` when re-encoding them to fit would take more than the whole budget."""
    needed = reencoding_bytes([(len(p.png), p.width, p.height) for p in pictures], per_file_limit=per_file_limit)
    if needed > budget.limit:
        raise OutputError(
            f"The pictures are over Discord's {size_text(per_file_limit)} upload limit, and re-encoding them to fit "
            f"would take about {size_text(needed)} of memory, over the {size_text(budget.limit)} the bot allows "
            "for pictures.",
            job_id,
        )
    pngs = [picture.png for picture in pictures]
    fit = functools.partial(fit_for_upload, pngs, per_file_limit=per_file_limit, stem=stem)
    return await budget.run(needed, fit, tenant=tenant)


def fit_for_upload(pngs: list[bytes], *, per_file_limit: int, stem: str) -> list[Upload]:
    """Each picture as PNG when it fits, else as JPEG, else downscaled JPEG; all under the limits."""
    budget = upload_budget(len(pngs), per_file_limit)
    several = len(pngs) > 1
    uploads = []
    for number, png in enumerate(pngs, start=1):
        name = f"{stem}-{number}" if several else stem
        label = f"Image {number}" if several else "The image"
        uploads.append(_fit(png, budget, name, label))
    return uploads


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
