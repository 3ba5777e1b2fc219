"""Settings from the environment (and `.env` when present), validated once at start.

The names and their meanings are the table in docs/operator.md (section 3, Environment variables); a bad
value raises `ConfigError` whose message names the variable, so the entry point can print one clear line
instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from dotenv import find_dotenv, load_dotenv

from bot.errors import ConfigError
from bot.images import PICTURE_MEMORY
from bot.presets import PRESETS
from bot.text import printable

DEFAULT_RUNPOD_API_URL = "https://api.runpod.ai/v2"
# The endpoint id of RunPod's local test server, which serves one worker with no id in its paths.
LOCAL_ENDPOINT = "local"
DEFAULT_DATABASE_URL = "sqlite:///data/bot.db"
_DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_MB = 1024 * 1024
MIN_PICTURE_MEMORY_MB = 32  # under this, an ordinary SDXL picture could not be re-encoded to fit an upload
# The variables whose values are secrets: never in a log line or in `python -m bot check`'s report.
# BOT_ENCRYPTION_KEY may list several keys; of DATABASE_URL, the password is what matters.
SECRET_VARIABLES = ("DISCORD_TOKEN", "RUNPOD_API_KEY", "RUNPOD_KEY", "BOT_ENCRYPTION_KEY", "DATABASE_URL")
# BOT_ENCRYPTION_KEY: a Fernet key, or any secret this long (a PaaS's generated secret is 64 hex characters, 256
# bits); 32 characters of hex are 128 bits, what Fernet's own AES key has.
MIN_SECRET_LENGTH = 32
RANDOM_KEY_COMMAND = 'python -c "import secrets; print(secrets.token_hex(32))"'


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in `repr`, `str`, f-strings or logs."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    @property
    def masked(self) -> str:
        """What an admin may see: enough to recognise the key, not to use it."""
        tail = self._value[-4:] if len(self._value) >= 12 else ""
        return f"…{tail}" if tail else "…"

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    discord_token: Secret | None = None
    runpod_api_key: Secret | None = None
    runpod_endpoint_id: str | None = None
    runpod_api_url: str = DEFAULT_RUNPOD_API_URL
    runpod_local: bool = False  # RunPod's local test server (docs/runpod-api.md, Local test server)
    runpod_worker: str = "sdxl"
    database_url: Secret = Secret(DEFAULT_DATABASE_URL)
    encryption_keys: tuple[Secret, ...] = ()
    guild_ids: tuple[int, ...] = ()
    shard_count: int | None = None  # sharded over several processes when set
    shard_ids: tuple[int, ...] | None = None  # this process's shards; all of them when unset
    log_level: str = "INFO"
    # PICTURE_MEMORY_MB: what the pictures being decoded or re-encoded at once may take together (bot/images.py)
    picture_memory: int = PICTURE_MEMORY
    # PORT: the bot's web server (health, metrics, RunPod's webhooks: bot/web.py); none when unset
    port: int | None = None
    # PUBLIC_URL: where RunPod reaches that server; every /run then carries a webhook under it (bot/push.py)
    public_url: str | None = None

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """The values of SECRET_VARIABLES, as loaded."""
        loaded = (self.discord_token, self.runpod_api_key, self.database_url, *self.encryption_keys)
        return tuple(secret for secret in loaded if secret is not None)

    def owns_guild(self, guild_id: int | None) -> bool:
        """Whether this process's shards receive that guild's events (DMs go to shard 0)."""
        if self.shard_count is None or self.shard_ids is None:
            return True
        return ((guild_id or 0) >> 22) % self.shard_count in self.shard_ids

    def require_discord_token(self) -> Secret:
        if self.discord_token is None:
            raise ConfigError(
                "DISCORD_TOKEN is not set: put the bot token from the Discord developer portal "
                "in the environment or in .env"
            )
        return self.discord_token

    def require_runpod(self) -> tuple[Secret, str]:
        """The operator's default key and endpoint, for the CLI and for guilds without their own."""
        if self.runpod_local:  # the local test server asks for no key
            return self.runpod_api_key or Secret(""), LOCAL_ENDPOINT
        if self.runpod_api_key is None:
            raise ConfigError("RUNPOD_API_KEY is not set (RUNPOD_KEY is accepted too)")
        if self.runpod_endpoint_id is None:
            raise ConfigError("RUNPOD_ENDPOINT_ID is not set (or give RUNPOD_BASE_URL=https://api.runpod.ai/v2/<id>)")
        return self.runpod_api_key, self.runpod_endpoint_id


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting. With no mapping given, `.env` is loaded first (real env wins)."""
    if environ is None:
        load_dotenv(find_dotenv(usecwd=True), override=False)
        environ = os.environ
    env = {key: value.strip() for key, value in environ.items() if value.strip()}

    api_url, endpoint_from_base, local = _runpod_urls(env)
    worker = env.get("RUNPOD_WORKER", "sdxl").lower()
    if worker not in PRESETS:
        raise ConfigError(f"RUNPOD_WORKER must be one of {', '.join(PRESETS)}, not {worker!r}")
    key = env.get("RUNPOD_API_KEY") or env.get("RUNPOD_KEY")
    return Settings(
        discord_token=_secret(env.get("DISCORD_TOKEN")),
        runpod_api_key=_secret(key),
        runpod_endpoint_id=endpoint_from_base
        if local
        else _endpoint_id(env.get("RUNPOD_ENDPOINT_ID") or endpoint_from_base),
        runpod_api_url=api_url,
        runpod_local=local,
        runpod_worker=worker,
        database_url=Secret(_database_url(env.get("DATABASE_URL", DEFAULT_DATABASE_URL))),
        encryption_keys=_encryption_keys(env.get("BOT_ENCRYPTION_KEY", "")),
        guild_ids=_guild_ids(env.get("DISCORD_GUILD_IDS", "")),
        **_shards(env.get("SHARD_COUNT"), env.get("SHARD_IDS")),
        log_level=_log_level(env.get("LOG_LEVEL", "INFO")),
        picture_memory=_picture_memory(env.get("PICTURE_MEMORY_MB")),
        port=_port(env.get("PORT")),
        public_url=_public_url(env.get("PUBLIC_URL")),
    )


def _secret(value: str | None) -> Secret | None:
    return Secret(value) if value else None


def _runpod_urls(env: Mapping[str, str]) -> tuple[str, str | None, bool]:
    """RUNPOD_API_URL is the API root; RUNPOD_BASE_URL (the original script's) names one endpoint, or with no
    path at all RunPod's local test server (`python handler.py --rp_serve_api`)."""
    endpoint = None
    root = env.get("RUNPOD_API_URL")
    base = env.get("RUNPOD_BASE_URL")
    if base:
        _check_http_url("RUNPOD_BASE_URL", base)
        parts = urlsplit(base)
        if parts.path in ("", "/") and parts.hostname != urlsplit(DEFAULT_RUNPOD_API_URL).hostname:
            return base.rstrip("/"), LOCAL_ENDPOINT, True
        parent, _, endpoint = base.rstrip("/").rpartition("/")
        if not endpoint or urlsplit(parent).path in ("", "/"):
            raise ConfigError(f"RUNPOD_BASE_URL must look like {DEFAULT_RUNPOD_API_URL}/<endpoint_id>")
        root = root or parent
    root = root or DEFAULT_RUNPOD_API_URL
    _check_http_url("RUNPOD_API_URL", root)
    return root.rstrip("/"), endpoint, False


def _port(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"PORT must be a TCP port number (1-65535), not {value!r}")
    return int(value)


def _public_url(value: str | None) -> str | None:
    """The base RunPod's webhooks are sent under; a path (a proxy's prefix) is kept, a query is refused."""
    if value is None:
        return None
    _check_http_url("PUBLIC_URL", value)
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise ConfigError(f"PUBLIC_URL must be a base URL such as https://my-bot.example.com, not {value!r}")
    return value.rstrip("/")


def _check_http_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, not {value!r}")


def _endpoint_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"RUNPOD_ENDPOINT_ID must be an endpoint id such as 'abc123xyz', not {value!r}")
    return value


