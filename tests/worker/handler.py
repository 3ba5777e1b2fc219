"""A sample RunPod worker, run by RunPod's own worker SDK: `python tests/worker/handler.py --rp_serve_api`.

It answers like worker-sdxl (`images` as data URIs, `image_url`, `seed`) with a flat picture of the size
asked for, coloured by the seed, and reports its steps with `progress_update`. A prompt with the word
"fail" raises, as a worker running out of GPU memory would; one with "slow" takes a minute. The tests
(tests/test_real_worker.py) and the README's "Try it with a real worker" use it.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import runpod
from PIL import Image

STEPS = 3


def colour(seed: int) -> tuple[int, int, int]:
    return seed % 256, (seed // 256) % 256, 200


def handler(job: dict[str, Any]) -> dict[str, Any]:
    request = job["input"]
    words = str(request.get("prompt", "")).lower().split()
    if "fail" in words:
        raise RuntimeError("CUDA out of memory: tried to allocate 2.00 GiB")
    seed = int(request.get("seed", 0))
    for step in range(1, STEPS + 1):
        runpod.serverless.progress_update(job, f"{step}/{STEPS}")
        time.sleep(20.0 if "slow" in words else 0.05)
    picture = Image.new("RGB", (int(request.get("width", 64)), int(request.get("height", 64))), colour(seed))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    count = int(request.get("num_images", 1))
    return {"images": [uri] * count, "image_url": uri, "seed": seed}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
