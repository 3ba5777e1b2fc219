"""Buttons that outlive the process: the custom_id carries the action, which picture it is about (if any) and
the job's ledger id (the request's interaction id, which exists before RunPod's job id does), so a message
posted before a restart still works.

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
    DELETE = "delete"  # delete:<message id> confirms the deletion of that message
    RETRY = "retry"
    PICK = "pick"  # pick:<n>: picture n of a set, posted on its own
    VARY = "vary"  # vary:<n> on a set, vary:subtle or vary:strong on one picture
    UPSCALE = "upscale"


class Variation(StrEnum):
    SUBTLE = "subtle"
    STRONG = "strong"


RESULT_ACTIONS = (ButtonAction.REROLL, ButtonAction.EDIT, ButtonAction.INFO, ButtonAction.DELETE)
# failed, timed out, cancelled
ENDED_ACTIONS = (ButtonAction.RETRY, ButtonAction.EDIT, ButtonAction.INFO, ButtonAction.DELETE)

_LOOKS = {
    ButtonAction.CANCEL: ("Cancel", discord.ButtonStyle.secondary),
    ButtonAction.REROLL: ("Reroll", discord.ButtonStyle.primary),
    ButtonAction.EDIT: ("Edit", discord.ButtonStyle.secondary),
    ButtonAction.INFO: ("Info", discord.ButtonStyle.secondary),
    ButtonAction.DELETE: ("Delete", discord.ButtonStyle.danger),
    ButtonAction.RETRY: ("Retry", discord.ButtonStyle.primary),
    ButtonAction.UPSCALE: ("Upscale (2x)", discord.ButtonStyle.secondary),
}


def _label(action: ButtonAction, argument: str | None) -> tuple[str, discord.ButtonStyle]:
    if action is ButtonAction.PICK:
        return f"U{argument}", discord.ButtonStyle.secondary
    if action is ButtonAction.VARY:
        if argument in tuple(Variation):
            return f"Vary ({argument})", discord.ButtonStyle.secondary
        return f"V{argument}", discord.ButtonStyle.secondary
    return _LOOKS[action]


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=(
        rf"imagine:(?P<action>{'|'.join(ButtonAction)})"
        rf"(?::(?P<argument>[0-9]{{1,20}}|{'|'.join(Variation)}))?:(?P<key>[0-9]{{1,20}})"
    ),
):
    def __init__(self, action: ButtonAction, key: str, argument: str | None = None, *, row: int | None = None) -> None:
        label, style = _label(action, argument)
        custom_id = f"imagine:{action}:{argument}:{key}" if argument else f"imagine:{action}:{key}"
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=custom_id, row=row))
        self.action = action
        self.argument = argument
        self.key = key

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        return cls(ButtonAction(match["action"]), match["key"], match["argument"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        interaction.client.dispatch("job_button", interaction, self.action, self.key, self.argument)


def job_view(key: str, *actions: ButtonAction) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, key))
    return view


def result_view(key: str, pictures: int, *, can_vary: bool) -> discord.ui.View:
    """Midjourney's moves: on a set, U<n> (picture n alone) and V<n> (variations of it) per picture; on one
    picture, Vary (subtle), Vary (strong) and Upscale (2x); then Reroll, Edit, Info, Delete. A worker that
    cannot start from an image gets no V, Vary or Upscale buttons: they would only be refused."""
    view = discord.ui.View(timeout=None)
    if pictures > 1:
        shown = range(1, min(pictures, 5) + 1)  # five buttons fill a row; a worker may send more than asked
        for number in shown:
            view.add_item(JobButton(ButtonAction.PICK, key, str(number), row=0))
        if can_vary:
            for number in shown:
                view.add_item(JobButton(ButtonAction.VARY, key, str(number), row=1))
    elif can_vary:
        view.add_item(JobButton(ButtonAction.VARY, key, Variation.SUBTLE, row=0))
        view.add_item(JobButton(ButtonAction.VARY, key, Variation.STRONG, row=0))
        view.add_item(JobButton(ButtonAction.UPSCALE, key, row=0))
    for action in RESULT_ACTIONS:
        view.add_item(JobButton(action, key, row=2))
    return view
