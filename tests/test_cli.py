"""`python -m bot generate`, run as a real process against the RunPod double."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot import engine
from bot.__main__ import main
from bot.engine import JobUpdate, Progress
from bot.generate import _ProgressLine
from bot.runpod import JobState
from doubles import outputs
from doubles.outputs import make_png, pixels
from doubles.runpod import Script
from tests.conftest import API_KEY, ENDPOINT

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


async def start_generate(
    tmp_path, *args: str, env: dict[str, str] | None = None, runpod=None, outdir: bool = True
) -> asyncio.subprocess.Process:
    """`python -m bot generate` as a process in `tmp_path`, saving to `tmp_path/out` (the default, spelled out
    unless `outdir` is False)."""
    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    if runpod is not None:
        environment |= {"RUNPOD_API_KEY": API_KEY, "RUNPOD_ENDPOINT_ID": ENDPOINT, "RUNPOD_API_URL": runpod.api_url}
    environment |= env or {}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "generate",
        *(("--outdir", str(tmp_path / "out")) if outdir else ()),
        *args,
        cwd=tmp_path,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def generate(
    tmp_path, *args: str, env: dict[str, str] | None = None, runpod=None, outdir: bool = True
) -> Finished:
    process = await start_generate(tmp_path, *args, env=env, runpod=runpod, outdir=outdir)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return Finished(process.returncode, stdout.decode(), stderr.decode())


async def interrupt_when(process: asyncio.subprocess.Process, said: str) -> Finished:
    """Ctrl-C the process once its stderr has a line containing `said`; what it wrote, all told."""
    assert process.stderr is not None and process.stdout is not None
    lines = []
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        assert line, "".join(lines)
        lines.append(line)
        if said in line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return Finished(process.returncode, stdout.decode(), "".join(lines) + stderr.decode())


async def test_generate_saves_the_workers_picture_as_job_id_png(tmp_path, runpod):
    png = make_png(64, 48, seed=11)
    runpod.script_next(Script(queue_s=0.2, run_s=1.8, progress=[(0.0, "2/4")], output=outputs.sdxl(png)))
    finished = await generate(tmp_path, "--prompt", "a lighthouse --ar 16:9", "--seed", "7", runpod=runpod)
    assert finished.code == 0, finished.stderr
    (job_id,) = runpod.jobs
    saved = tmp_path / "out" / f"{job_id}.png"
    assert finished.stdout.strip() == str(saved)
    assert pixels(saved.read_bytes()) == pixels(png)
    assert runpod.jobs[job_id].input | {} == {
        "prompt": "a lighthouse",
        "width": 1344,
        "height": 768,
        "seed": 7,
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "num_images": 1,
    }
    assert f"job {job_id} submitted (seed 7)" in finished.stderr
    assert "in queue" in finished.stderr
    assert "running on worker 462u6mrq9s28h6 [##########..........] 2/4" in finished.stderr
    assert API_KEY not in finished.stderr + finished.stdout


async def test_several_images_are_numbered(tmp_path, runpod):
    pngs = [make_png(seed=n) for n in (1, 2)]
    runpod.script_next(Script(output=outputs.a1111(*pngs)))
    finished = await generate(tmp_path, "--prompt", "two cats", "--count", "2", "--worker", "a1111", runpod=runpod)
    assert finished.code == 0, finished.stderr
    (job_id,) = runpod.jobs
    assert [(tmp_path / "out" / f"{job_id}-{n}.png").read_bytes() for n in (1, 2)] == pngs
    assert runpod.jobs[job_id].input["batch_size"] == 2


async def test_four_pictures_on_sdxl_run_as_two_jobs_as_imagine_does_and_all_four_are_saved(tmp_path, runpod):
    """worker-sdxl makes at most 2 pictures a job: `--count 4` sends two, the second's seed after the first's
    pictures, and saves every picture, without `--outdir` in ./out/, made for them."""
    pngs = [make_png(seed=n) for n in range(4)]
    runpod.script_next(
        Script(run_s=0.3, output=outputs.sdxl(*pngs[:2])), Script(run_s=0.6, output=outputs.sdxl(*pngs[2:]))
    )
    finished = await generate(
        tmp_path, "--prompt", "four owls", "--seed", "7", "--count", "4", runpod=runpod, outdir=False
    )
    assert finished.code == 0, finished.stderr
    first, second = runpod.jobs
    assert [(job.input["num_images"], job.input["seed"]) for job in runpod.jobs.values()] == [(2, 7), (2, 9)]
    saved = [tmp_path / "out" / f"{job_id}-{n}.png" for job_id in (first, second) for n in (1, 2)]
    assert finished.stdout.split() == [str(path.relative_to(tmp_path)) for path in saved]
    assert [path.read_bytes() for path in saved] == pngs
    assert f"job {first} submitted (seed 7; job 1 of 2, 2 pictures)" in finished.stderr
    assert f"job {second} submitted (seed 9; job 2 of 2, 2 pictures)" in finished.stderr


async def test_a_set_keeps_the_pictures_of_the_job_that_worked_when_the_other_fails(tmp_path, runpod):
    pngs = [make_png(seed=n) for n in range(3)]
    runpod.script_next(
        Script(outcome="FAILED", error=outputs.RUNPOD_PYTHON_ERROR), Script(run_s=0.3, output=outputs.sdxl(*pngs[:1]))
    )
    finished = await generate(tmp_path, "--prompt", "three owls", "--count", "3", runpod=runpod)
    assert finished.code == 1
    failed, worked = runpod.jobs
    assert finished.stdout.split() == [str(tmp_path / "out" / f"{worked}.png")]
    assert (tmp_path / "out" / f"{worked}.png").read_bytes() == pngs[0]
    lines = finished.stderr.strip().splitlines()
    assert f"job {failed}: The worker failed: CUDA out of memory" in finished.stderr
    assert lines[-1] == "error: 1 picture saved; 1 of 2 jobs gave none."


async def test_a_set_runpod_stops_taking_cancels_the_job_already_sent(tmp_path, runpod):
    runpod.script_next(Script(queue_s=60))
    runpod.set_rate_limit("run", 1, 600)  # the second /run keeps getting 429
    finished = await generate(tmp_path, "--prompt", "x", "--count", "4", runpod=runpod)
    (sent,) = runpod.jobs
    assert finished.code == 1
    assert [request.job_id for request in runpod.requests_for("cancel")] == [sent]
    lines = finished.stderr.strip().splitlines()
    assert lines[-2:] == [
        f"job {sent} cancelled on RunPod: the rest of the set could not be sent",
        "error: RunPod kept answering 429 (rate limited); try again in a minute.",
    ]


async def test_ctrl_c_names_every_unfinished_job_of_a_set_to_resume(tmp_path, runpod):
    runpod.script_next(Script(queue_s=60), Script(queue_s=60))
    process = await start_generate(tmp_path, "--prompt", "x", "--count", "4", runpod=runpod)
    finished = await interrupt_when(process, "in queue")
    first, second = runpod.jobs
    assert finished.code == 130
    assert finished.stderr.strip().splitlines()[-1] == (
        f"interrupted: jobs {first}, {second} keep running on RunPod; resume with --id {first} --id {second}"
    )
    assert "Traceback" not in finished.stderr


async def test_resume_with_id_polls_without_submitting(tmp_path, runpod, client):
    png = make_png(seed=4)
    runpod.script_next(Script(run_s=0.3, output=outputs.comfyui(png)))
    job = await client.run({"prompt": "x"})
    finished = await generate(tmp_path, "--id", job.id, runpod=runpod)
    assert finished.code == 0, finished.stderr
    assert (tmp_path / "out" / f"{job.id}.png").read_bytes() == png
    assert len(runpod.requests_for("run")) == 1


async def test_the_base_url_alias_of_the_original_script_works(tmp_path, runpod):
    runpod.script_next(Script(output=outputs.sd_v1(make_png())))
    env = {"RUNPOD_KEY": API_KEY, "RUNPOD_BASE_URL": f"{runpod.api_url}/{ENDPOINT}"}
    finished = await generate(tmp_path, "--prompt", "x", "--worker", "sd15", env=env)
    assert finished.code == 0, finished.stderr


async def test_comfyui_workflow_file(tmp_path, runpod):
    (tmp_path / "flow.json").write_text('{"6": {"inputs": {"text": "{{prompt}}", "seed": "{{seed}}"}}}')
    runpod.script_next(Script(output=outputs.comfyui(make_png())))
    finished = await generate(
        tmp_path, "--prompt", "a cat", "--seed", "3", "--worker", "comfyui", "--workflow", "flow.json", runpod=runpod
    )
    assert finished.code == 0, finished.stderr
    (job,) = runpod.jobs.values()
    assert job.input == {"workflow": {"6": {"inputs": {"text": "a cat", "seed": 3}}}}


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (
            Script(outcome="FAILED", error=outputs.RUNPOD_PYTHON_ERROR),
            (),
            "error: The worker failed: CUDA out of memory",
        ),
        (Script(outcome="CANCELLED"), (), "error: The job was cancelled on RunPod."),
        (Script(queue_s=60), ("--timeout", "0.5"), "error: No result after 0.5 s; it was cancelled on RunPod"),
        (Script(output=outputs.LOCAL_PATH_FALLBACK), (), "error: output.images[0] is 'simulated_uploaded/"),
    ],
    ids=["failed", "cancelled", "timeout", "broken-output"],
)
async def test_failures_end_with_one_clear_line_and_exit_1(tmp_path, runpod, script, args, message):
    runpod.script_next(script)
    finished = await generate(tmp_path, "--prompt", "x", *args, runpod=runpod)
    assert finished.code == 1
    assert finished.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in finished.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


async def test_bad_key_and_bad_input(tmp_path, runpod):
    finished = await generate(tmp_path, "--prompt", "x", runpod=runpod, env={"RUNPOD_API_KEY": "wrong"})
    assert (finished.code, finished.stderr.strip()) == (
        1,
        "error: RunPod refused the API key (401). Check that the key is valid and has access.",
    )
    finished = await generate(tmp_path, "--prompt", "x", "--count", "5", runpod=runpod)
    assert (finished.code, finished.stderr) == (1, "error: Count must be between 1 and 4.\n")
    assert runpod.requests_for("run") == [runpod.requests_for("run")[0]]  # only the bad-key attempt reached RunPod


async def test_missing_configuration_is_one_line_and_exit_2(tmp_path):
    finished = await generate(tmp_path, "--prompt", "x")
    assert finished.code == 2
    assert finished.stderr.strip() == "configuration error: RUNPOD_API_KEY is not set (RUNPOD_KEY is accepted too)"
    finished = await generate(tmp_path, "--prompt", "x", env={"LOG_LEVEL": "chatty"})
    assert finished.code == 2 and "LOG_LEVEL" in finished.stderr


async def test_unreachable_runpod_is_a_clear_error(tmp_path):
    env = {"RUNPOD_API_KEY": "k", "RUNPOD_ENDPOINT_ID": "e", "RUNPOD_API_URL": "http://127.0.0.1:9/v2"}
    finished = await generate(tmp_path, "--prompt", "x", env=env)
    assert finished.code == 1
    assert finished.stderr.strip() == "error: RunPod could not be reached (connection failed)."


async def test_timeout_against_a_runpod_that_stops_answering_is_kept(tmp_path, runpod):
    """Every /status (and /cancel) hangs: `--timeout 2` ends the wait at 2 s, a request in flight included,
    tries the cancel for a few seconds at most, and says the job may still run."""
    runpod.script_next(Script(queue_s=60))
    runpod.delay_next("status", 120, count=100)
    runpod.delay_next("cancel", 120, count=100)
    started = asyncio.get_running_loop().time()
    finished = await generate(tmp_path, "--prompt", "x", "--timeout", "2", runpod=runpod)
    took = asyncio.get_running_loop().time() - started
    assert finished.code == 1
    assert finished.stderr.strip().splitlines()[-1] == (
        "error: No result after 2 s; cancelling it on RunPod failed, so it may still run."
    )
    assert took < 2 + engine.CANCEL_PATIENCE + 3  # the process's own start and stop included


async def test_log_level_debug_shows_the_engine_but_never_the_key(tmp_path, runpod):
    runpod.script_next(Script(queue_s=0.5, run_s=2.5, output=outputs.sdxl(make_png())))
    finished = await generate(tmp_path, "--prompt", "x", runpod=runpod, env={"LOG_LEVEL": "DEBUG"})
    assert finished.code == 0
    assert "bot.engine: job" in finished.stdout + finished.stderr
    assert API_KEY not in finished.stdout + finished.stderr
    # One line per poll, as the README promises: what RunPod said and when the next poll comes.
    polls = len(runpod.requests_for("status"))
    assert polls >= 2
    assert finished.stderr.count("; next poll in ") == polls  # the answer to /run, then all but the last
    assert "worker ?" not in finished.stderr
    (ended,) = [line for line in finished.stderr.splitlines() if " ended COMPLETED" in line]
    assert re.search(r"ended COMPLETED \(queue \d+ ms, run \d+ ms\)$", ended), ended


HOSTILE_PROGRESS = "\x1b]0;pwned\x07step\x1b[2J 2/4\rEVIL \x1b]8;;http://evil\x07link\x1b]8;;\x07 \x9b2J"
HOSTILE_ERROR = json.dumps({"error_message": "CUDA \x1b[31mout of memory\x1b[0m\r\x1b[2Kall good\nsecond\x07 line"})


def assert_nothing_but_text(stderr: str) -> None:
    """What the operator's terminal received holds no escape sequence, bell, carriage return or C1 control."""
    for control in ("\x1b", "\x07", "\r", "\x9b"):
        assert control not in stderr, (control, stderr)
    assert "Traceback" not in stderr


