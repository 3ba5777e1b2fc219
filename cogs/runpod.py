"""`/runpod setup|status|remove`: a server admin connects the server's own RunPod endpoint and key.

Manage Server is enforced here, not only by Discord's default permissions (which an admin may
loosen in the server settings). The key is typed into a modal, so it never appears in the command,
is checked against RunPod before it is saved, is stored encrypted, and is only ever shown masked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Secret
from bot.errors import BotError, RunPodAuthError, RunPodNotFound, RunPodRejected
from bot.presets import PRESETS, parse_workflow
from bot.replies import explain, reply_privately
from bot.runpod import Health
from bot.storage import GuildEndpoint

if TYPE_CHECKING:
    from bot.bot import ImagineBot

WORKER_CHOICES = [
    app_commands.Choice(name=f"{name}: {preset.description}", value=name) for name, preset in PRESETS.items()
]


def _require_manage_guild(interaction: discord.Interaction[Any]) -> None:
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])


class SetupModal(discord.ui.Modal):
    api_key: discord.ui.TextInput[SetupModal] = discord.ui.TextInput(
        label="RunPod API key",
        custom_id="api_key",
        placeholder="rpa_…  (RunPod console → Settings → API Keys)",
        min_length=8,
        max_length=200,
    )
    endpoint_id: discord.ui.TextInput[SetupModal] = discord.ui.TextInput(
        label="Endpoint id",
        custom_id="endpoint_id",
        placeholder="the id on your serverless endpoint's page, e.g. abc123xyz",
        min_length=3,
        max_length=128,
    )

    def __init__(self, worker: str) -> None:
        super().__init__(title=f"Connect RunPod ({worker})", custom_id=f"runpod:setup:{worker}", timeout=600)
        self.worker = worker
        self.workflow: discord.ui.TextInput[SetupModal] | None = None
        if worker == "comfyui":
            self.workflow = discord.ui.TextInput(
                label="ComfyUI workflow (API format JSON)",
                custom_id="workflow",
                style=discord.TextStyle.paragraph,
                placeholder='{"6": {"inputs": {"text": "{{prompt}}"}, ...}, ...}',
                max_length=4000,
            )
            self.add_item(self.workflow)

    async def on_submit(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        _require_manage_guild(interaction)  # a modal can be submitted by anyone who has its custom_id
        await interaction.response.defer(ephemeral=True, thinking=True)
        reply = await connect(
            interaction, self.api_key.value.strip(), self.endpoint_id.value.strip(), self.worker,
            self.workflow.value if self.workflow else None,
        )  # fmt: skip
        await interaction.followup.send(reply, ephemeral=True)

    async def on_error(self, interaction: discord.Interaction[ImagineBot], error: Exception) -> None:  # type: ignore[override]
        await reply_privately(interaction, explain(interaction, error))


async def connect(
    interaction: discord.Interaction[ImagineBot], api_key: str, endpoint_id: str, worker: str, workflow: str | None
) -> str:
    """Check the key against RunPod, then save it encrypted. Returns what to tell the admin."""
    runner = interaction.client.runner
    assert interaction.guild_id is not None
    if workflow is not None:
        parse_workflow(workflow)
    key = Secret(api_key)
    try:
        client = runner.client_for_key(key, endpoint_id)
        health = await client.health()
    except RunPodAuthError:
        return "❌ RunPod refused that API key (401). Nothing was saved. Check the key in RunPod → Settings → API Keys."
    except RunPodNotFound:
        return f"❌ RunPod has no endpoint `{endpoint_id}` for that key (404). Nothing was saved."
    except RunPodRejected as error:
        return f"❌ {error} Nothing was saved."
    await runner.storage.save_guild_endpoint(
        GuildEndpoint(
            guild_id=interaction.guild_id,
            endpoint_id=endpoint_id,
            api_key_encrypted=runner.vault.encrypt(api_key),
            worker=worker,
            workflow=workflow,
            updated_by=interaction.user.id,
        )
    )
    return (
        f"✅ Connected endpoint `{endpoint_id}` ({worker}) with key `{key.masked}`.\n{describe_health(health)}\n"
        "Members can use /imagine now."
    )


def describe_health(health: Health) -> str:
    cold = " (none warm: the first job waits for a cold start)" if health.warm_workers == 0 else ""
    return (
        f"Workers: {health.warm_workers} ready, {health.initializing} starting, {health.throttled} throttled{cold}. "
        f"Jobs: {health.in_queue} in queue, {health.in_progress} running."
    )


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class RunPodCommands(commands.GroupCog, group_name="runpod", group_description="Connect this server's RunPod endpoint"):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction[ImagineBot]) -> bool:  # type: ignore[override]
        _require_manage_guild(interaction)
        return True

    @app_commands.command(name="setup", description="Connect a RunPod serverless endpoint and API key")
    @app_commands.describe(worker="The worker your endpoint runs (default: sdxl)")
    @app_commands.choices(worker=WORKER_CHOICES)
    async def setup(self, interaction: discord.Interaction[ImagineBot], worker: str = "sdxl") -> None:
        if not self.bot.runner.vault.available:
            raise BotError(
                "The bot cannot store keys yet: its operator has not set BOT_ENCRYPTION_KEY. Ask them to set it "
                "(see .env.example for how to make one) and restart the bot."
            )
        await interaction.response.send_modal(SetupModal(worker))

    @app_commands.command(name="status", description="Show this server's RunPod connection and its health")
    async def status(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        runner = self.bot.runner
        try:
            endpoint = await runner.endpoint_for(interaction.guild_id)
        except BotError as error:
            await interaction.followup.send(error.explanation, ephemeral=True)
            return
        owner = "this server's own" if endpoint.source == "guild" else "the bot operator's default"
        lines = [
            f"Using {owner} endpoint `{endpoint.endpoint_id}` (worker {endpoint.preset.name}), "
            f"key `{endpoint.api_key.masked}`."
        ]
        try:
            lines.append(describe_health(await runner.client_for(endpoint).health()))
        except BotError as error:
            lines.append(f"RunPod health check failed: {error.explanation}")
        await interaction.followup.send("\n".join(lines), ephemeral=True)

    @app_commands.command(name="remove", description="Disconnect this server's RunPod endpoint and forget its key")
    async def remove(self, interaction: discord.Interaction[ImagineBot]) -> None:
        assert interaction.guild_id is not None
        removed = await self.bot.runner.storage.delete_guild_endpoint(interaction.guild_id)
        text = "Removed: the key is forgotten." if removed else "This server had no endpoint of its own."
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(RunPodCommands(bot))
