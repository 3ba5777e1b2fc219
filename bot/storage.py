"""The database: guild settings and the job ledger, on SQLite (default) or PostgreSQL.

SQLAlchemy Core smooths the dialects; Alembic migrations (bot/migrations) upgrade an existing database
in place at start-up. Secrets arrive here already encrypted (bot.crypto); nothing in the database is a
usable key or token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
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

from bot.clock import wall_clock
from bot.config import normalise_database_url
from bot.errors import ConfigError
from bot.lifecycle import ENDINGS, LedgerState, check_move
from bot.policy import Usage

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")

metadata = sa.MetaData()


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
    sa.Column("painting_at", UTCDateTime()),  # when painting really began: its status says so after a restart
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

# A member's remembered defaults in one server (/settings): a JSON object of `bot.params.MemberDefaults`' fields.
member_settings = sa.Table(
    "member_settings",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)


# The slash commands last published for each application (its bot token), as a hash of their payload: the
# release phase publishes only when the bot's commands differ from it (bot/release.py).
published_commands = sa.Table(
    "published_commands",
    metadata,
    sa.Column("application_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("payload_sha256", sa.String(64), nullable=False),
    sa.Column("published_at", UTCDateTime(), nullable=False),
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
    more_job_ids: list[str] | None = None  # the other parts' (bot/presets.py, `WorkerPreset.parts`)
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
    painting_at: datetime | None = None

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


WAKEUP_CHANNEL = "imagine_wakeup"  # PostgreSQL NOTIFY channel of webhooks' wake-ups


class Storage:
    write_patience = 60.0  # seconds a job's ledger write keeps trying through a locked or lost database

    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] = wall_clock) -> None:
        self.engine = engine
        self.clock = clock  # the bot's one idea of now (bot/jobs.py, RunnerOptions.clock)
        self.unreadable: dict[int, str] = {}  # ledger rows the code could not read, by id: why
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._listening: AsyncConnection | None = None  # held for LISTEN while the process runs (PostgreSQL)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, clock: Callable[[], datetime] = wall_clock) -> Storage:
        """Connect and bring the schema up to date; a database that cannot be reached is one clear line."""
        parsed = make_url(async_url(url))
        engine = create_async_engine(parsed, pool_pre_ping=True)
        storage = cls(engine, clock)
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
        if self._listening is not None:
            await self._listening.close()
            self._listening = None
        await self.engine.dispose()

    async def ping(self) -> None:
        """One round trip to the database (the health check's)."""
        async with self.engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    # --- wake-ups between processes (bot/push.py): a webhook may reach a process that does not follow its job ---

    @property
    def shared(self) -> bool:
        """Whether other processes may share this ledger (PostgreSQL; a SQLite file serves one)."""
        return self.engine.dialect.name == "postgresql"

    async def notify_wakeup(self, request_id: int, part: int) -> None:
        """Tell every process on this ledger that a webhook for this part of this request arrived."""
        if self.shared:
            async with self.engine.begin() as connection:
                await connection.execute(sa.select(sa.func.pg_notify(WAKEUP_CHANNEL, f"{request_id}:{part}")))

    async def listen_for_wakeups(self, ring: Callable[[int, int], object]) -> None:
        """From now until `close`, `ring(request_id, part)` for each wake-up another process sends. A connection
        lost later loses only the wake-ups: the followers' polls still find each job's end."""
        if not self.shared or self._listening is not None:
            return

        def heard(_connection: object, _pid: int, _channel: str, payload: str) -> None:
            request_id, _, part = payload.partition(":")
            if request_id.isdigit() and part.isdigit():
                ring(int(request_id), int(part))

        connection = await self.engine.connect()
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection  # asyncpg's connection, whose listener is LISTEN
        assert driver is not None
        await driver.add_listener(WAKEUP_CHANNEL, heard)
        self._listening = connection

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

    async def published_commands(self, application_id: int) -> str | None:
        """The hash of the slash commands last published for this application, if any."""
        query = sa.select(published_commands.c.payload_sha256).where(
            published_commands.c.application_id == application_id
        )
        async with self.engine.connect() as connection:
            return (await connection.execute(query)).scalar_one_or_none()

    @_uninterruptible
    async def commands_published(self, application_id: int, payload_sha256: str) -> None:
        table = published_commands
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(table).where(table.c.application_id == application_id))
            await connection.execute(
                sa.insert(table).values(
                    application_id=application_id, payload_sha256=payload_sha256, published_at=self.clock()
                )
            )

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
        values = dataclasses.asdict(endpoint) | {"updated_at": self.clock()}
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
                sa.insert(guild_policies).values(guild_id=guild_id, policy=policy, updated_at=self.clock())
            )

    @_uninterruptible
    async def member_settings(self, guild_id: int, user_id: int) -> dict[str, Any]:
        """A member's remembered defaults in this server ({} when none)."""
        key = (member_settings.c.guild_id == guild_id) & (member_settings.c.user_id == user_id)
        async with self.engine.connect() as connection:
            row = (await connection.execute(sa.select(member_settings.c.settings).where(key))).first()
        return dict(row.settings) if row and isinstance(row.settings, dict) else {}

    @_uninterruptible
    async def save_member_settings(self, guild_id: int, user_id: int, settings: dict[str, Any]) -> None:
        """Replace a member's defaults in this server; an empty `settings` forgets them."""
        key = (member_settings.c.guild_id == guild_id) & (member_settings.c.user_id == user_id)
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(member_settings).where(key))
            if settings:
                await connection.execute(
                    sa.insert(member_settings).values(
                        guild_id=guild_id, user_id=user_id, settings=settings, updated_at=self.clock()
                    )
                )

    # --- job ledger --------------------------------------------------------------------------------

    @_uninterruptible
    @_patient
    async def record_job(self, record: JobRecord) -> bool:
        """Write a job before it is submitted. False when this interaction already has one (a replay)."""
        now = self.clock()
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

    # --- the job's moves (bot/lifecycle.py, MOVES): each one transaction, returning the new record ----------

    async def submitting(self, record: JobRecord) -> JobRecord:
        """Its turn came: it is being sent to RunPod, which may or may not have it until `sent` says so."""
        return await self._move(record, LedgerState.PENDING)

    async def sent(self, record: JobRecord, runpod_job_ids: Sequence[str]) -> JobRecord:
        """RunPod took these parts of it (recorded as each arrives, so a restart can follow or cancel them)."""
        first, *more = runpod_job_ids
        return await self._move(record, None, runpod_job_id=first, more_job_ids=more or None)

    async def queued(self, record: JobRecord, *, delay_ms: int | None = None) -> JobRecord:
        """On RunPod, waiting for a worker (again, for a set's next part). Already queued: nothing changes."""
        if record.state is LedgerState.QUEUED:
            return record
        return await self._move(record, LedgerState.QUEUED, **_given(delay_ms=delay_ms))

    async def running(
        self, record: JobRecord, *, delay_ms: int | None = None, painting_at: datetime | None = None
    ) -> JobRecord:
        """Painting; `painting_at` is when it began, kept from the first part's start on."""
        if record.state is LedgerState.RUNNING:
            return record
        started = painting_at if record.painting_at is None else None
        return await self._move(record, LedgerState.RUNNING, **_given(delay_ms=delay_ms, painting_at=started))

    async def completed(
        self, record: JobRecord, *, pictures: int, delay_ms: int | None, execution_ms: int | None
    ) -> JobRecord:
        """Its pictures arrived: what counts is the pictures that did (a set may be short) and the GPU time."""
        changes = _given(delay_ms=delay_ms, execution_ms=execution_ms)
        return await self._move(record, LedgerState.COMPLETED, pictures=pictures, **changes)

    async def delivered(self, record: JobRecord) -> JobRecord:
        """Posted. Raises `IllegalMove` when another run of the bot posted it first."""
        return await self._move(record, LedgerState.DELIVERED, delivered_at=self.clock())

    async def undeliverable(self, record: JobRecord) -> JobRecord:
        """Paid for, but could be posted nowhere: recorded for good, its usage still counted."""
        return await self._move(record, LedgerState.UNDELIVERABLE, delivered_at=self.clock())

    async def ended(self, record: JobRecord, state: LedgerState, notice: str) -> JobRecord:
        """It ends without pictures (failed, cancelled, timed out, expired); `told` once the member has seen it."""
        if state not in ENDINGS:
            raise ValueError(f"{state} is not how a job ends without pictures")
        return await self._move(record, state, notice=notice)

    @_uninterruptible
    @_patient
    async def told(self, record: JobRecord) -> bool:
        """The member was told how a job ended without pictures (or nobody could be): False if an earlier run of
        the bot did it already. Not a move: the state stays what `ended` made it."""
        if record.state not in ENDINGS:
            raise ValueError(f"job {record.request_id} is {record.state}: only an ended job is told")
        async with self.engine.begin() as connection:
            result = await connection.execute(
                sa.update(jobs)
                .where(jobs.c.request_id == record.request_id, jobs.c.delivered_at.is_(None))
                .values(delivered_at=self.clock(), updated_at=self.clock())
            )
        return bool(result.rowcount)

    async def channel_message(self, record: JobRecord, message_id: int) -> JobRecord:
        """Its status continues in this channel message (the interaction token expired)."""
        return await self._move(record, None, channel_message_id=message_id)

    @_uninterruptible
    @_patient
    async def _move(self, record: JobRecord, to: LedgerState | None, **changes: Any) -> JobRecord:
        """Move the job to `to` (None: stay) with these changes, and its usage counters with it, in one
        transaction; the new record. The state is read from the row, not trusted from `record`."""
        async with self.engine.begin() as connection:
            query = sa.select(jobs).where(jobs.c.request_id == record.request_id)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            row = (await connection.execute(_readable(query))).first()
            if row is None:
                raise LookupError(f"job {record.request_id} is not in the ledger")
            before = _job_record(row)
            after = dataclasses.replace(before, **changes, state=to or before.state, updated_at=self.clock())
            if to is not None:
                check_move(record.request_id, before.state, to)
            await connection.execute(
                sa.update(jobs)
                .where(jobs.c.request_id == record.request_id)
                .values(**changes, state=after.state, updated_at=after.updated_at)
            )
            if before.guild_id is not None and before.created_at is not None:
                pictures = _counted(after, after.pictures) - _counted(before, before.pictures)
                gpu_ms = _counted(after, after.execution_ms or 0) - _counted(before, before.execution_ms or 0)
                if pictures or gpu_ms:
                    day = before.created_at.astimezone(UTC).date()
                    await _count(connection, before.guild_id, day, before.user_id, pictures, gpu_ms)
        return after

    async def job(self, request_id: int) -> JobRecord | None:
        return await self._one(jobs.c.request_id == request_id)

    async def job_by_runpod_id(self, runpod_job_id: str) -> JobRecord | None:
        return await self._one(jobs.c.runpod_job_id == runpod_job_id)

    @_uninterruptible
    async def undelivered_jobs(self) -> list[JobRecord]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                _readable(
                    sa.select(jobs).where(jobs.c.delivered_at.is_(None)).order_by(jobs.c.created_at, jobs.c.request_id)
                )
            )
        return self._records(rows)

    @_uninterruptible
    async def recent_run_times(self, limit: int = 2000) -> list[tuple[int | None, str, int | None, int]]:
        """(guild id, endpoint id, queue ms, run ms) of the latest completed jobs, oldest first."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(jobs.c.guild_id, jobs.c.endpoint_id, jobs.c.delay_ms, jobs.c.execution_ms)
                .where(jobs.c.state.in_(_PICTURES_ARRIVED), jobs.c.execution_ms.is_not(None))
                .order_by(jobs.c.updated_at.desc(), jobs.c.request_id.desc())
                .limit(limit)
            )
        return [(row.guild_id, row.endpoint_id, row.delay_ms, row.execution_ms) for row in reversed(rows.all())]

    @_uninterruptible
    async def jobs_in_state(self, state: LedgerState, *, since: datetime) -> list[JobRecord]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                _readable(
                    sa.select(jobs).where(jobs.c.state == state, jobs.c.created_at >= since).order_by(jobs.c.created_at)
                )
            )
        return self._records(rows)

    @_uninterruptible
    async def guild_jobs_since(self, guild_id: int, since: datetime) -> list[JobRecord]:
        """Every job of a guild since a moment: what quotas and usage reports count."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                _readable(
                    sa.select(jobs)
                    .where(jobs.c.guild_id == guild_id, jobs.c.created_at >= since)
                    .order_by(jobs.c.created_at, jobs.c.request_id)
                )
            )
        return self._records(rows)

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

    # --- the usage report (bot/usage.py): sums the database makes, never a month of rows in Python --------------

    @_uninterruptible
    async def usage_by_day(self, guild_id: int, first_day: date) -> list[tuple[date, int, int]]:
        """(day, pictures, GPU ms) of each day since `first_day` that has any, from the per-day counters."""
        query = (
            sa.select(usage_days.c.day, sa.func.sum(usage_days.c.pictures), sa.func.sum(usage_days.c.gpu_ms))
            .where(usage_days.c.guild_id == guild_id, usage_days.c.day >= first_day)
            .group_by(usage_days.c.day)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [(day, int(pictures), int(gpu_ms)) for day, pictures, gpu_ms in rows]

    @_uninterruptible
    async def usage_by_member(
        self, guild_id: int, first_day: date, limit: int
    ) -> tuple[int, list[tuple[int, int, int]]]:
        """How many members made pictures since `first_day`, and (user id, pictures, GPU ms) of the `limit` who used
        the most GPU time (then pictures), from the per-day counters."""
        pictures, gpu_ms = sa.func.sum(usage_days.c.pictures), sa.func.sum(usage_days.c.gpu_ms)
        members = (
            sa.select(usage_days.c.user_id, pictures.label("pictures"), gpu_ms.label("gpu_ms"))
            .where(usage_days.c.guild_id == guild_id, usage_days.c.day >= first_day)
            .group_by(usage_days.c.user_id)
            .having(pictures > 0)  # a member whose jobs all failed keeps a row of zeros
        )
        ranked = members.subquery()
        async with self.engine.connect() as connection:
            count = (await connection.execute(sa.select(sa.func.count()).select_from(ranked))).scalar_one()
            rows = (
                await connection.execute(
                    sa.select(ranked.c.user_id, ranked.c.pictures, ranked.c.gpu_ms)
                    .order_by(ranked.c.gpu_ms.desc(), ranked.c.pictures.desc(), ranked.c.user_id)
                    .limit(limit)
                )
            ).all()
        return int(count), [(user_id, int(made), int(ms)) for user_id, made, ms in rows]

    @_uninterruptible
    async def uncounted_pictures(self, guild_id: int, since: datetime) -> int:
        """The pictures of the guild's jobs since a moment that do not count (failed, cancelled, ...): one sum."""
        counted = [state.value for state in LedgerState if state.counted]
        query = sa.select(sa.func.coalesce(sa.func.sum(jobs.c.pictures), 0)).where(
            jobs.c.guild_id == guild_id, jobs.c.created_at >= since, jobs.c.state.not_in(counted)
        )
        async with self.engine.connect() as connection:
            return int((await connection.execute(query)).scalar_one())

    @_uninterruptible
    async def member_names(self, guild_id: int, user_ids: Sequence[int], since: datetime) -> dict[int, str]:
        """The name each of these members had on their latest counted job since a moment."""
        if not user_ids:
            return {}
        counted = [state.value for state in LedgerState if state.counted]
        latest = (
            sa.select(sa.func.max(jobs.c.request_id))
            .where(
                jobs.c.guild_id == guild_id,
                jobs.c.created_at >= since,
                jobs.c.user_id.in_(list(user_ids)),
                jobs.c.state.in_(counted),
            )
            .group_by(jobs.c.user_id)
        )
        query = sa.select(jobs.c.user_id, jobs.c.user_name).where(jobs.c.request_id.in_(latest.scalar_subquery()))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {user_id: name for user_id, name in rows}

    @_uninterruptible
    async def rebuild_usage(self) -> None:
        """Sum the per-day counters afresh from the ledger (for a ledger written behind the bot's back)."""
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(usage_days))
            await connection.execute(usage_from_jobs(connection.dialect.name))

    @_uninterruptible
    async def _one(self, condition: sa.ColumnElement[bool]) -> JobRecord | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(_readable(sa.select(jobs).where(condition)))).first()
        records = self._records([row] if row else [])
        return records[0] if records else None

    def _records(self, rows: Iterable[sa.Row[Any]]) -> list[JobRecord]:
        """The rows as records; a row the code cannot read (an unknown state after a rollback, broken JSON) is
        skipped with one warning naming its id, so every other job goes on."""
        records = []
        for row in rows:
            try:
                records.append(_job_record(row))
            except UnreadableRow as error:
                self.skip_unreadable(error.request_id, error.reason)
        return records

    def skip_unreadable(self, request_id: int, reason: str) -> None:
        """A job row the code cannot read (here, or where its values are used): warned about once, listed by
        `python -m bot check`, and left alone."""
        if request_id not in self.unreadable:
            log.warning("job row %s cannot be read (%s); skipped", request_id, reason)
        self.unreadable[request_id] = reason


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


