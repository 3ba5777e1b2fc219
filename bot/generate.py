"""`python -m bot generate`: a request from a terminal, run as the jobs its worker needs, with live progress, each
picture saved as a PNG file."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiohttp

from bot.config import Settings
from bot.engine import CANCEL_PATIENCE, LOCAL_MODE_NOTE, JobResult, JobUpdate, RunPodContext, follow_job, submit_job
from bot.errors import BotError
from bot.images import ImageFetcher
from bot.params import ASPECT_RATIOS, MAX_COUNT, params_from_request
from bot.presets import PRESETS, parse_workflow
from bot.runpod import JobState, JobStatus, RunPodClient
from bot.text import plural, printable

DEFAULT_OUTDIR = Path("out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="what to paint (Midjourney-style --ar/--seed/--no flags work inside it)")
    parser.add_argument(
        "--id",
        dest="job_ids",
        action="append",
        metavar="JOB_ID",
        help="resume following a job on RunPod instead of submitting one (repeat it for each job of a set)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        help="seconds to wait for the pictures; jobs unfinished then are cancelled (600)",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        default=DEFAULT_OUTDIR,
        help="where to save <job_id>.png, made if missing (default: out/)",
    )
    parser.add_argument("--negative", help="what to keep out of the picture")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ar", "--aspect-ratio", dest="aspect_ratio", choices=ASPECT_RATIOS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument(
        "--count",
        type=int,
        default=1,
        help=f"how many pictures (1-{MAX_COUNT}; as with /imagine, several jobs when the worker makes fewer at once)",
    )
    parser.add_argument("--worker", choices=tuple(PRESETS), help="worker preset (default RUNPOD_WORKER or sdxl)")
    parser.add_argument("--workflow", type=Path, help="ComfyUI workflow template (JSON with {{prompt}} etc.)")


async def generate(
    args: argparse.Namespace, settings: Settings, out: TextIO = sys.stderr, saved_to: TextIO = sys.stdout
) -> list[Path]:
    """Submit the jobs a request needs (or resume some), show their progress on `out`, save each job's pictures as
    it ends and name each file on `saved_to`; return their paths. A set the worker cannot make in one job runs as
    several (`WorkerPreset.parts`), as /imagine does; a job that fails costs only its own pictures."""
    if not args.prompt and not args.job_ids:
        raise BotError("Give --prompt to start a job, or --id to resume one.")
    if args.job_ids and settings.runpod_local:
        raise BotError(LOCAL_CANNOT_RESUME)
    api_key, endpoint_id = settings.require_runpod()
    display = _ProgressLine(out)
    async with aiohttp.ClientSession() as session, ImageFetcher(memory=settings.picture_memory) as fetcher:
        runpod = RunPodContext(session, fetcher, api_url=settings.runpod_api_url, local=settings.runpod_local)
        client = runpod.client(api_key, endpoint_id)
        if settings.runpod_local:
            display.note(LOCAL_MODE_NOTE.format(url=settings.runpod_api_url))
        run = _Run(display, timeout=args.timeout)
        run.jobs.extend((job_id, None) for job_id in args.job_ids or ())
        try:
            if not run.jobs:
                await _submit(args, settings, client, run)
            return await _follow(runpod, client, run, args.outdir, saved_to)
        except asyncio.CancelledError:
            display.done()
            unfinished = [job_id for job_id, _ in run.jobs if job_id not in run.ended]
            if unfinished and settings.runpod_local:  # it cannot be asked again: no --id to offer
                display.note(f"interrupted: {LOCAL_LEFT.format(jobs=_ids(unfinished))}")
            elif unfinished:
                resume = " ".join(f"--id {job_id}" for job_id in unfinished)
                keep = "keeps" if len(unfinished) == 1 else "keep"
                display.note(f"interrupted: {_ids(unfinished)} {keep} running on RunPod; resume with {resume}")
            raise
        finally:
            display.done()


# What the terminal says of RunPod's local test server (docs/runpod-api.md, Local test server): it runs a job inside
# the first status request that asks for it, then forgets the job, so nothing can ask for it again.
LOCAL_CANNOT_RESUME = (
    "RunPod's local test server cannot resume a job: it runs each job inside its first status request and then "
    "forgets it. --id works against hosted RunPod."
)
LOCAL_LEFT = "{jobs} may still run on RunPod's local test server, which can neither resume nor cancel a job"


@dataclass
class _Run:
    """The jobs of one `generate`, in order: RunPod's answer to `/run` while it stands for the first poll."""

    display: _ProgressLine
    timeout: float  # --timeout: each job's, counted from when it is followed (the jobs run side by side)
    jobs: list[tuple[str, JobStatus | None]] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)


