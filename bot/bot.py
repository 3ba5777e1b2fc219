"""The Discord client: the bot, its command tree with one error handler, and startup/shutdown."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import tasks
from bot.config import Settings
from bot.crypto import Vault
from bot.endpoints import Endpoints
from bot.engine import RunPodContext
from bot.jobs import JobRunner, RunnerOptions
from bot.lifecycle import LedgerState
from bot.metrics import Metrics
from bot.push import WebhookAddresses
from bot.recovery import Recovery
from bot.replies import explain, reply_privately
from bot.storage import Storage

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.imagine", "cogs.admin", "cogs.settings")


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    """One place that turns errors into short private replies; the rest is logged with its context."""

    async def on_error(self, interaction: discord.Interaction[ImagineBot], error: app_commands.AppCommandError) -> None:
        await reply_privately(interaction, explain(interaction, getattr(error, "original", error)))


class ImagineBot(commands.Bot):
    """The bot of one process; `ShardedImagineBot` when SHARD_COUNT spreads the guilds over several."""

    user: discord.ClientUser

    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage,
        runpod: RunPodContext,
        runner_options: RunnerOptions | None = None,
        metrics: Metrics | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("intents", discord.Intents.default())
        self.metrics = metrics or Metrics()
        options.setdefault("http_trace", self.metrics.discord_trace())
        super().__init__(
            command_prefix=commands.when_mentioned,
            tree_cls=ImagineTree,
            # Prompts are echoed back: nothing the bot posts may ping anyone unless it says so itself.
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.storage = storage
        vault = Vault(settings.encryption_keys)
        self.endpoints = Endpoints(settings, storage, vault, runpod)
        webhooks = None
        if settings.public_url and settings.encryption_keys:  # else polling alone (bot/__main__.py warns)
            webhooks = WebhookAddresses(settings.public_url, settings.encryption_keys)
        self.runner = JobRunner(
            self, settings, storage, vault, runpod, self.endpoints, runner_options, webhooks, self.metrics
        )
        self.metrics.watch("imagine_live_jobs", "Jobs this process follows, by ledger state", self._live_jobs)
        self.metrics.watch(
            "imagine_fair_queue_length", "Parts waiting for a turn in the fair queue", self._queue_length
        )
        self.recovery = Recovery(self.runner, settings, storage, vault, self.endpoints)
        self._closing: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None

    def _live_jobs(self) -> list[tuple[dict[str, str], float]]:
        counts = dict.fromkeys(LedgerState, 0)
        for job in self.runner.live.values():
            counts[job.record.state] += 1
        return [({"state": str(state)}, count) for state, count in counts.items()]

    def _queue_length(self) -> list[tuple[dict[str, str], float]]:
        return [({}, self.runner.queue.length)]

    def now(self) -> datetime:
        """The bot's one idea of now (tests move it): quotas and usage count days by it."""
        return self.runner.options.clock()

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        for guild_id in self.settings.guild_ids:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            try:
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d commands to guild %s", len(synced), guild_id)
            except discord.HTTPException as error:
                log.warning("could not sync commands to guild %s: %s", guild_id, error)

    async def connect(self, *, reconnect: bool = True) -> None:
        # Only a bot that goes online resumes jobs (`python -m bot sync` logs in and leaves). REST works
        # before the gateway is up, so jobs from before a restart resume at once.
        await self.endpoints.rotate_keys()
        await self.endpoints.recall_run_times()
        if self.runner.webhooks:  # a webhook that reached another process (another shard's) wakes the job here
            await self.storage.listen_for_wakeups(self.runner.wakeups.ring_part)
        self._resuming = tasks.spawn(self.recovery.resume_all(), name="resume jobs")
        self._sweeping = tasks.spawn(self.recovery.sweep_forever(), name="sweep stale jobs")
        await super().connect(reconnect=reconnect)

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d guilds", self.user, self.user.id, len(self.guilds))

    async def close(self) -> None:
        """Idempotent: a PaaS may send SIGTERM more than once (docs/discord-notes.md, PaaS restarts)."""
        if self._closing is None:
            self._closing = tasks.spawn(self._shutdown(), name="shutdown")
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        log.info("shutting down: %d live job(s)", len(self.runner.live))
        background = [task for task in (self._resuming, self._sweeping) if task is not None]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self.runner.shutdown()
        await super().close()


class ShardedImagineBot(ImagineBot, commands.AutoShardedBot):
    """The same bot over the shards SHARD_IDS of SHARD_COUNT, as discord.py's AutoShardedBot runs them."""


def make_bot(settings: Settings, **options: Any) -> ImagineBot:
    if settings.shard_count is None:
        return ImagineBot(settings, **options)
    return ShardedImagineBot(settings, shard_count=settings.shard_count, shard_ids=settings.shard_ids, **options)
