"""`python -m bot check`: tell an operator what is wrong with this deployment, one line per check.

Every check only reads: it logs in over REST (never opens the gateway), lists the published commands
(never syncs them), opens the database without migrating it, and asks RunPod for /health (never runs
a job). Lines never carry a secret: messages are built from names and ids, and every line is scrubbed
of the token, keys and database password as a last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp
import discord
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.config import (
    LOCAL_ENDPOINT,
    MIN_SECRET_LENGTH,
    RANDOM_KEY_COMMAND,
    SECRET_VARIABLES,
    Secret,
    Settings,
    configure_logging,
    load_settings,
    normalise_database_url,
)
from bot.crypto import UndecryptableSecret, Vault
from bot.engine import RunPodContext
from bot.errors import (
    BotError,
    ConfigError,
    RunPodAuthError,
    RunPodError,
    RunPodNotFound,
    RunPodRateLimited,
    RunPodUnavailable,
)
from bot.images import ImageFetcher
from bot.lifecycle import LedgerState
from bot.runpod import RetryPolicy, RunPodClient
from bot.storage import Storage, alembic_config
from bot.text import health_text, plural

if TYPE_CHECKING:
    from bot.bot import ImagineBot

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"

# What the bot does in a channel: see it, answer, embed the status, upload pictures, and find its own
# status message again. Nothing else is asked for.
BOT_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, embed_links=True, attach_files=True, read_message_history=True
)
PERMISSION_NAMES = ("View Channel", "Send Messages", "Embed Links", "Attach Files", "Read Message History")
INVITE_SCOPES = "bot+applications.commands"

DISCORD_TIMEOUT = 20.0
DATABASE_TIMEOUT = 15.0
RUNPOD_TIMEOUT = 20.0
PUBLIC_URL_TIMEOUT = 10.0
_CHECK_RETRY = RetryPolicy(attempts=3, base_delay=0.5, max_delay=2.0, max_retry_after=5.0)
KEY_COLUMN = "api_key_encrypted"  # wherever a migration keeps server keys, they are in this column
_CONFIG_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]+")


@dataclass(frozen=True)
class Line:
    mark: str
    subject: str
    detail: str

    def render(self) -> str:
        return f"{self.mark:<4} {self.subject}: {self.detail}"


_NEEDS_TOKEN = Line(SKIP, "slash commands", "needs a working DISCORD_TOKEN")


@dataclass
class DiscordResult:
    lines: list[Line] = field(default_factory=list)
    application_id: int | None = None


def invite_url(application_id: int | str) -> str:
    return (
        f"https://discord.com/oauth2/authorize?client_id={application_id}"
        f"&scope={INVITE_SCOPES}&permissions={BOT_PERMISSIONS.value}"
    )


# --- configuration ---------------------------------------------------------------------------------


def load_configuration() -> tuple[Settings | None, list[Line]]:
    """Settings, or one FAIL line per malformed variable (all of them, not only the first)."""
    try:
        return load_settings(), []
    except ConfigError as error:
        errors = [str(error)]
    # load_settings stops at the first bad variable; drop each named one and look again, so the
    # operator fixes everything in one go. Nothing else is checked with a configuration that is wrong.
    env = dict(os.environ)  # .env was merged into os.environ by the first attempt
    while (match := _CONFIG_VARIABLE.match(errors[-1])) and env.pop(match.group(), None) is not None:
        try:
            load_settings(env)
            break
        except ConfigError as error:
            errors.append(str(error))
    return None, [Line(FAIL, "configuration", message) for message in errors]


# --- Discord ------------------------------------------------------------------------------------------


def inspector_class() -> type[ImagineBot]:
    from bot.bot import EXTENSIONS, ImagineBot  # the whole bot is only loaded once the configuration is good

    class Inspector(ImagineBot):
        """The bot's own command tree, built as at start-up, without syncing anything or going online."""

        async def setup_hook(self) -> None:
            for extension in EXTENSIONS:
                await self.load_extension(extension)

    return Inspector


