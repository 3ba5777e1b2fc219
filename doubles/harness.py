"""The real bot, wired to both doubles: what a member would see, readable by a test or a benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp

from bot.bot import ImagineBot
from bot.config import Secret, Settings
from bot.engine import RunPodContext
from bot.images import ImageFetcher
from bot.jobs import RunnerOptions
from bot.metrics import Metrics
from bot.polling import PollPolicy
from bot.runpod import RetryPolicy
from bot.storage import Storage
from bot.web import WebServer
from doubles import outputs
from doubles.discord import DiscordDouble, Interaction, Message, Recorded, run_bot
from doubles.runpod import RunPodDouble, Script

API_KEY = "rp_test_key_0123456789"
ENDPOINT = "test-endpoint"
TEST_ENCRYPTION_KEY = Secret("q0Yq2c1w7m0v8x1o4Kk0l9v1Xc2wq3bQ5d6e7f8g9h0=")
FINAL_TITLES = ("✅ Done", "⚠️ No picture this time", "🚫 Cancelled", "🔄 Bot restarting")


def png_for(prompt: str) -> bytes:
    """Each prompt gets its own picture, so a mix-up between jobs cannot go unnoticed."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    return outputs.make_png(40, 40, seed=seed)


def script_for(job_input: dict[str, Any]) -> Script:
    """Default worker: a short queue and run, then the prompt's own picture in worker-sdxl's shape."""
    return Script(queue_s=0.05, run_s=0.1, output=outputs.sdxl(png_for(str(job_input.get("prompt")))))


def fast_options(**overrides: Any) -> RunnerOptions:
    values: dict[str, Any] = {
        "poll": PollPolicy(queued=(0.02, 0.05), running=(0.02, 0.05), outage_interval=0.2),
        "edit_interval": 0.05,
        "notify_after": 60.0,
        "expiry_margin": timedelta(0),
        "delivery_retries": (0.05,),
    }
    return RunnerOptions(**(values | overrides))


def free_port() -> int:
    """A port nothing listens on now (for a web server whose address must be known before it starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings_for(runpod: RunPodDouble, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "discord_token": Secret("test-token"),
        "runpod_api_key": Secret(API_KEY),
        "runpod_endpoint_id": ENDPOINT,
        "runpod_api_url": runpod.api_url,
        "encryption_keys": (TEST_ENCRYPTION_KEY,),
    }
    return Settings(**(values | overrides))


@dataclass
class Harness:
    discord: DiscordDouble
    runpod: RunPodDouble
    bot: ImagineBot
    context: RunPodContext  # the bot's side of RunPod
    sent: list[Interaction] = field(default_factory=list)
    web_url: str | None = None  # the bot's web server (health, metrics, webhooks), when settings.port is set

    async def imagine(self, prompt: str = "a lighthouse at dusk", **options: Any) -> Interaction:
        kwargs = {key: options.pop(key) for key in ("user", "created_at", "attachment_size_limit") if key in options}
        interaction = self.discord.slash("imagine", {"prompt": prompt, **options}, **kwargs)
        await self.discord.send(interaction)
        self.sent.append(interaction)
        return interaction

    def shown(self, interaction: Interaction) -> Message | None:
        """The message the member is looking at for this job: the reply, or its channel continuation."""
        original = self.discord.original_message(interaction.token)
        continued = [
            message
            for message in self.discord.messages.values()
            if message.interaction_token is None and message.embeds and _footer_user(message) == _user(interaction)
        ]
        return continued[-1] if continued else original

    def title(self, interaction: Interaction) -> str | None:
        message = self.shown(interaction)
        return message.embeds[0].get("title") if message and message.embeds else None

    async def finished(self, interaction: Interaction, timeout: float = 10.0) -> Message:
        await self.discord.wait_for(lambda: self.title(interaction) in FINAL_TITLES, timeout)
        message = self.shown(interaction)
        assert message is not None
        return message

    async def recorded_as(self, interaction: Interaction, state: str, timeout: float = 5.0) -> None:
        """Until the ledger has this job in `state` (a job is recorded as delivered just after its card shows it)."""
        for _ in range(round(timeout / 0.02)):
            record = await self.bot.storage.job(interaction.id)
            if record is not None and record.state == state:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"job {interaction.id} was not recorded as {state} within {timeout}s")

    def edits(self, interaction: Interaction) -> list[Recorded]:
        """Every edit of this interaction's reply, whichever webhook route the bot used for it."""
        return [
            call
            for call in self.discord.calls
            if call.token == interaction.token and call.route in ("edit_original", "edit_followup")
        ]

    def form_id(self, interaction: Interaction) -> str:
        """The custom_id of the form (modal) the bot answered this interaction with: unique to that opening."""
        forms = [call for call in self.discord.calls_for("callback", interaction.token) if call.json["type"] == 9]
        assert forms, f"the bot opened no form for interaction {interaction.id}"
        return str(forms[-1].json["data"]["custom_id"])

    def private_replies(self, interaction: Interaction) -> list[str]:
        """Ephemeral answers the member alone saw (callback messages and followups with flag 64)."""
        texts = []
        for call in self.discord.calls:
            if call.token != interaction.token or not isinstance(call.json, dict):
                continue
            data = call.json.get("data", call.json) if call.route == "callback" else call.json
            if isinstance(data, dict) and data.get("flags", 0) & 64 and data.get("content"):
                texts.append(data["content"])
        return texts


