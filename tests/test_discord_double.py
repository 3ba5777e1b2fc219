"""Proves the Discord double against a real, tiny discord.py bot (REST + gateway over loopback)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from doubles.discord import (
    APP_ID,
    BOT_USER_ID,
    CHAOS_ROUTES,
    DEFAULT_CHANNEL_ID,
    DEFAULT_GUILD_ID,
    DEFAULT_USER_ID,
    ChannelSpec,
    DiscordDouble,
    GuildSpec,
    Limit,
    RateLimits,
    run_bot,
)
from doubles.faults import RESET, Chaos


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def png_file() -> discord.File:
    return discord.File(io.BytesIO(PNG), filename="ping.png")


class PingButton(discord.ui.DynamicItem[discord.ui.Button], template=r"ping:(?P<n>\d+)"):
    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"Ping {n}", custom_id=f"ping:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        interaction.client.clicks.append(self.n)
        await interaction.response.send_message(f"pong {self.n}", ephemeral=True)


class NoteModal(discord.ui.Modal, title="Leave a note"):
    note = discord.ui.TextInput(label="Note", custom_id="note")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        interaction.client.notes.append(self.note.value)
        await interaction.response.send_message("saved", ephemeral=True)


@app_commands.command(description="Reply with pong and a picture")
async def ping(interaction: discord.Interaction) -> None:
    await interaction.response.defer(thinking=True)
    view = discord.ui.View(timeout=None)
    view.add_item(PingButton(1))
    try:
        await interaction.edit_original_response(content="pong", attachments=[png_file()], view=view)
    except discord.HTTPException as exc:
        if exc.code != 50027:  # Invalid Webhook Token: the 15-minute token is gone
            raise
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[interaction.user])
        await interaction.channel.send(f"{interaction.user.mention} pong", file=png_file(), allowed_mentions=mentions)


@app_commands.command(description="Open a modal")
async def note(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(NoteModal(custom_id="note-modal"))


@app_commands.command(description="Echo typed options through a followup")
async def echo(interaction: discord.Interaction, text: str, times: int = 1, loud: bool = False, scale: float = 1.0):
    await interaction.response.defer(ephemeral=True, thinking=True)
    reply = " ".join([text.upper() if loud else text] * times) + f" x{scale}"
    await interaction.followup.send(reply, wait=True)  # replaces the "thinking" message
    await interaction.followup.send("and one more", ephemeral=True)


@echo.autocomplete("text")
async def echo_text(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=w, value=w) for w in ("cat", "car", "dog") if w.startswith(current)]


class PingBot(commands.Bot):
    def __init__(self, **options) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
            **options,
        )
        self.clicks: list[int] = []
        self.notes: list[str] = []

    async def setup_hook(self) -> None:
        self.add_dynamic_items(PingButton)
        self.tree.add_command(ping)
        self.tree.add_command(note)
        self.tree.add_command(echo)


class ShardedPingBot(commands.AutoShardedBot, PingBot):
    async def before_identify_hook(self, shard_id, *, initial=False) -> None:
        pass  # the default sleeps 5 s before every shard but the first


@pytest.fixture
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as d:
        yield d


@pytest.fixture
async def bot(double: DiscordDouble) -> AsyncIterator[PingBot]:
    async with run_bot(PingBot(), double) as b:
        yield b


async def test_login_ready_and_guild_create(bot: PingBot, double: DiscordDouble) -> None:
    assert bot.user.id == BOT_USER_ID
    assert bot.application_id == APP_ID
    guild = bot.get_guild(DEFAULT_GUILD_ID)
    assert guild is not None
    assert guild.me is not None
    channel = guild.get_channel(DEFAULT_CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    assert channel.name == "general"
    assert [c.route for c in double.calls[:2]] == ["users_me", "app_info"]
    (conn,) = double.connections
    assert conn.identify["token"] == "test-token"
    assert [t for t, _ in conn.events] == ["READY", "GUILD_CREATE"]


async def test_slash_defers_then_edits_with_png(bot: PingBot, double: DiscordDouble) -> None:
    inter = double.slash("ping")
    await double.send(inter)
    await double.wait_for(lambda: double.calls_for("edit_original", inter.token))

    (callback,) = double.calls_for("callback", inter.token)
    assert callback.json["type"] == 5
    assert callback.status == 200
    (edit,) = double.calls_for("edit_original", inter.token)
    assert edit.status == 200
    assert [(f.filename, f.data, f.content_type) for f in edit.files] == [("ping.png", PNG, "image/png")]
    assert edit.json["attachments"] == [{"id": 0, "filename": "ping.png"}]

    msg = double.original_message(inter.token)
    assert msg is not None
    assert msg.content == "pong"
    assert not msg.loading
    assert [a.data for a in msg.attachments] == [PNG]
    assert msg.components[0]["components"][0]["custom_id"] == "ping:1"


async def test_rate_limited_edit_is_retried(bot: PingBot, double: DiscordDouble) -> None:
    double.fail_next("edit_original", 429, retry_after=0.05)
    inter = double.slash("ping")
    await double.send(inter)
    await double.wait_for(lambda: [c.status for c in double.calls_for("edit_original")] == [429, 200])
    retry = double.calls_for("edit_original")[1]
    assert retry.files[0].data == PNG  # discord.py rewinds the file for the retry
    assert double.original_message(inter.token).content == "pong"


async def test_expired_token_falls_back_to_channel_send(bot: PingBot, double: DiscordDouble) -> None:
    inter = double.slash("ping", created_at=datetime.now(UTC) - timedelta(minutes=16))
    await double.send(inter)
    await double.wait_for(lambda: double.calls_for("channel_message"))

    (edit,) = double.calls_for("edit_original", inter.token)
    assert edit.status == 401
    (post,) = double.calls_for("channel_message")
    assert post.status == 200
    assert post.channel_id == DEFAULT_CHANNEL_ID
    assert post.json["content"] == f"<@{DEFAULT_USER_ID}> pong"
    assert post.json["allowed_mentions"]["users"] == [DEFAULT_USER_ID]
    assert post.files[0].data == PNG
    (posted,) = [m for m in double.messages.values() if m.interaction_token is None]
    assert posted.content == post.json["content"]
    assert posted.attachments[0].data == PNG


async def test_button_click_reaches_dynamic_item(bot: PingBot, double: DiscordDouble) -> None:
    # A message the double never saw: as after a restart, only the registered DynamicItem can answer.
    inter = double.click("ping:7", message_id=1_100_000_000_000_009_999)
    await double.send(inter)
    await double.wait_for(lambda: double.calls_for("callback", inter.token))
    assert bot.clicks == [7]
    msg = double.original_message(inter.token)
    assert msg is not None
    assert msg.content == "pong 7"
    assert msg.ephemeral


async def test_modal_opened_and_submitted(bot: PingBot, double: DiscordDouble) -> None:
    opener = double.slash("note")
    await double.send(opener)
    await double.wait_for(lambda: double.calls_for("callback", opener.token))
    (opened,) = double.calls_for("callback", opener.token)
    assert opened.json["type"] == 9
    assert opened.json["data"]["custom_id"] == "note-modal"

    submit = double.submit_modal("note-modal", {"note": "hello there"})
    await double.send(submit)
    await double.wait_for(lambda: double.calls_for("callback", submit.token))
    assert bot.notes == ["hello there"]
    assert double.original_message(submit.token).content == "saved"


async def test_guild_sync_is_recorded(bot: PingBot, double: DiscordDouble) -> None:
    guild = discord.Object(DEFAULT_GUILD_ID)
    bot.tree.copy_global_to(guild=guild)
    synced = await bot.tree.sync(guild=guild)
    assert {c.name for c in synced} == {"ping", "note", "echo"}
    assert all(c.id for c in synced)
    assert {c["name"] for c in double.commands(DEFAULT_GUILD_ID)} == {"ping", "note", "echo"}
    assert double.calls_for("sync_guild")[0].status == 200
    assert double.commands() == []


async def test_typed_options_autocomplete_and_followups(bot: PingBot, double: DiscordDouble) -> None:
    ac = double.autocomplete("echo", {"text": "ca"}, focused="text")
    await double.send(ac)
    await double.wait_for(lambda: double.calls_for("callback", ac.token))
    (choices,) = double.calls_for("callback", ac.token)
    assert choices.json["type"] == 8
    assert [c["value"] for c in choices.json["data"]["choices"]] == ["cat", "car"]

    inter = double.slash("echo", {"text": "hi", "times": 2, "loud": True, "scale": 1.5})
    assert [o["type"] for o in inter.payload["data"]["options"]] == [3, 4, 5, 10]
    await double.send(inter)
    await double.wait_for(lambda: len(double.calls_for("followup", inter.token)) == 2)
    original = double.original_message(inter.token)
    assert original.content == "HI HI x1.5"
    assert original.ephemeral
    assert not original.loading
    later = [m for m in double.messages.values() if m.interaction_token == inter.token and m is not original]
    assert [m.content for m in later] == ["and one more"]


async def test_double_ack_and_plain_http_contract(double: DiscordDouble) -> None:
    inter = double.slash("ping")
    url = f"{double.rest_base}/interactions/{inter.id}/{inter.token}/callback"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"type": 5}) as first:
            assert first.status == 204
        async with http.post(url, json={"type": 5}, params={"with_response": "1"}) as second:
            assert second.status == 400
            assert second.headers["Content-Type"] == "application/json"
            assert (await second.json())["code"] == 40060
        async with http.get(f"{double.rest_base}/users/@me") as me:
            assert me.status == 401
        async with http.get(f"{double.rest_base}/nope") as other:
            assert other.status == 404
    assert [c.route for c in double.calls] == ["callback", "callback", "users_me", "other"]


async def test_wrong_token_fails_login(double: DiscordDouble) -> None:
    with pytest.raises(discord.LoginFailure):
        async with run_bot(PingBot(), double, token="wrong"):
            pass


def _id_on_shard(shard: int, base: int) -> int:
    return next(i for i in range(base, base + (4 << 22), 1 << 22) if (i >> 22) % 2 == shard)


async def test_autosharded_bot_gets_its_guilds_per_shard() -> None:
    ids = [_id_on_shard(0, 1_000_000_000_000_000_000), _id_on_shard(1, 1_000_000_000_000_000_000)]
    guilds = [GuildSpec(id=g, name=f"g{n}", channels=[ChannelSpec(id=g + 1)]) for n, g in enumerate(ids)]
    async with DiscordDouble(guilds=guilds) as double, run_bot(ShardedPingBot(shard_count=2), double) as b:
        assert {g.id for g in b.guilds} == set(ids)
        by_shard = {c.shard[0]: c for c in double.connections}
        assert set(by_shard) == {0, 1}
        for shard_id, conn in by_shard.items():
            ready = next(d for t, d in conn.events if t == "READY")
            assert ready["shard"] == [shard_id, 2]
            assert conn.guild_ids == [ids[shard_id]]
            assert b.get_guild(ids[shard_id]).shard_id == shard_id

        inter = double.slash("ping", guild_id=ids[1], channel_id=ids[1] + 1)
        await double.send(inter)
        await double.wait_for(lambda: double.calls_for("edit_original", inter.token))
        assert ("INTERACTION_CREATE", inter.payload) in by_shard[1].events
        assert ("INTERACTION_CREATE", inter.payload) not in by_shard[0].events
        assert double.original_message(inter.token).channel_id == ids[1] + 1


# --- rate limits ----------------------------------------------------------------------------------------


class FrozenClock:
    """The double's rate-limit clock, moved only by the test: windows cannot roll over under a slow machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BOT_AUTH = {"Authorization": "Bot test-token"}


