"""`python -m benchmarks.preflight --quick`, in-process: the quota check (the per-day counters), the month scan
and the old way give the same answers as what was written, on SQLite and (with TEST_DATABASE_URL) PostgreSQL,
whose tables it leaves alone; the counters still agree with the scan after jobs written through `Storage`.
No timing is asserted."""

from __future__ import annotations

import os

import sqlalchemy as sa

from benchmarks.preflight import benchmark, markdown, parse_args
from bot.storage import Storage
from tests.conftest import POSTGRES_URL


async def _schemas(url: str) -> set[str]:
    storage = await Storage.open(url, migrate=False)
    try:
        async with storage.engine.connect() as connection:
            rows = await connection.execute(sa.text("SELECT schema_name FROM information_schema.schemata"))
            return {str(row[0]) for row in rows}
    finally:
        await storage.close()


async def test_quick_preflight_benchmark_counters_scan_and_old_way_agree_with_the_ledger() -> None:
    args = parse_args(["--quick"])
    assert args.postgres == POSTGRES_URL  # PostgreSQL too when the test database is there

    report = await benchmark(args)

    assert [backend.name for backend in report.backends] == ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
    for backend in report.backends:
        assert len(backend.usage_s) == len(backend.usage_answers) == 20
        assert len(backend.scan_s) == len(backend.scan_answers) == 20
        assert len(backend.old_s) == len(backend.old_answers) == 2
        assert len(backend.wide_usage_s) == len(backend.wide_scan_s) == 3
        # The counters' sums are the scan's, the Python count's over the loaded rows, and what was written.
        assert backend.usage_answers == backend.scan_answers == backend.expected
        assert backend.old_answers == backend.expected[: len(backend.old_answers)]
        assert backend.agree
        first = backend.expected[0]
        assert first.guild_month > 0 and first.gpu_seconds_month > 0 and first.guild_today > 0
        assert backend.month_rows == 20_000 // 12
        assert 0 < backend.today_rows <= backend.month_rows
        assert backend.rebuild_s > 0
        assert 0 < backend.counter_month_rows <= 31 * 8 < backend.counter_rows <= 400 * 8  # days x eight members
        assert any("usage_days" in line for line in backend.plan)  # the check reads the counters...
        assert not any("jobs" in line.split() for line in backend.plan)  # ...and not the ledger
        assert any("ix_jobs_guild_created" in line for line in backend.scan_plan)  # the index the scan relies on
        # Five jobs written each way, three writes each; the counters kept by record_job/update_job match the scan.
        assert len(backend.write_s) == len(backend.plain_write_s) == 15
        assert backend.agree_after_writes

    if POSTGRES_URL:  # the benchmark's own schema is gone again; the tests' tables were never in it
        assert f"bench_preflight_{os.getpid()}" not in await _schemas(POSTGRES_URL)

    text = markdown(report)
    assert "| every answer the same: quota check, scan, old way, what was written | yes | yes |" in text
    assert "| quota check = month scan for every member after the 5 jobs | yes |" in text
    assert "python -m benchmarks.preflight --quick" in text
