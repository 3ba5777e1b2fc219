"""The database: guild settings and the job ledger, on SQLite (default) or PostgreSQL.

SQLAlchemy Core smooths the dialects; Alembic migrations (bot/migrations) upgrade an existing database
in place at start-up. Secrets arrive here already encrypted (bot.crypto); nothing in the database is a
usable key or token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.config import normalise_database_url
from bot.errors import ConfigError
from bot.policy import Usage

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")

metadata = sa.MetaData()


class LedgerState(StrEnum):
    """Where a job is in its life, as the ledger records it (stored as these very strings)."""

    WAITING = "waiting"  # in the server's fair queue: nothing sent to RunPod, nothing paid
    PENDING = "pending"  # being sent: RunPod may or may not have it
    QUEUED = "queued"  # on RunPod, waiting for a worker
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"  # gone from RunPod before it was delivered
    UNDELIVERABLE = "undeliverable"  # finished and paid for, but could be posted nowhere (a final state)

    @property
    def counted(self) -> bool:
        """Whether it counts against quotas and in usage: failures and cancellations are free."""
        return self in _COUNTED


_COUNTED = frozenset(
    {
        LedgerState.WAITING,
        LedgerState.PENDING,
        LedgerState.QUEUED,
        LedgerState.RUNNING,
        LedgerState.COMPLETED,
        LedgerState.UNDELIVERABLE,
    }
)


class KeySource(StrEnum):
    """Whose RunPod key pays for a job."""

    GUILD = "guild"  # the guild's own, connected with /runpod setup
    DEFAULT = "default"  # the operator's RUNPOD_API_KEY


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend: SQLite would hand back naive ones."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


guild_endpoints = sa.Table(
    "guild_endpoints",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(32), primary_key=True),  # the model name members pick in /imagine
    sa.Column("endpoint_id", sa.String(128), nullable=False),
    sa.Column("api_key_encrypted", sa.Text, nullable=False),
    sa.Column("worker", sa.String(16), nullable=False),
    sa.Column("workflow", sa.Text),
    sa.Column("updated_by", sa.BigInteger),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

guild_policies = sa.Table(
    "guild_policies",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("request_id", sa.BigInteger, primary_key=True, autoincrement=False),  # the interaction id
    sa.Column("runpod_job_id", sa.String(128), unique=True),
    sa.Column("more_job_ids", sa.JSON),  # the other parts' RunPod job ids, when a request runs as several jobs
    sa.Column("guild_id", sa.BigInteger, index=True),
    sa.Column("channel_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("user_name", sa.String(100), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("endpoint_id", sa.String(128), nullable=False),
    sa.Column("worker", sa.String(16), nullable=False),
    sa.Column("key_source", sa.String(8), nullable=False),  # a KeySource
    sa.Column("model", sa.String(32)),  # the guild's model name, when it was the guild's key
    sa.Column("token_encrypted", sa.Text),
    sa.Column("token_expires_at", UTCDateTime()),
    sa.Column("message_id", sa.BigInteger),  # the interaction's reply
    sa.Column("channel_message_id", sa.BigInteger),  # the status continued in the channel
    sa.Column("state", sa.String(16), nullable=False),  # a LedgerState
    sa.Column("notice", sa.Text),
    sa.Column("delay_ms", sa.Integer),
    sa.Column("execution_ms", sa.Integer),
    # What quotas and usage count: the pictures the job asks for (its params' count), 1 for rows from before.
    sa.Column("pictures", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("delivered_at", UTCDateTime(), index=True),
    sa.Index("ix_jobs_guild_created", "guild_id", "created_at"),
)

# What counts against quotas (pictures and GPU time), per guild, day (of `created_at`, UTC) and member: kept in
# the same transaction as every change of a job's state or GPU time, so a quota check reads at most a month of
# days x members rows, however long the ledger (benchmarks/preflight.py).
usage_days = sa.Table(
    "usage_days",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("pictures", sa.Integer, nullable=False),
    sa.Column("gpu_ms", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class GuildEndpoint:
    guild_id: int
    name: str
    endpoint_id: str
    api_key_encrypted: str = dataclasses.field(repr=False)
    worker: str
    workflow: str | None = None
    updated_by: int | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class JobRecord:
    request_id: int
    channel_id: int
    user_id: int
    user_name: str
    params: dict[str, Any]
    endpoint_id: str
    worker: str
    key_source: KeySource
    model: str | None = None
    guild_id: int | None = None
    runpod_job_id: str | None = None
    more_job_ids: list[str] | None = None  # the other parts' (bot/jobs.py, `parts`)
    token_encrypted: str | None = dataclasses.field(default=None, repr=False)
    token_expires_at: datetime | None = None
    message_id: int | None = None
    channel_message_id: int | None = None
    state: LedgerState = LedgerState.PENDING
    notice: str | None = None
    delay_ms: int | None = None
    execution_ms: int | None = None
    # 0: as many as `params` asks for (filled in below), so the job runner need not say it twice.
    pictures: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    delivered_at: datetime | None = None

    @property
    def runpod_job_ids(self) -> tuple[str, ...]:
        """Every RunPod job this request was sent as, in order."""
        first = (self.runpod_job_id,) if self.runpod_job_id else ()
        return (*first, *(self.more_job_ids or ()))

    def __post_init__(self) -> None:
        if self.pictures < 1:
            object.__setattr__(self, "pictures", pictures_asked(self.params))


def pictures_asked(params: dict[str, Any]) -> int:
    """How many pictures a job's parameters ask for: its `count`, at least 1."""
    count = params.get("count", 1)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def async_url(url: str) -> str:
    """DATABASE_URL as the operator writes it (Heroku's postgres:// included) -> a SQLAlchemy async URL."""
    parsed = make_url(normalise_database_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(f"DATABASE_URL: cannot create the folder {folder} ({error.strerror})") from None
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        query = dict(parsed.query)
        if "sslmode" in query:  # libpq's name; asyncpg calls it ssl
            query["ssl"] = query.pop("sslmode")
        return parsed.set(drivername="postgresql+asyncpg", query=query).render_as_string(hide_password=False)
    raise ConfigError("DATABASE_URL must start with sqlite:///, postgres:// or postgresql://")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


P = ParamSpec("P")
R = TypeVar("R")


def _uninterruptible(
    method: Callable[Concatenate[Storage, P], Awaitable[R]],
) -> Callable[Concatenate[Storage, P], Awaitable[R]]:
    """A database operation that has begun always completes, even when its caller is cancelled.

    Shutdown cancels the tasks that follow jobs; a ledger write cut in half would lose a transition,
    and a connection abandoned mid-query keeps aiosqlite's worker thread (and the process) alive.
    """

    @functools.wraps(method)
    async def run_to_completion(self: Storage, *args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    return run_to_completion


def _patient(
    method: Callable[Concatenate[Storage, P], Awaitable[R]],
) -> Callable[Concatenate[Storage, P], Awaitable[R]]:
    """A ledger write that a locked or briefly unreachable database only delays: tried again with backoff
    for up to `Storage.write_patience` seconds, so a finished job's picture is not lost to a stall."""

    @functools.wraps(method)
    async def retrying(self: Storage, *args: P.args, **kwargs: P.kwargs) -> R:
        deadline = asyncio.get_running_loop().time() + self.write_patience
        pause = 0.25
        while True:
            try:
                return await method(self, *args, **kwargs)
            except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as error:
                if asyncio.get_running_loop().time() + pause > deadline:
                    raise
                reason = str(getattr(error, "orig", None) or error).splitlines()[0][:120]
                log.warning("%s: the database is not answering (%s); trying again", method.__name__, reason)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 4.0)

    return retrying


class Storage:
    write_patience = 60.0  # seconds a job's ledger write keeps trying through a locked or lost database

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._in_flight: set[asyncio.Future[Any]] = set()

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Storage:
        """Connect and bring the schema up to date; a database that cannot be reached is one clear line."""
        parsed = make_url(async_url(url))
        engine = create_async_engine(parsed, pool_pre_ping=True)
        storage = cls(engine)
        try:
            if migrate:
                await storage.migrate()
            else:
                async with engine.connect():
                    pass
        except (OSError, sa.exc.SQLAlchemyError) as error:
            await engine.dispose()
            reason = str(getattr(error, "orig", None) or error).splitlines()[0]
            if parsed.password:
                reason = reason.replace(parsed.password, "***")
            where = f"{parsed.get_backend_name()} at {parsed.host or parsed.database}"
            raise ConfigError(f"DATABASE_URL: cannot open the database ({where}): {reason[:200]}") from None
        return storage

    async def close(self) -> None:
        """Let every write that has begun finish (that is the ledger's flush), then close the pool."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=10)
        await self.engine.dispose()

    async def migrate(self, revision: str = "head") -> None:
        def upgrade(connection: Connection) -> None:
            command.upgrade(alembic_config(connection), revision)

        async with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Processes of a sharded bot start together: one migrates, the others wait, then see it done.
                await connection.execute(sa.text("SELECT pg_advisory_xact_lock(7316001)"))
            await connection.run_sync(upgrade)

    async def schema_revision(self) -> str | None:
        def current(connection: Connection) -> str | None:
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(connection).get_current_revision()

        async with self.engine.connect() as connection:
            return await connection.run_sync(current)

    # --- guild settings ----------------------------------------------------------------------------

    @_uninterruptible
    async def rewrite_keys(self, rewrite: Callable[[str], str]) -> int:
        """Re-encrypt every stored server key (key rotation); returns how many."""
        async with self.engine.begin() as connection:
            rows = (await connection.execute(sa.select(guild_endpoints))).all()
            for row in rows:
                await connection.execute(
                    sa.update(guild_endpoints)
                    .where(guild_endpoints.c.guild_id == row.guild_id, guild_endpoints.c.name == row.name)
                    .values(api_key_encrypted=rewrite(row.api_key_encrypted))
                )
        return len(rows)

    @_uninterruptible
    async def guild_endpoints(self, guild_id: int) -> list[GuildEndpoint]:
        """The guild's models, "default" first."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(guild_endpoints)
                .where(guild_endpoints.c.guild_id == guild_id)
                .order_by(guild_endpoints.c.name != "default", guild_endpoints.c.name)
            )
        return [GuildEndpoint(**row._mapping) for row in rows]

    async def guild_endpoint(self, guild_id: int, name: str | None = None) -> GuildEndpoint | None:
        """The named model, or without a name the guild's default (or its only/first one)."""
        endpoints = await self.guild_endpoints(guild_id)
        if name is None:
            return endpoints[0] if endpoints else None
        return next((endpoint for endpoint in endpoints if endpoint.name == name), None)

    @_uninterruptible
    async def save_guild_endpoint(self, endpoint: GuildEndpoint) -> None:
        values = dataclasses.asdict(endpoint) | {"updated_at": _now()}
        key = (guild_endpoints.c.guild_id == endpoint.guild_id) & (guild_endpoints.c.name == endpoint.name)
        async with self.engine.begin() as connection:
            deleted = await connection.execute(sa.delete(guild_endpoints).where(key))
            await connection.execute(sa.insert(guild_endpoints).values(**values))
        change = "replaced" if deleted.rowcount else "set"
        log.info("guild %s: model %s on endpoint %s %s", endpoint.guild_id, endpoint.name, endpoint.endpoint_id, change)

    @_uninterruptible
    async def delete_guild_endpoint(self, guild_id: int, name: str = "default") -> bool:
        key = (guild_endpoints.c.guild_id == guild_id) & (guild_endpoints.c.name == name)
        async with self.engine.begin() as connection:
            result = await connection.execute(sa.delete(guild_endpoints).where(key))
        return bool(result.rowcount)

    @_uninterruptible
    async def guild_policy(self, guild_id: int) -> dict[str, Any] | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(guild_policies.c.policy).where(guild_policies.c.guild_id == guild_id)
                )
            ).first()
        return row.policy if row else None

    @_uninterruptible
    async def save_guild_policy(self, guild_id: int, policy: dict[str, Any]) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(guild_policies).where(guild_policies.c.guild_id == guild_id))
            await connection.execute(
                sa.insert(guild_policies).values(guild_id=guild_id, policy=policy, updated_at=_now())
            )

    # --- job ledger --------------------------------------------------------------------------------

    @_uninterruptible
    @_patient
    async def record_job(self, record: JobRecord) -> bool:
        """Write a job before it is submitted. False when this interaction already has one (a replay)."""
        now = _now()
        values = dataclasses.asdict(record) | {"created_at": record.created_at or now, "updated_at": now}
        try:
            async with self.engine.begin() as connection:
                await connection.execute(sa.insert(jobs).values(**values))
                if record.guild_id is not None and LedgerState(record.state).counted:
                    day = values["created_at"].astimezone(UTC).date()
                    await _count(
                        connection, record.guild_id, day, record.user_id, record.pictures, record.execution_ms or 0
                    )
        except sa.exc.IntegrityError:
            return False
        return True

    @_uninterruptible
    @_patient
    async def update_job(self, request_id: int, **changes: Any) -> None:
        async with self.engine.begin() as connection:
            before = None
            if changes.keys() & {"state", "execution_ms", "pictures"}:  # what the quotas count may change
                query = sa.select(
                    jobs.c.guild_id,
                    jobs.c.user_id,
                    jobs.c.created_at,
                    jobs.c.state,
                    jobs.c.execution_ms,
                    jobs.c.pictures,
                )
                if connection.dialect.name == "postgresql":
                    query = query.with_for_update()
                before = (await connection.execute(query.where(jobs.c.request_id == request_id))).first()
            await connection.execute(
                sa.update(jobs).where(jobs.c.request_id == request_id).values(**changes, updated_at=_now())
            )
            if before is not None and before.guild_id is not None:
                counted_before, counted_after = (
                    LedgerState(before.state).counted,
                    LedgerState(changes.get("state", before.state)).counted,
                )
                pictures_before = before.pictures if counted_before else 0
                pictures_after = changes.get("pictures", before.pictures) if counted_after else 0
                gpu_before = (before.execution_ms or 0) if counted_before else 0
                gpu_after = (changes.get("execution_ms", before.execution_ms) or 0) if counted_after else 0
                pictures_change, gpu_change = pictures_after - pictures_before, gpu_after - gpu_before
                if pictures_change or gpu_change:
                    day = before.created_at.astimezone(UTC).date()
                    await _count(connection, before.guild_id, day, before.user_id, pictures_change, gpu_change)

    @_uninterruptible
    @_patient
    async def claim_delivery(self, request_id: int) -> bool:
        """Mark delivered; False if someone (an earlier run of the bot) already did."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                sa.update(jobs)
                .where(jobs.c.request_id == request_id, jobs.c.delivered_at.is_(None))
                .values(delivered_at=_now(), updated_at=_now())
            )
        return bool(result.rowcount)

    async def job(self, request_id: int) -> JobRecord | None:
        return await self._one(jobs.c.request_id == request_id)

    async def job_by_runpod_id(self, runpod_job_id: str) -> JobRecord | None:
        return await self._one(jobs.c.runpod_job_id == runpod_job_id)

    @_uninterruptible
    async def undelivered_jobs(self) -> list[JobRecord]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(jobs).where(jobs.c.delivered_at.is_(None)).order_by(jobs.c.created_at)
            )
        return [_job_record(row) for row in rows]

    @_uninterruptible
    async def recent_run_times(self, limit: int = 2000) -> list[tuple[str, int | None, int]]:
        """(endpoint id, queue ms, run ms) of the latest completed jobs, oldest first."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(jobs.c.endpoint_id, jobs.c.delay_ms, jobs.c.execution_ms)
                .where(jobs.c.state == LedgerState.COMPLETED, jobs.c.execution_ms.is_not(None))
                .order_by(jobs.c.updated_at.desc(), jobs.c.request_id.desc())
                .limit(limit)
            )
        return [(row.endpoint_id, row.delay_ms, row.execution_ms) for row in reversed(rows.all())]

    @_uninterruptible
    async def jobs_in_state(self, state: LedgerState, *, since: datetime) -> list[JobRecord]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(jobs).where(jobs.c.state == state, jobs.c.created_at >= since).order_by(jobs.c.created_at)
            )
        return [_job_record(row) for row in rows]

    @_uninterruptible
    async def guild_jobs_since(self, guild_id: int, since: datetime) -> list[JobRecord]:
        """Every job of a guild since a moment: what quotas and usage reports count."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(jobs)
                .where(jobs.c.guild_id == guild_id, jobs.c.created_at >= since)
                .order_by(jobs.c.created_at)
            )
        return [_job_record(row) for row in rows]

    @_uninterruptible
    async def usage(self, guild_id: int, member_id: int, today: datetime, month: datetime) -> Usage:
        """What counts against quotas since the start of the month and of the day, from the per-day counters
        (`usage_days`): at most a month of days x members rows, however long the ledger."""
        is_today = usage_days.c.day >= today.astimezone(UTC).date()

        def total(value: Any, condition: sa.ColumnElement[bool] | None = None) -> Any:
            counted_value = value if condition is None else sa.case((condition, value), else_=0)
            return sa.func.coalesce(sa.func.sum(counted_value), 0)

        query = sa.select(
            total(usage_days.c.pictures, is_today & (usage_days.c.user_id == member_id)),
            total(usage_days.c.pictures, is_today),
            total(usage_days.c.pictures),
            total(usage_days.c.gpu_ms, is_today),
            total(usage_days.c.gpu_ms),
        ).where(usage_days.c.guild_id == guild_id, usage_days.c.day >= month.astimezone(UTC).date())
        async with self.engine.connect() as connection:
            member_today, guild_today, guild_month, gpu_today_ms, gpu_month_ms = (await connection.execute(query)).one()
        return Usage(
            member_today=int(member_today),
            guild_today=int(guild_today),
            guild_month=int(guild_month),
            gpu_seconds_today=int(gpu_today_ms) / 1000,
            gpu_seconds_month=int(gpu_month_ms) / 1000,
        )

    @_uninterruptible
    async def rebuild_usage(self) -> None:
        """Sum the per-day counters afresh from the ledger (for a ledger written behind the bot's back)."""
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(usage_days))
            await connection.execute(usage_from_jobs(connection.dialect.name))

    @_uninterruptible
    async def _one(self, condition: sa.ColumnElement[bool]) -> JobRecord | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(sa.select(jobs).where(condition))).first()
        return _job_record(row) if row else None


