"""The live status's estimates and place (`bot/status.py`): what a member reads must never contradict itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bot.engine import JobUpdate, Progress
from bot.polling import EndpointStats
from bot.runpod import JobState
from bot.status import StatusBoard

T0 = datetime(2026, 11, 29, 12, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def painting(fraction: float | None = None, delay_ms: int = 2000) -> JobUpdate:
    progress = Progress(f"{fraction}", fraction) if fraction is not None else None
    return JobUpdate("job-1", JobState.IN_PROGRESS, delay_ms=delay_ms, progress=progress)


def test_painting_since_is_when_the_worker_started_not_when_the_member_asked():
    board = StatusBoard(started=at(0), submitted_at=at(5))  # waited 5 s for a turn in the server's line
    board.saw(painting(delay_ms=3000), now=at(9))
    assert board.painting_since == at(8)  # sent at 5, 3 s in RunPod's queue


def test_expected_done_holds_still_between_the_worker_s_reports():
    stats = EndpointStats()
    board = StatusBoard(started=at(0), submitted_at=at(0))
    board.saw(painting(delay_ms=0), now=at(0))
    board.saw(painting(0.4, delay_ms=0), now=at(4))
    first = board.outlook(at(4), stats, 1).expected_done
    board.saw(painting(0.4, delay_ms=0), now=at(6))  # the same report, polled again later
    assert board.outlook(at(6), stats, 1).expected_done == first == at(10)


def test_before_the_worker_reports_enough_the_endpoint_s_usual_run_time_is_the_estimate():
    stats = EndpointStats()
    stats.record(run_s=12.0)
    board = StatusBoard(started=at(0), submitted_at=at(0))
    board.saw(painting(0.05, delay_ms=1000), now=at(2))
    assert board.outlook(at(2), stats, 1).expected_done == at(13)


def test_expected_start_counts_from_when_the_job_reached_runpod():
    stats = EndpointStats()
    stats.record(wait_s=30.0)
    board = StatusBoard(started=at(0), submitted_at=at(20))
    board.saw(JobUpdate("job-1", JobState.IN_QUEUE), now=at(21))
    assert board.outlook(at(21), stats, 1).expected_start == at(50)


def waiting(sent: float) -> StatusBoard:
    board = StatusBoard(started=at(0), submitted_at=at(sent))
    board.saw(JobUpdate(f"job-{sent}", JobState.IN_QUEUE), now=at(sent))
    return board


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["starts", "waits again", "arrives"])), max_size=30))
def test_the_place_only_ever_goes_down(events):
    """Whatever happens to the jobs around it (jobs ahead start, a set ahead waits again for its next part, new
    ones arrive behind), the place a member reads never grows."""
    me = waiting(10)
    others = [waiting(sent) for sent in (1, 2, 3, 4, 5)]
    me.move_up(others)
    places = [me.place]
    for index, event in events:
        if event == "arrives":
            others.append(waiting(20 + len(others)))
        elif event == "starts":
            others[index].saw(painting(), now=at(30))
        else:  # the next part of a set ahead: RunPod has it waiting again
            others[index].saw(JobUpdate(f"part-{index}", JobState.IN_QUEUE), now=at(31))
        me.move_up(others)
        places.append(me.place)
    assert places[0] == 6
    assert places == sorted(places, reverse=True)
