"""Private replies to a member, and the one mapping from an error to what they are told."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot import render
from bot.errors import BotError

log = logging.getLogger(__name__)


def explain(interaction: discord.Interaction[Any], error: BaseException) -> str:
    """The private reply for an error; anything unexpected is logged with where it happened."""
    if isinstance(error, BotError):
        return render.explanation(error)  # a refusal's moment as a timestamp: Discord's markup is drawn there
    if isinstance(error, app_commands.MissingPermissions):
        return f"You need the {', '.join(_permission_names(error.missing_permissions))} permission for this."
    if isinstance(error, app_commands.BotMissingPermissions):
        return f"I need the {', '.join(_permission_names(error.missing_permissions))} permission here."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in a server."
    if isinstance(error, app_commands.CheckFailure):
        return "You cannot use this here."
    command = interaction.command.qualified_name if interaction.command else "component"
    log.error("/%s failed in guild %s for user %s", command, interaction.guild_id, interaction.user.id, exc_info=error)
    return "Something went wrong on our side; it has been logged. Try again in a moment."


async def reply_privately(interaction: discord.Interaction[Any], text: str) -> None:
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as error:
        log.warning("could not tell user %s about an error: %s", interaction.user.id, error)


# Where Discord's settings call a permission by another name than its API does.
_SHOWN_AS = {"manage_guild": "Manage Server", "manage_messages": "Manage Messages"}


def _permission_names(permissions: list[str]) -> list[str]:
    return [_SHOWN_AS.get(permission, permission.replace("_", " ").title()) for permission in permissions]
