"""The Discord client: the bot, its command tree with one error handler, and startup/shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.buttons import CancelButton
from bot.config import Settings
from bot.errors import BotError
from bot.images import ImageFetcher
from bot.jobs import JobRunner, RunnerOptions

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.imagine",)


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    """One place that turns errors into short private replies; the rest is logged with its context."""

    async def on_error(self, interaction: discord.Interaction[ImagineBot], error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, BotError):
            text = original.explanation
        elif isinstance(error, app_commands.MissingPermissions):
            text = f"You need the {', '.join(_permission_names(error.missing_permissions))} permission for this."
        elif isinstance(error, app_commands.BotMissingPermissions):
            text = f"I need the {', '.join(_permission_names(error.missing_permissions))} permission here."
        elif isinstance(error, app_commands.NoPrivateMessage):
            text = "This command only works in a server."
        elif isinstance(error, app_commands.CheckFailure):
            text = "You cannot use this command here."
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error(
                "command /%s failed in guild %s for user %s",
                command,
                interaction.guild_id,
                interaction.user.id,
                exc_info=original,
            )
            text = "Something went wrong on our side; it has been logged. Try again in a moment."
        await reply_privately(interaction, text)


async def reply_privately(interaction: discord.Interaction[Any], text: str) -> None:
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as error:
        log.warning("could not tell user %s about an error: %s", interaction.user.id, error)


def _permission_names(permissions: list[str]) -> list[str]:
    return [permission.replace("_", " ").title() for permission in permissions]


class ImagineBot(commands.Bot):
    user: discord.ClientUser

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession,
        fetcher: ImageFetcher,
        runner_options: RunnerOptions | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("intents", discord.Intents.default())
        super().__init__(
            command_prefix=commands.when_mentioned,
            tree_cls=ImagineTree,
            # Prompts are echoed back: nothing the bot posts may ping anyone unless it says so itself.
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.runner = JobRunner(settings, session, fetcher, runner_options)
        self._closing: asyncio.Task[None] | None = None

    async def setup_hook(self) -> None:
        self.add_dynamic_items(CancelButton)
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

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d guilds", self.user, self.user.id, len(self.guilds))

    async def close(self) -> None:
        """Idempotent: a PaaS may send SIGTERM more than once."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        log.info("shutting down: %d live job(s)", len(self.runner.live))
        await self.runner.shutdown()
        await super().close()
