"""RunPod's webhooks as wake-up calls: the address each `/run` carries, and the line from it to the job's follower.

RunPod POSTs a job's `/status` body to its `webhook` when the job ends (docs/runpod-api.md, Webhooks). The body
is never believed: anyone who learns the address can post anything there. A webhook only wakes the follower,
which asks `/status` at once and posts what RunPod says there. The address names the request and the part (a
set's parts are RunPod jobs of their own) and carries a token, an HMAC of both keyed from BOT_ENCRYPTION_KEY, so
nobody can guess the address of another job or wake a job that does not exist. No Discord here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.config import Secret
from bot.crypto import derive_key

WEBHOOK_PATH = "/runpod/webhook"
# The tokens' HMAC key is derived for this use only: a token reveals nothing of the key that encrypts stored keys.
WEBHOOK_PURPOSE = b"webhook tokens"
_TOKEN_CHARS = 32  # 128 bits of the HMAC, as hex
_ROUTE = re.compile(rf"{WEBHOOK_PATH}/(\d{{1,20}})/(\d{{1,2}})/([0-9a-f]{{{_TOKEN_CHARS}}})")


@dataclass(frozen=True)
class Call:
    """Which job a webhook address names: the ledger's request id and the part, counted from 0."""

    request_id: int
    part: int


class WebhookAddresses:
    """The webhook address of each part of each request, under PUBLIC_URL, and the check of one that arrives.

    Tokens are keyed from BOT_ENCRYPTION_KEY's first secret; every one listed is accepted, so the webhooks of jobs
    sent before a rotation still wake their followers."""

    def __init__(self, public_url: str, secrets: Sequence[Secret]) -> None:
        if not secrets:
            raise ValueError("webhook addresses need a secret to sign them")
        self.public_url = public_url.rstrip("/")
        self._keys = [derive_key(secret.reveal(), WEBHOOK_PURPOSE) for secret in secrets]

    def url(self, request_id: int, part: int) -> str:
        return f"{self.public_url}{self.path(request_id, part)}"

    def path(self, request_id: int, part: int) -> str:
        return f"{WEBHOOK_PATH}/{request_id}/{part}/{self._token(request_id, part)}"

    def check(self, path: str) -> Call | None:
        """The job a path names when its token is right; None for anything else (a guess, a tampered id)."""
        match = _ROUTE.fullmatch(path)
        if match is None:
            return None
        request_id, part, token = int(match[1]), int(match[2]), match[3]
        if not any(hmac.compare_digest(token, self._token(request_id, part, key)) for key in self._keys):
            return None
        return Call(request_id, part)

    def _token(self, request_id: int, part: int, key: bytes | None = None) -> str:
        message = f"{request_id}:{part}".encode()
        return hmac.new(key or self._keys[0], message, hashlib.sha256).hexdigest()[:_TOKEN_CHARS]


class Wakeup:
    """The line from a webhook to one part's follower. Rung before the follower sleeps, it is kept: the next sleep
    ends at once (a webhook can beat the follower to a part it has not started following yet)."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()

    def ring(self) -> None:
        self._rung.set()

    async def sleep(self, delay: float) -> bool:
        """Wait up to `delay` seconds; True when a webhook ended the wait."""
        try:
            async with asyncio.timeout(delay):
                await self._rung.wait()
        except TimeoutError:
            return False
        self._rung.clear()
        return True


class Wakeups:
    """The wake-up lines of the parts followed in this process, by request and part."""

    def __init__(self) -> None:
        self._lines: dict[int, dict[int, Wakeup]] = {}

    def line(self, request_id: int, part: int) -> Wakeup:
        return self._lines.setdefault(request_id, {}).setdefault(part, Wakeup())

    def ring(self, call: Call) -> bool:
        """Wake that part's follower; False when this process follows no such request."""
        parts = self._lines.get(call.request_id)
        if parts is None:
            return False
        parts.setdefault(call.part, Wakeup()).ring()
        return True

    def ring_part(self, request_id: int, part: int) -> None:
        self.ring(Call(request_id, part))

    def open(self, request_id: int) -> None:
        """A request followed here from now on: its webhooks ring here."""
        self._lines.setdefault(request_id, {})

    def close(self, request_id: int) -> None:
        self._lines.pop(request_id, None)