async def _deferred(http: aiohttp.ClientSession, double: DiscordDouble) -> str:
    """A deferred interaction's @original URL, ready to be edited."""
    inter = double.slash("ping")
    async with http.post(f"{double.rest_base}/interactions/{inter.id}/{inter.token}/callback", json={"type": 5}):
        pass
    return f"{double.rest_base}/webhooks/{APP_ID}/{inter.token}/messages/@original"


def _limit_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}


async def test_rate_limits_are_off_by_default() -> None:
    async with DiscordDouble() as double, aiohttp.ClientSession() as http:
        original = await _deferred(http, double)
        for n in range(8):  # more than any bucket allows
            async with http.patch(original, json={"content": f"edit {n}"}) as edit:
                assert edit.status == 200
                assert _limit_headers(edit) == {}
    assert double.rate_limit_hits == []


async def test_interaction_token_bucket_refuses_the_sixth_edit_in_two_seconds() -> None:
    clock = FrozenClock()
    async with DiscordDouble(rate_limits=RateLimits(), clock=clock) as double, aiohttp.ClientSession() as http:
        original = await _deferred(http, double)
        remaining = []
        for n in range(5):
            async with http.patch(original, json={"content": f"edit {n}"}) as edit:
                assert edit.status == 200
                headers = _limit_headers(edit)
                assert headers["X-RateLimit-Limit"] == "5"
                assert headers["X-RateLimit-Bucket"] == "interaction-webhook"
                assert float(headers["X-RateLimit-Reset-After"]) == 2.0  # the clock has not moved
                assert float(headers["X-RateLimit-Reset"]) == pytest.approx(time.time() + 2.0, abs=1.0)
                remaining.append(headers["X-RateLimit-Remaining"])
        assert remaining == ["4", "3", "2", "1", "0"]

        clock.now += 0.5
        async with http.patch(original, json={"content": "one too many"}) as refused:
            assert refused.status == 429
            assert refused.headers["Content-Type"] == "application/json"
            assert refused.headers["Via"]  # what tells discord.py to wait rather than give up
            assert refused.headers["Retry-After"] == "2"
            assert refused.headers["X-RateLimit-Remaining"] == "0"
            assert refused.headers["X-RateLimit-Scope"] == "user"
            assert float(refused.headers["X-RateLimit-Reset-After"]) == 1.5
            assert "X-RateLimit-Global" not in refused.headers
            body = await refused.json()
            assert body == {"message": "You are being rate limited.", "retry_after": 1.5, "global": False}
        assert double.original_message(original.split("/")[-3]).content == "edit 4"  # the refused edit changed nothing

        other = await _deferred(http, double)  # another interaction has its own bucket
        async with http.patch(other, json={"content": "mine"}) as edit:
            assert edit.status == 200

        clock.now += 1.5  # the window is over
        async with http.patch(original, json={"content": "later"}) as edit:
            assert edit.status == 200
            assert edit.headers["X-RateLimit-Remaining"] == "4"

    (hit,) = double.rate_limit_hits
    assert (hit.route, hit.bucket, hit.scope, hit.retry_after) == ("edit_original", "interaction-webhook", "user", 1.5)
    assert [c.status for c in double.calls_for("edit_original")] == [200] * 5 + [429, 200, 200]


