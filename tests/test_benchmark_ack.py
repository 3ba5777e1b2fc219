"""`python -m benchmarks.ack --quick`, in-process: every interaction is answered in time, every member gets
their own picture exactly once, and the report's counts are the double's. No timing is asserted."""

from __future__ import annotations

from benchmarks.ack import benchmark, markdown, parse_args, summarise
from benchmarks.workload import prompt_for
from doubles.harness import png_for


async def test_quick_ack_benchmark_answers_every_interaction_and_delivers_each_picture_once() -> None:
    run = await benchmark(parse_args(["--quick"]))
    report, double = run.report, run.discord
    assert len(run.interactions) == len(report.acks) == 30
    assert len({interaction.payload["member"]["user"]["id"] for interaction in run.interactions}) == 30

    # Every interaction was answered once, and the double accepted the answer (not 404/10062: too late).
    for interaction in run.interactions:
        assert interaction.dispatched_at is not None
        callbacks = double.calls_for("callback", interaction.token)
        assert len(callbacks) == 1
        assert callbacks[0].status < 300
        assert callbacks[0].json["type"] == 5  # a deferral: the job's status follows as edits
        assert interaction.callback_type == 5

    # Every member's message ends showing their own picture, and no picture was posted twice.
    for index, interaction in enumerate(run.interactions):
        picture = png_for(prompt_for(index))
        message = double.original_message(interaction.token)
        assert message is not None
        assert [attachment.data for attachment in message.attachments] == [picture]
        carrying = [call for call in double.calls if call.status < 300 and any(f.data == picture for f in call.files)]
        assert len(carrying) == 1
        assert carrying[0].token == interaction.token

    # The ack splits where the bot's client received the interaction: it did so before answering it.
    assert all(ack.received_s is not None and ack.ack_s is not None for ack in report.acks)
    assert all(0 <= ack.received_s <= ack.ack_s for ack in report.acks)

    # The report counts what the double saw.
    summary = summarise(report)
    assert summary.in_time == summary.members == 30
    assert summary.late == summary.unanswered == 0
    assert len(summary.acks) == 30
    assert summary.delivered_once == summary.own_picture == 30
    assert summary.duplicates == summary.misplaced == 0
    assert report.requests["callback"] == 30
    assert sum(report.requests.values()) == len(double.calls)

    text = markdown(report)
    assert "| interactions acknowledged in time (callback accepted within 3 s) | 30/30 | 30/30 |" in text
    assert "| pictures delivered exactly once, each on its own member's message | 30/30 | 30/30 |" in text
    assert "python -m benchmarks.ack --quick" in text
    assert "| ack, gateway's part: dispatched -> the bot's client has it, s: p50 / p99 / max |" in text
