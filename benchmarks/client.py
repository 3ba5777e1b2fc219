"""One client's share of a benchmark round, in its own process so that its CPU time and memory are its own.

`python -m benchmarks.client` reads a JSON config on stdin and prints one JSON report on stdout:
for each job when its picture was decoded (on the system-wide monotonic clock the double also uses),
the process's CPU time from the round's start to its end and the part of it spent decoding pictures
(so that the report can show the waiting cost apart from the decoding), and its peak RSS.
A client still busy at the config's `deadline` is stopped there and reports what it finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from benchmarks.workload import JobSpec, prompt_for

if TYPE_CHECKING:
    from bot.push import Wakeups, WebhookAddresses

JobRow = list[Any]  # [index, job id | None, decoded_at | None, error | None]
Rows = dict[int, JobRow]  # filled in as jobs go, so a stopped client still says what it did
UNFINISHED = "unfinished at the deadline"


def job_specs(config: dict[str, Any]) -> list[JobSpec]:
    return [JobSpec(**job) for job in config["jobs"]]


def new_rows(config: dict[str, Any]) -> Rows:
    return {job["index"]: [job["index"], None, None, UNFINISHED] for job in config["jobs"]}


async def until_deadline(config: dict[str, Any], jobs: list[asyncio.Task[None]]) -> None:
    """Wait for every job, or until the deadline; then stop the rest."""
    _, pending = await asyncio.wait(jobs, timeout=max(0.0, config["deadline"] - time.monotonic()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_ours(config: dict[str, Any], rows: Rows, *, push: bool = False) -> None:
    """The bot's own path: `submit_job`, then `follow_job`, all jobs sharing one `RunPodContext`. With `push`, as
    the bot runs with PUBLIC_URL: each job asks for a webhook at this process's own web server, which wakes its
    follower (`bot.push`), and polls stay sparse."""
    import aiohttp

    from bot.config import Secret
    from bot.engine import JobResult, RunPodContext, follow_job, submit_job
    from bot.errors import BotError
    from bot.images import ImageFetcher
    from bot.params import GenerationParams
    from bot.presets import PRESETS
    from bot.push import Wakeups

    key, endpoints = Secret(config["api_key"]), config["endpoints"]
    wakeups = Wakeups()
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        fetcher = await stack.enter_async_context(ImageFetcher())
        webhooks = await stack.enter_async_context(webhook_server(wakeups)) if push else None
        context = RunPodContext(session, fetcher, api_url=config["api_url"])

        # A bot that has run before knows its endpoints' run times (e.g. from its job ledger).
        for position, runs in enumerate(config.get("history") or []):
            stats = context.stats(endpoints[position])
            for run_s in runs:
                stats.record(run_s=run_s)

        async def one(spec: JobSpec) -> None:
            await sleep_until(config["t0"] + spec.arrival_s)
            client, row = context.client(key, endpoints[spec.endpoint]), rows[spec.index]
            wakeups.open(spec.index)
            try:
                params = GenerationParams(prompt_for(spec.index), seed=spec.index)
                webhook = webhooks.url(spec.index, 0) if webhooks else None
                submitted = await submit_job(client, params, PRESETS["sdxl"], webhook=webhook)
                row[1] = submitted.id
                wakeup = wakeups.line(spec.index, 0) if webhooks else None
                timeout = config["timeout"]
                async for event in follow_job(
                    context, client, row[1], timeout=timeout, submitted=submitted, wakeup=wakeup
                ):
                    if isinstance(event, JobResult):
                        row[2:] = [time.monotonic(), None]
                        return
                row[3] = "ended without a result"
            except BotError as error:
                row[3] = f"{type(error).__name__}: {error}"
            finally:
                wakeups.close(spec.index)

        await until_deadline(config, [asyncio.create_task(one(spec)) for spec in job_specs(config)])


@contextlib.asynccontextmanager
async def webhook_server(wakeups: Wakeups) -> AsyncIterator[WebhookAddresses]:
    """What the bot's web server does with a webhook (`bot.web`): a true address wakes its job's follower."""
    from aiohttp import web

    from bot.config import Secret
    from bot.push import WEBHOOK_PATH, WebhookAddresses

    async def webhook(request: web.Request) -> web.Response:
        call = addresses.check(request.path)
        if call is None or not wakeups.ring(call):
            raise web.HTTPNotFound()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH + "/{tail:.*}", webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        addresses = WebhookAddresses(f"http://127.0.0.1:{port}", [Secret("benchmark webhook secret, 32+ characters")])
        yield addresses
    finally:
        await runner.cleanup()


class DecodeMeter:
    """CPU time spent decoding pictures, measured where it happens (each decode runs whole in one thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.thread_time() - started

        return timed


def cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


Runner = Callable[[dict[str, Any], Rows], None]


def prepare(name: str, meter: DecodeMeter) -> Runner:
    """Import everything the client needs before the round starts (imports are not what is measured), and
    time its picture decoding: base64, then Pillow's check of the picture."""
    if name in ("ours", "push"):
        importlib.import_module("aiohttp")
        importlib.import_module("aiohttp.web")
        for module in ("config", "errors", "params", "presets", "push", "runpod"):
            importlib.import_module(f"bot.{module}")
        import bot.images as images

        images.find_images = meter.wrap(images.find_images)  # base64, on the pictures' thread
        images.read_header = meter.wrap(images.read_header)  # Pillow, likewise
        images.decode_image = meter.wrap(images.decode_image)
        return lambda config, rows: asyncio.run(run_ours(config, rows, push=name == "push"))
    from benchmarks import peers

    peers.prepare(name)
    peers.decode_first = meter.wrap(peers.decode_first)
    return peers.RUNNERS[name]


def peak_rss_kb(usage: resource.struct_rusage) -> int:
    """This process's own peak resident memory. `ru_maxrss` is not: Linux carries the parent's peak over the
    exec, so a client started after a big round would report the benchmark's own memory as its peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return usage.ru_maxrss


def main() -> None:
    config = json.load(sys.stdin)
    meter = DecodeMeter()
    runner = prepare(config["client"], meter)
    late = max(0.0, time.monotonic() - config["t0"])
    while (left := config["t0"] - time.monotonic()) > 0:
        time.sleep(min(0.05, left))
    rows = new_rows(config)
    before = resource.getrusage(resource.RUSAGE_SELF)
    runner(config, rows)
    after = resource.getrusage(resource.RUSAGE_SELF)
    stopped = any(row[3] == UNFINISHED for row in rows.values())
    report = {
        "client": config["client"],
        "jobs": [list(row) for row in rows.values()],
        "cpu_s": cpu_seconds(after) - cpu_seconds(before),
        "decode_cpu_s": meter.seconds,
        "maxrss_kb": peak_rss_kb(after),
        "late_s": late,
        "stopped": stopped,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    if stopped:
        os._exit(0)  # threads of a stopped client may still be blocked in its library


if __name__ == "__main__":
    main()
