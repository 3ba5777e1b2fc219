"""`python -m bot generate`: one job from a terminal, with live progress, saved as PNG files."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import sys
import time
from pathlib import Path
from typing import TextIO

import aiohttp

from bot.config import Settings
from bot.engine import LOCAL_MODE_NOTE, JobResult, JobUpdate, RunPodContext, follow_job, submit_job
from bot.errors import BotError
from bot.images import ImageFetcher
from bot.params import ASPECT_RATIOS, params_from_request
from bot.presets import PRESETS, parse_workflow
from bot.runpod import JobState
from bot.text import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="what to paint (Midjourney-style --ar/--seed/--no flags work inside it)")
    parser.add_argument("--id", dest="job_id", help="resume polling an existing job instead of submitting one")
    parser.add_argument("--timeout", type=_seconds, default=600.0, help="seconds before the job is cancelled (600)")
    parser.add_argument("--outdir", type=Path, default=Path(), help="where to save <job_id>.png (current directory)")
    parser.add_argument("--negative", help="what to keep out of the picture")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ar", "--aspect-ratio", dest="aspect_ratio", choices=ASPECT_RATIOS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--count", type=int, default=1, help="images in one job (1-4)")
    parser.add_argument("--worker", choices=tuple(PRESETS), help="worker preset (default RUNPOD_WORKER or sdxl)")
    parser.add_argument("--workflow", type=Path, help="ComfyUI workflow template (JSON with {{prompt}} etc.)")


async def generate(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stderr) -> list[Path]:
    """Submit (or resume) a job, show its progress on `out`, save its pictures; return their paths."""
    if not args.prompt and not args.job_id:
        raise BotError("Give --prompt to start a job, or --id to resume one.")
    api_key, endpoint_id = settings.require_runpod()
    display = _ProgressLine(out)
    async with aiohttp.ClientSession() as session, ImageFetcher(memory=settings.picture_memory) as fetcher:
        runpod = RunPodContext(session, fetcher, api_url=settings.runpod_api_url, local=settings.runpod_local)
        client = runpod.client(api_key, endpoint_id)
        if settings.runpod_local:
            display.note(LOCAL_MODE_NOTE.format(url=settings.runpod_api_url))
        job_id, submitted = args.job_id, None
        if job_id is None:
            preset = PRESETS[args.worker or settings.runpod_worker]
            workflow = parse_workflow(args.workflow.read_text()) if args.workflow else None
            params = params_from_request(
                args.prompt,
                negative_prompt=args.negative,
                aspect_ratio=args.aspect_ratio,
                seed=args.seed,
                steps=args.steps,
                guidance=args.guidance,
                count=args.count,
            ).with_seed()
            submitted = await submit_job(client, params, preset, workflow=workflow)
            job_id = submitted.id
            display.note(f"job {job_id} submitted (seed {params.seed})")
        try:
            async for event in follow_job(runpod, client, job_id, timeout=args.timeout, submitted=submitted):
                if isinstance(event, JobResult):
                    display.done()
                    return save_images(event, args.outdir)
                display.show(event)
        except asyncio.CancelledError:
            display.done()
            display.note(f"interrupted: job {job_id} keeps running on RunPod; resume with --id {job_id}")
            raise
        finally:
            display.done()
    raise AssertionError("follow_job ended without a result")  # pragma: no cover


def _seconds(value: str) -> float:
    """A --timeout: a positive, finite number of seconds ("nan" would otherwise mean never)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"needs a positive number of seconds, not {value!r}")
    return seconds


def save_images(result: JobResult, outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", result.job_id)
    several = len(result.images) > 1
    paths = []
    for number, image in enumerate(result.images, start=1):
        path = outdir / (f"{stem}-{number}.png" if several else f"{stem}.png")
        path.write_bytes(image.png)
        paths.append(path)
    return paths


class _ProgressLine:
    """One line rewritten in place on a terminal; one line per change when piped to a file.

    Whatever it shows may carry RunPod's or the worker's words (job and worker ids, progress text), so
    it is made `printable` first: only the line's own `\\r\\x1b[2K` ever reaches the terminal."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._started = time.monotonic()
        self._open = False

    def show(self, update: JobUpdate) -> None:
        elapsed = time.monotonic() - self._started
        if update.state is JobState.IN_QUEUE:
            text = f"in queue, {elapsed:.0f}s"
        else:
            text = f"running on worker {update.worker_id}" if update.worker_id else "running"
            if update.progress is not None:
                bar = ""
                if update.progress.fraction is not None:
                    filled = round(update.progress.fraction * 20)
                    bar = f" [{'#' * filled}{'.' * (20 - filled)}]"
                text += f"{bar} {update.progress.text}"
            text += f", {elapsed:.0f}s"
        if update.unanswered:
            text += " (RunPod is not answering; still trying)"
        text = printable(text)
        if self._tty:
            self._out.write(f"\r\x1b[2K{text}")
            self._open = True
        else:
            self._out.write(f"{text}\n")
        self._out.flush()

    def note(self, text: str) -> None:
        self.done()
        self._out.write(f"{printable(text)}\n")
        self._out.flush()

    def done(self) -> None:
        if self._open:
            self._out.write("\n")
            self._open = False
