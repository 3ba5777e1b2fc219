"""`/runpod setup|status|remove|limits|moderation|usage`: a server admin connects the server's own RunPod
endpoint and key, and sets its rules.

Manage Server is enforced here, not only by Discord's default permissions (which an admin may
loosen in the server settings). The key is typed into a modal, so it never appears in the command,
is checked against RunPod before it is saved, is stored encrypted, and is only ever shown masked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import timedelta
from io import BytesIO
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Secret
from bot.endpoints import DEFAULT_MODEL
from bot.errors import BotError, RunPodAuthError, RunPodNotFound, RunPodRejected
from bot.forms import BoundForm
from bot.policy import GuildPolicy, check_pattern
from bot.presets import PRESETS
from bot.runpod import Health
from bot.usage import DAYS, build_report, render_chart

if TYPE_CHECKING:
    from bot.bot import ImagineBot

WORKER_CHOICES = [
    app_commands.Choice(name=f"{name}: {preset.description}", value=name) for name, preset in PRESETS.items()
]


def _require_manage_guild(interaction: discord.Interaction[Any]) -> None:
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])


class SetupModal(BoundForm):
    """The key and endpoint, typed into a form so they never appear in a command."""

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

    def __init__(self, opener: discord.Interaction[ImagineBot], worker: str, name: str = DEFAULT_MODEL) -> None:
        super().__init__(opener, kind=f"runpod:setup:{worker}", title=f"Connect RunPod ({worker})")
        self.worker = worker
        self.name = name
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

    async def submitted(self, interaction: discord.Interaction[ImagineBot], values: dict[str, str]) -> None:  # type: ignore[override]
        _require_manage_guild(interaction)  # checked again: the permission may have gone since the form opened
        await interaction.response.defer(ephemeral=True, thinking=True)
        reply = await connect(
            interaction, self.name, values.get("api_key", "").strip(), values.get("endpoint_id", "").strip(),
            self.worker, values.get("workflow") if self.workflow else None,
        )  # fmt: skip
        await interaction.followup.send(reply, ephemeral=True)


async def connect(
    interaction: discord.Interaction[ImagineBot],
    name: str,
    api_key: str,
    endpoint_id: str,
    worker: str,
    workflow: str | None,
) -> str:
    """Check the key against RunPod, then save it encrypted. Returns what to tell the admin."""
    assert interaction.guild_id is not None
    key = Secret(api_key)
    try:
        health = await interaction.client.endpoints.connect(
            interaction.guild_id, name, key, endpoint_id, worker, workflow, by=interaction.user.id
        )
    except RunPodAuthError:
        return "❌ RunPod refused that API key (401). Nothing was saved. Check the key in RunPod → Settings → API Keys."
    except RunPodNotFound:
        return f"❌ RunPod has no endpoint `{endpoint_id}` for that key (404). Nothing was saved."
    except RunPodRejected as error:
        return f"❌ {error} Nothing was saved."
    model = "" if name == DEFAULT_MODEL else f" as model “{name}”"
    return (
        f"✅ Connected endpoint `{endpoint_id}` ({worker}){model} with key `{key.masked}`.\n"
        f"{describe_health(health)}\nMembers can use /imagine now."
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
    @app_commands.describe(
        worker="The worker your endpoint runs (default: sdxl)",
        name="A name for this model, to offer several in /imagine (default: default)",
    )
    @app_commands.choices(worker=WORKER_CHOICES)
    async def setup(
        self,
        interaction: discord.Interaction[ImagineBot],
        worker: str = "sdxl",
        name: app_commands.Range[str, 1, 32] = DEFAULT_MODEL,
    ) -> None:
        if not self.bot.endpoints.can_store_keys:
            raise BotError(
                "The bot cannot store keys yet: its operator has not set BOT_ENCRYPTION_KEY. Ask them to set it "
                "(see .env.example for how to make one) and restart the bot."
            )
        if not re.fullmatch(r"[\w-]{1,32}", name):
            raise BotError("A model name is letters, digits, - and _ only (up to 32).")
        await interaction.response.send_modal(SetupModal(interaction, worker, name.lower()))

    @app_commands.command(name="status", description="Show this server's RunPod connection and its health")
    async def status(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        endpoints = self.bot.endpoints
        assert interaction.guild_id is not None
        models: list[str | None] = [saved.name for saved in await endpoints.models(interaction.guild_id)]
        lines = []
        for model in models or [None]:  # None: the operator's default endpoint
            try:
                endpoint = await endpoints.for_guild(interaction.guild_id, model)
            except BotError as error:
                await interaction.followup.send(error.explanation, ephemeral=True)
                return
            owner = f"model “{model}”:" if model else "the bot operator's default endpoint:"
            lines.append(
                f"**{owner}** endpoint `{endpoint.endpoint_id}` (worker {endpoint.preset.name}), "
                f"key `{endpoint.api_key.masked}`."
            )
            try:
                lines.append(describe_health(await endpoints.client(endpoint).health()))
            except BotError as error:
                lines.append(f"RunPod health check failed: {error.explanation}")
        await interaction.followup.send("\n".join(lines), ephemeral=True)

    @app_commands.command(name="remove", description="Disconnect this server's RunPod endpoint and forget its key")
    @app_commands.describe(name="Which model to remove (default: default)")
    async def remove(self, interaction: discord.Interaction[ImagineBot], name: str = DEFAULT_MODEL) -> None:
        assert interaction.guild_id is not None
        removed = await self.bot.endpoints.remove(interaction.guild_id, name.lower())
        text = "Removed: the key is forgotten." if removed else f"This server has no model “{name}”."
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="limits", description="Show or change this server's limits and quotas (0: no limit)")
    @app_commands.describe(
        member_concurrent="Jobs one member may have running at once (default 2)",
        member_waiting="Jobs one member may have waiting in the queue (default 3)",
        guild_concurrent="Jobs the whole server may have running at once (default 6)",
        member_daily="Pictures per member per day",
        guild_daily_jobs="Pictures per day for the whole server",
        guild_daily_gpu_seconds="GPU seconds per day for the whole server",
        guild_monthly_jobs="Pictures per month for the whole server",
        guild_monthly_gpu_seconds="GPU seconds per month for the whole server",
        max_count="Most images in one job",
        max_steps="Most steps in one job",
        max_minutes="Longest a job may take, queue plus run, before it is cancelled (default 15)",
        gpu_price_per_second="Your endpoint's price per GPU second in dollars, for cost estimates",
    )
    async def limits(
        self,
        interaction: discord.Interaction[ImagineBot],
        member_concurrent: app_commands.Range[int, 1, 20] | None = None,
        member_waiting: app_commands.Range[int, 0, 20] | None = None,
        guild_concurrent: app_commands.Range[int, 1, 200] | None = None,
        member_daily: app_commands.Range[int, 0, 100_000] | None = None,
        guild_daily_jobs: app_commands.Range[int, 0, 1_000_000] | None = None,
        guild_daily_gpu_seconds: app_commands.Range[int, 0, 10_000_000] | None = None,
        guild_monthly_jobs: app_commands.Range[int, 0, 10_000_000] | None = None,
        guild_monthly_gpu_seconds: app_commands.Range[int, 0, 100_000_000] | None = None,
        max_count: app_commands.Range[int, 1, 4] | None = None,
        max_steps: app_commands.Range[int, 1, 150] | None = None,
        max_minutes: app_commands.Range[int, 1, 120] | None = None,
        gpu_price_per_second: app_commands.Range[float, 0.0, 1.0] | None = None,
    ) -> None:
        changes: dict[str, Any] = {
            name: value
            for name, value in {
                "member_concurrent": member_concurrent,
                "member_waiting": member_waiting,
                "guild_concurrent": guild_concurrent,
                "member_daily": member_daily,
                "guild_daily_jobs": guild_daily_jobs,
                "guild_daily_gpu_seconds": guild_daily_gpu_seconds,
                "guild_monthly_jobs": guild_monthly_jobs,
                "guild_monthly_gpu_seconds": guild_monthly_gpu_seconds,
                "max_count": max_count,
                "max_steps": max_steps,
                "max_wall_seconds": max_minutes * 60 if max_minutes is not None else None,
                "gpu_price_per_second": gpu_price_per_second,
            }.items()
            if value is not None
        }
        policy = await self._update_policy(interaction, changes)
        await interaction.response.send_message(describe_limits(policy), ephemeral=True)

    @app_commands.command(name="moderation", description="Show or change which prompts this server refuses")
    @app_commands.describe(
        ban="A word or phrase to refuse in prompts",
        unban="Remove a banned word, pattern or NSFW-only word",
        ban_pattern="A regular expression to refuse (case-insensitive)",
        nsfw_only="A word allowed only in NSFW channels",
        spoiler="Post results in non-NSFW channels as spoilers",
    )
    async def moderation(
        self,
        interaction: discord.Interaction[ImagineBot],
        ban: app_commands.Range[str, 1, 100] | None = None,
        unban: app_commands.Range[str, 1, 200] | None = None,
        ban_pattern: app_commands.Range[str, 1, 200] | None = None,
        nsfw_only: app_commands.Range[str, 1, 100] | None = None,
        spoiler: bool | None = None,
    ) -> None:
        assert interaction.guild_id is not None
        policy = await self.bot.endpoints.policy(interaction.guild_id)
        changes: dict[str, Any] = {}
        if ban:
            changes["banned_words"] = (*policy.banned_words, ban.strip().lower())
        if ban_pattern:
            changes["banned_patterns"] = (*policy.banned_patterns, check_pattern(ban_pattern, policy.banned_patterns))
        if nsfw_only:
            changes["nsfw_only_words"] = (*policy.nsfw_only_words, nsfw_only.strip().lower())
        if unban:
            for rule in ("banned_words", "banned_patterns", "nsfw_only_words"):
                kept = tuple(item for item in changes.get(rule, getattr(policy, rule)) if item != unban.strip().lower())
                changes[rule] = tuple(item for item in kept if item != unban)
        if spoiler is not None:
            changes["spoiler_outside_nsfw"] = spoiler
        policy = await self._update_policy(interaction, changes)
        await interaction.response.send_message(describe_moderation(policy), ephemeral=True)

    @app_commands.command(name="usage", description="This server's use of its GPU in the last 30 days")
    async def usage(self, interaction: discord.Interaction[ImagineBot]) -> None:
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        now = self.bot.now()
        records = await self.bot.storage.guild_jobs_since(interaction.guild_id, now - timedelta(days=DAYS))
        report = build_report(records, now, await self.bot.endpoints.policy(interaction.guild_id))
        chart = await asyncio.to_thread(render_chart, report)
        await interaction.followup.send(
            report.summary(), file=discord.File(BytesIO(chart), filename="usage.png"), ephemeral=True
        )

    async def _update_policy(
        self, interaction: discord.Interaction[ImagineBot], changes: dict[str, Any]
    ) -> GuildPolicy:
        assert interaction.guild_id is not None
        endpoints = self.bot.endpoints
        policy = await endpoints.policy(interaction.guild_id)
        if changes:
            policy = dataclasses.replace(policy, **changes)
            await endpoints.save_policy(interaction.guild_id, policy)
        return policy


def describe_limits(policy: GuildPolicy) -> str:
    def limit(value: float, unit: str = "") -> str:
        return f"{value:g}{unit}" if value else "no limit"

    price = f"${policy.gpu_price_per_second:g} per GPU second" if policy.gpu_price_per_second else "not set"
    return "\n".join(
        [
            f"Running at once: {policy.member_concurrent} per member, {policy.guild_concurrent} for the server; "
            f"up to {policy.member_waiting} waiting per member.",
            f"Per member per day: {limit(policy.member_daily)}.",
            f"Server per day: {limit(policy.guild_daily_jobs)} pictures, "
            f"{limit(policy.guild_daily_gpu_seconds, ' s')} GPU.",
            f"Server per month: {limit(policy.guild_monthly_jobs)} pictures, "
            f"{limit(policy.guild_monthly_gpu_seconds, ' s')} GPU.",
            f"Per job: at most {policy.max_count} images and {policy.max_steps} steps; "
            f"cancelled after {policy.max_wall_seconds / 60:g} minutes.",
            f"Price: {price}.",
        ]
    )


def describe_moderation(policy: GuildPolicy) -> str:
    def listing(items: tuple[str, ...]) -> str:
        return ", ".join(f"`{item}`" for item in items) or "none"

    return "\n".join(
        [
            f"Refused words: {listing(policy.banned_words)}",
            f"Refused patterns: {listing(policy.banned_patterns)}",
            f"Only in NSFW channels: {listing(policy.nsfw_only_words)}",
            f"Spoilers outside NSFW channels: {'on' if policy.spoiler_outside_nsfw else 'off'}",
        ]
    )


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(RunPodCommands(bot))
