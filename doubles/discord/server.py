"""The Discord double's HTTP server: :class:`DiscordDouble` (REST API v10, gateway and attachment CDN on
loopback), the interactions it builds and sends, and :func:`run_bot`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import mimetypes
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from ..faults import RESET, Chaos
from . import ratelimits
from .model import (
    _WEBHOOK_ROUTES,
    APP_ID,
    APP_PERMISSIONS,
    BOT_USER,
    DEFAULT_CHANNEL_ID,
    DEFAULT_FILE_LIMIT,
    DEFAULT_GUILD_ID,
    DEFAULT_USER,
    EPHEMERAL,
    LOADING,
    MEMBER_PERMISSIONS,
    ApiError,
    Attachment,
    ChannelSpec,
    GatewayConnection,
    GuildSpec,
    Interaction,
    Message,
    Recorded,
    UserSpec,
    _now,
)
from .ratelimits import RateLimitHit, RateLimits, _BucketRef, _Window

ClientT = TypeVar("ClientT", bound=discord.Client)

_W = r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)"
_APP = r"/applications/(?P<app>\d+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), name)
    for m, p, name in [
        ("GET", r"/users/@me", "users_me"),
        ("GET", r"/oauth2/applications/@me", "app_info"),
        ("GET", r"/gateway(?:/bot)?", "gateway"),
        ("PUT", _APP + r"/commands", "sync_global"),
        ("PUT", _APP + r"/guilds/(?P<guild_id>\d+)/commands", "sync_guild"),
        ("GET", _APP + r"(?:/guilds/(?P<guild_id>\d+))?/commands", "get_commands"),
        ("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", "callback"),
        ("PATCH", _W + r"/messages/@original", "edit_original"),
        ("GET", _W + r"/messages/@original", "get_original"),
        ("DELETE", _W + r"/messages/@original", "delete_original"),
        ("PATCH", _W + r"/messages/(?P<message_id>\d+)", "edit_followup"),
        ("GET", _W + r"/messages/(?P<message_id>\d+)", "get_followup"),
        ("DELETE", _W + r"/messages/(?P<message_id>\d+)", "delete_followup"),
        ("POST", _W, "followup"),
        ("POST", r"/channels/(?P<channel_id>\d+)/messages", "channel_message"),
        ("PATCH", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)", "edit_channel_message"),
        ("GET", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)", "get_channel_message"),
        ("DELETE", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)", "delete_channel_message"),
        ("GET", r"/channels/(?P<channel_id>\d+)", "get_channel"),
    ]
]
# What Chaos may fault when its routes are None: not logging in, nor the 3-second acknowledgement.
CHAOS_ROUTES = frozenset(
    {name for _, _, name in _ROUTES} - {"users_me", "app_info", "gateway", "sync_global", "sync_guild",
                                        "get_commands", "callback"} | {"other", "cdn"}
)  # fmt: skip
_CHAOS_NAMES = frozenset({name for _, _, name in _ROUTES} | {"other", "cdn"})
_REASONS = {"500": "Internal Server Error", "502": "Bad Gateway", "503": "Service Unavailable"}


@dataclass
class _Fault:
    route: str
    status: int
    count: int
    code: int | None
    retry_after: float | None
    token: str | None
    with_files: bool = False


def _json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    # web.json_response appends "; charset=utf-8", which makes discord.py's json_or_text return a str.
    return web.Response(status=status, body=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip


def _typed_option(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {"name": name, **value}
    kinds = ((bool, 5), (int, 4), (float, 10), (str, 3))  # bool first: it is an int subclass
    kind = next((k for t, k in kinds if isinstance(value, t)), None)
    if kind is None:
        raise TypeError(f"option {name!r}: pass a dict with 'type' for {type(value).__name__} values")
    return {"name": name, "type": kind, "value": value}


class DiscordDouble:
    """Loopback Discord: REST under ``rest_base`` and the gateway at ``gateway_url``."""

    def __init__(
        self, *, guilds: Sequence[GuildSpec] | None = None, token: str = "test-token", shard_count: int = 1,
        token_ttl: float = 900.0, enforce_ack_deadline: bool = False, rate_limits: RateLimits | None = None,
        attachment_url_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic, chaos: Chaos | None = None,
    ) -> None:  # fmt: skip
        self.guilds = list(guilds) if guilds is not None else [GuildSpec()]  # one guild, one #general
        self.token = token
        self.shard_count = shard_count  # what GET /gateway/bot recommends
        self.token_ttl = token_ttl  # webhook routes answer 401/50027 for older interactions
        # Attachment addresses carry an expiry (ex=) this many seconds after the message was read, and the CDN
        # refuses them after it, as Discord's do after about a day; None: plain addresses that never expire.
        self.attachment_url_ttl = attachment_url_ttl
        self.enforce_ack_deadline = enforce_ack_deadline  # callbacks later than 3 s answer 404/10062
        self.rate_limits = rate_limits  # None: no limits and no X-RateLimit headers, as before
        self.clock = clock  # the rate-limit windows' clock; tests may pass a fake one
        self.chaos = chaos  # seeded random faults on CHAOS_ROUTES (or chaos.routes); see doubles/faults.py
        self.rate_limit_hits: list[RateLimitHit] = []  # every 429 sent, injected ones included
        self.denied_channels: set[int] = set()
        self.calls: list[Recorded] = []
        self.messages: dict[int, Message] = {}
        self.uploaded: dict[int, Attachment] = {}  # members' uploads to slash commands, by attachment id
        self.interactions: dict[str, Interaction] = {}
        self.connections: list[GatewayConnection] = []
        self._originals: dict[str, int] = {}
        self._commands: dict[int | None, list[dict[str, Any]]] = {}
        self._faults: list[_Fault] = []
        self._windows: dict[tuple[str, str], _Window] = {}
        self._sessions: dict[str, tuple[int, int]] = {}
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        # Discord's edge takes hundreds of new connections at once; aiohttp's default backlog (128) would drop
        # the SYNs past it and their clients would wait out a 1 s retransmission (benchmarks/ACK-RESULTS.md).
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for conn in self.connections:
            if not conn.ws.closed:
                await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def rest_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway at this double; restore on exit."""
        ws_cls = discord.gateway.DiscordWebSocket
        old = discord.http.Route.BASE, ws_cls.DEFAULT_GATEWAY
        discord.http.Route.BASE, ws_cls.DEFAULT_GATEWAY = self.rest_base, yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE, ws_cls.DEFAULT_GATEWAY = old

    def install(self, monkeypatch: Any) -> None:
        """Like patch_discord, through pytest's monkeypatch."""
        monkeypatch.setattr(discord.http.Route, "BASE", self.rest_base)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(self.gateway_url))

    # inspection -----------------------------------------------------------------------------------------
    def original_message(self, token: str) -> Message | None:
        mid = self._originals.get(token)
        return self.messages.get(mid) if mid is not None else None

    def calls_for(self, route: str, token: str | None = None) -> list[Recorded]:
        return [c for c in self.calls if c.route == route and (token is None or c.token == token)]

    def commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        return list(self._commands.get(guild_id, []))

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
        """Poll until predicate() is truthy; on timeout list the recent calls to show what did happen."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                recent = "\n".join(f"  {c.method} {c.path} [{c.route}] -> {c.status}" for c in self.calls[-15:])
                raise TimeoutError(f"condition not met within {timeout}s; last calls:\n{recent or '  (none)'}")
            await asyncio.sleep(0.01)

    # fault injection ------------------------------------------------------------------------------------
    def fail_next(
        self, route: str, status: int, *, count: int = 1, code: int | None = None,
        retry_after: float | None = None, token: str | None = None, with_files: bool = False,
    ) -> None:  # fmt: skip
        """Answer the next ``count`` calls to ``route`` (optionally only for ``token``, or only those that upload
        files) with an error; ``status`` :data:`RESET` hangs up without an answer, as a connection reset does."""
        self._faults.append(_Fault(route, status, count, code, retry_after, token, with_files))

    def _take_fault(self, rec: Recorded, request: web.Request) -> web.Response | None:
        route, token = rec.route, rec.token
        for fault in self._faults:
            if fault.route == route and fault.token in (None, token) and fault.count > 0:
                if fault.with_files and not rec.files:
                    continue
                fault.count -= 1
                break
        else:
            return None
        if fault.status == RESET:
            rec.chaos = "reset"
            if request.transport is not None:
                request.transport.abort()
            return web.Response()  # never reaches the client: the socket is gone
        if fault.status != 429:
            code = fault.code
            if code is None and fault.status == 404:
                code = 10062 if route == "callback" else 10008
            return self._error(ApiError(fault.status, code))
        wait = fault.retry_after if fault.retry_after is not None else 0.05
        headers = {
            "Via": "1.1 google",  # without Via discord.py assumes a Cloudflare ban and gives up
            "Retry-After": str(max(1, round(wait))),
            "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + wait:.3f}", "X-RateLimit-Reset-After": f"{wait:.3f}",
            "X-RateLimit-Bucket": f"double-{route}", "X-RateLimit-Scope": "user",
        }  # fmt: skip
        body = {"message": "You are being rate limited.", "retry_after": wait, "global": False}
        self.rate_limit_hits.append(RateLimitHit(self.clock(), route, f"double-{route}", "user", "injected", wait,
                                                 token, None))  # fmt: skip
        return _json_response(429, body, headers)

    @property
    def chaos(self) -> Chaos | None:
        """Seeded random faults (doubles.faults.Chaos); ``routes`` are route names, "cdn" and "other"."""
        return self._chaos

    @chaos.setter
    def chaos(self, chaos: Chaos | None) -> None:
        unknown = set(chaos.routes or ()) - _CHAOS_NAMES if chaos is not None else set()
        if unknown:  # a misspelt route would never be faulted
            raise ValueError(f"unknown routes {sorted(unknown)}; expected some of {sorted(_CHAOS_NAMES)}")
        self._chaos = chaos

    async def _chaos_fault(self, route: str, request: web.Request) -> tuple[str | None, web.Response | None]:
        """(the Chaos kind drawn for this request, if any; its answer, or None to handle the request normally)."""
        chaos = self._chaos
        kind = chaos.draw(route, CHAOS_ROUTES) if chaos is not None else None
        if kind is None or chaos is None:
            return None, None
        if kind == "slow":
            await asyncio.sleep(chaos.slow_s)
            return kind, None
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return kind, web.Response()  # never reaches the client: the socket is gone
        return kind, self._error(ApiError(int(kind), 0, f"{kind}: {_REASONS[kind]}"))

    @staticmethod
    def _error(err: ApiError) -> web.Response:
        return _json_response(err.status, {"message": err.message, "code": err.code})

    # interactions -----------------------------------------------------------------------------------------
    def _snowflake(self, when: datetime | None = None) -> int:
        # The low 22 bits are free for a counter, so ids stay unique without moving the timestamp.
        return discord.utils.time_snowflake(when or _now()) | (next(self._counter) & 0x3FFFFF)

    def _guild(self, guild_id: int | None) -> GuildSpec | None:
        return next((g for g in self.guilds if g.id == guild_id), None)

    def _channel(self, channel_id: int) -> tuple[GuildSpec, ChannelSpec] | None:
        for g in self.guilds:
            for c in g.channels:
                if c.id == channel_id:
                    return g, c
        return None

    def _channel_payload(self, guild: GuildSpec, ch: ChannelSpec) -> dict[str, Any]:
        return {"id": str(ch.id), "type": ch.type, "name": ch.name, "position": ch.position,
                "permission_overwrites": [], "nsfw": ch.nsfw, "guild_id": str(guild.id), "parent_id": None,
                "topic": None, "last_message_id": None, "rate_limit_per_user": 0}  # fmt: skip

    def _interaction(
        self, itype: int, data: dict[str, Any], *, user: UserSpec | None = None,
        guild_id: int | None = DEFAULT_GUILD_ID, channel_id: int | None = DEFAULT_CHANNEL_ID,
        permissions: int = MEMBER_PERMISSIONS, app_permissions: int = APP_PERMISSIONS,
        created_at: datetime | None = None, attachment_size_limit: int = DEFAULT_FILE_LIMIT,
        message: dict[str, Any] | None = None,
    ) -> Interaction:  # fmt: skip
        user = user or DEFAULT_USER
        iid = self._snowflake(created_at)
        token = f"itok-{iid}-{next(self._counter)}"
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(APP_ID), "type": itype, "token": token, "version": 1,
            "data": data, "app_permissions": str(app_permissions), "locale": "en-US", "entitlements": [],
            "attachment_size_limit": attachment_size_limit,
        }  # fmt: skip
        guild = self._guild(guild_id)
        if guild is not None:
            ch = next((c for c in guild.channels if c.id == channel_id), guild.channels[0])
            data.setdefault("guild_id", str(guild.id))  # selects guild-scoped commands in the tree
            payload |= {
                "guild_id": str(guild.id), "guild_locale": "en-US", "context": 0,
                "channel_id": str(ch.id), "channel": self._channel_payload(guild, ch),
                "authorizing_integration_owners": {"0": str(guild.id)},
                "member": {"user": user.payload(), "roles": [], "joined_at": _now().isoformat(),
                           "permissions": str(permissions), "deaf": False, "mute": False, "flags": 0},
            }  # fmt: skip
        else:  # bot DM
            cid = channel_id or self._snowflake()
            payload |= {
                "user": user.payload(), "context": 1, "channel_id": str(cid),
                "channel": {"id": str(cid), "type": 1, "recipients": [user.payload()]},
                "authorizing_integration_owners": {"0": "0"},
            }  # fmt: skip
        if message is not None:
            payload["message"] = message
        interaction = Interaction(iid, token, payload)
        self.interactions[token] = interaction
        return interaction

    def _command_data(self, name: str, options: Any, subcommand: str | None) -> dict[str, Any]:
        opts = [_typed_option(k, v) for k, v in options.items()] if isinstance(options, dict) else options
        opts = list(opts or [])
        for depth, part in enumerate(reversed((subcommand or "").split())):  # "group sub": type 2 > type 1
            opts = [{"type": 2 if depth else 1, "name": part, "options": opts}]
        synced = [c for cmds in self._commands.values() for c in cmds if c.get("name") == name]
        cmd_id = synced[0]["id"] if synced else str(self._snowflake())
        return {"id": cmd_id, "name": name, "type": 1, "options": opts}

    def slash(
        self, name: str, options: dict[str, Any] | list[dict[str, Any]] | None = None, *,
        user: UserSpec | None = None, guild_id: int | None = DEFAULT_GUILD_ID,
        channel_id: int | None = DEFAULT_CHANNEL_ID, permissions: int = MEMBER_PERMISSIONS,
        app_permissions: int = APP_PERMISSIONS, created_at: datetime | None = None,
        subcommand: str | None = None, attachment_size_limit: int = DEFAULT_FILE_LIMIT,
    ) -> Interaction:  # fmt: skip
        """Build a CHAT_INPUT (type 2) interaction; ``created_at`` in the past makes an old token."""
        data = self._command_data(name, options, subcommand)
        if attachments := self._resolved_attachments(data["options"], channel_id):
            data["resolved"] = {"attachments": attachments}
        return self._interaction(2, data, user=user, guild_id=guild_id, channel_id=channel_id,
                                 permissions=permissions, app_permissions=app_permissions,
                                 created_at=created_at, attachment_size_limit=attachment_size_limit)  # fmt: skip

    def autocomplete(
        self, name: str, options: dict[str, Any], focused: str, *, subcommand: str | None = None,
        **kwargs: Any,
    ) -> Interaction:  # fmt: skip
        """Build an APPLICATION_COMMAND_AUTOCOMPLETE (type 4) interaction; kwargs as for slash()."""
        data = self._command_data(name, options, subcommand)
        leaf = data["options"]
        while leaf and leaf[0].get("type") in (1, 2):
            leaf = leaf[0]["options"]
        for opt in leaf:
            if opt["name"] == focused:
                opt["focused"] = True
        return self._interaction(4, data, **kwargs)

    def click(self, custom_id: str, *, message_id: int, values: list[str] | None = None, **kwargs: Any) -> Interaction:
        """Build a component (type 3) interaction: a button click, or a string select if ``values`` given."""
        ctype = 2 if values is None else 3
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": ctype}
        if values is not None:
            data["values"] = values
        if message_id not in self.messages:
            # A message from before the test (say, before a restart): hold one carrying the component,
            # since DynamicItem dispatch looks the component up in the interaction's message.
            comp = {"type": ctype, "custom_id": custom_id}
            options = [{"label": v, "value": v} for v in values or []]
            comp |= {"style": 1, "label": "button"} if ctype == 2 else {"options": options}
            cid = kwargs.get("channel_id", DEFAULT_CHANNEL_ID)
            row = {"type": 1, "components": [comp]}
            self.messages[message_id] = Message(message_id, cid, "", [], [row], [], 0, interaction_token=None)
        return self._interaction(3, data, message=self.message_json(self.messages[message_id]), **kwargs)

    def submit_modal(self, custom_id: str, values: dict[str, str], **kwargs: Any) -> Interaction:
        """Build a MODAL_SUBMIT (type 5) interaction with one text input (type 4) per value."""
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()]
        return self._interaction(5, {"custom_id": custom_id, "components": rows}, **kwargs)

    async def send(self, interaction: Interaction) -> None:
        """Dispatch INTERACTION_CREATE to the connected shard that owns the interaction's guild."""
        await self.dispatch("INTERACTION_CREATE", interaction.payload, guild_id=interaction.guild_id)
        interaction.dispatched_at = time.monotonic()

    async def dispatch(self, event: str, data: dict[str, Any], *, guild_id: int | None = None) -> None:
        """Send any gateway event to the shard owning ``guild_id`` (shard 0 when None)."""

        def owner() -> GatewayConnection | None:
            for conn in self.connections:
                sid, count = conn.shard
                if conn.ready and not conn.ws.closed and ((guild_id or 0) >> 22) % count == sid:
                    return conn
            return None

        await self.wait_for(lambda: owner() is not None)
        conn = owner()
        assert conn is not None
        await self._dispatch(conn, event, data)

    # gateway ----------------------------------------------------------------------------------------------
    async def _dispatch(self, conn: GatewayConnection, event: str, data: Any) -> None:
        async with conn.lock:  # keep sequence numbers and frame order in step across senders
            conn.seq += 1
            conn.events.append((event, data))
            await conn.ws.send_str(json.dumps({"op": 0, "t": event, "s": conn.seq, "d": data}))

    def _guild_create(self, guild: GuildSpec) -> dict[str, Any]:
        everyone = {"id": str(guild.id), "name": "@everyone", "permissions": str(guild.everyone_permissions),
                    "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False,
                    "flags": 0}  # fmt: skip
        me = {"user": BOT_USER.payload(), "roles": [], "joined_at": _now().isoformat(), "deaf": False,
              "mute": False, "flags": 0}  # fmt: skip
        return {
            "id": str(guild.id), "name": guild.name, "owner_id": str(guild.owner_id), "unavailable": False,
            "member_count": guild.member_count, "large": False, "features": [], "emojis": [], "stickers": [],
            "roles": [everyone], "members": [me], "threads": [], "voice_states": [], "presences": [],
            "stage_instances": [], "guild_scheduled_events": [], "premium_tier": 0, "icon": None,
            "preferred_locale": "en-US", "joined_at": _now().isoformat(), "mfa_level": 0,
            "verification_level": 0, "channels": [self._channel_payload(guild, c) for c in guild.channels],
        }  # fmt: skip

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = GatewayConnection(ws)
        self.connections.append(conn)
        # TEXT frames even though the client asks for zlib-stream: discord.py only inflates bytes frames.
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            op, d = frame.get("op"), frame.get("d")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                await self._identify(conn, d)
            elif op == 6:
                if d.get("session_id") not in self._sessions:
                    await ws.send_str(json.dumps({"op": 9, "d": False}))
                    continue
                conn.session_id, conn.shard = d["session_id"], self._sessions[d["session_id"]]
                conn.seq, conn.ready = d.get("seq") or 0, True
                await self._dispatch(conn, "RESUMED", {})
        return ws

    async def _identify(self, conn: GatewayConnection, d: dict[str, Any]) -> None:
        if d.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        sid, count = d.get("shard") or (0, 1)
        conn.identify, conn.shard = d, (sid, count)
        conn.session_id = f"session-{self._snowflake()}"
        self._sessions[conn.session_id] = conn.shard
        owned = [g for g in self.guilds if (g.id >> 22) % count == sid]
        ready: dict[str, Any] = {
            "v": 10, "user": BOT_USER.payload(), "session_id": conn.session_id,
            "resume_gateway_url": self.gateway_url, "application": {"id": str(APP_ID), "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in owned], "private_channels": [],
        }  # fmt: skip
        if "shard" in d:
            ready["shard"] = [sid, count]
        await self._dispatch(conn, "READY", ready)
        for guild in owned:
            conn.guild_ids.append(guild.id)
            await self._dispatch(conn, "GUILD_CREATE", self._guild_create(guild))
        conn.ready = True

    # REST -----------------------------------------------------------------------------------------------
    async def _cdn(self, request: web.Request) -> web.Response:
        _, faulted = await self._chaos_fault("cdn", request)
        if faulted is not None:
            return faulted
        aid = int(request.match_info["attachment_id"])
        if self.attachment_url_ttl is not None and aid not in self.uploaded:
            try:  # Discord signs an attachment's address with its expiry (ex=, seconds since 1970 in hex)
                expired = int(request.query.get("ex", "0"), 16) < time.time()
            except ValueError:
                expired = True
            if expired:
                return web.Response(status=404, text="This content is no longer available.")
        held = [a for m in self.messages.values() for a in m.attachments] + list(self.uploaded.values())
        for a in held:
            if a.id == aid:
                return web.Response(body=a.data, content_type=a.content_type or "application/octet-stream")
        return web.Response(status=404)

    def attachment_option(self, data: bytes, filename: str = "start.png",
                          content_type: str | None = "image/png") -> dict[str, Any]:  # fmt: skip
        """A slash command's attachment option (type 11), as a member's upload: pass it in ``slash``'s options.
        Discord puts the file itself in ``data.resolved.attachments``; ``slash`` does that."""
        attachment = Attachment(filename, data, content_type, id=self._snowflake())
        self.uploaded[attachment.id] = attachment
        return {"type": 11, "value": str(attachment.id)}

    def _resolved_attachments(self, options: list[dict[str, Any]], channel_id: int | None) -> dict[str, Any]:
        cdn = f"http://127.0.0.1:{self.port}/attachments/{channel_id or 0}"
        found = {}
        for option in options:
            attachment = self.uploaded.get(int(option["value"])) if option.get("type") == 11 else None
            if attachment is not None:
                found[str(attachment.id)] = {
                    "id": str(attachment.id), "filename": attachment.filename, "size": len(attachment.data),
                    "url": f"{cdn}/{attachment.id}/{attachment.filename}",
                    "proxy_url": f"{cdn}/{attachment.id}/{attachment.filename}",
                    "content_type": attachment.content_type,
                }  # fmt: skip
        return found

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[Any, list[Attachment]]:
        if request.content_type.startswith("multipart/"):
            payload, files = None, {}
            async for part in await request.multipart():
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.name and (m := re.fullmatch(r"files\[(\d+)\]", part.name)):
                    filename = part.filename or f"file{m[1]}"
                    # discord.py sends every file as application/octet-stream; guess like Discord does
                    ctype = mimetypes.guess_type(filename)[0] or part.headers.get("Content-Type")
                    files[int(m[1])] = Attachment(filename, bytes(await part.read()), ctype, int(m[1]))
            return payload, [files[k] for k in sorted(files)]
        text = await request.text()
        return (json.loads(text) if text else None), []

    async def _rest(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        path = "/" + request.match_info["tail"]
        route, groups = "other", {}
        for method, pattern, name in _ROUTES:
            if request.method == method and (m := pattern.fullmatch(path)):
                route, groups = name, m.groupdict()
                break
        body, files = await self._read_body(request)
        mid = groups.get("message_id")
        rec = Recorded(
            request.method, path, route, groups.get("token"),
            int(groups["channel_id"]) if groups.get("channel_id") else None, int(mid) if mid else None,
            body, files, 0, arrived, dict(request.query),
        )  # fmt: skip
        self.calls.append(rec)  # appended before answering so call order is arrival order
        response = self._take_fault(rec, request)
        if response is None:  # drawn before the rate limit counts it: a faulted request has no effect at all
            rec.chaos, response = await self._chaos_fault(route, request)
        limit_headers: dict[str, str] = {}
        if response is None and self.rate_limits is not None:
            response, limit_headers = self._rate_limit(rec, request, self.rate_limits)
        if response is None:
            try:
                response = self._handle(rec, request, groups)
            except ApiError as err:
                response = self._error(err)
            response.headers.update(limit_headers)  # on errors too: Discord counts and reports those as well
        rec.status = RESET if rec.chaos == "reset" else response.status
        return response

    # rate limits ----------------------------------------------------------------------------------------
    def _rate_limit(
        self, rec: Recorded, request: web.Request, limits: RateLimits
    ) -> tuple[web.Response | None, dict[str, str]]:
        """(a 429, or None when every bucket the request needs has room, and then the headers of the route's
        bucket after using it, which let a client pace itself before it is ever refused)."""
        now = self.clock()
        route_buckets = ratelimits.route_buckets(rec, limits, self.interactions)
        rec.bucket = route_buckets[0].name
        checked = [(bucket, ratelimits.current_window(self._windows, bucket, now)) for bucket in route_buckets]
        route_bucket, route_window = checked[0]
        if request.headers.get("Authorization") == f"Bot {self.token}":
            bot = _BucketRef("global", "bot", limits.bot_global, "global")
            # checked first: a global 429 says so
            checked.insert(0, (bot, ratelimits.current_window(self._windows, bot, now)))
        for bucket, window in checked:
            if window.full:
                return self._too_many(rec, bucket, window, route_bucket, route_window, now), {}
        for _, window in checked:
            window.used += 1
        return None, {"Via": "1.1 google", **ratelimits.limit_headers(route_bucket, route_window, now)}

    def _too_many(
        self, rec: Recorded, bucket: _BucketRef, window: _Window, route_bucket: _BucketRef, route_window: _Window,
        now: float,
    ) -> web.Response:  # fmt: skip
        """Discord's 429: the refusing bucket's wait in the body, the route's bucket in the headers."""
        wait = window.reset_after(now)
        is_global = bucket.scope == "global"
        headers = {
            # Discord's answers pass through Google's load balancer; without Via discord.py takes a 429 for a
            # Cloudflare ban and gives up instead of waiting.
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(wait))),
            **ratelimits.limit_headers(route_bucket, route_window, now),
            "X-RateLimit-Scope": bucket.scope,
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        else:  # the refusing bucket, say a channel's shared limit, may not be the route's own
            headers |= {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": f"{wait:.3f}",
                        "X-RateLimit-Reset": f"{time.time() + wait:.3f}"}  # fmt: skip
        body = {"message": "You are being rate limited.", "retry_after": round(wait, 3), "global": is_global}
        hit = RateLimitHit(now, rec.route, bucket.name, bucket.scope, bucket.key, wait, rec.token, rec.channel_id)
        self.rate_limit_hits.append(hit)
        return _json_response(429, body, headers)

    def _handle(self, rec: Recorded, request: web.Request, groups: dict[str, Any]) -> web.Response:
        inter = self.interactions.get(rec.token or "")
        # Interaction webhooks are authorised by their token alone; everything else needs the bot token.
        if rec.route == "callback":
            if inter is None or str(inter.id) != groups["iid"]:
                raise ApiError(404, 10062)
            status, payload = self._callback(rec, inter)
        elif rec.route in _WEBHOOK_ROUTES:
            if inter is None or self._age(inter) > self.token_ttl:
                raise ApiError(401, 50027)
            status, payload = self._webhook(rec, inter)
        elif rec.route in ("other", "gateway") or request.headers.get("Authorization") == f"Bot {self.token}":
            status, payload = self._bot(rec, int(groups["guild_id"]) if groups.get("guild_id") else None)
        else:
            raise ApiError(401, 0, "401: Unauthorized")
        return web.Response(status=204) if status == 204 else _json_response(status, payload)

    def _webhook(self, rec: Recorded, inter: Interaction) -> tuple[int, Any]:
        if rec.route == "followup":
            return self._followup(rec, inter)
        msg = self._webhook_message(rec, inter)
        if rec.route.startswith("delete"):
            msg.deleted = True
            return 204, None
        if rec.route.startswith("edit"):
            self._edit(msg, rec.json or {}, rec.files, inter)
        return 200, self.message_json(msg)

    def _bot(self, rec: Recorded, guild_id: int | None) -> tuple[int, Any]:
        match rec.route:
            case "users_me":
                return 200, BOT_USER.payload() | {"flags": 0, "verified": True, "mfa_enabled": False}
            case "app_info":
                return 200, {"id": str(APP_ID), "name": BOT_USER.username, "description": "", "icon": None,
                             "bot_public": True, "bot_require_code_grant": False, "owner": DEFAULT_USER.payload(),
                             "verify_key": "0" * 64, "flags": 0, "team": None}  # fmt: skip
            case "gateway":
                limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
                return 200, {"url": self.gateway_url, "shards": self.shard_count, "session_start_limit": limit}
            case "sync_global" | "sync_guild":
                self._commands[guild_id] = [self._synced(cmd, guild_id) for cmd in rec.json or []]
                return 200, self.commands(guild_id)
            case "get_commands":
                return 200, self.commands(guild_id)
            case "get_channel":
                found = self._channel(rec.channel_id or 0)
                if found is None:
                    raise ApiError(404, 10003)
                return 200, self._channel_payload(*found)
            case "channel_message":
                return 200, self.message_json(self._create(self._postable(rec), rec.json or {}, rec.files, None))
            case "edit_channel_message":
                self._postable(rec)
                msg = self._channel_message(rec)
                self._edit(msg, rec.json or {}, rec.files, None)
                return 200, self.message_json(msg)
            case "get_channel_message":
                return 200, self.message_json(self._channel_message(rec))
            case "delete_channel_message":
                self._channel_message(rec).deleted = True
                return 204, None
        raise ApiError(404, 0, "404: Not Found")

    @staticmethod
    def _age(inter: Interaction) -> float:
        return (_now() - discord.utils.snowflake_time(inter.id)).total_seconds()

    def _synced(self, cmd: dict[str, Any], guild_id: int | None) -> dict[str, Any]:
        out = {"type": 1, "options": [], "default_member_permissions": None, **cmd}
        out |= {"id": str(self._snowflake()), "application_id": str(APP_ID), "version": str(self._snowflake())}
        return out | ({"guild_id": str(guild_id)} if guild_id else {})

    def _callback(self, rec: Recorded, inter: Interaction) -> tuple[int, Any]:
        if inter.callback_type is not None:
            raise ApiError(400, 40060)
        if self.enforce_ack_deadline and self._age(inter) > 3.0:
            raise ApiError(404, 10062)
        body = rec.json or {}
        ctype, data = int(body.get("type", 0)), body.get("data") or {}
        inter.callback_type = ctype
        message = None
        if ctype in (4, 5):  # reply now, or a "thinking" placeholder that edits later replace
            message = self._create(int(inter.payload["channel_id"]), data, rec.files, inter)
            if ctype == 5:
                message.content, message.flags = None, message.flags | LOADING
            self._originals[inter.token] = message.id
        elif ctype in (6, 7) and "message" in inter.payload:  # component: the clicked message is the original
            self._originals[inter.token] = int(inter.payload["message"]["id"])
            held = self.original_message(inter.token)
            if ctype == 7 and held is not None:
                self._edit(held, data, rec.files, inter)
                message = held
        if "with_response" not in rec.query:
            return 204, None
        summary: dict[str, Any] = {"id": str(inter.id), "type": inter.payload["type"],
                                   "response_message_loading": ctype == 5,
                                   "response_message_ephemeral": bool(message and message.ephemeral)}  # fmt: skip
        result: dict[str, Any] = {"interaction": summary}
        if message is not None:
            summary["response_message_id"] = str(message.id)
            result["resource"] = {"type": ctype, "message": self.message_json(message)}
        return 200, result

    def _followup(self, rec: Recorded, inter: Interaction) -> tuple[int, Any]:
        if inter.callback_type is None:  # followups only exist once the interaction was answered
            raise ApiError(404, 10015)
        original = self.original_message(inter.token)
        if original is not None and original.loading and not original.deleted:
            # Discord turns the first followup after a deferral into the deferred message itself.
            self._edit(original, rec.json or {}, rec.files, inter)
            msg = original
        else:
            msg = self._create(int(inter.payload["channel_id"]), rec.json or {}, rec.files, inter)
        return (200, self.message_json(msg)) if rec.query.get("wait") in ("1", "true", "True") else (204, None)

    def _webhook_message(self, rec: Recorded, inter: Interaction) -> Message:
        if rec.message_id is None:  # @original
            msg = self.original_message(inter.token)
        else:  # a followup id: only messages this interaction made
            msg = self.messages.get(rec.message_id)
            msg = msg if msg is not None and msg.interaction_token == inter.token else None
        if msg is None or msg.deleted:
            raise ApiError(404, 10008)
        return msg

    def _postable(self, rec: Recorded) -> int:
        cid = rec.channel_id or 0
        if self._channel(cid) is None:
            raise ApiError(404, 10003)
        if cid in self.denied_channels:
            raise ApiError(403, 50013)
        return cid

    def _channel_message(self, rec: Recorded) -> Message:
        msg = self.messages.get(rec.message_id or 0)
        if msg is None or msg.deleted or msg.channel_id != rec.channel_id:
            raise ApiError(404, 10008)
        return msg

    # message state ---------------------------------------------------------------------------------------
    def _validate(self, body: dict[str, Any], files: list[Attachment], inter: Interaction | None) -> None:
        limit = inter.payload["attachment_size_limit"] if inter else DEFAULT_FILE_LIMIT
        if len(body.get("content") or "") > 2000 or len(body.get("embeds") or []) > 10:
            raise ApiError(400, 50035)
        if len(files) > 10:
            raise ApiError(400, 50035, "Maximum number of attachments in a message reached (10)")
        if any(len(f.data) > limit for f in files):
            raise ApiError(413, 40005)

    def _create(self, channel_id: int, body: dict[str, Any], files: list[Attachment],
                inter: Interaction | None) -> Message:  # fmt: skip
        self._validate(body, files, inter)
        msg = Message(
            self._snowflake(), channel_id, body.get("content"), list(body.get("embeds") or []),
            list(body.get("components") or []), [], int(body.get("flags") or 0) & ~LOADING,
            inter.token if inter else None, interaction_id=inter.id if inter else None,
        )  # fmt: skip
        self._set_attachments(msg, body, files)
        msg.reply_to = self._replied(channel_id, body.get("message_reference"))
        self.messages[msg.id] = msg
        return msg

    def _replied(self, channel_id: int, reference: Any) -> int | None:
        """The message a reply points at; like Discord, an unknown one is an error unless the sender allowed it."""
        if not isinstance(reference, dict) or reference.get("message_id") is None:
            return None
        target = self.messages.get(int(reference["message_id"]))
        if target is None or target.deleted or target.channel_id != channel_id:
            if reference.get("fail_if_not_exists", True):
                raise ApiError(400, 50035, "Unknown message in message_reference")
            return None
        return target.id

    def _edit(self, msg: Message, body: dict[str, Any], files: list[Attachment], inter: Interaction | None) -> None:
        self._validate(body, files, inter)
        if "content" in body:
            msg.content = body["content"]
        if "embeds" in body:
            msg.embeds = list(body["embeds"] or [])
        if "components" in body:
            msg.components = list(body["components"] or [])
        if body.get("flags") is not None:  # ephemerality is fixed at creation
            msg.flags = (msg.flags & EPHEMERAL) | (int(body["flags"]) & ~EPHEMERAL)
        msg.flags &= ~LOADING
        self._set_attachments(msg, body, files)
        msg.edited_at = _now()

    def _set_attachments(self, msg: Message, body: dict[str, Any], files: list[Attachment]) -> None:
        uploads = {a.id: a for a in files}
        if body.get("attachments") is None:  # no list given: keep what is there, add new uploads
            msg.attachments += [replace(a, id=self._snowflake()) for a in files]
            return
        # The list is the full new set: existing ones by snowflake id, new uploads by files[n] index.
        kept = {a.id: a for a in msg.attachments}
        result = []
        for entry in body["attachments"]:
            aid = int(entry["id"])
            if aid in kept:
                result.append(kept[aid])
            elif aid in uploads:
                name = entry.get("filename") or uploads[aid].filename
                result.append(replace(uploads[aid], id=self._snowflake(), filename=name))
        msg.attachments = result

    def message_json(self, msg: Message) -> dict[str, Any]:
        """The message object Discord would return for ``msg``."""
        inter = self.interactions.get(msg.interaction_token or "")
        cdn = f"http://127.0.0.1:{self.port}/attachments/{msg.channel_id}"
        signed = ""
        if self.attachment_url_ttl is not None:  # a fresh expiry each time the message is read, as Discord does
            expiry = int(time.time() + self.attachment_url_ttl)
            signed = f"?ex={expiry:x}&is={expiry - int(self.attachment_url_ttl):x}&hm={expiry * 7919 % 10**12:x}&"
        out: dict[str, Any] = {
            "id": str(msg.id), "type": 20 if inter and inter.payload["type"] == 2 else 0,
            "content": msg.content or "", "channel_id": str(msg.channel_id), "author": BOT_USER.payload(),
            "attachments": [{"id": str(a.id), "filename": a.filename, "size": len(a.data),
                             "url": f"{cdn}/{a.id}/{a.filename}{signed}",
                             "proxy_url": f"{cdn}/{a.id}/{a.filename}{signed}",
                             "content_type": a.content_type} for a in msg.attachments],
            "embeds": msg.embeds, "components": msg.components, "mentions": [], "mention_roles": [],
            "pinned": False, "mention_everyone": False, "tts": False, "timestamp": msg.created_at.isoformat(),
            "edited_timestamp": msg.edited_at.isoformat() if msg.edited_at else None, "flags": msg.flags,
        }  # fmt: skip
        if msg.reply_to is not None:
            out["type"] = 19
            out["message_reference"] = {"message_id": str(msg.reply_to), "channel_id": str(msg.channel_id)}
        if inter is not None:
            user = inter.payload.get("member", inter.payload).get("user")
            owners = inter.payload.get("authorizing_integration_owners", {})
            meta = {"id": str(inter.id), "type": inter.payload["type"], "user": user,
                    "authorizing_integration_owners": owners}  # fmt: skip
            if "message" in inter.payload:
                meta["interacted_message_id"] = inter.payload["message"]["id"]
            out |= {"webhook_id": str(APP_ID), "application_id": str(APP_ID), "interaction_metadata": meta}
        return out


@contextlib.asynccontextmanager
async def run_bot(
    bot: ClientT, double: DiscordDouble, *, token: str | None = None, ready_timeout: float = 10.0
) -> AsyncIterator[ClientT]:
    """Run ``bot.start()`` against ``double`` until ready; close the bot and reap its task on exit.

    Sharded bots should override ``before_identify_hook`` or discord.py sleeps 5 s before each extra shard.
    """
    with double.patch_discord():
        task = asyncio.create_task(bot.start(token or double.token), name="discord-double-bot")
        try:
            deadline = time.monotonic() + ready_timeout
            while not bot.is_ready():
                if task.done():
                    task.result()  # surfaces LoginFailure and friends
                    raise RuntimeError("bot.start() returned before the bot became ready")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bot not ready within {ready_timeout}s")
                await asyncio.sleep(0.01)
            yield bot
        finally:
            await bot.close()
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Always fetch the outcome so asyncio never warns "exception was never retrieved".
            crashed = None if task.cancelled() else task.exception()
    if crashed is not None:  # only reached when the test body itself passed
        raise crashed
