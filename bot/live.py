"""The one message that shows a job while it runs.

Edits are coalesced: `show()` only records what the message should look like, and one pump task
edits at most once per `min_interval`, and only when the look changed. The message is addressed by
ids only (application, interaction token, message, channel), so it can be rebuilt from the ledger
after a restart. The interaction token dies after 15 minutes (docs/discord-notes.md, Interaction
deadlines); from then on, or when an edit says the token is gone, the status continues in a channel
message sent with the bot token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import discord

from bot.delivery import Upload
from bot.storage import JobRecord

log = logging.getLogger(__name__)

# Invalid webhook token, unknown webhook, unknown message (docs/discord-notes.md, Error codes).
_TOKEN_GONE_CODES = frozenset({50027, 10015, 10008})


@dataclass
class _Look:
    embed: discord.Embed
    view: discord.ui.View | None = None
    uploads: Sequence[Upload] = ()
    final: bool = False  # a final look sets the attachments; a status leaves them as they are
    key: Any = field(init=False)

    def __post_init__(self) -> None:
        buttons = tuple(getattr(item, "custom_id", None) for item in self.view.children) if self.view else ()
        self.key = (repr(sorted(self.embed.to_dict().items())), buttons)


@dataclass(frozen=True)
class Address:
    """Where a job's status lives: all a restarted bot needs to find the message again."""

    channel_id: int
    guild_id: int | None = None
    token: str | None = field(default=None, repr=False)  # the interaction's; None once unknown
    token_expires_at: datetime | None = None
    message_id: int | None = None  # the interaction's reply
    channel_message_id: int | None = None  # the status continued in the channel

    @classmethod
    def of(cls, record: JobRecord, token: str | None) -> Address:
        """Where a recorded job's status is shown; `token` is the interaction's, decrypted."""
        return cls(
            channel_id=record.channel_id,
            guild_id=record.guild_id,
            token=token,
            token_expires_at=record.token_expires_at,
            message_id=record.message_id,
            channel_message_id=record.channel_message_id,
        )


def token_gone(error: discord.HTTPException) -> bool:
    return error.status == 401 or error.code in _TOKEN_GONE_CODES


