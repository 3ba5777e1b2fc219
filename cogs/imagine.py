"""`/imagine`: parse the options, refuse privately what cannot run, defer, and hand over to the runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.params import (
    ASPECT_RATIOS,
    MAX_COUNT,
    MAX_GUIDANCE,
    MAX_PROMPT_LENGTH,
    MAX_SEED,
    MAX_STEPS,
    params_from_request,
)

if TYPE_CHECKING:
    from bot.bot import ImagineBot


class Imagine(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Paint a picture from a prompt on this server's RunPod endpoint")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to paint. Inline flags work too: --ar 16:9, --seed 42, --no text",
        negative_prompt="What to keep out of the picture",
        aspect_ratio="Shape of the picture",
        seed="Same seed and prompt give the same picture",
        steps="More steps: more detail, more time",
        guidance="How closely to follow the prompt",
        count="How many pictures",
        model="Which of this server's models to use",
    )
    @app_commands.choices(aspect_ratio=[app_commands.Choice(name=ratio, value=ratio) for ratio in ASPECT_RATIOS])
    async def imagine(
        self,
        interaction: discord.Interaction[ImagineBot],
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH] | None = None,
        aspect_ratio: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] = 1,
        model: app_commands.Range[str, 1, 32] | None = None,
    ) -> None:
        # Parsing and the preflight are quick (memory and a few small queries), so a refusal can still be
        # private; everything slow happens after the defer.
        params = params_from_request(
            prompt,
            negative_prompt=negative_prompt,
            aspect_ratio=aspect_ratio,
            seed=seed,
            steps=steps,
            guidance=guidance,
            count=count,
        )
        await self.bot.runner.run_new(interaction, params, model)

    @imagine.autocomplete("model")
    async def model_names(
        self, interaction: discord.Interaction[ImagineBot], current: str
    ) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        models = await self.bot.runner.storage.guild_endpoints(interaction.guild_id)
        return [
            app_commands.Choice(name=f"{model.name} ({model.worker})", value=model.name)
            for model in models
            if current.lower() in model.name.lower()
        ][:25]


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Imagine(bot))
