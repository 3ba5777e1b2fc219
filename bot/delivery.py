"""Make pictures fit Discord's upload limit. Blocking (Pillow): call `fit_for_upload` in a thread."""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

# Discord refuses requests over 25 MiB (docs/discord-notes.md, Upload limits); room is kept for the JSON part.
MAX_REQUEST_BYTES = 24 * 1024 * 1024
_JPEG_QUALITIES = (92, 85, 75)


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    note: str | None = None  # said to the member when the picture had to change to fit


def upload_stem(prompt: str, seed: int | None, *, spoiler: bool = False) -> str:
    """A file name a member recognises: the prompt's first words and the seed (Discord blurs SPOILER_ files)."""
    words = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:40].rstrip("_")
    return f"{'SPOILER_' if spoiler else ''}{words or 'imagine'}_{seed}"


def fit_for_upload(pngs: list[bytes], *, per_file_limit: int, stem: str) -> list[Upload]:
    """Each picture as PNG when it fits, else as JPEG, else downscaled JPEG; all under the limits."""
    budget = min(per_file_limit, MAX_REQUEST_BYTES // max(1, len(pngs)))
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
    limit_text = _megabytes(budget)
    with Image.open(BytesIO(png)) as image:
        rgb = image.convert("RGB")
    for quality in _JPEG_QUALITIES:
        data = _jpeg(rgb, quality)
        if len(data) <= budget:
            return Upload(f"{name}.jpg", data, f"{label} was sent as JPEG to fit Discord's {limit_text} upload limit.")
    scale = 1.0
    while True:
        scale *= 0.8 * (budget / len(data)) ** 0.5
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        data = _jpeg(rgb.resize(size, Image.Resampling.LANCZOS), _JPEG_QUALITIES[-1])
        if len(data) <= budget or size == (1, 1):
            return Upload(
                f"{name}.jpg",
                data,
                f"{label} was scaled down to {size[0]}×{size[1]} to fit Discord's {limit_text} upload limit.",
            )


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KB"