def usage_from_jobs(dialect: str) -> sa.Insert:
    """INSERT INTO usage_days the counters summed from `jobs` (the day of `created_at`, in UTC)."""
    if dialect == "sqlite":
        day: Any = sa.func.date(jobs.c.created_at)  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff', in UTC
    else:
        day = sa.cast(sa.func.timezone("UTC", jobs.c.created_at), sa.Date)
    counted = [state.value for state in LedgerState if state.counted]
    summed = (
        sa.select(
            jobs.c.guild_id,
            day,
            jobs.c.user_id,
            sa.func.sum(jobs.c.pictures),
            sa.func.coalesce(sa.func.sum(sa.func.coalesce(jobs.c.execution_ms, 0)), 0),
        )
        .where(jobs.c.guild_id.is_not(None), jobs.c.state.in_(counted))
        .group_by(jobs.c.guild_id, day, jobs.c.user_id)
    )
    return sa.insert(usage_days).from_select(["guild_id", "day", "user_id", "pictures", "gpu_ms"], summed)


async def _count(
    connection: AsyncConnection, guild_id: int, day: date, user_id: int, pictures: int, gpu_ms: int
) -> None:
    """Add to a guild's, day's and member's counters (an upsert, in the caller's transaction)."""
    insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(usage_days)
    upsert = insert.values(guild_id=guild_id, day=day, user_id=user_id, pictures=pictures, gpu_ms=gpu_ms)
    await connection.execute(
        upsert.on_conflict_do_update(
            index_elements=[usage_days.c.guild_id, usage_days.c.day, usage_days.c.user_id],
            set_={"pictures": usage_days.c.pictures + pictures, "gpu_ms": usage_days.c.gpu_ms + gpu_ms},
        )
    )


def _job_record(row: sa.Row[Any]) -> JobRecord:
    values = dict(row._mapping)
    return JobRecord(**values | {"state": LedgerState(row.state), "key_source": KeySource(row.key_source)})


def _now() -> datetime:
    return datetime.now(UTC)
