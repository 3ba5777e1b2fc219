"""The Discord double's data model: ids and permission values, what it holds (guilds, messages, interactions,
gateway connections, REST calls) and the errors it answers with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
from aiohttp import web

APP_ID = 1_300_000_000_000_000_001
# Deliberately not APP_ID (modern apps share the id) so code mixing up user and application ids fails.
BOT_USER_ID = 1_300_000_000_000_000_002
DEFAULT_GUILD_ID = 1_100_000_000_000_000_001
DEFAULT_CHANNEL_ID = 1_100_000_000_000_000_101
DEFAULT_USER_ID = 1_200_000_000_000_000_001

MEMBER_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, read_message_history=True, embed_links=True, attach_files=True,
    add_reactions=True, use_application_commands=True, use_external_emojis=True, send_messages_in_threads=True,
).value  # fmt: skip
APP_PERMISSIONS = (discord.Permissions.text() | discord.Permissions(view_channel=True)).value
EPHEMERAL, LOADING = 1 << 6, 1 << 7
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024

_ERRORS = {
    0: "General error",
    10003: "Unknown Channel",
    10008: "Unknown Message",
    10015: "Unknown Webhook",
    10062: "Unknown interaction",
    40005: "Request entity too large",
    40060: "Interaction has already been acknowledged.",
    50013: "Missing Permissions",
    50027: "Invalid Webhook Token",
    50035: "Invalid Form Body",
}
_DEFAULT_CODES = {401: 50027, 403: 50013, 400: 50035, 413: 40005}
# The routes (server._ROUTES names) an interaction token authorises, with webhook rate limits (ratelimits).
_WEBHOOK_ROUTES = frozenset(
    {"edit_original", "get_original", "delete_original", "followup", "edit_followup", "get_followup",
     "delete_followup"}
)  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class UserSpec:
    id: int = DEFAULT_USER_ID
    username: str = "member"
    global_name: str | None = "Member"
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "username": self.username, "discriminator": "0",
                "global_name": self.global_name, "avatar": None, "bot": self.bot}  # fmt: skip


@dataclass
class ChannelSpec:
    id: int = DEFAULT_CHANNEL_ID
    name: str = "general"
    type: int = 0
    nsfw: bool = False
    position: int = 0


@dataclass
class GuildSpec:
    id: int = DEFAULT_GUILD_ID
    name: str = "Test Guild"
    channels: list[ChannelSpec] = field(default_factory=lambda: [ChannelSpec()])
    owner_id: int = DEFAULT_USER_ID
    everyone_permissions: int = MEMBER_PERMISSIONS
    member_count: int = 2


# A second server, for tests with two servers on one bot (one of them as heavy as it can be).
OTHER_GUILD_ID = DEFAULT_GUILD_ID + 1000
OTHER_CHANNEL_ID = DEFAULT_CHANNEL_ID + 1000


def two_guilds() -> list[GuildSpec]:
    """The default server and a second one, each with one channel (fresh specs: a test may change them)."""
    return [
        GuildSpec(),
        GuildSpec(id=OTHER_GUILD_ID, name="Other", channels=[ChannelSpec(id=OTHER_CHANNEL_ID, name="art")]),
    ]


DEFAULT_USER = UserSpec()
BOT_USER = UserSpec(id=BOT_USER_ID, username="imagine-bot", global_name=None, bot=True)


@dataclass
class Attachment:
    filename: str
    data: bytes
    content_type: str | None
    id: int = 0  # the files[n] index while in a request, a snowflake once stored on a message


@dataclass
class Recorded:
    """One REST call the bot made."""

    method: str
    path: str
    route: str
    token: str | None
    channel_id: int | None
    message_id: int | None
    json: Any
    files: list[Attachment]
    status: int  # 0 until answered; -1 (doubles.faults.RESET) when Chaos hung up on it
    at: float  # when the request reached the double (its headers; the body is read after)
    query: dict[str, str] = field(default_factory=dict)
    bucket: str | None = None  # its rate-limit bucket, when rate limits are on
    chaos: str | None = None  # the fault that hit it ("reset", "503"...: Chaos, or a one-shot reset), else None


@dataclass
class Message:
    """A message as the double holds it: the state a member would see right now."""

    id: int
    channel_id: int
    content: str | None
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[Attachment]
    flags: int
    interaction_token: str | None
    deleted: bool = False
    interaction_id: int | None = None
    created_at: datetime = field(default_factory=_now)
    edited_at: datetime | None = None
    reply_to: int | None = None  # the message this one replies to (message_reference)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)


@dataclass
class Interaction:
    id: int
    token: str
    payload: dict[str, Any]
    callback_type: int | None = None  # set once the bot has answered the callback
    dispatched_at: float | None = None  # time.monotonic() once send() wrote INTERACTION_CREATE, as Recorded.at

    @property
    def guild_id(self) -> int | None:
        gid = self.payload.get("guild_id")
        return int(gid) if gid else None


@dataclass
class GatewayConnection:
    """One websocket client (a shard); kept after it closes so tests can inspect what it was sent."""

    ws: web.WebSocketResponse
    shard: tuple[int, int] = (0, 1)
    session_id: str = ""
    seq: int = 0
    identify: dict[str, Any] | None = None
    ready: bool = False  # identified or resumed, so it may receive dispatches
    guild_ids: list[int] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)  # (t, d) of every dispatch sent
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ApiError(Exception):
    def __init__(self, status: int, code: int | None = None, message: str | None = None) -> None:
        self.status, self.code = status, code if code is not None else _DEFAULT_CODES.get(status, 0)
        self.message = message or _ERRORS.get(self.code, f"{status}: error")
        super().__init__(f"{self.status} {self.code} {self.message}")
