"""`/settings`: a member's remembered defaults in one server, shown and changed privately.

`/imagine` reads them after its deferral (cogs/imagine.py, `Imagine.run_new`); an option or an inline flag there
still wins. Remix makes V, Vary and Reroll open a form with the prompt before running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.params import ASPECT_RATIOS, MAX_COUNT, MAX_PROMPT_LENGTH, InvalidParams, MemberDefaults
from bot.text import plural

if TYPE_CHECKING:
    from bot.bot import ImagineBot

Forgettable = Literal["all", "aspect_ratio", "model", "count", "negative_prompt", "remix"]
_LABELS = {
    "aspect_ratio": "Aspect ratio",
    "model": "Model",
    "count": "Pictures",
    "negative_prompt": "Without (negative prompt)",
    "remix": "Remix",
}


class Settings(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="settings", description="Your defaults for /imagine in this server (only you see them)")
    @app_commands.guild_only()
    @app_commands.describe(
        aspect_ratio="Shape of your pictures unless /imagine says otherwise (or --ar)",
        model="Which of this server's models to use unless /imagine names one",
        count="How many pictures /imagine and every variation make",
        negative_prompt="What to keep out of your pictures unless /imagine says otherwise (or --no)",
        remix="On: V, Vary and Reroll open a form to change the prompt before running",
        clear="Forget one default, or all of them",
    )
    @app_commands.choices(aspect_ratio=[app_commands.Choice(name=ratio, value=ratio) for ratio in ASPECT_RATIOS])
    async def settings(
        self,
        interaction: discord.Interaction[ImagineBot],
        aspect_ratio: str | None = None,
        model: app_commands.Range[str, 1, 32] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH] | None = None,
        remix: bool | None = None,
        clear: Forgettable | None = None,
    ) -> None:
        if interaction.guild_id is None:  # Discord hides the command in DMs; a forged one has no server to remember
            raise app_commands.NoPrivateMessage()
        if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
            raise InvalidParams(f"Aspect ratio must be one of {', '.join(ASPECT_RATIOS)}.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id, user_id = interaction.guild_id, interaction.user.id
        storage = self.bot.storage
        stored = MemberDefaults.from_stored(await storage.member_settings(guild_id, user_id)).stored()
        models = [saved.name for saved in await self.bot.endpoints.models(guild_id)]
        if model is not None and model not in models:
            if not models:
                raise InvalidParams("This server has no named models to choose from; /imagine uses its only one.")
            raise InvalidParams(f"This server has no model called {quoted(model)}. Pick one from the list.")
        if count is not None:
            most = (await self.bot.endpoints.policy(guild_id)).max_count
            if count > most:
                raise InvalidParams(f"This server allows at most {plural(most, 'picture')} per job.")
        if clear == "all":
            stored = {}
        elif clear is not None:
            stored.pop(clear, None)
        changes = {
            "aspect_ratio": aspect_ratio,
            "model": model,
            "count": count,
            "negative_prompt": negative_prompt.strip() if negative_prompt else None,
            "remix": remix,
        }
        stored |= {name: value for name, value in changes.items() if value is not None}
        defaults = MemberDefaults.from_stored(stored)
        changed = clear is not None or any(value is not None for value in changes.values())
        if changed:
            await storage.save_member_settings(guild_id, user_id, defaults.stored())
        await interaction.followup.send(describe(defaults, models, saved=changed), ephemeral=True)

    @settings.autocomplete("model")
    async def model_names(
        self, interaction: discord.Interaction[ImagineBot], current: str
    ) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        models = await self.bot.endpoints.models(interaction.guild_id)
        return [
            app_commands.Choice(name=f"{model.name} ({model.worker})", value=model.name)
            for model in models
            if current.lower() in model.name.lower()
        ][:25]


def describe(defaults: MemberDefaults, models: list[str], *, saved: bool) -> str:
    """A member's defaults as they read them; a model no longer on the server says what happens instead."""
    shown: dict[str, str] = {}
    if defaults.aspect_ratio:
        shown["aspect_ratio"] = defaults.aspect_ratio
    if defaults.model:
        gone = " (no longer on this server: /imagine uses the server's default)" if defaults.model not in models else ""
        shown["model"] = f"{quoted(defaults.model)}{gone}"
    if defaults.count:
        shown["count"] = str(defaults.count)
    if defaults.negative_prompt:
        shown["negative_prompt"] = quoted(defaults.negative_prompt, limit=200)
    shown["remix"] = "on: V, Vary and Reroll ask for the prompt first" if defaults.remix else "off"
    head = "✅ Saved. " if saved else ""
    if len(shown) == 1 and not defaults.remix:
        return (
            f"{head}You have no defaults in this server: /imagine uses the server's. Set some with /settings, "
            "e.g. `/settings aspect_ratio:16:9 count:2`."
        )
    lines = [f"{head}Your defaults in this server (only you see them):"]
    lines += [f"• {_LABELS[name]}: {value}" for name, value in shown.items()]
    lines.append("Options of /imagine and inline flags (--ar, --no) still win. Forget one with `/settings clear:`.")
    return "\n".join(lines)


def quoted(text: str, limit: int = 40) -> str:
    """A member's own text shown back to them, between quotes, cut to `limit` characters, markdown kept literal."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"“{discord.utils.escape_markdown(cut)}”"


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Settings(bot))
