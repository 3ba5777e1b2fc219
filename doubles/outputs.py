"""Real pictures and the output shapes real RunPod image workers wrap them in (docs/runpod-api.md, Output shapes
of image workers)."""

from __future__ import annotations

import base64
import json
import random
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