def normalise_database_url(url: str) -> str:
    """Heroku's `postgres://` is SQLAlchemy's `postgresql://`; every other URL is kept as written."""
    return url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url


def _database_url(value: str) -> str:
    scheme = urlsplit(value).scheme.split("+")[0]
    if scheme not in _DATABASE_SCHEMES:
        # Never echo the value: it may hold a password.
        raise ConfigError("DATABASE_URL must start with sqlite:///, postgres:// or postgresql://")
    return value


def is_fernet_key(value: str) -> bool:
    """A key Fernet takes as it is: 32 bytes in url-safe base64 (44 characters)."""
    try:
        Fernet(value)
    except ValueError:
        return False
    return True


def _encryption_keys(value: str) -> tuple[Secret, ...]:
    """Each entry is a Fernet key, used as it is, or a long random secret that bot/crypto.py derives one from."""
    keys = [part.strip() for part in value.split(",") if part.strip()]
    for position, key in enumerate(keys, start=1):
        if not is_fernet_key(key) and len(key) < MIN_SECRET_LENGTH:
            # Never echo the value, nor its start: it is (meant to be) a secret.
            raise ConfigError(
                f"BOT_ENCRYPTION_KEY entry {position} is too short ({len(key)} characters): give a Fernet key or a "
                f"random secret of at least {MIN_SECRET_LENGTH} characters; make one with: {RANDOM_KEY_COMMAND}"
            )
    return tuple(Secret(key) for key in keys)


