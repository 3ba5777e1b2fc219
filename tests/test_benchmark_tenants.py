"""`python -m benchmarks.tenants --quick`, in-process: in both phases every innocent member gets their own picture
exactly once, and the hostile server's work really happened (its jobs reached RunPod, its Upscale clicks and
`/runpod usage` were answered). No timing is asserted."""

from __future__ import annotations

from benchmarks.tenants import (
    HOSTILE_GUILD_ID,
    INNOCENT_GUILD_ID,
    QUICK,
    benchmark,
    innocent_prompt,
    markdown,
    parse_args,
    verdicts,
)
from doubles.harness import png_for


async def test_quick_tenants_benchmark_delivers_every_innocent_picture_once_beside_the_hostile_work() -> None:
    run = await benchmark(parse_args(["--quick"]))
    report, double, runpod = run.report, run.discord, run.runpod
    n = QUICK.innocent

    # Every innocent job, in both phases: answered in time, its own picture posted exactly once on its message.
    for phase in ("alone", "beside"):
        sent = run.innocent[phase]
        assert len(sent) == n
        assert {interaction.guild_id for interaction in sent} == {INNOCENT_GUILD_ID}
        for index, interaction in enumerate(sent):
            callbacks = double.calls_for("callback", interaction.token)
            assert len(callbacks) == 1 and callbacks[0].status < 300
            picture = png_for(innocent_prompt(phase, index))
            message = double.original_message(interaction.token)
            assert message is not None
            assert [attachment.data for attachment in message.attachments] == [picture]
            carrying = [c for c in double.calls if 0 < c.status < 300 and any(f.data == picture for f in c.files)]
            assert len(carrying) == 1 and carrying[0].token == interaction.token
        measured = getattr(report, phase)
        assert measured.delivered_once == n
        assert len(measured.acks) == len(measured.posted) == n

    # The hostile server's work reached RunPod and was answered.
    hostile = run.hostile
    assert {kind: len(sent) for kind, sent in hostile.items()} == {
        "set": QUICK.sets, "long": QUICK.long_jobs, "flood": QUICK.floods, "upscale": QUICK.upscales,
        "usage": QUICK.usage_asks,
    }  # fmt: skip
    assert all(i.guild_id == HOSTILE_GUILD_ID for sent in hostile.values() for i in sent)
    prompts = [str(job.input.get("prompt")) for job in runpod.jobs.values()]
    assert sum(p.startswith("hostile set") for p in prompts) == 2 * QUICK.sets  # count:4 on sdxl: 2 jobs of 2
    assert sum(p.startswith("hostile long") for p in prompts) == QUICK.long_jobs
    assert sum(p.startswith("hostile flood") for p in prompts) == QUICK.floods
    big = [job for job in runpod.jobs.values() if str(job.input.get("prompt")).startswith("hostile big")]
    assert sum("image_url" in job.input for job in big) == QUICK.upscales  # the result itself had none
    for kind in ("set", "long", "flood", "upscale"):
        for interaction in hostile[kind]:
            final = double.original_message(interaction.token)
            assert final is not None and final.embeds[0]["title"] == "✅ Done", kind
    for interaction in hostile["flood"]:
        assert len(double.original_message(interaction.token).attachments) == 10  # type: ignore[union-attr]
    for interaction in hostile["usage"]:
        (reply,) = double.calls_for("followup", interaction.token)
        assert reply.status < 300 and [f.filename for f in reply.files] == ["usage.png"]
    assert report.beside.hostile["usage answered"] == QUICK.usage_asks

    text = markdown(report)
    assert f"| innocent jobs delivered exactly once, own picture | {n}/{n} | {n}/{n} |" in text
    assert "python -m benchmarks.tenants --quick" in text
    assert verdicts(report).delivered