# The states in which a job's pictures arrived: where its timings are learned from.
_PICTURES_ARRIVED = (LedgerState.COMPLETED, LedgerState.DELIVERED, LedgerState.UNDELIVERABLE)
_JSON_COLUMNS = frozenset({"params", "more_job_ids"})


class UnreadableRow(ValueError):
    def __init__(self, request_id: int, reason: str) -> None:
        super().__init__(reason)
        self.request_id = request_id
        self.reason = reason


def _readable(query: sa.Select[Any]) -> sa.Select[Any]:
    """The query with its JSON columns read as text, so broken JSON is one unreadable row (`_job_record`), not a
    failure of the whole result."""
    return query.with_only_columns(
        *(sa.type_coerce(column, sa.Text).label(column.name) if column.name in _JSON_COLUMNS else column
          for column in jobs.c),
        maintain_column_froms=True,
    )  # fmt: skip


def _job_record(row: sa.Row[Any]) -> JobRecord:
    values = dict(row._mapping)
    try:
        for name in _JSON_COLUMNS:
            if isinstance(values[name], str | bytes):
                values[name] = json.loads(values[name])
        if not isinstance(values["params"], dict):
            raise ValueError("its parameters are not an object")
        values |= {"state": LedgerState(row.state), "key_source": KeySource(row.key_source)}
        return JobRecord(**values)
    except (ValueError, TypeError) as error:
        raise UnreadableRow(row.request_id, str(error)[:200]) from None


def _given(**values: Any) -> dict[str, Any]:
    """The values that are known (not None): a move records what it learned, never forgets what it knew."""
    return {name: value for name, value in values.items() if value is not None}


def _counted(record: JobRecord, value: int) -> int:
    return value if record.state.counted else 0