async def test_global_limit_counts_bot_token_requests_only() -> None:
    clock = FrozenClock()
    async with DiscordDouble(rate_limits=RateLimits(), clock=clock) as double, aiohttp.ClientSession() as http:
        me = f"{double.rest_base}/users/@me"
        for _ in range(50):
            async with http.get(me, headers=BOT_AUTH) as response:
                assert response.status == 200
                assert response.headers["X-RateLimit-Bucket"] == "route-users_me"
        clock.now += 0.25
        async with http.get(me, headers=BOT_AUTH) as refused:
            assert refused.status == 429
            assert refused.headers["X-RateLimit-Global"] == "true"
            assert refused.headers["X-RateLimit-Scope"] == "global"
            assert refused.headers["Via"]
            assert (await refused.json()) == {"message": "You are being rate limited.", "retry_after": 0.75,
                                              "global": True}  # fmt: skip
        # Interaction routes are not bound to the bot's global limit.
        original = await _deferred(http, double)
        async with http.patch(original, json={"content": "still fine"}) as edit:
            assert edit.status == 200
    assert [(h.bucket, h.scope) for h in double.rate_limit_hits] == [("global", "global")]


async def test_channel_message_create_is_limited_per_channel() -> None:
    clock = FrozenClock()
    guild = GuildSpec(channels=[ChannelSpec(), ChannelSpec(id=DEFAULT_CHANNEL_ID + 1, name="art")])
    double = DiscordDouble(guilds=[guild], rate_limits=RateLimits(), clock=clock)
    async with double, aiohttp.ClientSession() as http:
        general = f"{double.rest_base}/channels/{DEFAULT_CHANNEL_ID}/messages"
        art = f"{double.rest_base}/channels/{DEFAULT_CHANNEL_ID + 1}/messages"
        for n in range(5):
            async with http.post(general, json={"content": f"hi {n}"}, headers=BOT_AUTH) as sent:
                assert sent.status == 200
                assert sent.headers["X-RateLimit-Bucket"] == "channel-message-create"
                assert sent.headers["X-RateLimit-Remaining"] == str(4 - n)
                assert float(sent.headers["X-RateLimit-Reset-After"]) == 5.0
        async with http.post(general, json={"content": "too many"}, headers=BOT_AUTH) as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "5"
            assert (await refused.json())["retry_after"] == 5.0
        async with http.post(art, json={"content": "elsewhere"}, headers=BOT_AUTH) as sent:
            assert sent.status == 200
            assert sent.headers["X-RateLimit-Remaining"] == "4"
    assert [(h.route, h.key) for h in double.rate_limit_hits] == [("channel_message", str(DEFAULT_CHANNEL_ID))]
    assert sum(m.content == "too many" for m in double.messages.values()) == 0


