"""Buttons that outlive the process: the custom_id carries the action, which picture it is about (if any) and
the job's ledger id (the request's interaction id, which exists before RunPod's job id does), so a message
posted before a restart still works.

A click is handed on as the `job_button` event; `cogs/imagine.py` listens for it and acts. Views are
built here, so the job runner can show buttons without knowing what they do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import discord

from bot.params import PAN_DIRECTIONS, ZOOM_FACTORS


class ButtonAction(StrEnum):
    CANCEL = "cancel"
    REROLL = "reroll"
    EDIT = "edit"
    INFO = "info"
    DELETE = "delete"  # delete:<message id> confirms the deletion of that message
    RETRY = "retry"
    PICK = "pick"  # pick:<n>: picture n of a set, posted on its own
    VARY = "vary"  # vary:<n> on a set, vary:subtle or vary:strong on one picture
    UPSCALE = "upscale"  # upscale:subtle or upscale:creative; a bare upscale on messages posted before them
    ZOOM = "zoom"  # zoom:<factor>, Zoom Out where the worker can paint outside the picture
    PAN = "pan"  # pan:left|right|up|down, likewise


class Variation(StrEnum):
    SUBTLE = "subtle"
    STRONG = "strong"


class Upscale(StrEnum):
    SUBTLE = "subtle"
    CREATIVE = "creative"


@dataclass(frozen=True)
class ResultMoves:
    """What a result's worker can do with its pictures: start from one (V, Vary, Upscale), and paint outside one
    (Zoom Out, Pan)."""

    vary: bool
    outpaint: bool = False


# V, Vary and Reroll: what Remix (/settings) opens a form for before running
REMIXABLE = (ButtonAction.VARY, ButtonAction.REROLL)
_PAN_ARROWS = {"left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}


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
    if action is ButtonAction.UPSCALE and argument in tuple(Upscale):
        return f"Upscale ({argument.capitalize()})", discord.ButtonStyle.secondary
    if action is ButtonAction.ZOOM:
        return f"Zoom Out {argument}x", discord.ButtonStyle.secondary
    if action is ButtonAction.PAN:
        return f"{_PAN_ARROWS.get(argument or '', '')} Pan {argument}".strip(), discord.ButtonStyle.secondary
    return _LOOKS[action]


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=(
        rf"imagine:(?P<action>{'|'.join(ButtonAction)})"
        rf"(?::(?P<argument>[0-9]{{1,20}}|[0-9]\.[0-9]|{'|'.join({*Variation, *Upscale, *PAN_DIRECTIONS})}))?"
        r":(?P<key>[0-9]{1,20})"
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


def result_view(key: str, pictures: int, *, can_vary: bool, can_outpaint: bool = False) -> discord.ui.View:
    """Midjourney's moves: on a set, U<n> (picture n alone) and V<n> (variations of it) per picture; on one
    picture, Vary (subtle), Vary (strong), Upscale (Subtle) and Upscale (Creative), and Zoom Out 2x/1.5x and the
    four pans where the worker can paint outside the picture; then Reroll, Edit, Info, Delete. A worker that
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
        for upscale in Upscale:
            view.add_item(JobButton(ButtonAction.UPSCALE, key, upscale, row=0))
        if can_outpaint:
            for factor in ZOOM_FACTORS:
                view.add_item(JobButton(ButtonAction.ZOOM, key, factor, row=1))
            for direction in PAN_DIRECTIONS:
                view.add_item(JobButton(ButtonAction.PAN, key, direction, row=2))
    for action in RESULT_ACTIONS:
        view.add_item(JobButton(action, key, row=3))
    return view
