"""`python -m bot generate`, run as a real process against the RunPod double."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

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


async def generate(tmp_path, *args: str, env: dict[str, str] | None = None, runpod=None) -> Finished:
    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    if runpod is not None:
        environment |= {"RUNPOD_API_KEY": API_KEY, "RUNPOD_ENDPOINT_ID": ENDPOINT, "RUNPOD_API_URL": runpod.api_url}
    environment |= env or {}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "generate",
        "--outdir",
        str(tmp_path / "out"),
        *args,
        cwd=tmp_path,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return Finished(process.returncode, stdout.decode(), stderr.decode())


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
    finished = await generate(tmp_path, "--prompt", "x", "--count", "3", runpod=runpod)
    assert finished.code == 1
    assert "at most 2 images per job" in finished.stderr
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


async def test_log_level_debug_shows_the_engine_but_never_the_key(tmp_path, runpod):
    runpod.script_next(Script(output=outputs.sdxl(make_png())))
    finished = await generate(tmp_path, "--prompt", "x", runpod=runpod, env={"LOG_LEVEL": "DEBUG"})
    assert finished.code == 0
    assert "bot.engine: job" in finished.stdout + finished.stderr
    assert API_KEY not in finished.stdout + finished.stderr