def _guild_ids(value: str) -> tuple[int, ...]:
    ids = []
    for part in (part.strip() for part in value.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise ConfigError(f"DISCORD_GUILD_IDS must be comma-separated numeric guild ids; {part!r} is not one")
        ids.append(int(part))
    return tuple(ids)


def _shards(count: str | None, ids: str | None) -> dict[str, Any]:
    if count is None:
        if ids:
            raise ConfigError("SHARD_IDS needs SHARD_COUNT (the total number of shards across every process)")
        return {}
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"SHARD_COUNT must be a whole number of at least 1, not {count!r}")
    total = int(count)
    if not ids:
        return {"shard_count": total, "shard_ids": None}
    parts = [part.strip() for part in ids.split(",") if part.strip()]
    if not all(part.isdigit() and int(part) < total for part in parts):
        raise ConfigError(f"SHARD_IDS must be comma-separated shard numbers from 0 to {total - 1}, not {ids!r}")
    return {"shard_count": total, "shard_ids": tuple(sorted({int(part) for part in parts}))}


def _picture_memory(value: str | None) -> int:
    if value is None:
        return PICTURE_MEMORY
    if not value.isdigit() or int(value) < MIN_PICTURE_MEMORY_MB:
        raise ConfigError(
            f"PICTURE_MEMORY_MB must be a whole number of megabytes, at least {MIN_PICTURE_MEMORY_MB}, not {value!r}"
        )
    return int(value) * _MB


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, not {value!r}")
    return level


def configure_logging(level: str, stream: TextIO = sys.stdout, secrets: tuple[Secret | None, ...] = ()) -> None:
    """Log to stdout (the PaaS log), one line per record, with every token and key blanked out of every line.

    discord.py logs webhook URLs, which carry interaction tokens, at DEBUG; the formatter removes them
    along with the secrets it is given, so even LOG_LEVEL=DEBUG is safe to paste into an issue. Text from
    outside (a worker's error, RunPod's words) is made `printable`, so it never writes a line of its own.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(tuple(secret.reveal() for secret in secrets if secret)))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("discord.http").setLevel(logging.WARNING)
    logging.getLogger("discord.client").addFilter(_VOICE_WARNINGS)  # added once: a logger keeps no duplicates


class _WithoutVoiceWarnings(logging.Filter):
    """discord.py warns at every start that PyNaCl and davey are missing: they are for voice, which this bot
    never uses. Only those two records are dropped; every other warning of discord.client stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.getMessage().endswith("voice will NOT be supported"))


_VOICE_WARNINGS = _WithoutVoiceWarnings()


class RedactingFormatter(logging.Formatter):
    _TOKEN_IN_URL = re.compile(r"(/(?:webhooks|interactions)/\d+/)[\w.-]{20,}")
    _TOKEN_IN_PAYLOAD = re.compile(r"""(['"]token['"]:\s*['"])[^'"]+""")  # gateway events at DEBUG
    # Whatever a member typed (a form's RunPod key, a command's options) arrives as "value" in the gateway
    # events discord.py prints at DEBUG; the string is blanked whichever quotes its repr chose.
    _VALUE_IN_PAYLOAD = re.compile(r"""(['"]value['"]:\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._secrets = tuple(secret for secret in secrets if len(secret) >= 6)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line itself, arguments filled in, made `printable`: a worker's error text with line breaks and
        escape bytes can neither start lines of its own in the log nor reach the terminal's escapes. A
        traceback that `exc_info` appends after it (our own) keeps its lines."""
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        text = self._TOKEN_IN_URL.sub(r"\1<token>", super().format(record))
        text = self._TOKEN_IN_PAYLOAD.sub(r"\1<token>", text)
        text = self._VALUE_IN_PAYLOAD.sub(r"\1'<typed>'", text)
        for secret in self._secrets:
            text = text.replace(secret, "<secret>")
        return text
