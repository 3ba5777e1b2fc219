"""Real pictures and the output shapes real RunPod image workers wrap them in (docs/runpod-api.md, Output shapes
of image workers)."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

from PIL import Image


def make_png(width: int = 64, height: int = 64, seed: int = 1) -> bytes:
    """A deterministic noisy PNG, so two pictures never compare equal by accident."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def make_jpeg(width: int = 64, height: int = 64, seed: int = 1) -> bytes:
    buffer = BytesIO()
    Image.open(BytesIO(make_png(width, height, seed))).save(buffer, "JPEG")
    return buffer.getvalue()


def make_webp(width: int, height: int) -> bytes:
    """A WebP of one colour (WebP goes up to 16383 pixels a side): a few bytes however many pixels it has, which a
    decoder inflates to all of them, as it would a decompression bomb. Quick to make: lossless at its fastest."""
    buffer = BytesIO()
    Image.new("RGB", (width, height), (200, 30, 40)).save(buffer, "WEBP", lossless=True, quality=0, method=0)
    return buffer.getvalue()


def pixels(png: bytes) -> bytes:
    with Image.open(BytesIO(png)) as image:
        return image.convert("RGB").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def sdxl(*pngs: bytes, seed: int = 42) -> dict[str, Any]:
    return {"image_url": data_uri(pngs[0]), "images": [data_uri(png) for png in pngs], "seed": seed}


def comfyui(*pngs: bytes) -> dict[str, Any]:
    return {
        "images": [
            {"filename": f"ComfyUI_{n:05}_.png", "type": "base64", "data": b64(png)} for n, png in enumerate(pngs)
        ]
    }


def comfyui_legacy(png: bytes) -> dict[str, Any]:
    return {"status": "success", "message": b64(png)}


def a1111(*pngs: bytes, seeds: list[int] | None = None) -> dict[str, Any]:
    info = {"all_seeds": seeds or [1234 + n for n in range(len(pngs))]}
    return {"images": [b64(png) for png in pngs], "parameters": {"prompt": "x"}, "info": json.dumps(info)}


def sd_v1(*pngs: bytes) -> list[dict[str, Any]]:
    return [{"image": b64(png), "seed": 46578 + n} for n, png in enumerate(pngs)]


def sdxl_turbo(png: bytes) -> dict[str, Any]:
    return {"generation_time": 0.72, "images": [{"image": b64(png)}]}


def streamed_status(size: int, job_id: str = "streamed-u1", chunk: int = 1024 * 1024) -> Callable[[], Iterator[bytes]]:
    """A COMPLETED /status answer of about `size` bytes, one picture of base64 that goes on and on, for
    `RunPodDouble.stream_next`: made as it is sent, never held whole."""
    head = json.dumps({"id": job_id, "status": "COMPLETED"})[:-1].encode() + b', "output": {"images": ["'
    tail = b'"]}}'

    def chunks() -> Iterator[bytes]:
        yield head
        block = b"A" * chunk
        for _ in range(max(0, size - len(head) - len(tail)) // chunk):
            yield block
        yield tail

    return chunks


def public_endpoint(url: str) -> dict[str, Any]:
    return {"image_url": url, "cost": 0.02097152}


LOCAL_PATH_FALLBACK = {"image_url": "simulated_uploaded/1a2b3c4d.png", "images": ["simulated_uploaded/1a2b3c4d.png"]}
NO_IMAGES = {"status": "success_no_images", "images": []}
RUNPOD_PYTHON_ERROR = json.dumps(
    {
        "error_type": "<class 'torch.OutOfMemoryError'>",
        "error_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
        "error_traceback": 'Traceback (most recent call last):\n  File "/handler.py", line 9\ntorch.OutOfMemoryError',
        "hostname": "abc",
        "worker_id": "462u6mrq9s28h6",
        "runpod_version": "1.12.0",
    }
)