def _shape(command: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A command by its name and the names of its options, recursively: what members would notice."""
    options = command.get("options") or []
    return command["name"], tuple(sorted(_shape(option) for option in options))


async def check_discord(settings: Settings) -> DiscordResult:
    result = DiscordResult()
    if settings.discord_token is None:
        try:
            settings.require_discord_token()
        except ConfigError as error:
            result.lines.append(Line(FAIL, "DISCORD_TOKEN", str(error)))
        result.lines.append(_NEEDS_TOKEN)
        return result
    # The runner behind the commands is never used here; an in-memory database keeps it off the real one.
    placeholder = Storage(create_async_engine("sqlite+aiosqlite://"))
    try:
        async with aiohttp.ClientSession() as session, ImageFetcher() as fetcher:
            runpod = RunPodContext(session, fetcher, api_url=settings.runpod_api_url)
            bot = inspector_class()(settings, storage=placeholder, runpod=runpod)
            async with bot:
                failure = await _login(bot, settings.discord_token)
                if failure is not None:
                    result.lines += [Line(FAIL, "DISCORD_TOKEN", failure), _NEEDS_TOKEN]
                    return result
                result.application_id = bot.application_id
                result.lines.append(_login_line(bot))
                result.lines.append(await _commands_line(bot, settings))
    finally:
        await placeholder.engine.dispose()
    return result


async def _login(bot: discord.Client, token: Secret) -> str | None:
    """Log in over REST only (no gateway); what went wrong, or None."""
    try:
        await asyncio.wait_for(bot.login(token.reveal()), DISCORD_TIMEOUT)
    except discord.LoginFailure:
        return (
            "token refused by Discord (401): reset it in the developer portal (your application → Bot → "
            "Reset Token) and set the new one"
        )
    except discord.HTTPException as error:
        return f"Discord answered {error.status} to the login; try again later"
    except TimeoutError:
        return f"Discord did not answer the login within {DISCORD_TIMEOUT:.0f} s"
    except (aiohttp.ClientError, OSError) as error:
        return f"could not reach Discord ({type(error).__name__})"
    return None


def _login_line(bot: discord.Client) -> Line:
    user = bot.user
    who = f"logged in as {user} (application id {bot.application_id})" if user else "logged in"
    app = bot.application
    if app is not None and app.interactions_endpoint_url:
        return Line(
            WARN,
            "DISCORD_TOKEN",
            f"{who}, but the application has an Interactions Endpoint URL set, so Discord "
            "sends /imagine there instead of to this bot: clear it in the developer portal (General Information)",
        )
    return Line(OK, "DISCORD_TOKEN", who)


async def _commands_line(bot: ImagineBot, settings: Settings) -> Line:
    tree = bot.tree
    ours = dict(_shape(dict(command.to_dict(tree))) for command in tree.get_commands())
    published = await asyncio.wait_for(tree.fetch_commands(), DISCORD_TIMEOUT)
    theirs = dict(_shape(dict(command.to_dict())) for command in published)
    missing = sorted(set(ours) - set(theirs))
    stale = sorted(set(theirs) - set(ours))
    changed = sorted(name for name in set(ours) & set(theirs) if ours[name] != theirs[name])
    fix = "run `python -m bot sync`"
    if missing:
        detail = f"not published globally: {', '.join(missing)}; {fix} (global commands can take a while to appear)"
        if settings.guild_ids:
            # Development mode: those servers get every command at each start, so this is only a warning.
            return Line(WARN, "slash commands", f"{detail}. The DISCORD_GUILD_IDS servers get them at every start")
        return Line(FAIL, "slash commands", detail)
    if changed or stale:
        parts = [f"out of date on Discord: {', '.join(changed)}"] if changed else []
        parts += [f"Discord still lists {', '.join(stale)}, which the bot no longer has"] if stale else []
        return Line(WARN, "slash commands", f"{'; '.join(parts)}; {fix}")
    return Line(OK, "slash commands", f"{', '.join(sorted(ours))} published globally")


# --- database and encryption key ------------------------------------------------------------------------


def _describe_database(url: str) -> tuple[str, Path | None]:
    """Where the database is, without user or password; and the SQLite file, if it is one."""
    parsed = make_url(normalise_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return "SQLite in memory", None
        return f"SQLite file {parsed.database}", Path(parsed.database)
    port = f":{parsed.port}" if parsed.port else ""
    return f"PostgreSQL at {parsed.host}{port}/{parsed.database}", None


def _migration_revisions() -> tuple[set[str], set[str]]:
    """(heads, every known revision) of bot/migrations."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return set(scripts.get_heads()), {script.revision for script in scripts.walk_revisions()}


async def check_storage(settings: Settings) -> list[Line]:
    """The database line, then the encryption key line (which can see whether stored keys decrypt)."""
    where, sqlite_file = _describe_database(settings.database_url.reveal())
    stored_keys: list[str] | None = None
    if sqlite_file is not None and not sqlite_file.exists():
        database = Line(
            WARN, "database", f"{where} does not exist yet: the bot creates and migrates it at its first start"
        )
        ledger: list[Line] = []
    else:
        database, stored_keys, ledger = await _open_database(settings, where)
    if sqlite_file is not None and os.environ.get("DYNO"):  # Heroku sets DYNO on every dyno
        database = Line(
            WARN,
            "database",
            f"{where} is on the dyno's disk, which is wiped at every restart (at least daily), "
            "and every unfinished job with it: add PostgreSQL and set DATABASE_URL",
        )
    return [database, _encryption_line(settings.encryption_keys, stored_keys), *ledger]


async def _open_database(settings: Settings, where: str) -> tuple[Line, list[str] | None, list[Line]]:
    """The database line, the stored server keys, and what the job ledger needs an operator to know."""
    try:
        storage = await asyncio.wait_for(Storage.open(settings.database_url.reveal(), migrate=False), DATABASE_TIMEOUT)
    except ConfigError as error:
        return Line(FAIL, "database", str(error)), None, []
    except TimeoutError:
        return Line(FAIL, "database", f"{where} did not answer within {DATABASE_TIMEOUT:.0f} s"), None, []
    try:
        line, stored = await _inspect_schema(storage, where)
        current = line.mark == OK  # the ledger is read with today's schema only
        return line, stored, await _ledger_lines(storage, settings.encryption_keys) if current else []
    except sa.exc.SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0][:200]
        return Line(FAIL, "database", f"{where} reachable, but reading it failed: {reason}"), None, []
    finally:
        await storage.close()


