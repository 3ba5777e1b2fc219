"""`python -m benchmarks.discord --quick`, in-process: every picture arrives, and the report tells the truth."""

from __future__ import annotations

from benchmarks.discord import EDIT_ROUTES, benchmark, markdown, parse_args, summarise


async def test_quick_benchmark_delivers_every_picture_and_reports_what_discord_saw() -> None:
    run = await benchmark(parse_args(["--quick"]))
    (round_,) = run.rounds
    scenario, double = round_.scenario, round_.discord
    assert len(round_.interactions) == len(run.pngs) == 5

    # Every member sees their own job's picture, byte for byte what the worker made.
    for interaction, png in zip(round_.interactions, run.pngs, strict=True):
        message = double.original_message(interaction.token)
        assert message is not None
        assert [attachment.data for attachment in message.attachments] == [png]
        uploads = [call for call in double.calls if call.token == interaction.token and call.files]
        assert uploads
        assert uploads[-1].files[0].data == png
    assert all(job.delivered for job in scenario.jobs)

    # The report's counts are the double's.
    summary = summarise(scenario, edit_interval=1.5)
    tokens = {interaction.token for interaction in round_.interactions}
    for_jobs = [call for call in double.calls if call.token in tokens]
    edits = [call for call in for_jobs if call.route in EDIT_ROUTES]
    assert summary.requests == len(for_jobs)
    assert summary.uploads == sum(1 for call in edits if call.files)
    assert summary.status_edits == sum(1 for call in edits if not call.files)
    assert summary.other == len(for_jobs) - len(edits)
    assert summary.unattributed == len(double.calls) - len(for_jobs)
    assert summary.rate_limited == len(double.rate_limit_hits)
    assert sum(job.rate_limited for job in scenario.jobs) == sum(1 for call in for_jobs if call.status == 429)
    assert summary.delivered == 5
    assert len(summary.lags) == 5  # every upload was matched to its job's finish on RunPod

    text = markdown(run.report)
    assert "| jobs delivered (the worker's exact picture on the member's message) | 5/5 | 5/5 |" in text
    assert f"| 429s received | {len(double.rate_limit_hits)} | 0 |" in text
    assert "python -m benchmarks.discord --quick" in text
