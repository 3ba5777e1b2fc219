"""A smoke run of the polling benchmark (`--quick`, our client only): it runs and reports every field.

The peers (runpod, requests) are in the `bench` extra, not in the test environment; nothing here is timed.
"""

from __future__ import annotations

import json

from benchmarks import polling


def test_a_quick_run_reports_every_field(tmp_path, capsys):
    raw = tmp_path / "results.json"
    report = polling.main(["--quick", "--clients", "ours", "--json", str(raw)])

    (ours,) = report.rounds["20"]
    assert ours.client == "ours" and ours.n == 20 and ours.ok == 20 and not ours.errors
    for value in (ours.lag_p50, ours.lag_p99, ours.lag_max, ours.seen_p50, ours.handled_p50):
        assert value is not None and value >= 0
    assert ours.lag_p50 <= ours.lag_p99 <= ours.lag_max
    assert ours.status_per_job >= 1
    assert 1 <= ours.peak_status_per_window <= 2000
    assert ours.cpu_ms_per_job > 0 and ours.decode_ms_per_job > 0
    assert ours.peak_rss_mb > 0

    (burst,) = report.burst
    assert burst.client == "ours" and burst.n == 20 and burst.lost == 0
    assert burst.rejected > 0  # the burst was felt...
    assert burst.recovery_max is not None  # ...and every job in flight polled successfully again
    assert burst.peak_100ms_after >= 1

    printed = capsys.readouterr().out
    assert "| ours | 20/20 |" in printed and "## 429 burst" in printed and "## Targets (ours)" in printed
    saved = json.loads(raw.read_text())
    assert set(saved) >= {"date", "machine", "rounds", "burst", "settings"}
    assert saved["machine"]["cpus"] and saved["machine"]["python"]


def test_the_push_client_follows_every_job_on_its_webhooks(tmp_path):
    """The bot's path with PUBLIC_URL: each job's webhook reaches the client's own server and wakes its follower,
    so a job costs about one /status (its wake-up), where polling alone asks several times."""
    report = polling.main(["--quick", "--clients", "push", "--burst", "0", "--cold", "0"])
    (push,) = report.rounds["20"]
    assert push.client == "push" and push.ok == push.n == 20 and not push.errors
    assert push.woken == 20  # every job's webhook reached a follower
    assert 1 <= push.status_per_job <= 3