async def test_injected_429s_are_recorded_too() -> None:
    async with DiscordDouble() as double, aiohttp.ClientSession() as http:
        original = await _deferred(http, double)
        double.fail_next("edit_original", 429, retry_after=0.2)
        async with http.patch(original, json={"content": "x"}) as refused:
            assert refused.status == 429
    assert [(h.route, h.retry_after) for h in double.rate_limit_hits] == [("edit_original", 0.2)]


async def test_discord_py_paces_itself_from_the_headers() -> None:
    # A small, quick bucket: the client must read Remaining/Reset-After and wait, so it is never refused.
    limits = RateLimits(interaction=Limit(2, 0.3))
    async with DiscordDouble(rate_limits=limits) as double, run_bot(PingBot(), double) as bot:
        inter = double.slash("ping")
        await double.send(inter)
        await double.wait_for(lambda: double.calls_for("edit_original", inter.token))
        webhook = discord.Webhook.partial(APP_ID, inter.token, client=bot)
        message_id = double.original_message(inter.token).id
        for n in range(5):
            await webhook.edit_message(message_id, content=f"edit {n}")
    assert double.rate_limit_hits == []
    edits = [c for c in double.calls if c.token == inter.token and c.route in ("edit_original", "edit_followup")]
    assert len(edits) == 6
    assert all(call.status == 200 for call in edits)
    assert edits[-1].at - edits[0].at >= 0.5  # six requests, two per 0.3 s window: at least two waits
    assert double.original_message(inter.token).content == "edit 4"