async def test_a_hostile_workers_words_cannot_rewrite_the_terminal(tmp_path, runpod):
    runpod.script_next(
        Script(
            queue_s=0.2,
            run_s=1.8,
            progress=[(0.0, HOSTILE_PROGRESS)],
            worker_id="w\x1b[8mhidden\x1b[0m",
            outcome="FAILED",
            error=HOSTILE_ERROR,
        )
    )
    finished = await generate(tmp_path, "--prompt", "x", runpod=runpod)
    assert finished.code == 1
    assert_nothing_but_text(finished.stderr)
    running = [line for line in finished.stderr.splitlines() if line.startswith("running on worker")]
    assert running, finished.stderr
    assert "hidden" in running[0] and "step" in running[0] and "EVIL" in running[0] and "link" in running[0]
    last = finished.stderr.strip().splitlines()[-1]  # the error is still one line, in the worker's words
    assert last.startswith("error: The worker failed: CUDA ")
    assert "out of memory" in last and "all good" in last and "second" in last and last.endswith("line.")


async def test_runpods_own_refusal_text_cannot_rewrite_the_terminal(tmp_path, runpod):
    runpod.fail_next("run", 400, body=b"\x1b[2J\x1b]0;pwned\x07bad input\r\nsee the docs")
    finished = await generate(tmp_path, "--prompt", "x", runpod=runpod)
    assert finished.code == 1
    assert_nothing_but_text(finished.stderr)
    (line,) = finished.stderr.strip().splitlines()
    assert line.startswith("error: RunPod refused /run (400): ")
    assert "bad input" in line and "see the docs" in line