async def _ledger_lines(storage: Storage, keys: tuple[Secret, ...]) -> list[Line]:
    """Jobs an operator should hear of, and nothing when there are none: unfinished jobs whose interaction
    token the current keys cannot read, and finished pictures that could be posted nowhere (30 days)."""
    lines = []
    vault = Vault(keys)
    unreadable = 0
    for record in await storage.undelivered_jobs():
        if record.token_encrypted:
            try:
                vault.decrypt(record.token_encrypted)
            except BotError:  # undecryptable, or no key at all
                unreadable += 1
    if storage.unreadable:
        rows = [f"{request_id} ({reason})" for request_id, reason in sorted(storage.unreadable.items())[:5]]
        lines.append(
            Line(
                WARN,
                "unreadable jobs",
                f"{len(storage.unreadable)} job row(s) the bot cannot read, skipped by resume and the sweeper: "
                + ", ".join(rows),
            )
        )
    if unreadable:
        lines.append(
            Line(
                WARN,
                "unfinished jobs",
                f"{unreadable} unfinished job(s) hold an interaction token BOT_ENCRYPTION_KEY cannot read: they "
                "go on, with their status in a channel message; keep the old key after the new one (new,old)",
            )
        )
    month_ago = datetime.now(UTC) - timedelta(days=30)
    lost = await storage.jobs_in_state(LedgerState.UNDELIVERABLE, since=month_ago)
    if lost:
        channels = ", ".join(sorted({str(job.channel_id) for job in lost})[:5])
        lines.append(
            Line(
                WARN,
                "undeliverable pictures",
                f"{len(lost)} finished picture(s) in the last 30 days could be posted nowhere (the bot may not "
                f"post in the channel, and the interaction had expired): channels {channels}",
            )
        )
    return lines