# --- chaos: seeded random faults ------------------------------------------------------------------------

RESET_ERRORS = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


async def test_chaos_reset_closes_the_connection_and_posts_nothing() -> None:
    async with DiscordDouble(chaos=Chaos(rate=1.0, kinds=("reset",))) as double, aiohttp.ClientSession() as http:
        general = f"{double.rest_base}/channels/{DEFAULT_CHANNEL_ID}/messages"
        with pytest.raises(RESET_ERRORS):
            async with http.post(general, json={"content": "lost"}, headers=BOT_AUTH):
                pass
        assert double.messages == {}
        (call,) = double.calls
        assert (call.route, call.status, call.chaos) == ("channel_message", RESET, "reset")
        async with http.get(f"{double.rest_base}/users/@me", headers=BOT_AUTH) as me:
            assert me.status == 200  # logging in is never faulted unless a test names its routes
        assert double.chaos is not None
        assert double.chaos.injected == {("channel_message", "reset"): 1}


async def test_chaos_503_is_json_and_the_edit_has_no_effect() -> None:
    clock = FrozenClock()
    double = DiscordDouble(rate_limits=RateLimits(interaction=Limit(1, 5.0)), clock=clock)
    async with double, aiohttp.ClientSession() as http:
        original = await _deferred(http, double)
        double.chaos = Chaos(rate=1.0, kinds=("503",))  # after the callback, which it would spare anyway
        for _ in range(2):
            async with http.patch(original, json={"content": "lost"}) as edit:
                assert edit.status == 503
                assert edit.headers["Content-Type"] == "application/json"
                assert await edit.json() == {"message": "503: Service Unavailable", "code": 0}
        token = original.split("/")[-3]
        assert double.original_message(token).loading  # still the "thinking" placeholder
        double.chaos = None
        async with http.patch(original, json={"content": "kept"}) as edit:
            assert edit.status == 200  # the faulted edits used none of the bucket's one request
    assert [(c.status, c.chaos) for c in double.calls_for("edit_original")] == [(503, "503")] * 2 + [(200, None)]
    assert double.original_message(token).content == "kept"


