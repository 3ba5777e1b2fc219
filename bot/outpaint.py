"""Zoom Out and Pan: the picture on a larger canvas, and the mask that tells the worker where to paint.

Both are made with Pillow and are blocking: the canvas on the pictures' thread (`bot.start_picture.prepare`), the
mask where the worker's input is built (`bot.engine.submit_job` builds it in a thread). The mask depends only on the
canvas's size and the move, so the two always agree, whatever size the canvas had to be made to fit the worker.
"""

from __future__ import annotations

import math
from io import BytesIO

from PIL import Image

from bot.images import MAX_PIXELS, _opened, jpeg_within
from bot.params import outpaint_growth

CANVAS_FILL = (127, 127, 127)  # the new area starts neutral grey: it is painted from noise anyway
SEAM = 8  # pixels of the picture's own edge the mask also lets the worker repaint, so no seam shows
MULTIPLE = 8  # Stable Diffusion's latent is 1/8 of the picture: a canvas side is a multiple of 8


def canvas_size(width: int, height: int, outpaint: str, *, max_pixels: int) -> tuple[int, int]:
    """The canvas a picture of `width`x`height` grows to, made smaller (keeping its shape) to at most `max_pixels`
    (what the worker takes), each side a multiple of 8."""
    left, top, right, bottom = _growth(outpaint)
    wide, high = width * (1 + left + right), height * (1 + top + bottom)
    scale = min(1.0, math.sqrt(max_pixels / (wide * high)))
    return _snap(wide * scale), _snap(high * scale)


def picture_box(size: tuple[int, int], outpaint: str) -> tuple[int, int, int, int]:
    """Where the picture sits on a canvas of `size` (left, top, right, bottom)."""
    left, top, right, bottom = _growth(outpaint)
    across, down = size[0] / (1 + left + right), size[1] / (1 + top + bottom)
    return round(left * across), round(top * down), round((1 + left) * across), round((1 + top) * down)


def make_canvas(data: bytes, where: str, outpaint: str, *, max_pixels: int, max_bytes: int) -> bytes:
    """The picture in its place on the grown canvas, as PNG (JPEG when that is over `max_bytes`). Blocking."""
    with _opened(data, where, MAX_PIXELS) as image:
        size = canvas_size(image.width, image.height, outpaint, max_pixels=max_pixels)
        box = picture_box(size, outpaint)
        image.load()
        picture = image.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size, CANVAS_FILL)
    canvas.paste(picture, box[:2])
    del picture
    buffer = BytesIO()
    canvas.save(buffer, "PNG")
    if buffer.tell() <= max_bytes:
        return buffer.getvalue()
    return jpeg_within(canvas, max_bytes)[0]


def make_mask(size: tuple[int, int], outpaint: str | None) -> bytes:
    """A greyscale PNG of `size`: white where the worker paints, black where the picture stays. Without a move
    (a Vary or Upscale on an outpainting workflow) all white: the whole picture may change, as far as its strength
    allows. Blocking."""
    mask = Image.new("L", size, 255)
    if outpaint is not None:
        left, top, right, bottom = picture_box(size, outpaint)
        # the picture's edges on the canvas's border stay as they are; the ones facing new area give a seam
        kept = (
            left + SEAM if left > 0 else 0,
            top + SEAM if top > 0 else 0,
            right - SEAM if right < size[0] else size[0],
            bottom - SEAM if bottom < size[1] else size[1],
        )
        if kept[0] < kept[2] and kept[1] < kept[3]:  # a picture of under 16 pixels is all seam: all repainted
            mask.paste(0, kept)
    buffer = BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """A picture's width and height from its header (no decoding)."""
    with Image.open(BytesIO(data)) as image:
        return image.size


def _growth(outpaint: str) -> tuple[float, float, float, float]:
    growth = outpaint_growth(outpaint)
    if growth is None:
        raise ValueError(f"not a zoom or pan: {outpaint!r}")
    return growth


def _snap(side: float) -> int:
    return max(MULTIPLE, math.floor(side / MULTIPLE) * MULTIPLE)
