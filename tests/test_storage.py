"""The database layer, on SQLite and on a real PostgreSQL server (TEST_DATABASE_URL, set by .ci/run)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from bot.admission import check_quota_now
from bot.errors import ConfigError
from bot.lifecycle import ENDINGS, MOVES, IllegalMove, LedgerState
from bot.policy import GuildPolicy, Refused, Usage, start_of_day, start_of_month
from bot.storage import GuildEndpoint, JobRecord, Storage, alembic_config, async_url

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()  # the newest migration


@pytest.fixture
async def storage(database_url):
    opened = await Storage.open(database_url)
    yield opened
    await opened.close()


def job(request_id: int = 1, **changes) -> JobRecord:
    values = {
        "request_id": request_id,
        "guild_id": 10,
        "channel_id": 20,
        "user_id": 30,
        "user_name": "Member",
        "params": {"prompt": "a lighthouse", "seed": 7, "count": 1},
        "endpoint_id": "ep",
        "worker": "sdxl",
        "key_source": "guild",
    }
    return JobRecord(**(values | changes))


# The shortest legal way to each state from a job just written (waiting), through the ledger's named moves.
async def move_to(storage: Storage, request_id: int, state: str, **values) -> JobRecord:
    record = await storage.job(request_id)
    target = LedgerState(state)
    if target is LedgerState.WAITING:
        return record
    record = await storage.submitting(record)
    if target is LedgerState.PENDING:
        return record
    record = await storage.sent(record, [f"{request_id}-u1"])
    if target in ENDINGS:
        return await storage.ended(record, target, values.get("notice", "it ended"))
    record = await storage.queued(record)
    if target is not LedgerState.QUEUED:
        record = await storage.running(record, delay_ms=values.get("delay_ms"))
    if target in (LedgerState.QUEUED, LedgerState.RUNNING):
        return record
    pictures = values.get("pictures", record.pictures)
    record = await storage.completed(
        record, pictures=pictures, delay_ms=values.get("delay_ms"), execution_ms=values.get("execution_ms")
    )
    if target is LedgerState.DELIVERED:
        return await storage.delivered(record)
    if target is LedgerState.UNDELIVERABLE:
        return await storage.undeliverable(record)
    return record


async def test_migrations_from_an_empty_database(storage):
    assert await storage.schema_revision() == HEAD
    async with storage.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
        columns = await connection.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("jobs")})
    assert {"jobs", "usage_days", "guild_endpoints", "guild_policies", "alembic_version"} <= tables
    assert {"delay_ms", "execution_ms", "pictures"} <= columns


async def test_migrations_upgrade_a_previous_schema_in_place(database_url):
    old = await Storage.open(database_url, migrate=False)
    await old.migrate("0001")
    assert await old.schema_revision() == "0001"
    now = datetime.now(UTC)
    async with old.engine.begin() as connection:  # rows written by the previous version of the bot
        await connection.execute(
            sa.text(
                "INSERT INTO jobs (request_id, runpod_job_id, guild_id, channel_id, user_id, user_name, params, "
                "endpoint_id, worker, key_source, state, created_at, updated_at) VALUES (5, 'old-job-u1', 10, 20, 30, "
                "'Member', :params, 'ep', 'sdxl', 'default', 'running', :now, :now)"
            ),
            {"params": '{"prompt": "from before"}', "now": now},
        )
        await connection.execute(
            sa.text(
                "INSERT INTO guild_settings (guild_id, endpoint_id, api_key_encrypted, worker, updated_at) "
                "VALUES (10, 'ep-old', 'gAAAA-old', 'sdxl', :now)"
            ),
            {"now": now},
        )
    await old.close()

    upgraded = await Storage.open(database_url)
    try:
        assert await upgraded.schema_revision() == HEAD
        (record,) = await upgraded.undelivered_jobs()
        assert (record.runpod_job_id, record.params, record.state) == (
            "old-job-u1",
            {"prompt": "from before"},
            "running",
        )
        assert (record.delay_ms, record.pictures) == (None, 1)  # no count in its params: one picture
        # The quota counters start from the jobs the previous version wrote, then follow every change.
        today, month = start_of_day(now), start_of_month(now)
        assert await upgraded.usage(10, 30, today, month) == Usage(1, 1, 1, 0.0, 0.0)
        await upgraded.completed(record, pictures=1, delay_ms=1500, execution_ms=4200)
        assert (await upgraded.job(5)).execution_ms == 4200
        assert await upgraded.usage(10, 30, today, month) == Usage(1, 1, 1, 4.2, 4.2)
        (model,) = await upgraded.guild_endpoints(10)  # the guild's one endpoint became its "default" model
        assert (model.name, model.endpoint_id, model.api_key_encrypted) == ("default", "ep-old", "gAAAA-old")
    finally:
        await upgraded.close()


async def test_a_replayed_interaction_is_recorded_once(storage):
    assert await storage.record_job(job(1))
    assert not await storage.record_job(job(1, params={"prompt": "double click"}))
    assert (await storage.job(1)).params["prompt"] == "a lighthouse"


async def test_transitions_and_exactly_once_delivery(storage):
    await storage.record_job(job(1, state="waiting", message_id=99))
    await storage.record_job(job(2, state="waiting"))
    sent = await storage.sent(await storage.submitting(await storage.job(1)), ["abc-u1", "abc-u2"])
    queued = await storage.queued(sent)
    assert queued == await storage.job_by_runpod_id("abc-u1")  # what the move returned is what the row says
    assert (queued.state, queued.message_id, queued.runpod_job_ids) == ("queued", 99, ("abc-u1", "abc-u2"))
    assert [r.request_id for r in await storage.undelivered_jobs()] == [1, 2]
    completed = await storage.completed(queued, pictures=1, delay_ms=None, execution_ms=3000)
    delivered = await storage.delivered(completed)
    assert (delivered.state, delivered.delivered_at is not None) == ("delivered", True)
    with pytest.raises(IllegalMove):  # a second run of the bot finds it done
        await storage.delivered(completed)
    assert [r.request_id for r in await storage.undelivered_jobs()] == [2]


async def test_a_final_state_is_final_and_the_row_not_the_callers_copy_decides(storage):
    """COMPLETED may become DELIVERED or UNDELIVERABLE, never FAILED; a stale copy of the record that still says
    `running` cannot move the row past that either."""
    await storage.record_job(job(1, state="waiting"))
    running = await move_to(storage, 1, "running")
    completed = await storage.completed(running, pictures=1, delay_ms=10, execution_ms=2000)
    for stale in (running, completed):
        with pytest.raises(IllegalMove) as caught:
            await storage.ended(stale, LedgerState.FAILED, "Something went wrong")
        assert (caught.value.current, caught.value.wanted) == ("completed", "failed")
    record = await storage.job(1)
    assert (record.state, record.notice, record.execution_ms) == ("completed", None, 2000)
    for final in (LedgerState.DELIVERED, LedgerState.FAILED, LedgerState.UNDELIVERABLE):
        assert final.final and not MOVES[final]
    with pytest.raises(ValueError, match="not how a job ends"):
        await storage.ended(completed, LedgerState.DELIVERED, "")


async def test_every_move_outside_the_table_is_refused_and_changes_nothing(storage):
    """Each state reached through legal moves, then every state it may not move to tried: refused, row unchanged."""
    request_id = 0
    for state in LedgerState:
        for wanted in set(LedgerState) - MOVES[state] - {state}:
            request_id += 1
            await storage.record_job(job(request_id, state="waiting"))
            before = await move_to(storage, request_id, state, execution_ms=1000)
            usage = await storage.usage(10, 30, start_of_day(before.created_at), start_of_month(before.created_at))
            with pytest.raises(IllegalMove):
                await storage._move(before, wanted)
            assert await storage.job(request_id) == before
            assert (
                await storage.usage(10, 30, start_of_day(before.created_at), start_of_month(before.created_at)) == usage
            )


async def test_told_stamps_an_ended_job_once(storage):
    await storage.record_job(job(1, state="waiting"))
    failed = await move_to(storage, 1, "failed", notice="CUDA error")
    assert await storage.told(failed)
    assert not await storage.told(failed)  # an earlier run told it
    assert await storage.undelivered_jobs() == []


async def test_rows_the_code_cannot_read_are_skipped_with_one_warning_each(storage, caplog):
    """An unknown state (written by a newer version, then rolled back) and broken JSON cost their own row only."""
    for request_id in (1, 2, 3):
        await storage.record_job(job(request_id, state="waiting"))
    async with storage.engine.begin() as connection:
        await connection.execute(sa.text("UPDATE jobs SET state = 'zombie' WHERE request_id = 1"))
        if connection.dialect.name == "sqlite":  # PostgreSQL refuses broken JSON on write
            await connection.execute(sa.text("UPDATE jobs SET params = '{not json' WHERE request_id = 3"))
    for _ in range(3):
        readable = [record.request_id for record in await storage.undelivered_jobs()]
    unreadable = {1, 3} if storage.engine.dialect.name == "sqlite" else {1}
    assert set(readable) == {1, 2, 3} - unreadable
    assert set(storage.unreadable) == unreadable
    assert "'zombie' is not a valid LedgerState" in storage.unreadable[1]
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warnings) == len(unreadable)  # once each, however often the rows are read
    assert await storage.job(1) is None


async def test_recent_run_times_are_those_of_completed_jobs_oldest_first(storage):
    ledger = [("delivered", 900, 8100), ("failed", 100, 300), ("completed", None, 7600), ("running", 500, None)]
    for request_id, (state, delay_ms, execution_ms) in enumerate(ledger, start=1):
        await storage.record_job(job(request_id, endpoint_id=f"ep{request_id % 2}", state="waiting"))
        await move_to(storage, request_id, state, delay_ms=delay_ms, execution_ms=execution_ms)
    assert await storage.recent_run_times() == [(10, "ep1", 900, 8100), (10, "ep1", None, 7600)]
    assert await storage.recent_run_times(limit=1) == [(10, "ep1", None, 7600)]


async def test_times_come_back_aware_and_equal(storage):
    expires = datetime.now(UTC) + timedelta(minutes=15)
    await storage.record_job(job(1, token_expires_at=expires))
    record = await storage.job(1)
    assert record.token_expires_at == expires
    assert record.created_at.tzinfo is not None


async def test_guild_endpoints_are_saved_replaced_and_removed(storage):
    assert await storage.guild_endpoint(10) is None
    await storage.save_guild_endpoint(GuildEndpoint(10, "default", "ep1", "gAAAA-ciphertext", "sdxl", updated_by=1))
    await storage.save_guild_endpoint(GuildEndpoint(10, "default", "ep2", "gAAAA-other", "comfyui", "{}", 2))
    saved = await storage.guild_endpoint(10)
    assert (saved.endpoint_id, saved.worker, saved.workflow, saved.updated_by) == ("ep2", "comfyui", "{}", 2)
    assert "gAAAA-other" not in repr(saved)
    assert await storage.delete_guild_endpoint(10)
    assert not await storage.delete_guild_endpoint(10)
    assert await storage.guild_endpoint(10) is None


async def test_several_named_models_per_guild(storage):
    await storage.save_guild_endpoint(GuildEndpoint(10, "turbo", "ep-turbo", "k1", "sdxl"))
    await storage.save_guild_endpoint(GuildEndpoint(10, "default", "ep-main", "k2", "a1111"))
    await storage.save_guild_endpoint(GuildEndpoint(11, "default", "ep-other-guild", "k3", "sdxl"))
    assert [model.name for model in await storage.guild_endpoints(10)] == ["default", "turbo"]
    assert (await storage.guild_endpoint(10)).endpoint_id == "ep-main"
    assert (await storage.guild_endpoint(10, "turbo")).endpoint_id == "ep-turbo"
    assert await storage.guild_endpoint(10, "missing") is None
    assert await storage.delete_guild_endpoint(10, "turbo")
    assert [model.name for model in await storage.guild_endpoints(10)] == ["default"]


async def test_policies_and_usage_queries(storage):
    assert await storage.guild_policy(10) is None
    await storage.save_guild_policy(10, {"member_daily": 5, "banned_words": ["x"]})
    await storage.save_guild_policy(10, {"member_daily": 7})
    assert await storage.guild_policy(10) == {"member_daily": 7}
    old = datetime.now(UTC) - timedelta(days=40)
    await storage.record_job(job(1, created_at=old))
    await storage.record_job(job(2))
    await storage.record_job(job(3, guild_id=11))
    recent = await storage.guild_jobs_since(10, datetime.now(UTC) - timedelta(days=30))
    assert [record.request_id for record in recent] == [2]


def test_database_urls_as_operators_write_them(tmp_path):
    assert async_url("postgres://u:p@host:5432/db") == "postgresql+asyncpg://u:p@host:5432/db"
    assert async_url("postgresql://u:p@host/db?sslmode=require") == "postgresql+asyncpg://u:p@host/db?ssl=require"
    url = async_url(f"sqlite:///{tmp_path}/nested/dir/bot.db")
    assert url == f"sqlite+aiosqlite:///{tmp_path}/nested/dir/bot.db"
    assert (tmp_path / "nested" / "dir").is_dir()


async def test_an_unreachable_database_is_one_clear_line_without_the_password():
    with pytest.raises(ConfigError) as caught:
        await Storage.open("postgresql://bot:hunter2@127.0.0.1:9/nothing")
    message = str(caught.value)
    assert message.startswith("DATABASE_URL: cannot open the database (postgresql at 127.0.0.1)")
    assert "hunter2" not in message
    assert "\n" not in message


async def test_processes_starting_together_migrate_once(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("scale-out shares one PostgreSQL; a SQLite file belongs to one process")
    first, second = await asyncio.gather(Storage.open(database_url), Storage.open(database_url))
    try:
        assert await first.schema_revision() == await second.schema_revision() == HEAD
    finally:
        await first.close()
        await second.close()


async def test_usage_is_summed_by_the_database_counting_only_what_quotas_count(storage):
    now = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
    today, month = datetime(2026, 11, 22, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    ledger = [  # (member, created, state, run ms)
        (30, now, "delivered", 4000),  # counted today, mine
        (30, now, "failed", 9000),  # failures are free
        (31, now, "running", None),  # counted today, another member's, no GPU time yet
        (30, datetime(2026, 11, 3, tzinfo=UTC), "completed", 2500),  # this month, not today
        (30, datetime(2026, 10, 31, 23, 59, tzinfo=UTC), "delivered", 7000),  # last month
    ]
    for request_id, (member, created, state, execution_ms) in enumerate(ledger, start=1):
        await storage.record_job(job(request_id, user_id=member, created_at=created, state="waiting"))
        await move_to(storage, request_id, state, execution_ms=execution_ms)
    await storage.record_job(job(99, guild_id=11, created_at=now))  # another guild's
    usage = await storage.usage(10, 30, today, month)
    assert (usage.member_today, usage.guild_today, usage.guild_month) == (1, 2, 3)
    assert (usage.gpu_seconds_today, usage.gpu_seconds_month) == (4.0, 6.5)
    assert await storage.usage(12, 30, today, month) == Usage()  # nothing at all: zeros, not None


async def test_quota_counters_follow_every_change_and_match_a_rebuild(storage):
    """The counters `/imagine` reads are kept in the transaction of each change: a failure gives the picture
    back, GPU time arrives with completion, and a rebuild from the ledger finds the very same figures."""
    now = datetime.now(UTC)
    today, month = start_of_day(now), start_of_month(now)
    for request_id in (1, 2, 3):
        await storage.record_job(job(request_id, created_at=now, state="waiting"))
    assert await storage.usage(10, 30, today, month) == Usage(3, 3, 3, 0.0, 0.0)
    queued = await move_to(storage, 1, "queued")  # counted before and after: nothing changes
    assert await storage.usage(10, 30, today, month) == Usage(3, 3, 3, 0.0, 0.0)
    completed = await storage.completed(queued, pictures=1, delay_ms=None, execution_ms=2500)
    await move_to(storage, 2, "failed", notice="CUDA error")  # failures are free
    await move_to(storage, 3, "cancelled")
    assert await storage.usage(10, 30, today, month) == Usage(1, 1, 1, 2.5, 2.5)
    await storage.undeliverable(completed)  # paid for, so still counted
    await storage.record_job(job(4, created_at=now, user_id=31))  # another member: the guild's, not mine
    await storage.record_job(job(5, guild_id=None, created_at=now))  # no guild, no quota
    counted = await storage.usage(10, 30, today, month)
    assert counted == Usage(1, 2, 2, 2.5, 2.5)
    await storage.rebuild_usage()
    assert await storage.usage(10, 30, today, month) == counted


def test_a_job_counts_the_pictures_its_params_ask_for():
    assert job(1).pictures == 1
    assert job(1, params={"prompt": "x", "count": 3}).pictures == 3
    assert job(1, params={"prompt": "x"}).pictures == 1
    assert job(1, params={"prompt": "x", "count": "4"}).pictures == 1  # not the bot's own params: one picture
    assert job(1, params={"prompt": "x", "count": 3}, pictures=2).pictures == 2  # said outright, it stands


async def test_quotas_and_usage_count_pictures_not_jobs(storage):
    """A job asking for 4 pictures uses 4 of a quota; failing gives all 4 back; a rebuild agrees."""
    now = datetime.now(UTC)
    today, month = start_of_day(now), start_of_month(now)
    await storage.record_job(job(1, params={"prompt": "a set", "count": 4}, created_at=now, state="waiting"))
    await storage.record_job(job(2, params={"prompt": "a pair", "count": 2}, created_at=now, state="waiting"))
    await storage.record_job(job(3, params={"prompt": "theirs", "count": 3}, user_id=31, created_at=now))
    assert await storage.usage(10, 30, today, month) == Usage(6, 9, 9, 0.0, 0.0)
    running = await move_to(storage, 1, "running")
    await move_to(storage, 2, "failed")  # both of its pictures are given back
    assert await storage.usage(10, 30, today, month) == Usage(4, 7, 7, 0.0, 0.0)
    await storage.completed(running, pictures=3, delay_ms=None, execution_ms=8000)  # a set that arrived short
    assert await storage.usage(10, 30, today, month) == Usage(3, 6, 6, 8.0, 8.0)
    counted = await storage.usage(10, 30, today, month)
    await storage.rebuild_usage()
    assert await storage.usage(10, 30, today, month) == counted
    assert [(r.request_id, r.pictures) for r in await storage.guild_jobs_since(10, today)] == [(1, 3), (2, 2), (3, 3)]


async def test_migration_0005_counts_the_pictures_old_jobs_asked_for(database_url):
    """Jobs and counters written by the previous version (which counted jobs) are upgraded in place: each job
    gets the pictures its params asked for (1 where they say nothing usable), and the counters are summed
    afresh; a downgrade gives back the counts of jobs."""
    old = await Storage.open(database_url, migrate=False)
    await old.migrate("0004")
    now = datetime.now(UTC)
    ledger = [  # (request id, member, params as the old bot stored them, state)
        (1, 30, '{"prompt": "a set", "count": 4}', "completed"),
        (2, 30, '{"prompt": "a pair", "count": 2}', "running"),
        (3, 30, '{"prompt": "failed", "count": 3}', "failed"),
        (4, 30, '{"prompt": "before count existed"}', "completed"),
        (5, 31, '{"prompt": "odd", "count": "three"}', "completed"),
        (6, 31, '{"prompt": "absurd", "count": 100000000000}', "completed"),
        (7, 31, '{"prompt": "fraction", "count": 2.5}', "completed"),
        (8, 31, '{"prompt": "none", "count": 0}', "completed"),
    ]
    async with old.engine.begin() as connection:
        for request_id, member, params, state in ledger:
            await connection.execute(
                sa.text(
                    "INSERT INTO jobs (request_id, guild_id, channel_id, user_id, user_name, params, endpoint_id, "
                    "worker, key_source, state, execution_ms, created_at, updated_at) VALUES (:id, 10, 20, :member, "
                    "'Member', :params, 'ep', 'sdxl', 'guild', :state, 1000, :now, :now)"
                ),
                {"id": request_id, "member": member, "params": params, "state": state, "now": now},
            )
        # The counters as 0004's bot kept them: one per counted job.
        await connection.execute(
            sa.text(
                "INSERT INTO usage_days (guild_id, day, user_id, jobs, gpu_ms) VALUES "
                "(10, :day, 30, 3, 3000), (10, :day, 31, 4, 4000)"
            ),
            {"day": now.date()},
        )
    await old.close()

    upgraded = await Storage.open(database_url)
    try:
        assert await upgraded.schema_revision() == HEAD
        pictures = {r.request_id: r.pictures for r in await upgraded.guild_jobs_since(10, now - timedelta(days=1))}
        assert pictures == {1: 4, 2: 2, 3: 3, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}
        today, month = start_of_day(now), start_of_month(now)
        assert await upgraded.usage(10, 30, today, month) == Usage(7, 11, 11, 7.0, 7.0)

        def downgrade(connection: sa.Connection) -> None:
            command.downgrade(alembic_config(connection), "0004")

        async with upgraded.engine.begin() as connection:
            await connection.run_sync(downgrade)
            rows = await connection.execute(sa.text("SELECT user_id, jobs FROM usage_days ORDER BY user_id"))
            assert [tuple(row) for row in rows] == [(30, 3), (31, 4)]
        await upgraded.migrate()
        assert await upgraded.usage(10, 30, today, month) == Usage(7, 11, 11, 7.0, 7.0)
    finally:
        await upgraded.close()


async def test_a_quota_check_weighs_the_pictures_asked_for_against_what_is_left(storage):
    """The check `/imagine` makes before a job is written: a count-2 job leaves 3 of 5, so 4 more are refused
    with what is left, and 3 pass."""
    now = datetime.now(UTC)
    policy = GuildPolicy(member_daily=5)
    await storage.record_job(job(1, params={"prompt": "a pair", "count": 2}, created_at=now))
    with pytest.raises(Refused, match="You have 3 pictures left for today and you asked for 4"):
        await check_quota_now(storage, policy, 10, 30, now, pictures=4)
    await check_quota_now(storage, policy, 10, 30, now, pictures=3)
    await check_quota_now(storage, policy, 10, 31, now, pictures=4)  # another member's quota is whole
