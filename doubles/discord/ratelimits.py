"""Discord's rate-limit buckets as the double enforces them: the limits, the windows that count requests
against them, which buckets a request needs and the headers that report them."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from .model import _WEBHOOK_ROUTES, Interaction, Recorded


@dataclass(frozen=True)
class Limit:
    requests: int
    per: float  # seconds


@dataclass(frozen=True)
class RateLimits:
    """Discord's rate-limit buckets. Discord publishes no numbers and tells clients to read the headers; these
    are the ones docs/discord-notes.md, Rate limits, quotes, order of magnitude only.

    Windows are fixed, as Discord's are: a bucket opens on its first request and resets ``per`` seconds later.
    Refused requests use up nothing, so a client that waits out ``retry_after`` gets through.
    """

    # Every request made with the bot token. Interaction routes are authorised by their own token and
    # "are not bound to the bot's Global Rate Limit".
    bot_global: Limit = Limit(50, 1.0)
    # Per interaction token, across @original and followups: interaction webhooks have webhook limits.
    interaction: Limit = Limit(5, 2.0)
    callback: Limit = Limit(5, 2.0)  # per interaction, its callback route
    channel_message: Limit = Limit(5, 5.0)  # POST /channels/{id}/messages, per channel
    channel_message_edit: Limit = Limit(5, 5.0)  # PATCH or DELETE of a channel's message, per channel
    webhook_channel: Limit = Limit(30, 60.0)  # messages webhooks (followups included) post into one channel
    # Every other route: no number was ever quoted, so nothing tighter than the global limit.
    other_route: Limit = Limit(50, 1.0)


@dataclass(frozen=True)
class RateLimitHit:
    """One 429 the double sent."""

    at: float  # the double's clock
    route: str
    bucket: str  # "global" for the bot-wide limit
    scope: str  # X-RateLimit-Scope: "global", "user" (this bot's per-route limit) or "shared" (the resource's)
    key: str  # what the bucket is per: a token, a channel id
    retry_after: float
    token: str | None
    channel_id: int | None


@dataclass
class _Window:
    limit: Limit
    opened: float = -math.inf
    used: int = 0

    def roll(self, now: float) -> None:
        if now >= self.opened + self.limit.per:
            self.opened, self.used = now, 0

    @property
    def full(self) -> bool:
        return self.used >= self.limit.requests

    def reset_after(self, now: float) -> float:
        return max(0.0, self.opened + self.limit.per - now)


@dataclass(frozen=True)
class _BucketRef:
    name: str  # what X-RateLimit-Bucket says: the same for every token or channel, as Discord's hashes are
    key: str
    limit: Limit
    scope: str = "user"


def route_buckets(rec: Recorded, limits: RateLimits, interactions: Mapping[str, Interaction]) -> list[_BucketRef]:
    """The route's buckets; the first is the one its answers report in their headers."""
    if rec.route == "callback":
        return [_BucketRef("interaction-callback", rec.path.split("/")[2], limits.callback)]
    if rec.route in _WEBHOOK_ROUTES:
        buckets = [_BucketRef("interaction-webhook", rec.token or "", limits.interaction)]
        inter = interactions.get(rec.token or "")
        if rec.route == "followup" and inter is not None:
            channel = str(inter.payload["channel_id"])
            buckets.append(_BucketRef("webhook-channel", channel, limits.webhook_channel, "shared"))
        return buckets
    if rec.route == "channel_message":
        return [_BucketRef("channel-message-create", str(rec.channel_id), limits.channel_message)]
    if rec.route in ("edit_channel_message", "delete_channel_message"):
        return [_BucketRef("channel-message-edit", str(rec.channel_id), limits.channel_message_edit)]
    # Discord keys a route's bucket by its top-level resource: the path up to the first id.
    major = re.match(r"/\D*\d+", rec.path)
    return [_BucketRef(f"route-{rec.route}", major[0] if major else rec.path, limits.other_route)]


def current_window(windows: dict[tuple[str, str], _Window], bucket: _BucketRef, now: float) -> _Window:
    """The bucket's window in ``windows`` (opened on first use), rolled over if its time is up."""
    window = windows.setdefault((bucket.name, bucket.key), _Window(bucket.limit))
    window.roll(now)
    return window


def limit_headers(bucket: _BucketRef, window: _Window, now: float) -> dict[str, str]:
    after = window.reset_after(now)
    return {
        "X-RateLimit-Limit": str(bucket.limit.requests),
        "X-RateLimit-Remaining": str(max(0, bucket.limit.requests - window.used)),
        "X-RateLimit-Reset": f"{time.time() + after:.3f}",
        "X-RateLimit-Reset-After": f"{after:.3f}",
        "X-RateLimit-Bucket": bucket.name,
    }
