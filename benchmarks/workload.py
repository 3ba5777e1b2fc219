"""The benchmark's workload: which jobs arrive when, how long they queue and run, and what they return.

Everything is drawn from one seed, so every client gets exactly the same jobs.
"""

from __future__ import annotations

import base64
import math
import random
import re
from dataclasses import asdict, dataclass
from io import BytesIO
from typing import Any

from PIL import Image, ImageChops


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    typical_run_s: float  # the centre of its run times
    shape: str  # which worker's output shape it answers with: comfyui | sdxl | a1111


# Four endpoints around the 4-20 s the issue names, each with its own worker's output shape.
ENDPOINTS: tuple[EndpointSpec, ...] = (
    EndpointSpec("turbo", 4.0, "comfyui"),
    EndpointSpec("sdxl", 8.0, "sdxl"),
    EndpointSpec("a1111", 12.0, "a1111"),
    EndpointSpec("flux", 20.0, "comfyui"),
)


@dataclass(frozen=True)
class JobSpec:
    index: int
    endpoint: int  # index into ENDPOINTS
    arrival_s: float  # when the client submits it, after the run's start
    queue_s: float
    run_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    jobs: tuple[JobSpec, ...]
    history: dict[str, list[float]]  # past run times per endpoint name, for clients that learn
    spread: float
    cold_fraction: float


def queue_time(rng: random.Random, cold_fraction: float) -> float:
    """Most jobs find a warm worker within 2 s; the others wait 10-30 s for a cold start."""
    return rng.uniform(10.0, 30.0) if rng.random() < cold_fraction else rng.uniform(0.0, 2.0)


def run_time(rng: random.Random, endpoint: EndpointSpec, spread: float) -> float:
    """Log-normal around the endpoint's typical run: `spread` is sigma (0.1 is about ±10 %)."""
    return endpoint.typical_run_s * math.exp(rng.gauss(0.0, spread))


def make_workload(
    n: int,
    *,
    seed: int = 6,
    spread: float = 0.1,
    cold_fraction: float = 0.25,
    arrival_rate: float = 80.0,
    history: int = 32,
) -> Workload:
    """`n` jobs arriving at `arrival_rate` per second (under RunPod's 1000 /run per 10 s), spread over the
    endpoints, and `history` earlier run times per endpoint drawn from the same distributions."""
    rng = random.Random(seed)
    ramp = n / arrival_rate
    jobs = tuple(
        JobSpec(
            index=i,
            endpoint=i % len(ENDPOINTS),
            arrival_s=rng.uniform(0.0, ramp),
            queue_s=queue_time(rng, cold_fraction),
            run_s=run_time(rng, ENDPOINTS[i % len(ENDPOINTS)], spread),
        )
        for i in range(n)
    )
    past = random.Random(seed + 1)
    learned = {spec.name: [run_time(past, spec, spread) for _ in range(history)] for spec in ENDPOINTS}
    return Workload(jobs, learned, spread, cold_fraction)


# --- pictures -----------------------------------------------------------------------------------


def make_png(seed: int, size: int = 1024) -> bytes:
    """A photo-like PNG: smooth colour fields plus fine grain, so it compresses like a real render (1-2 MB)."""
    rng = random.Random(seed)
    base = Image.frombytes("RGB", (16, 16), rng.randbytes(16 * 16 * 3)).resize((size, size), Image.Resampling.BICUBIC)
    grain = Image.frombytes("L", (size, size), rng.randbytes(size * size).translate(bytes(i % 12 for i in range(256))))
    picture = ImageChops.add(base, Image.merge("RGB", (grain, grain, grain)))
    buffer = BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def worker_output(shape: str, png: bytes, seed: int = 42) -> dict[str, Any]:
    """What each worker returns for one picture (docs/runpod-api.md, Output shapes of image workers)."""
    b64 = base64.b64encode(png).decode()
    if shape == "sdxl":  # worker-sdxl repeats the first image as image_url
        uri = f"data:image/png;base64,{b64}"
        return {"image_url": uri, "images": [uri], "seed": seed}
    if shape == "a1111":
        return {"images": [b64], "parameters": {"prompt": "bench"}, "info": f'{{"all_seeds": [{seed}]}}'}
    return {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64", "data": b64}]}


_PROMPT = re.compile(r"bench job (\d+)")


def prompt_for(index: int) -> str:
    return f"bench job {index}"


def job_index(job_input: dict[str, Any]) -> int:
    """The double finds each job's script from the prompt every client sends."""
    match = _PROMPT.search(str(job_input.get("prompt", "")))
    if match is None:
        raise ValueError(f"not a benchmark job: {job_input!r}")
    return int(match.group(1))
