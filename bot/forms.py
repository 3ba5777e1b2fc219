"""Forms (Discord modals) bound to the member who opened them, where they opened them.

discord.py keeps one modal object per custom_id and refreshes its fields from each submission before
calling `on_submit`; with one custom_id for everyone, two submissions close together (two servers, or
a member and an admin) would read each other's values after an `await`. So every form here has a
custom_id of its own opening, refuses a submission from anyone else or any other server, and reads
the values of the submitting interaction itself, before anything is awaited.
"""

from __future__ import annotations

from typing import Any

import discord

from bot.errors import BotError
from bot.replies import explain, reply_privately


class BoundForm(discord.ui.Modal):
    def __init__(self, opener: discord.Interaction[Any], *, kind: str, title: str, timeout: float = 600) -> None:
        super().__init__(title=title, custom_id=f"{kind}:{opener.id}", timeout=timeout)
        self._guild_id = opener.guild_id
        self._user_id = opener.user.id

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        values = submitted_values(interaction)
        if interaction.user.id != self._user_id or interaction.guild_id != self._guild_id:
            raise BotError("This form was opened by someone else; open your own.")
        await self.submitted(interaction, values)

    async def submitted(self, interaction: discord.Interaction[Any], values: dict[str, str]) -> None:
        """What the form does with this submission's own values (by the text inputs' custom_ids)."""
        raise NotImplementedError

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception) -> None:  # type: ignore[override]
        await reply_privately(interaction, explain(interaction, error))


def submitted_values(interaction: discord.Interaction[Any]) -> dict[str, str]:
    """The text inputs of a MODAL_SUBMIT, by custom_id, from the interaction's own data (action rows of
    inputs, or labels wrapping one)."""
    values: dict[str, str] = {}

    def visit(component: Any) -> None:
        if not isinstance(component, dict):
            return
        if isinstance(component.get("custom_id"), str) and isinstance(component.get("value"), str):
            values[component["custom_id"]] = component["value"]
        for child in component.get("components") or []:
            visit(child)
        visit(component.get("component"))

    data: Any = interaction.data or {}
    for component in data.get("components") or []:
        visit(component)
    return values
