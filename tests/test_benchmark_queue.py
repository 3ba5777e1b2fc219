"""`python -m benchmarks.queue`: both queues give every waiting job its true place, and the table says so."""

from __future__ import annotations

from benchmarks.queue import UncachedQueue, main, one_second_of_questions
from bot.policy import FairQueue


async def test_both_queues_answer_every_place_once() -> None:
    for queue in (FairQueue(), UncachedQueue()):
        waiting, spent = one_second_of_questions(queue, 20)  # asserts places 1..waiting, each once
        assert waiting == 59 and spent >= 0


def test_the_command_prints_a_row_per_queue_length(capsys) -> None:
    main(["--members", "5", "20"])
    printed = capsys.readouterr().out
    assert "| 14 |" in printed and "| 59 |" in printed
