"""`python -m benchmarks.preflight --quick`, in-process: the quota check's figures are the Python count's and
what was written, on SQLite and (with TEST_DATABASE_URL) PostgreSQL, whose tables it leaves alone. No timing
is asserted."""

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


async def test_quick_preflight_benchmark_counts_as_the_old_way_and_the_ledger_do() -> None:
    args = parse_args(["--quick"])
    assert args.postgres == POSTGRES_URL  # PostgreSQL too when the test database is there

    report = await benchmark(args)

    assert [backend.name for backend in report.backends] == ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
    for backend in report.backends:
        assert len(backend.usage_s) == len(backend.usage_answers) == 20
        assert len(backend.old_s) == len(backend.old_answers) == 2
        assert len(backend.wide_s) == 3
        # The database's sums are the Python count over the loaded rows, and what the ledger was written with.
        assert backend.usage_answers == backend.expected
        assert backend.old_answers == backend.expected[: len(backend.old_answers)]
        assert backend.agree
        assert backend.month_rows == 20_000 // 12
        assert 0 < backend.today_rows <= backend.month_rows
        first = backend.expected[0]
        assert first.guild_month > 0 and first.gpu_seconds_month > 0
        assert any("ix_jobs_guild_created" in line for line in backend.plan)  # the index the check relies on
        assert len(backend.counters_s) == len(backend.covering_s) == 20
        assert 0 < backend.counter_rows <= 400 * 8  # a year of days, eight members

    if POSTGRES_URL:  # the benchmark's own schema is gone again; the tests' tables were never in it
        assert f"bench_preflight_{os.getpid()}" not in await _schemas(POSTGRES_URL)

    text = markdown(report)
    assert "| every answer = what was written (quota check, old way, both experiments) | yes | yes |" in text
    assert "python -m benchmarks.preflight --quick" in text