def test_on_a_terminal_only_the_progress_lines_own_rewriting_reaches_it():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    line = _ProgressLine(terminal)
    hostile = f"run\x1b]0;{HOSTILE_PROGRESS}"
    line.note(f"job {hostile} submitted")
    for fraction in (0.25, 0.5):
        line.show(JobUpdate(hostile, JobState.IN_PROGRESS, worker_id=hostile, progress=Progress(hostile, fraction)))
    line.done()
    written = terminal.getvalue()
    assert written.count("\r\x1b[2K") == 2  # the line is still rewritten in place, once per update
    assert_nothing_but_text(written.replace("\r\x1b[2K", ""))
    assert "running on worker run" in written and "step" in written and "EVIL" in written


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("²", "error: --seed needs a whole number from 0 to 4294967295, not '²'."),
        ("¹²", "error: --seed needs a whole number from 0 to 4294967295, not '¹²'."),
        ("4²", "error: --seed needs a whole number from 0 to 4294967295, not '4²'."),
        ("٣", "error: --seed needs a whole number from 0 to 4294967295, not '٣'."),
        ("𝟗", "error: --seed needs a whole number from 0 to 4294967295, not '𝟗'."),
        ("9" * 5000, f"error: --seed must be between 0 and 4294967295, not '{'9' * 39}…'."),
        ("4294967296", "error: --seed must be between 0 and 4294967295, not '4294967296'."),
    ],
    ids=["superscript", "superscripts", "digit-superscript", "arabic-indic", "math-bold", "5000-digits", "too-big"],
)
async def test_a_seed_flag_of_other_digits_is_one_clear_line_and_exit_1(tmp_path, runpod, seed, message):
    finished = await generate(tmp_path, "--prompt", f"a lighthouse --seed {seed} --ar 16:9", runpod=runpod)
    assert (finished.code, finished.stderr) == (1, f"{message}\n")  # one line, no traceback
    assert runpod.requests_for("run") == []  # refused before anything was paid for


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(capsys, timeout):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--prompt", "cat", "--timeout", timeout])
    assert exited.value.code == 2
    assert "--timeout: needs a positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize(("opening", "closing"), [(b"[", b"]"), (b'{"a": ', b"}")], ids=["lists", "objects"])
