"""A loopback fake of Discord (REST API v10 + gateway) that the real discord.py client can be driven against.

Start a :class:`DiscordDouble`, run a bot with :func:`run_bot`, push interactions with ``slash``/``click``/
``submit_modal`` + ``send``, then assert on ``calls`` (every REST request) and ``messages`` (what members see).
Pass ``rate_limits=RateLimits()`` to enforce Discord's rate-limit buckets; every 429 sent is in ``rate_limit_hits``.
Pass ``chaos=doubles.faults.Chaos(rate=0.1, seed=1)`` for seeded random resets and 5xx on ``CHAOS_ROUTES``.

What lives where (import from here, ``doubles.discord``; the modules are its parts):

- ``model``: ids and permission values (``APP_ID``, ``DEFAULT_*``, ``EPHEMERAL``...), the specs a test
  passes in (``UserSpec``, ``ChannelSpec``, ``GuildSpec``) and what the double holds and records
  (``Message``, ``Interaction``, ``Recorded``, ``Attachment``, ``GatewayConnection``, ``ApiError``).
- ``ratelimits``: ``Limit``, ``RateLimits``, ``RateLimitHit`` and the bucket and window arithmetic.
- ``server``: ``DiscordDouble`` (the REST, gateway and attachment CDN server, its routes and handlers),
  ``CHAOS_ROUTES`` (what ``Chaos`` faults by default) and ``run_bot``.
"""

from .model import (
    APP_ID,
    APP_PERMISSIONS,
    BOT_USER,
    BOT_USER_ID,
    DEFAULT_CHANNEL_ID,
    DEFAULT_FILE_LIMIT,
    DEFAULT_GUILD_ID,
    DEFAULT_USER,
    DEFAULT_USER_ID,
    EPHEMERAL,
    LOADING,
    MEMBER_PERMISSIONS,
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    ApiError,
    Attachment,
    ChannelSpec,
    GatewayConnection,
    GuildSpec,
    Interaction,
    Message,
    Recorded,
    UserSpec,
    two_guilds,
)
from .ratelimits import Limit, RateLimitHit, RateLimits
from .server import CHAOS_ROUTES, DiscordDouble, run_bot

__all__ = [
    "APP_ID",
    "APP_PERMISSIONS",
    "BOT_USER",
    "BOT_USER_ID",
    "CHAOS_ROUTES",
    "DEFAULT_CHANNEL_ID",
    "DEFAULT_FILE_LIMIT",
    "DEFAULT_GUILD_ID",
    "DEFAULT_USER",
    "DEFAULT_USER_ID",
    "EPHEMERAL",
    "LOADING",
    "MEMBER_PERMISSIONS",
    "OTHER_CHANNEL_ID",
    "OTHER_GUILD_ID",
    "ApiError",
    "Attachment",
    "ChannelSpec",
    "DiscordDouble",
    "GatewayConnection",
    "GuildSpec",
    "Interaction",
    "Limit",
    "Message",
    "RateLimitHit",
    "RateLimits",
    "Recorded",
    "UserSpec",
    "run_bot",
    "two_guilds",
]
