"""Buttons that outlive the process: the custom_id carries the action word and the job's ledger id
(the request's interaction id, which exists before RunPod's job id does), and a click is resolved from
the ledger, so a message posted before a restart still works."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.replies import explain, reply_privately

if TYPE_CHECKING:
    from bot.bot import ImagineBot

_STYLES = {
    "cancel": ("Cancel", discord.ButtonStyle.secondary),
    "reroll": ("Reroll", discord.ButtonStyle.primary),
    "edit": ("Edit", discord.ButtonStyle.secondary),
    "info": ("Info", discord.ButtonStyle.secondary),
    "delete": ("Delete", discord.ButtonStyle.danger),
}


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<action>cancel|reroll|edit|info|delete):(?P<job_id>[\w-]{1,80})",
):
    def __init__(self, action: str, job_id: str) -> None:
        label, style = _STYLES[action]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"imagine:{action}:{job_id}"))
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot: ImagineBot = interaction.client
        try:
            await bot.runner.on_button(interaction, self.action, self.job_id)
        except Exception as error:  # a button has no command tree to report to
            await reply_privately(interaction, explain(interaction, error))


def job_view(job_id: str, *actions: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, job_id))
    return view
