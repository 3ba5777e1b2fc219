"""The clients ours is measured against (the `bench` extra installs them: `pip install -e ".[bench]"`).

- `official`: runpod-python's async client, as its README uses it: `AsyncioEndpoint.run`, then
  `AsyncioJob.output(timeout)`, which polls /status every second and fetches the result once more at the end.
- `original`: the original script's approach: one thread per job, a blocking `requests` loop sleeping
  `min(1, delayTime/1000 + 0.5)` s between polls.

Both end holding the bytes they would upload, checked as ours checks them (`decode_first`): base64-decoded
as their users' scripts do it (the standard library), then opened by Pillow and verified (header and every
chunk's CRC; a PNG is posted as sent, so nobody inflates its pixels). Neither is given any error handling of
its own: a job whose client raises is reported as lost, with the error.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import importlib.util
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from PIL import Image

from benchmarks.client import Rows, job_specs, sleep_until, until_deadline
from benchmarks.workload import JobSpec, prompt_for

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def decode_first(output: Any) -> tuple[int, int]:
    """The first picture of any of the benchmark's output shapes, checked by Pillow like ours."""
    first = output["images"][0]
    if isinstance(first, dict):
        first = first.get("data") or first.get("image")
    if first.startswith("data:"):
        first = first.partition(",")[2]
    with Image.open(BytesIO(base64.b64decode(first))) as image:
        image.verify()
        return image.size


def run_official(config: dict[str, Any], rows: Rows) -> None:
    import runpod  # type: ignore[import-untyped, import-not-found]  # only this process pays for importing it
    from runpod.http_client import AsyncClientSession  # type: ignore[import-untyped, import-not-found]

    runpod.api_key = config["api_key"]
    runpod.endpoint_url_base = config["api_url"]  # read by AsyncioEndpoint and AsyncioJob when made

    async def main() -> None:
        async with AsyncClientSession() as session:
            endpoints = {name: runpod.AsyncioEndpoint(name, session) for name in set(config["endpoints"])}

            async def one(spec: JobSpec) -> None:
                await sleep_until(config["t0"] + spec.arrival_s)
                row = rows[spec.index]
                try:
                    job = await endpoints[config["endpoints"][spec.endpoint]].run({"prompt": prompt_for(spec.index)})
                    row[1] = job.job_id
                    output = await job.output(timeout=config["timeout"])
                    if await job.status() != "COMPLETED":
                        row[3] = f"ended {await job.status()}"
                        return
                    await asyncio.to_thread(decode_first, output)
                    row[2:] = [time.monotonic(), None]
                except Exception as error:  # whatever it raises loses the job
                    row[3] = f"{type(error).__name__}: {error}"[:200]

            await until_deadline(config, [asyncio.create_task(one(spec)) for spec in job_specs(config)])

    asyncio.run(main())


def run_original(config: dict[str, Any], rows: Rows) -> None:
    import requests  # type: ignore[import-untyped, import-not-found]

    headers = {"Authorization": f"Bearer {config['api_key']}"}

    def one(spec: JobSpec) -> None:
        time.sleep(max(0.0, config["t0"] + spec.arrival_s - time.monotonic()))
        base, row = f"{config['api_url']}/{config['endpoints'][spec.endpoint]}", rows[spec.index]
        try:
            answer = requests.post(
                f"{base}/run", json={"input": {"prompt": prompt_for(spec.index)}}, headers=headers, timeout=30
            )
            job_id = row[1] = answer.json()["id"]
            while True:
                data = requests.get(f"{base}/status/{job_id}", headers=headers, timeout=30).json()
                if data["status"] in FINAL:
                    break
                time.sleep(min(1, data.get("delayTime", 0) / 1000 + 0.5))
            if data["status"] != "COMPLETED":
                row[3] = f"ended {data['status']}"
                return
            decode_first(data["output"])
            row[2:] = [time.monotonic(), None]
        except Exception as error:
            row[3] = f"{type(error).__name__}: {error}"[:200]

    threads = [threading.Thread(target=one, args=(spec,), daemon=True) for spec in job_specs(config)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, config["deadline"] - time.monotonic()))


RUNNERS: dict[str, Callable[[dict[str, Any], Rows], None]] = {"official": run_official, "original": run_original}
MODULES = {"official": "runpod", "original": "requests"}


def prepare(name: str) -> None:
    """Import the peer's package before the round starts, so its import is not counted."""
    importlib.import_module(MODULES[name])


def available(name: str) -> bool:
    return importlib.util.find_spec(MODULES[name]) is not None
