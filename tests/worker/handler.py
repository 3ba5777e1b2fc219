"""A sample RunPod worker, run by RunPod's own worker SDK: `python tests/worker/handler.py --rp_serve_api`.

It answers like worker-sdxl (`images` as data URIs, `image_url`, `seed`) with a flat picture of the size
asked for, coloured by the seed, and reports its steps with `progress_update`. A prompt with the word
"fail" raises, as a worker running out of GPU memory would; one with "slow" takes a minute. An image job
fetches its picture to start from as the real workers do (`init_image` as the Stable Diffusion v1 worker, falling
back to text-to-image when the download fails; `image_url` as worker-sdxl, opened by Pillow whatever it is), a
"late" one only after a few seconds, and paints at that picture's size. The tests
(tests/test_real_worker.py) and the README's "Try it with a real worker" use it.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import requests
import runpod
from PIL import Image
from runpod.serverless.utils import rp_download

STEPS = 3
LATE_FETCH = 5.0  # seconds a "late" job waits before it fetches its picture: the test takes it away meanwhile


def colour(seed: int) -> tuple[int, int, int]:
    return seed % 256, (seed // 256) % 256, 200


def handler(job: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
    request = job["input"]
    words = str(request.get("prompt", "")).lower().split()
    if "fail" in words:
        raise RuntimeError("CUDA out of memory: tried to allocate 2.00 GiB")
    if "late" in words:  # the picture to start from is fetched a while after the job was sent
        time.sleep(LATE_FETCH)
    seed = int(request.get("seed", 0))
    size = int(request.get("width", 64)), int(request.get("height", 64))
    if "init_image" in request:  # as the Stable Diffusion v1 worker (docs/image-to-image.md): a download that
        (path,) = rp_download.download_files_from_urls(job["id"], [request["init_image"]])  # fails gives None,
        if path is not None:  # and then a text-to-image picture at width/height, said to nobody
            with Image.open(path) as start:
                size = _painted(start.size)
    elif "image_url" in request:  # as worker-sdxl: what the address answered, opened by Pillow
        with Image.open(io.BytesIO(requests.get(request["image_url"], timeout=10).content)) as start:
            size = _painted(start.size)
    for step in range(1, STEPS + 1):
        runpod.serverless.progress_update(job, f"{step}/{STEPS}")
        time.sleep(20.0 if "slow" in words else 0.05)
    picture = Image.new("RGB", size, colour(seed))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    if "init_image" in request:  # the Stable Diffusion v1 worker's output: a list of raw base64 and seeds
        return [{"image": encoded, "seed": seed + n} for n in range(int(request.get("num_outputs", 1)))]
    uri = "data:image/png;base64," + encoded
    count = int(request.get("num_images", 1))
    return {"images": [uri] * count, "image_url": uri, "seed": seed}


def _painted(start: tuple[int, int]) -> tuple[int, int]:
    """diffusers' img2img paints at the start picture's size, each side rounded down to a multiple of 8."""
    return start[0] - start[0] % 8, start[1] - start[1] % 8


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
