"""The one message that shows a job while it runs, and what became of each attempt to show it.

Edits are coalesced: `show()` only records what the message should look like, and one pump task
edits at most once per `min_interval`, and only when the look changed. The message is addressed by
ids only (application, interaction token, message, channel), so it can be rebuilt from the ledger
after a restart. The interaction token dies after 15 minutes (docs/discord-notes.md, Interaction
deadlines); from then on, or when an edit says the token is gone, the status continues in a channel
message sent with the bot token. That message replies to the interaction's, and (while the token still works,
`expiry_margin` before it dies) the interaction's reply is edited one last time to point at it: the hand-over.
Nothing is left behind with a live Cancel or an estimate that has gone by.

Nothing here raises for a fault of Discord or of the network: every attempt ends as an `Outcome`
(`Shown`, `RetryLater`, `Unreachable`), and the caller decides what to do about it. discord.py retries
some 5xx answers itself, but lets a connection reset through as `OSError` or `aiohttp.ClientError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO
from typing import Any, TypeVar

import aiohttp
import discord

from bot import tasks
from bot.clock import monotonic, wall_clock
from bot.delivery import Upload
from bot.storage import JobRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

# Invalid webhook token, unknown webhook, unknown message (docs/discord-notes.md, Error codes).
_TOKEN_GONE_CODES = frozenset({50027, 10015, 10008})
# What a request to Discord raises when the network or Discord failed it, rather than Discord refusing it.
TRANSPORT_ERRORS = (OSError, aiohttp.ClientError, TimeoutError, discord.DiscordServerError)
# A status edit still unanswered after this long (discord.py sleeping 1, 3, 5 s between its own tries of a 5xx)
# is dropped, and the pump sends the latest look at its next turn: a status is never silent for long.
STATUS_EDIT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Shown:
    message: discord.Message | discord.PartialMessage | None


@dataclass(frozen=True)
class RetryLater:
    """The network or Discord failed this attempt (a reset, a 5xx): the next one may well work."""

    reason: str


@dataclass(frozen=True)
class Unreachable:
    """Neither the token nor the channel would take it (no permission, the channel gone)."""

    reason: str


Outcome = Shown | RetryLater | Unreachable

# The interaction reply's last look once the status moves to the channel, given where it continues (a link).
HandOver = Callable[[str], tuple[discord.Embed, discord.ui.View | None]]


class _TokenGone(Exception):
    """The interaction token no longer works: go on in the channel."""


@dataclass
class _Look:
    embed: discord.Embed
    view: discord.ui.View | None = None
    # What the message's attachments become: None leaves them as they are (a status must never remove a picture
    # a queued worker still has to fetch); a final look sets them, to none at all if it has none.
    uploads: Sequence[Upload] | None = None
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


def transient(error: BaseException) -> bool:
    """Whether Discord or the network failed the request (worth another try), rather than Discord refusing it.
    The CDN answers a 5xx as a plain `HTTPException`, not a `DiscordServerError`."""
    return isinstance(error, TRANSPORT_ERRORS) or (isinstance(error, discord.HTTPException) and error.status >= 500)


async def retrying(call: Callable[[], Awaitable[T]], pauses: Sequence[float]) -> T:
    """`call()`, tried again after each pause while it fails `transient`ly; the last failure, or a refusal, raised."""
    for pause in pauses:
        try:
            return await call()
        except (*TRANSPORT_ERRORS, discord.HTTPException) as error:
            if not transient(error):
                raise
        await asyncio.sleep(pause)
    return await call()


def token_gone(error: discord.HTTPException) -> bool:
    return error.status == 401 or error.code in _TOKEN_GONE_CODES


def describe(error: BaseException) -> str:
    """One short line for a log: what failed, never a token (discord.py's messages carry no URL)."""
    if isinstance(error, discord.HTTPException):
        return f"{error.status} {error.text or error.code}"[:200]
    return f"{type(error).__name__}: {error}"[:200]


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
        clock: Callable[[], datetime] = wall_clock,
        hand_over: HandOver | None = None,
    ) -> None:
        self._address = address
        self._hand_over = hand_over
        self._attached: dict[str, str] = {}  # file name -> its address, of pictures attached to the reply
        self._min_interval = min_interval
        self.context = context  # "job … guild …" for log lines
        self._on_channel_message = on_channel_message
        # When the token stops being usable, on the monotonic clock: a step of the wall clock moves nothing.
        expires = address.token_expires_at
        left = (expires - clock() - expiry_margin).total_seconds() if expires is not None else 0.0
        self._token_deadline = monotonic() + left
        self._webhook = (
            discord.Webhook.partial(client.application_id or 0, address.token, client=client)
            if address.token and address.message_id
            else None
        )
        self._channel = client.get_partial_messageable(address.channel_id, guild_id=address.guild_id)
        self._channel_message = (
            self._channel.get_partial_message(address.channel_message_id) if address.channel_message_id else None
        )
        self.message: discord.Message | discord.PartialMessage | None = self._channel_message
        self._pending: _Look | None = None
        self._shown_key: Any = None
        self._failing = False  # the last status edit failed: said once in the log until one works again
        self._refused = False  # Discord refused a status: no more statuses, only the last look
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
            self._pump_task = tasks.spawn(self._pump(), name=f"live-message {self.context}")

    async def final(
        self, embed: discord.Embed, view: discord.ui.View | None = None, uploads: Sequence[Upload] | None = ()
    ) -> Outcome:
        """Stop the pump and show this look now. Its attachments become `uploads` (None: left as they are)."""
        await self.stop()
        return await self._send(_Look(embed, view, uploads))

    async def attach(self, embed: discord.Embed, upload: Upload) -> Outcome:
        """Show this look with one picture attached, now. Later statuses keep the picture; the final look
        replaces it. An embed may show it as `attachment://<its name>` (a thumbnail rather than a full-size
        picture that looks like a result); a status continued in the channel shows it by its address instead."""
        outcome = await self._send(_Look(embed, None, (upload,)))
        if isinstance(outcome, Shown) and isinstance(outcome.message, discord.Message):
            self._attached |= {attachment.filename: attachment.url for attachment in outcome.message.attachments}
        return outcome

    async def stop(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._pump_task is not None:
            await asyncio.gather(self._pump_task, return_exceptions=True)  # it logs its own failure

    async def notify(self, content: str, user: discord.abc.Snowflake) -> Outcome:
        """A reply to the job's message that pings only `user` (edits never notify anyone): one click leads to
        the picture. Where the bot cannot reply in the channel, a follow-up of the interaction says it instead."""
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[user], replied_user=False)
        shown = self.message.id if self.message is not None else self._address.message_id
        if shown is not None:
            reference = discord.MessageReference(
                message_id=shown, channel_id=self._address.channel_id, fail_if_not_exists=False
            )
            try:
                return Shown(await self._channel.send(content, reference=reference, allowed_mentions=mentions))
            except TRANSPORT_ERRORS as error:
                return RetryLater(describe(error))
            except discord.HTTPException as error:
                log.info("%s: could not reply to the job's message (%s); following up instead", self.context, error)
        try:
            if self._webhook is not None and self._token_usable():
                return Shown(await self._webhook.send(content, allowed_mentions=mentions, wait=True))
            return Shown(await self._channel.send(content, allowed_mentions=mentions))
        except TRANSPORT_ERRORS as error:
            return RetryLater(describe(error))
        except discord.HTTPException as error:
            return Unreachable(describe(error))

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):  # the hand-over is due even when nothing new is asked
                await asyncio.wait_for(self._wake.wait(), self._until_hand_over())
            self._wake.clear()
            wait = self._last_edit + self._min_interval - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), wait)
            look = self._pending
            unchanged = look is not None and look.key == self._shown_key and not self._hand_over_due()
            if self._closing.is_set() or self._refused or look is None or unchanged:
                continue
            match await self._send(look):
                case Shown():
                    if self._failing:
                        log.info("%s: the status shows again", self.context)
                    self._failing = False
                case RetryLater(reason):
                    if not self._failing:
                        log.warning("%s: the status could not be shown (%s); trying again", self.context, reason)
                    self._failing = True
                    self._wake.set()  # try the latest look again at the next turn of the pace
                case Unreachable(reason):
                    # Refused (no permission, no channel): asking again every few seconds would only add to
                    # Discord's count of invalid requests. The job's last look is still tried (`final`).
                    log.warning("%s: the status cannot be shown (%s); only its end will be tried", self.context, reason)
                    self._refused = True

    async def _send(self, look: _Look) -> Outcome:
        async with self._lock:
            self._last_edit = asyncio.get_running_loop().time()
            try:
                outcome = await self._via_interaction(look)
            except _TokenGone:
                outcome = None
            if outcome is None:
                outcome = await self._via_channel(look)
            if isinstance(outcome, Shown):
                self._shown_key = look.key
            return outcome

    def _token_usable(self) -> bool:
        return self._webhook is not None and monotonic() < self._token_deadline

    def _on_the_reply(self) -> bool:
        """Whether the status is still shown on the interaction's reply (not yet continued in the channel)."""
        return self._webhook is not None and self._channel_message is None and self._address.message_id is not None

    def _hand_over_due(self) -> bool:
        return self._on_the_reply() and not self._token_usable()

    def _until_hand_over(self) -> float | None:
        """Seconds until the status must move to the channel; None when that is not the pump's to do."""
        if not self._on_the_reply() or self._pending is None or self._refused:
            return None
        return max(0.0, self._token_deadline - monotonic())

    async def _via_interaction(self, look: _Look) -> Outcome | None:
        """The outcome of editing the interaction's reply; None when the status lives in the channel."""
        if self._webhook is None or self._channel_message is not None or not self._token_usable():
            return None
        try:
            edit = self._webhook.edit_message(
                self._address.message_id or 0, embed=look.embed, view=look.view, attachments=_attachments(look)
            )
            self.message = await _bounded(edit, look)
            return Shown(self.message)
        except TRANSPORT_ERRORS as error:
            return RetryLater(describe(error))
        except discord.HTTPException as error:
            if not token_gone(error):
                return Unreachable(describe(error))
            log.info("%s: interaction token gone (%s); continuing in a channel message", self.context, error.code)
            self._webhook = None
            raise _TokenGone from None

    async def _via_channel(self, look: _Look) -> Outcome:
        new = self._channel_message is None
        embed = self._portable(look)
        try:
            if self._channel_message is None:
                # A reply to the interaction's message, so the channel reads as one story; sent even if that
                # message was deleted meanwhile.
                replied = self._address.message_id
                reply: dict[str, Any] = {}
                if replied is not None:
                    reference = discord.MessageReference(
                        message_id=replied, channel_id=self._address.channel_id, fail_if_not_exists=False
                    )
                    reply = {"reference": reference, "allowed_mentions": discord.AllowedMentions.none()}
                self._channel_message = await self._channel.send(
                    embed=embed,
                    view=look.view or discord.utils.MISSING,
                    files=_files(look.uploads or ()) or discord.utils.MISSING,
                    **reply,
                )
            else:
                edit = self._channel_message.edit(embed=embed, view=look.view, attachments=_attachments(look))
                self._channel_message = await _bounded(edit, look)
        except TRANSPORT_ERRORS as error:
            return RetryLater(describe(error))
        except discord.HTTPException as error:
            return Unreachable(f"channel {self._channel.id}: {describe(error)}")
        self.message = self._channel_message
        if new and self._on_channel_message is not None:
            await self._on_channel_message(self._channel_message.id)
        if new:
            await self._point_to(self._channel_message.id)
        return Shown(self.message)

    async def _point_to(self, message_id: int) -> None:
        """The hand-over: the interaction's reply, edited a last time, says where the job continues and keeps no
        button but what the `hand_over` look has. Through its token while that works (`expiry_margin` before it
        dies); once it is gone (a restart across the 15 minutes), as the bot's own message in the channel. Tried
        once each: the continuation is a reply to it either way."""
        original = self._address.message_id
        if self._hand_over is None or original is None:
            return
        guild = self._address.guild_id or "@me"
        embed, view = self._hand_over(f"https://discord.com/channels/{guild}/{self._address.channel_id}/{message_id}")
        edits: list[Callable[[], Awaitable[Any]]] = []
        if self._webhook is not None:
            webhook = self._webhook
            edits.append(lambda: webhook.edit_message(original, embed=embed, view=view))
        edits.append(lambda: self._channel.get_partial_message(original).edit(embed=embed, view=view))
        self._webhook = None  # the reply is handed over: nothing more goes through its token
        for edit in edits:
            try:
                await asyncio.wait_for(edit(), STATUS_EDIT_TIMEOUT)
                return
            except (*TRANSPORT_ERRORS, discord.HTTPException) as error:
                log.info("%s: could not point the first card at its continuation (%s)", self.context, describe(error))

    def _portable(self, look: _Look) -> discord.Embed:
        """The look's embed as a channel message can show it: a thumbnail drawn from a picture attached to the
        interaction's reply (`attachment://…`) is drawn from that picture's address instead."""
        thumbnail = look.embed.thumbnail.url
        if not thumbnail or not thumbnail.startswith("attachment://"):
            return look.embed
        name = thumbnail.removeprefix("attachment://")
        if any(upload.filename == name for upload in look.uploads or ()):
            return look.embed
        embed = look.embed.copy()
        embed.set_thumbnail(url=self._attached.get(name))
        return embed


async def _bounded(edit: Awaitable[T], look: _Look) -> T:
    """An edit, within `STATUS_EDIT_TIMEOUT` when it is a status (an edit is the same however often it is sent);
    a last look with its pictures is left to discord.py's own tries, then the presenter's."""
    return await (asyncio.wait_for(edit, STATUS_EDIT_TIMEOUT) if look.uploads is None else edit)


def _attachments(look: _Look) -> Any:
    return discord.utils.MISSING if look.uploads is None else _files(look.uploads)


def _files(uploads: Sequence[Upload]) -> list[discord.File]:
    # Fresh File objects on every attempt: discord.py closes them after a request.
    return [discord.File(BytesIO(upload.data), filename=upload.filename) for upload in uploads]