async def test_a_deeply_nested_answer_is_one_clear_line_and_exit_1(tmp_path, runpod, opening, closing):
    depth = 100_000
    nested = opening * depth + b"0" + closing * depth
    body = b'{"id": "job-1", "status": "COMPLETED", "output": {"images": ' + nested + b"}}"
    runpod.fail_next("status", 200, count=50, body=body, content_type="application/json")
    runpod.script_next(Script(queue_s=60))
    finished = await generate(tmp_path, "--prompt", "x", "--timeout", "10", runpod=runpod)
    assert finished.code == 1
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


async def test_a_hostile_job_id_cannot_rewrite_the_terminal_through_notes_or_logs(tmp_path, runpod):
    job_id = "job\x1b]0;pwned\x07\x1b[2J\r-1"
    runpod.fail_next("run", 200, body=json.dumps({"id": job_id, "status": "IN_QUEUE"}).encode())
    finished = await generate(tmp_path, "--prompt", "x", runpod=runpod)  # then /status of that id: 404
    assert finished.code == 1
    assert_nothing_but_text(finished.stderr)
    assert "INFO    bot.engine: job job" in finished.stderr  # the log line, made printable too
    assert "submitted (seed" in finished.stderr and "pwned" in finished.stderr


def test_help_speaks_of_pictures_and_the_default_folder(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--count COUNT how many pictures (1-4; as with /imagine, several jobs" in shown
    assert "(default: out/)" in shown
    assert "images in one job" not in shown