def _user(interaction: Interaction) -> str:
    member = interaction.payload.get("member") or {}
    user = member.get("user") or interaction.payload.get("user") or {}
    return user.get("global_name") or user.get("username") or ""


def _footer_user(message: Message) -> str:
    footer = (message.embeds[0].get("footer") or {}).get("text", "")
    return footer.removeprefix("Requested by ").split(" · ")[0]


def button(message: Message, action: str) -> str:
    """The custom_id of the button a member would click on this message."""
    for row in message.components:
        for component in row["components"]:
            if component.get("custom_id", "").startswith(f"imagine:{action}:"):
                return component["custom_id"]
    raise AssertionError(f"no {action} button on message {message.id}: {message.components}")


def field_value(message: Message, name: str) -> str | None:
    for embed_field in message.embeds[0].get("fields", []):
        if embed_field["name"] == name:
            return embed_field["value"]
    return None


@contextlib.asynccontextmanager
async def running_bot(
    runpod: RunPodDouble,
    *,
    options: RunnerOptions | None = None,
    settings: Settings | None = None,
    database_url: str | None = None,
    discord_double: DiscordDouble | None = None,
    retry: RetryPolicy | None = None,
    health_ttl: float = 0.1,
    worker: Callable[[dict[str, Any]], Script] = script_for,
    **double: Any,
) -> AsyncIterator[Harness]:
    """The bot on a database (a fresh SQLite file unless given), talking to both doubles; `worker` scripts the
    jobs RunPod is sent (from the start: a restarted bot may send jobs recorded before it). With `settings.port`
    its web server runs too, as `python -m bot` runs it (before the login)."""
    runpod.default_script = worker
    async with contextlib.AsyncExitStack() as stack:
        if discord_double is None:
            discord_double = await stack.enter_async_context(DiscordDouble(**double))
        metrics = Metrics()
        session = await stack.enter_async_context(aiohttp.ClientSession(trace_configs=[metrics.runpod_trace()]))
        fetcher = await stack.enter_async_context(ImageFetcher())
        if database_url is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            database_url = f"sqlite:///{folder}/bot.db"
        options = options or fast_options()
        storage = await Storage.open(database_url, clock=options.clock)
        stack.push_async_callback(storage.close)
        settings = settings or settings_for(runpod)
        context = RunPodContext(
            session,
            fetcher,
            api_url=settings.runpod_api_url,
            retry=retry,
            local=settings.runpod_local,
            health_ttl=health_ttl,  # short: tests change the double's workers and expect to see it soon
        )
        bot = ImagineBot(
            settings,
            storage=storage,
            runpod=context,
            runner_options=options,
            metrics=metrics,
            guild_ready_timeout=0.05,
        )
        web_url = None
        if settings.port:
            web = WebServer(bot, settings.port, host="127.0.0.1")
            await web.start()
            stack.push_async_callback(web.stop)
            web_url = f"http://127.0.0.1:{settings.port}"
        await stack.enter_async_context(run_bot(bot, discord_double))
        yield Harness(discord_double, runpod, bot, context, web_url=web_url)