async def _inspect_schema(storage: Storage, where: str) -> tuple[Line, list[str] | None]:
    revision = await storage.schema_revision()
    heads, known = _migration_revisions()
    latest = ", ".join(sorted(heads))
    if revision in heads:
        stored = await _stored_guild_keys(storage)
        return Line(OK, "database", f"{where} reachable, schema at the latest revision ({latest})"), stored
    if revision is None:
        return Line(WARN, "database", f"{where} reachable but empty: run the bot once to migrate"), None
    if revision in known:
        detail = f"{where} reachable, schema at revision {revision}, behind {latest}: run the bot once to migrate"
        return Line(WARN, "database", detail), await _stored_guild_keys(storage)
    return Line(
        FAIL,
        "database",
        f"{where} is at revision {revision}, which this version of the bot does not know: "
        "a newer version migrated it; deploy that version (migrations only go forward)",
    ), None


async def _stored_guild_keys(storage: Storage) -> list[str]:
    """Every encrypted server key, from whichever tables hold one (found by reflection, so this check
    keeps working when migrations move the keys to another table)."""

    def read(connection: sa.Connection) -> list[str]:
        inspector = sa.inspect(connection)
        found: list[str] = []
        for table in inspector.get_table_names():
            if any(column["name"] == KEY_COLUMN for column in inspector.get_columns(table)):
                column: sa.ColumnClause[str] = sa.column(KEY_COLUMN)
                rows = connection.execute(sa.select(column).select_from(sa.table(table)))
                found += [row[0] for row in rows if row[0]]
        return found

    async with storage.engine.connect() as connection:
        return await connection.run_sync(read)


def _encryption_line(keys: tuple[Secret, ...], stored: list[str] | None) -> Line:
    count = plural(len(keys), "key")
    if not keys:
        if stored:
            return Line(
                FAIL,
                "BOT_ENCRYPTION_KEY",
                f"not set, but {len(stored)} server(s) stored RunPod keys encrypted with "
                "one: set the key they were stored with, or their /imagine fails until an admin runs /runpod setup",
            )
        return Line(
            WARN,
            "BOT_ENCRYPTION_KEY",
            "not set: server admins cannot connect their own RunPod keys "
            f"(/runpod setup refuses); set a random secret of at least {MIN_SECRET_LENGTH} characters, "
            f"made with: {RANDOM_KEY_COMMAND}",
        )
    if not stored:
        return Line(OK, "BOT_ENCRYPTION_KEY", f"{count} set")
    vault = Vault(keys)
    unreadable = 0
    for token in stored:
        try:
            vault.decrypt(token)
        except UndecryptableSecret:
            unreadable += 1
    if unreadable:
        return Line(
            FAIL,
            "BOT_ENCRYPTION_KEY",
            f"{count} set, but {unreadable} of {len(stored)} stored server keys cannot be "
            "decrypted with it: when rotating, keep the old key after the new one (new,old)",
        )
    return Line(OK, "BOT_ENCRYPTION_KEY", f"{count} set; all {len(stored)} stored server key(s) decrypt")


# --- RunPod ---------------------------------------------------------------------------------------------