class LiveMessage:
    def __init__(
        self,
        client: discord.Client,
        address: Address,
        *,
        min_interval: float = 1.5,
        expiry_margin: timedelta = timedelta(seconds=60),
        context: str = "",
        on_channel_message: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._address = address
        self._min_interval = min_interval
        self._expiry_margin = expiry_margin
        self.context = context  # "job … guild …" for log lines
        self._on_channel_message = on_channel_message
        self._webhook = (
            discord.Webhook.partial(client.application_id or 0, address.token, client=client)
            if address.token and address.message_id
            else None
        )
        self._channel = client.get_partial_messageable(address.channel_id, guild_id=address.guild_id)
        self._channel_message = (
            self._channel.get_partial_message(address.channel_message_id) if address.channel_message_id else None
        )
        self.unreachable = False  # neither the token nor the channel works: nothing can be shown
        self.message: discord.Message | discord.PartialMessage | None = self._channel_message
        self._pending: _Look | None = None
        self._shown_key: Any = None
        self._last_edit = float("-inf")
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pump_task: asyncio.Task[None] | None = None

    @property
    def in_channel(self) -> bool:
        return self._channel_message is not None or not self._token_usable()

    def show(self, embed: discord.Embed, view: discord.ui.View | None = None) -> None:
        """Ask for this look; the pump sends it when the pace allows, unless a newer one replaces it."""
        if self._closing.is_set():
            return
        self._pending = _Look(embed, view)
        self._wake.set()
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name=f"live-message {self.context}")

    async def final(
        self, embed: discord.Embed, view: discord.ui.View | None = None, uploads: Sequence[Upload] = ()
    ) -> bool:
        """Stop the pump and show this look now. False when it could not be shown anywhere."""
        await self.stop()
        return await self._send(_Look(embed, view, uploads, final=True))

    async def attach(self, embed: discord.Embed, upload: Upload) -> str | None:
        """Show this look with one picture attached, now; the picture's address on Discord's CDN, or None when
        it could not be shown. Later statuses keep the picture; the final look replaces it."""
        look = _Look(embed, None, (upload,), final=True)
        if not await self._send(look) or self.message is None or not isinstance(self.message, discord.Message):
            return None
        return self.message.attachments[0].url if self.message.attachments else None

    async def stop(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._pump_task is not None:
            with contextlib.suppress(Exception):
                await self._pump_task

    async def notify(self, content: str, user: discord.abc.Snowflake) -> None:
        """A reply to the job's message that pings only `user` (edits never notify anyone): one click leads to
        the picture. Where the bot cannot reply in the channel, a follow-up of the interaction says it instead."""
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[user], replied_user=False)
        shown = self.message.id if self.message is not None else self._address.message_id
        try:
            if shown is not None:
                reference = discord.MessageReference(
                    message_id=shown, channel_id=self._address.channel_id, fail_if_not_exists=False
                )
                await self._channel.send(content, reference=reference, allowed_mentions=mentions)
                return
        except discord.HTTPException as error:
            log.info("%s: could not reply to the job's message (%s); following up instead", self.context, error)
        try:
            if self._webhook is not None and self._token_usable():
                await self._webhook.send(content, allowed_mentions=mentions)
            else:
                await self._channel.send(content, allowed_mentions=mentions)
        except discord.HTTPException as error:
            log.warning("%s: could not notify the requester: %s", self.context, error)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_edit + self._min_interval - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), wait)
            look = self._pending
            if self._closing.is_set() or look is None or look.key == self._shown_key:
                continue
            await self._send(look)

    async def _send(self, look: _Look) -> bool:
        async with self._lock:
            self._last_edit = asyncio.get_running_loop().time()
            shown = await self._via_interaction(look) or await self._via_channel(look)
            if shown:
                self._shown_key = look.key
            return shown

    def _token_usable(self) -> bool:
        expires = self._address.token_expires_at
        expiring = expires is None or expires - datetime.now(UTC) < self._expiry_margin
        return self._webhook is not None and not expiring

    async def _via_interaction(self, look: _Look) -> bool:
        if self._webhook is None or self._channel_message is not None or not self._token_usable():
            return False
        try:
            self.message = await self._webhook.edit_message(
                self._address.message_id or 0, embed=look.embed, view=look.view, attachments=_attachments(look)
            )
            return True
        except discord.HTTPException as error:
            if not token_gone(error):
                log.warning("%s: editing the reply failed: %s", self.context, error)
                return False
            log.info("%s: interaction token gone (%s); continuing in a channel message", self.context, error.code)
            self._webhook = None
            return False

    async def _via_channel(self, look: _Look) -> bool:
        if self.unreachable or (self._channel_message is None and self._token_usable()):
            return False
        try:
            if self._channel_message is None:
                sent = await self._channel.send(
                    embed=look.embed,
                    view=look.view or discord.utils.MISSING,
                    files=_files(look.uploads) or discord.utils.MISSING,
                )
                self._channel_message = sent
                if self._on_channel_message is not None:
                    await self._on_channel_message(sent.id)
            else:
                self._channel_message = await self._channel_message.edit(
                    embed=look.embed, view=look.view, attachments=_attachments(look)
                )
            self.message = self._channel_message
            return True
        except discord.HTTPException as error:
            if isinstance(error, discord.Forbidden | discord.NotFound):
                self.unreachable = True
            log.error("%s: cannot post in channel %s: %s", self.context, self._channel.id, error)
            return False


def _attachments(look: _Look) -> Any:
    return _files(look.uploads) if look.final else discord.utils.MISSING


def _files(uploads: Sequence[Upload]) -> list[discord.File]:
    # Fresh File objects on every attempt: discord.py closes them after a request.
    return [discord.File(BytesIO(upload.data), filename=upload.filename) for upload in uploads]