def _ids(job_ids: list[str]) -> str:
    return f"job {job_ids[0]}" if len(job_ids) == 1 else f"jobs {', '.join(job_ids)}"


async def _submit(args: argparse.Namespace, settings: Settings, client: RunPodClient, run: _Run) -> None:
    """Send the request as the jobs its worker needs (`WorkerPreset.parts`), each with its own seed."""
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
    preset.refuse(params, workflow)
    parts = preset.parts(params)
    for number, part in enumerate(parts, start=1):
        try:
            submitted = await submit_job(client, part, preset, workflow=workflow)
        except BotError:
            await _cancel(client, [job_id for job_id, _ in run.jobs], run.display)  # no half set left billing
            raise
        run.jobs.append((submitted.id, submitted))
        of = f"; job {number} of {len(parts)}, {plural(part.count, 'picture')}" if len(parts) > 1 else ""
        run.display.note(f"job {submitted.id} submitted (seed {part.seed}{of})")


async def _cancel(client: RunPodClient, job_ids: list[str], display: _ProgressLine) -> None:
    """Cancel these jobs on RunPod, as far as it lets us within a few seconds, saying which still run."""
    for job_id in job_ids:
        try:
            await asyncio.wait_for(client.cancel(job_id), CANCEL_PATIENCE)
            display.note(f"job {job_id} cancelled on RunPod: the rest of the set could not be sent")
        except (BotError, TimeoutError) as error:
            display.note(f"job {job_id} could not be cancelled ({error or 'no answer'}); it may still run")


async def _follow(runpod: RunPodContext, client: RunPodClient, run: _Run, outdir: Path, saved_to: TextIO) -> list[Path]:
    """Follow the jobs side by side, as RunPod runs them, each within --timeout, saving each one's pictures as it
    ends. A job that fails ends only its own part; with several, each failure is a line of its own and the whole
    ends in one error that counts them."""
    several = len(run.jobs) > 1

    async def follow(number: int, job_id: str, submitted: JobStatus | None) -> list[Path] | BotError:
        label = f"job {number} of {len(run.jobs)}: " if several else ""
        try:
            async for event in follow_job(runpod, client, job_id, timeout=run.timeout, submitted=submitted):
                if isinstance(event, JobResult):
                    run.display.done()
                    run.ended.add(job_id)
                    paths = save_images(event, outdir)
                    for path in paths:
                        print(path, file=saved_to, flush=True)
                    return paths
                run.display.show(event, label)
        except BotError as error:
            run.ended.add(job_id)
            if several:
                run.display.note(f"job {job_id}: {error}")
            return error
        raise AssertionError("follow_job ended without a result")  # pragma: no cover

    ended = await asyncio.gather(*(follow(n, job_id, answer) for n, (job_id, answer) in enumerate(run.jobs, 1)))
    saved = [path for paths in ended if not isinstance(paths, BotError) for path in paths]
    failures = [error for error in ended if isinstance(error, BotError)]
    if failures and saved:
        raise BotError(f"{plural(len(saved), 'picture')} saved; {len(failures)} of {len(run.jobs)} jobs gave none.")
    if failures:
        raise failures[0]
    return saved


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

    def show(self, update: JobUpdate, label: str = "") -> None:
        """`label` says which job of a set the line is about ("job 2 of 2: "), when there are several."""
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
        text = printable(label + text)
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
