"""`python -m benchmarks.cadence`: the engine's own cadence on a virtual clock, and what it says about it."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.cadence import main, simulate
from benchmarks.workload import make_workload
from bot.polling import PollPolicy

RTT, HANDLE = 0.01, 0.02


def test_a_learned_endpoint_costs_fewer_polls_and_finds_finishes_within_the_near_interval() -> None:
    workload, policy = make_workload(300, seed=6), PollPolicy()
    learned = simulate(policy, workload, rtt=RTT, handle=HANDLE)
    blind = simulate(policy, workload, learned=False, rtt=RTT, handle=HANDLE)
    assert learned.n == blind.n == 300
    assert learned.status_per_job < 0.7 * blind.status_per_job
    assert learned.lag_p99 <= policy.near + RTT + HANDLE + 0.01


def test_dense_polling_for_every_run_buys_lag_with_requests() -> None:
    workload, policy = make_workload(300, seed=6), PollPolicy()
    default = simulate(policy, workload, rtt=RTT, handle=HANDLE)
    everywhere = simulate(replace(policy, dense_share=1.0), workload, rtt=RTT, handle=HANDLE)
    assert everywhere.lag_p50 <= policy.dense + RTT + HANDLE
    assert everywhere.lag_p50 < default.lag_p50
    assert everywhere.status_per_job > default.status_per_job


def test_the_command_prints_one_row_per_n(capsys) -> None:
    results = main(["--jobs", "40", "80", "--history", "8"])
    assert [result.n for result in results] == [40, 80]
    printed = capsys.readouterr().out
    assert "| 40 |" in printed and "| 80 |" in printed
