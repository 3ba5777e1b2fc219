"""Buttons that outlive the process: the custom_id carries the action and the job's ledger id (the
request's interaction id, which exists before RunPod's job id does), so a message posted before a
restart still works.

A click is handed on as the `job_button` event; `cogs/imagine.py` listens for it and acts. Views are
built here, so the job runner can show buttons without knowing what they do.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import discord


class ButtonAction(StrEnum):
    CANCEL = "cancel"
    REROLL = "reroll"
    EDIT = "edit"
    INFO = "info"
    DELETE = "delete"


RESULT_ACTIONS = (ButtonAction.REROLL, ButtonAction.EDIT, ButtonAction.INFO, ButtonAction.DELETE)

_LOOKS = {
    ButtonAction.CANCEL: ("Cancel", discord.ButtonStyle.secondary),
    ButtonAction.REROLL: ("Reroll", discord.ButtonStyle.primary),
    ButtonAction.EDIT: ("Edit", discord.ButtonStyle.secondary),
    ButtonAction.INFO: ("Info", discord.ButtonStyle.secondary),
    ButtonAction.DELETE: ("Delete", discord.ButtonStyle.danger),
}


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"imagine:(?P<action>{'|'.join(ButtonAction)}):(?P<key>[\w-]{{1,80}})",
):
    def __init__(self, action: ButtonAction, key: str) -> None:
        label, style = _LOOKS[action]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"imagine:{action}:{key}"))
        self.action = action
        self.key = key

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        return cls(ButtonAction(match["action"]), match["key"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        interaction.client.dispatch("job_button", interaction, self.action, self.key)


def job_view(key: str, *actions: ButtonAction) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, key))
    return view