async def test_chaos_same_seed_same_faults() -> None:
    async def statuses(seed: int) -> tuple[list[int], int]:
        chaos = Chaos(rate=0.3, seed=seed, kinds=("500", "502", "503"))
        async with DiscordDouble(chaos=chaos) as double, aiohttp.ClientSession() as http:
            general = f"{double.rest_base}/channels/{DEFAULT_CHANNEL_ID}/messages"
            seen = []
            for n in range(30):
                async with http.post(general, json={"content": f"hi {n}"}, headers=BOT_AUTH) as sent:
                    seen.append(sent.status)
            assert [c.status for c in double.calls] == seen
            assert len(double.messages) == seen.count(200)  # only answered posts made messages
            return seen, chaos.total

    first, total = await statuses(3)
    assert 0 < total == sum(s != 200 for s in first) < 30
    assert await statuses(3) == (first, total)
    assert (await statuses(4))[0] != first


async def test_chaos_routes_restrict_where_faults_land() -> None:
    with pytest.raises(ValueError, match="unknown routes"):
        DiscordDouble(chaos=Chaos(rate=1.0, routes=frozenset({"channel_messages"})))
    assert "callback" not in CHAOS_ROUTES
    assert {"cdn", "edit_original", "channel_message"} <= CHAOS_ROUTES
    chaos = Chaos(rate=1.0, kinds=("reset", "500"), routes=frozenset({"cdn", "callback"}))
    async with DiscordDouble() as double, aiohttp.ClientSession() as http:
        general = f"{double.rest_base}/channels/{DEFAULT_CHANNEL_ID}/messages"
        form = aiohttp.FormData()
        form.add_field("payload_json", '{"content": "a picture"}', content_type="application/json")
        form.add_field("files[0]", PNG, filename="ping.png", content_type="image/png")
        async with http.post(general, data=form, headers=BOT_AUTH) as sent:
            url = (await sent.json())["attachments"][0]["url"]
        double.chaos = chaos
        async with http.post(general, json={"content": "not covered"}, headers=BOT_AUTH) as sent:
            assert sent.status == 200
        inter = double.slash("ping")
        callback = f"{double.rest_base}/interactions/{inter.id}/{inter.token}/callback"
        for _ in range(3):  # a callback is faulted only when named; a GET may be resent once after a reset
            try:
                async with http.post(callback, json={"type": 5}) as ack:
                    assert ack.status == 500
            except RESET_ERRORS:
                pass
            try:
                async with http.get(url) as download:
                    assert download.status == 500
            except RESET_ERRORS:
                pass
        assert inter.callback_type is None
        double.chaos = None
        async with http.get(url) as download:
            assert await download.read() == PNG
    assert {route for route, _ in chaos.injected} == {"cdn", "callback"}
    assert chaos.injected[("callback", "reset")] + chaos.injected[("callback", "500")] == 3
    assert chaos.total >= 6
    assert chaos.summary().startswith(f"{chaos.total} faults: callback ")


async def test_chaos_reset_reaches_discord_py_as_a_client_error(bot: PingBot, double: DiscordDouble) -> None:
    # discord.py retries only OSErrors of errno 54/10054; the aborted connection reaches it as aiohttp's
    # ServerDisconnectedError (no OSError at all) or, should the kernel reset it, ClientOSError (errno 104).
    channel = bot.get_channel(DEFAULT_CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    double.chaos = Chaos(rate=1.0, kinds=("reset",), routes=frozenset({"channel_message", "followup"}))
    with pytest.raises(RESET_ERRORS):  # both are aiohttp.ClientError
        await channel.send("lost")
    webhook = discord.Webhook.partial(APP_ID, double.slash("ping").token, client=bot)
    with pytest.raises(RESET_ERRORS):
        await webhook.send("lost too")  # the webhook adapter has its own retry loop, alike
    double.chaos = Chaos(rate=1.0, kinds=("503",), routes=frozenset({"channel_message"}))
    with pytest.raises(discord.DiscordServerError):  # 503 is not among the statuses HTTPClient retries
        await channel.send("refused")
    assert [c.status for c in double.calls_for("channel_message")] == [RESET, 503]
    assert double.messages == {}