async def check_runpod(settings: Settings) -> Line:
    if settings.runpod_local:
        return await _check_local_server(settings)
    subject = "RunPod default endpoint"
    if settings.runpod_api_key is None and settings.runpod_endpoint_id is None:
        return Line(
            WARN,
            subject,
            "not configured (RUNPOD_API_KEY, RUNPOD_ENDPOINT_ID): members of servers without their "
            "own key will be told to ask an admin to run /runpod setup",
        )
    try:
        api_key, endpoint_id = settings.require_runpod()
    except ConfigError as error:
        return Line(FAIL, subject, f"{error}; the bot uses the default only when both are set")
    subject = f"RunPod endpoint {endpoint_id}"
    try:
        async with aiohttp.ClientSession() as session:
            client = RunPodClient(
                session,
                api_key=api_key,
                endpoint_id=endpoint_id,
                api_url=settings.runpod_api_url,
                retry=_CHECK_RETRY,
                request_timeout=8.0,
            )
            health = await asyncio.wait_for(client.health(), RUNPOD_TIMEOUT)
    except RunPodAuthError:
        return Line(
            FAIL,
            subject,
            "key refused by RunPod (401): check RUNPOD_API_KEY (RunPod console → Settings → "
            "API Keys; the key needs access to this endpoint)",
        )
    except RunPodNotFound:
        return Line(
            FAIL,
            subject,
            "endpoint unknown to RunPod (404): check RUNPOD_ENDPOINT_ID against the id on "
            "the endpoint's page in the RunPod console",
        )
    except RunPodRateLimited:
        return Line(WARN, subject, "RunPod is rate limiting this key (429); try again in a minute")
    except RunPodUnavailable as error:
        return Line(FAIL, subject, f"{str(error).rstrip('.')} at RUNPOD_API_URL {settings.runpod_api_url}")
    except RunPodError as error:
        return Line(FAIL, subject, str(error))
    except TimeoutError:
        return Line(FAIL, subject, f"RunPod did not answer /health within {RUNPOD_TIMEOUT:.0f} s")
    workers, jobs = health_text(health)  # in the words /runpod status uses too
    detail = f"healthy ({settings.runpod_worker} preset): workers {workers}; jobs {jobs}"
    if settings.runpod_worker == "comfyui":
        # A workflow is only ever given by an admin (/runpod setup) or on the command line (generate).
        return Line(
            WARN,
            subject,
            f"{detail}; but RUNPOD_WORKER=comfyui needs a workflow, which the default "
            "endpoint cannot have: /imagine on it is refused (only `python -m bot generate --workflow`)",
        )
    return Line(OK, subject, detail)


async def _check_local_server(settings: Settings) -> Line:
    """RunPod's local test server has no /health: a status request for a job it never had shows it answers."""
    subject = "RunPod local test server"
    url = settings.runpod_api_url
    try:
        async with aiohttp.ClientSession() as session:
            client = RunPodClient(
                session, api_key=Secret(""), endpoint_id=LOCAL_ENDPOINT, api_url=url, retry=_CHECK_RETRY, local=True
            )
            await asyncio.wait_for(client.status("bot-check"), RUNPOD_TIMEOUT)
    except (RunPodError, TimeoutError) as error:
        reason = str(error).rstrip(".") or "no answer"
        return Line(FAIL, subject, f"{url}: {reason}; start it with: python handler.py --rp_serve_api")
    return Line(
        WARN,
        subject,
        f"{url} answers (RUNPOD_BASE_URL with no /v2/<id> path): for trying a worker, not for members; "
        "jobs there cannot be cancelled and no queue or worker counts are known",
    )


# --- putting it together ------------------------------------------------------------------------------------


def permissions_line(application_id: int | None) -> Line:
    needed = f"the bot needs {', '.join(PERMISSION_NAMES)} ({BOT_PERMISSIONS.value})"
    if application_id is None:
        return Line(
            SKIP,
            "permissions",
            f"{needed}; the invite URL needs the application id, which a working "
            f"DISCORD_TOKEN tells: {invite_url('<APPLICATION_ID>')}",
        )
    return Line(OK, "permissions", f"{needed}; invite it with {invite_url(application_id)}")


async def check_public_url(settings: Settings) -> list[Line]:
    """Whether RunPod could reach the bot's webhooks: PUBLIC_URL's /healthz answers as the bot's own server does.
    A WARN at worst: without webhooks, polling alone still finds every job's end."""
    if settings.public_url is None:
        return []
    subject, url = "webhooks", f"{settings.public_url}/healthz"
    if not settings.encryption_keys:
        return [Line(WARN, subject, "PUBLIC_URL is set but BOT_ENCRYPTION_KEY is not: webhooks are off")]
    try:
        timeout = aiohttp.ClientTimeout(total=PUBLIC_URL_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            body = await response.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        reason = str(error)[:160] or type(error).__name__
        return [Line(WARN, subject, f"{url} does not answer ({reason}): jobs are found by polling alone")]
    if b'"gateway"' not in body:
        return [Line(WARN, subject, f"{url} answers {response.status}, but not as this bot's web server (PORT)")]
    plain = "" if settings.public_url.startswith("https://") else " (not https: use it only on a private network)"
    return [Line(OK, subject, f"{url} answers {response.status}: RunPod's webhooks can reach the bot{plain}")]


async def _guarded(subject: str, check: Callable[[], Awaitable[list[Line]]]) -> list[Line]:
    """A check that breaks in an unforeseen way is a FAIL line, never a traceback."""
    try:
        return await check()
    except Exception as error:
        logging.getLogger(__name__).debug("check %s crashed", subject, exc_info=True)  # LOG_LEVEL=DEBUG shows it
        return [Line(FAIL, subject, f"unexpected {type(error).__name__}: {str(error)[:200]}")]


async def run_checks(settings: Settings) -> list[Line]:
    discord_result = DiscordResult()

    async def discord_lines() -> list[Line]:
        nonlocal discord_result
        discord_result = await check_discord(settings)
        return discord_result.lines

    async def runpod_lines() -> list[Line]:
        return [await check_runpod(settings)]

    # Independent of each other, so at once: the whole check takes as long as its slowest part.
    found = await asyncio.gather(
        _guarded("Discord", discord_lines),
        _guarded("database", lambda: check_storage(settings)),
        _guarded("RunPod", runpod_lines),
        _guarded("webhooks", lambda: check_public_url(settings)),
    )
    return [line for lines in found for line in lines] + [permissions_line(discord_result.application_id)]


def summary(lines: Iterable[Line]) -> str:
    marks = [line.mark for line in lines]
    parts = [
        f"{marks.count(OK)} ok",
        plural(marks.count(WARN), "warning"),
        f"{marks.count(FAIL)} failed",
    ]
    if marks.count(SKIP):
        parts.append(f"{marks.count(SKIP)} skipped")
    return f"summary: {', '.join(parts)}"


def _secrets(settings: Settings | None) -> list[str]:
    if settings is None:
        # Nothing loaded: scrub whatever the environment holds under the secret names.
        values = [part for name in SECRET_VARIABLES for part in os.environ.get(name, "").split(",")]
        database = os.environ.get("DATABASE_URL", "")
    else:
        values = [secret.reveal() for secret in settings.secrets if secret is not settings.database_url]
        database = settings.database_url.reveal()
    with contextlib.suppress(Exception):  # a URL that does not parse has no password to hide
        values.append(make_url(database).password or "")
    return [value.strip() for value in values if len(value.strip()) >= 4]


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def main(out: TextIO | None = None) -> int:
    """Print one line per check and a summary; 0 when nothing failed, 1 otherwise."""
    out = out or sys.stdout
    settings, lines = load_configuration()
    secrets = _secrets(settings)
    if settings is None:
        lines.append(Line(SKIP, "other checks", "fix the configuration first"))
    else:
        lines.insert(0, Line(OK, "configuration", "every variable is well-formed"))
        # Library chatter would drown the report: below WARNING only when asked for DEBUG. On stderr, scrubbed.
        level = "WARNING" if settings.log_level == "INFO" else settings.log_level
        configure_logging(level, sys.stderr, settings.secrets)
        # discord.client warns about voice support (never used) and the interactions URL (a line of its own).
        logging.getLogger("discord.client").setLevel(logging.ERROR)
        lines += asyncio.run(run_checks(settings))
    for line in lines:
        print(redact(line.render(), secrets), file=out)
    print(summary(lines), file=out)
    return 1 if any(line.mark == FAIL for line in lines) else 0
