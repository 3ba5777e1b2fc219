"""`/runpod setup|status|remove|limits|moderation|usage`: a server admin connects the server's own RunPod
endpoint and key, and sets its rules.

Manage Server is enforced here, not only by Discord's default permissions (which an admin may
loosen in the server settings). The key is typed into a modal, so it never appears in the command,
is checked against RunPod before it is saved, is stored encrypted, and is only ever shown masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Secret
from bot.endpoints import DEFAULT_MODEL
from bot.errors import BotError, RunPodAuthError, RunPodNotFound, RunPodRejected
from bot.forms import BoundForm
from bot.params import InvalidParams
from bot.policy import GuildPolicy, check_pattern
from bot.presets import PRESETS
from bot.replies import explain, reply_privately
from bot.runpod import Health
from bot.text import dollars, health_text, number, plural
from bot.usage import build_report, read_figures, render_chart

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

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

    def __init__(
        self,
        opener: discord.Interaction[ImagineBot],
        worker: str,
        name: str = DEFAULT_MODEL,
        *,
        endpoint_id: str | None = None,
        workflow: str | None = None,
    ) -> None:
        super().__init__(opener, kind=f"runpod:setup:{worker}", title=f"Connect RunPod ({worker})")
        self.worker = worker
        self.name = name
        # Reopened after a refusal: what the admin typed is kept, except the key, which is never sent back.
        self.endpoint_id.default = endpoint_id
        self.workflow: discord.ui.TextInput[SetupModal] | None = None
        if worker == "comfyui":
            self.workflow = discord.ui.TextInput(
                label="ComfyUI workflow (API format JSON)",
                custom_id="workflow",
                style=discord.TextStyle.paragraph,
                placeholder='{"6": {"inputs": {"text": "{{prompt}}"}, ...}, ...}',
                max_length=4000,
                default=workflow,
            )
            self.add_item(self.workflow)

    async def submitted(self, interaction: discord.Interaction[ImagineBot], values: dict[str, str]) -> None:  # type: ignore[override]
        _require_manage_guild(interaction)  # checked again: the permission may have gone since the form opened
        await interaction.response.defer(ephemeral=True, thinking=True)
        endpoint_id = values.get("endpoint_id", "").strip()
        workflow = values.get("workflow") if self.workflow else None
        try:
            reply = await connect(
                interaction, self.name, values.get("api_key", "").strip(), endpoint_id, self.worker, workflow
            )
        except SetupRefused as refused:
            # Within the field's max_length and on one line, or Discord would refuse the prefilled form.
            typed = "".join(character for character in endpoint_id if character.isprintable())[:128]
            again = TryAgain(interaction, self.worker, self.name, typed, workflow)
            again.message = await interaction.followup.send(
                fit(refused.explanation), ephemeral=True, view=again, wait=True
            )
            return
        await interaction.followup.send(fit(reply), ephemeral=True)


class SetupRefused(BotError):
    """RunPod (or the form's own checks) refused what the admin typed: nothing was saved, and they may try again."""


class TryAgain(discord.ui.View):
    """A "Try again" button under a refused setup: it reopens the form with the endpoint id (and workflow) as the
    admin typed them and the key field empty.

    Held in memory only, unlike the job buttons: it matters for the few minutes after a refusal, and after a
    restart `/runpod setup` opens the same form.
    """

    def __init__(
        self,
        refused: discord.Interaction[ImagineBot],
        worker: str,
        name: str,
        endpoint_id: str,
        workflow: str | None,
    ) -> None:
        super().__init__(timeout=600)
        self.admin_id = refused.user.id
        self.guild_id = refused.guild_id
        self.worker = worker
        self.name = name
        self.endpoint_id = endpoint_id
        self.workflow = workflow
        self.message: discord.WebhookMessage | None = None
        # A custom_id of its own opening (the default is random too), so two refusals never share a button.
        self.again.custom_id = f"runpod:setup-again:{refused.id}"

    async def interaction_check(self, interaction: discord.Interaction[ImagineBot]) -> bool:  # type: ignore[override]
        if interaction.user.id != self.admin_id or interaction.guild_id != self.guild_id:
            await reply_privately(interaction, "This button belongs to someone else's setup; run /runpod setup.")
            return False
        return True

    @discord.ui.button(label="Try again", style=discord.ButtonStyle.primary)
    async def again(self, interaction: discord.Interaction[ImagineBot], button: discord.ui.Button[TryAgain]) -> None:
        _require_manage_guild(interaction)
        form = SetupModal(interaction, self.worker, self.name, endpoint_id=self.endpoint_id, workflow=self.workflow)
        await interaction.response.send_modal(form)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[ImagineBot], error: Exception, item: discord.ui.Item[TryAgain]
    ) -> None:
        await reply_privately(interaction, explain(interaction, error))

    async def on_timeout(self) -> None:
        """Take the button away once it no longer works (the reply's token lasts 15 minutes, longer than this)."""
        if self.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self.message.edit(view=None)


async def connect(
    interaction: discord.Interaction[ImagineBot],
    name: str,
    api_key: str,
    endpoint_id: str,
    worker: str,
    workflow: str | None,
) -> str:
    """Check the key against RunPod, then save it encrypted. Returns what to tell the admin; raises
    `SetupRefused` when RunPod or the form's checks refuse it (nothing saved)."""
    assert interaction.guild_id is not None
    check_typed(api_key, endpoint_id)
    key = Secret(api_key)
    try:
        health = await interaction.client.endpoints.connect(
            interaction.guild_id, name, key, endpoint_id, worker, workflow, by=interaction.user.id
        )
    except RunPodAuthError:
        raise SetupRefused(
            "❌ RunPod refused that API key (401). Nothing was saved. Check the key in RunPod → Settings → API Keys."
        ) from None
    except RunPodNotFound:
        raise SetupRefused(
            f"❌ RunPod has no endpoint `{endpoint_id}` for that key (404). Nothing was saved."
        ) from None
    except (RunPodRejected, InvalidParams) as error:
        raise SetupRefused(f"❌ {error.explanation} Nothing was saved.") from None
    model = "" if name == DEFAULT_MODEL else f" as model “{name}”"
    return (
        f"✅ Connected endpoint `{endpoint_id}` ({worker}){model} with key `{key.masked}`.\n"
        f"{describe_health(health)}\nMembers can use /imagine now."
    )


# What RunPod's keys are made of (`rpa_` and letters and digits; older keys are letters and digits): anything else,
# a line break above all, could never be a key, and aiohttp refuses it in a header rather than send it.
API_KEY_SHAPE = re.compile(r"[A-Za-z0-9_-]+")
# The endpoint ids the RunPod client takes (bot/runpod.py, `_ID`): never anything path-like.
ENDPOINT_ID_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def check_typed(api_key: str, endpoint_id: str) -> None:
    """Refuse, in one line naming the field, what the form holds that RunPod could never have given: before any
    request, so a stray line break is a plain answer, not a failure on our side. Neither value is echoed."""
    if not API_KEY_SHAPE.fullmatch(api_key):
        raise SetupRefused(
            "❌ That is not a RunPod API key: a key is letters, digits, _ and - only (like `rpa_…`), with no spaces "
            "or line breaks. Copy it again from RunPod → Settings → API Keys. Nothing was saved."
        )
    if not ENDPOINT_ID_SHAPE.fullmatch(endpoint_id):
        raise SetupRefused(
            "❌ What you typed as the endpoint id is not a RunPod endpoint id: it is letters, digits, - and _ only "
            "(like `abc123xyz`), as on your endpoint's page. Nothing was saved."
        )


def describe_health(health: Health) -> str:
    workers, jobs = health_text(health)  # in the words `python -m bot check` uses too
    return f"Workers: {workers}. Jobs: {jobs}."


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
        blocks: list[str] = []
        left_out: list[str] = []  # models past what one message holds: named, not checked
        for model in models or [None]:  # None: the operator's default endpoint
            if left_out:
                left_out.append(str(model))
                continue
            try:
                endpoint = await endpoints.for_guild(interaction.guild_id, model)
            except BotError as error:
                await interaction.followup.send(fit(error.explanation), ephemeral=True)
                return
            owner = f"model “{model}”:" if model else "the bot operator's default endpoint:"
            block = (
                f"**{owner}** endpoint `{endpoint.endpoint_id}` (worker {endpoint.preset.name}), "
                f"key `{endpoint.api_key.masked}`."
            )
            try:
                block += "\n" + describe_health(await endpoints.client(endpoint).health())
            except BotError as error:
                block += f"\nRunPod health check failed: {error.explanation}"
            last = model == models[-1] if models else True
            room = MESSAGE_LIMIT - (0 if last else STATUS_TAIL)  # the last model needs no room for a tail
            if len("\n".join([*blocks, block])) <= room:
                blocks.append(block)
            else:
                left_out.append(str(model))
        if left_out:
            blocks.append(f"…and {plural(len(left_out), 'more model')}: {listing(tuple(left_out), STATUS_TAIL - 40)}.")
        await interaction.followup.send(fit("\n".join(blocks)), ephemeral=True)

    @app_commands.command(name="remove", description="Disconnect this server's RunPod endpoint and forget its key")
    @app_commands.describe(name="Which model to remove (default: default)")
    async def remove(self, interaction: discord.Interaction[ImagineBot], name: str = DEFAULT_MODEL) -> None:
        assert interaction.guild_id is not None
        removed = await self.bot.endpoints.remove(interaction.guild_id, name.lower())
        text = "Removed: the key is forgotten." if removed else f"This server has no model “{name[:32]}”."
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
        max_count="Most pictures in one job",
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
        before, policy = await self._update_policy(interaction, changes)
        changed = [
            describe_change(name, getattr(before, name), getattr(policy, name))
            for name in changes
            if getattr(before, name) != getattr(policy, name)
        ]
        if changed:
            head = "\n".join(changed)
        elif changes:
            head = "Nothing changed: those are already this server's limits."
        else:  # only asked to see them
            head = ""
        text = "\n\n".join(part for part in (head, describe_limits(policy)) if part)
        await interaction.response.send_message(fit(text), ephemeral=True)

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
        _, policy = await self._update_policy(interaction, changes)
        text, whole = describe_moderation(policy)
        if whole is None:
            await interaction.response.send_message(text, ephemeral=True)
        else:  # too long for one message: the lists in full in a file beside it
            rules = discord.File(BytesIO(whole.encode()), filename=RULES_FILE)
            await interaction.response.send_message(text, file=rules, ephemeral=True)

    @app_commands.command(name="usage", description="This server's use of its GPU in the last 30 days")
    async def usage(self, interaction: discord.Interaction[ImagineBot]) -> None:
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        now = self.bot.now()
        # Sums made by the database, never the month's job rows (bot/usage.py); the chart is drawn in a thread.
        figures = await read_figures(self.bot.storage, interaction.guild_id, now)
        report = build_report(figures, now, await self.bot.endpoints.policy(interaction.guild_id))
        chart = await asyncio.to_thread(render_chart, report)
        await interaction.followup.send(
            fit(report.summary()), file=discord.File(BytesIO(chart), filename="usage.png"), ephemeral=True
        )

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """The server removed the bot (kicked, or the server deleted): nobody there can see or cancel its jobs any
        more, so they are cancelled on RunPod to stop the billing, and its keys are forgotten.

        Only for a removal: discord.py calls `on_guild_unavailable` instead when a GUILD_DELETE says the server is
        unavailable (a Discord outage), and then nothing here changes."""
        await forget_guild(self.bot, guild.id)

    async def _update_policy(
        self, interaction: discord.Interaction[ImagineBot], changes: dict[str, Any]
    ) -> tuple[GuildPolicy, GuildPolicy]:
        """The guild's policy before and after `changes` (saved only when they change something)."""
        assert interaction.guild_id is not None
        endpoints = self.bot.endpoints
        before = await endpoints.policy(interaction.guild_id)
        policy = dataclasses.replace(before, **changes)
        if policy != before:
            await endpoints.save_policy(interaction.guild_id, policy)
        return before, policy


REMOVED_BY = "the server removing the bot"


async def forget_guild(bot: ImagineBot, guild_id: int) -> None:
    """Cancel a guild's running and waiting jobs (with its own key, still in memory), then delete its stored keys.
    What RunPod refuses is logged and stops nothing else: the keys are deleted whatever happened to the jobs."""
    runner = bot.runner
    mine = [request_id for request_id, job in list(runner.live.items()) if job.record.guild_id == guild_id]
    for request_id in mine:
        try:
            await runner.cancel(request_id, by=REMOVED_BY)
        except BotError as error:
            log.warning("guild %s removed the bot: job %s was not cancelled: %s", guild_id, request_id, error)
        except Exception:
            log.exception("guild %s removed the bot: cancelling job %s failed", guild_id, request_id)
    models = await bot.storage.guild_endpoints(guild_id)
    for saved in models:
        await bot.storage.delete_guild_endpoint(guild_id, saved.name)
    log.info(
        "guild %s removed the bot: %d job(s) cancelled, %d stored key(s) deleted", guild_id, len(mine), len(models)
    )


@dataclass(frozen=True)
class Setting:
    """How one of `/runpod limits`' values reads: its name in a sentence, its unit, what 0 means."""

    label: str
    unit: str
    zero: str | None = "no limit"  # None: 0 is a number like any other
    scale: int = 1  # stored in units this many times smaller than shown (seconds shown as minutes)


SETTINGS = {
    "member_concurrent": Setting("jobs running at once per member", "job", zero=None),
    "member_waiting": Setting("jobs waiting per member", "job", zero=None),
    "guild_concurrent": Setting("jobs running at once for the server", "job", zero=None),
    "member_daily": Setting("per member per day", "picture"),
    "guild_daily_jobs": Setting("server per day", "picture"),
    "guild_daily_gpu_seconds": Setting("server GPU time per day", "GPU second"),
    "guild_monthly_jobs": Setting("server per month", "picture"),
    "guild_monthly_gpu_seconds": Setting("server GPU time per month", "GPU second"),
    "max_count": Setting("most pictures in one job", "picture", zero=None),
    "max_steps": Setting("most steps in one job", "step", zero=None),
    "max_wall_seconds": Setting("longest a job may take", "minute", zero=None, scale=60),
}


def price(per_second: float) -> str:
    """`$0.00031 per GPU second`: at least to the cent, and as many places as the admin gave (up to six)."""
    return f"{dollars(per_second, places=6)} per GPU second" if per_second else "not set"


def amount(name: str, value: float) -> str:
    """A limit's value with its unit: `3 pictures`, `15 minutes`, `no limit`."""
    if name == "gpu_price_per_second":
        return price(value)
    setting = SETTINGS[name]
    if not value and setting.zero is not None:
        return setting.zero
    return plural(value / setting.scale, setting.unit)


def describe_change(name: str, before: float, after: float) -> str:
    """`Changed: per member per day from 5 to 3 pictures.` (the unit once, when both sides have it)."""
    setting = SETTINGS.get(name)
    if setting is None:
        return f"Changed: price from {amount(name, before)} to {amount(name, after)}."
    if setting.zero is None or (before and after):
        return f"Changed: {setting.label} from {number(before / setting.scale)} to {amount(name, after)}."
    return f"Changed: {setting.label} from {amount(name, before)} to {amount(name, after)}."


def describe_limits(policy: GuildPolicy) -> str:
    def quota(value: int, unit: str, what: str) -> str:
        return plural(value, unit) if value else f"no limit on {what}"

    return "\n".join(
        [
            f"Running at once: {plural(policy.member_concurrent, 'job')} per member, "
            f"{plural(policy.guild_concurrent, 'job')} for the server; "
            f"up to {plural(policy.member_waiting, 'job')} waiting per member.",
            f"Per member per day: {amount('member_daily', policy.member_daily)}.",
            f"Server per day: {quota(policy.guild_daily_jobs, 'picture', 'pictures')}, "
            f"{quota(policy.guild_daily_gpu_seconds, 'GPU second', 'GPU time')}.",
            f"Server per month: {quota(policy.guild_monthly_jobs, 'picture', 'pictures')}, "
            f"{quota(policy.guild_monthly_gpu_seconds, 'GPU second', 'GPU time')}.",
            f"Per job: at most {plural(policy.max_count, 'picture')} and {plural(policy.max_steps, 'step')}; "
            f"cancelled after {amount('max_wall_seconds', policy.max_wall_seconds)}.",
            f"Price: {price(policy.gpu_price_per_second)}.",
        ]
    )


RULE_LISTS = (
    ("Refused words", "banned_words"),
    ("Refused patterns", "banned_patterns"),
    ("Only in NSFW channels", "nsfw_only_words"),
)
RULES_FILE = "moderation.txt"


def describe_moderation(policy: GuildPolicy) -> tuple[str, str | None]:
    """The rules in one message of at most MESSAGE_LIMIT characters, and, when the lists are too long for it (20
    patterns of 200 characters are), the whole text for a file beside it (None when the message holds it all)."""
    spoilers = f"Spoilers outside NSFW channels: {'on' if policy.spoiler_outside_nsfw else 'off'}"
    lists = [(label, getattr(policy, rule)) for label, rule in RULE_LISTS]
    whole = "\n".join([*(f"{label}: {listing(items)}" for label, items in lists), spoilers])
    if len(whole) <= MESSAGE_LIMIT:
        return whole, None
    note = f"(Too long for one message: every rule is in {RULES_FILE}.)"
    fixed = sum(len(f"{label}: ") for label, _ in lists) + len(spoilers) + len(note) + len(lists) + 1
    budgets = fair_shares([len(listing(items)) for _, items in lists], MESSAGE_LIMIT - fixed)
    shown = [f"{label}: {listing(items, budget)}" for (label, items), budget in zip(lists, budgets, strict=True)]
    return "\n".join([*shown, spoilers, note]), whole


MESSAGE_LIMIT = 2000  # Discord refuses a message whose content is longer: the reply would never arrive
STATUS_TAIL = 300  # what `/runpod status` keeps free for naming the models it has no room to show


def listing(items: tuple[str, ...], budget: int | None = None) -> str:
    """`a`, `b`, `c` in at most `budget` characters: as many as fit, then "… and 3 more"."""
    whole = ", ".join(f"`{item}`" for item in items) or "none"
    if budget is None or len(whole) <= budget:
        return whole
    shown: list[str] = []
    for item in items:
        more = len(items) - len(shown) - 1
        candidate = ", ".join([*shown, f"`{item}`"]) + (f" … and {more} more" if more else "")
        if len(candidate) > budget:
            break
        shown.append(f"`{item}`")
    if not shown:
        return f"{len(items)}, too long to show here"
    return ", ".join(shown) + f" … and {len(items) - len(shown)} more"


def fair_shares(wanted: list[int], budget: int) -> list[int]:
    """Split `budget` characters between texts that want `wanted` each: a short one gets all it wants, and what
    it leaves is shared equally by the longer ones."""
    shares = [0] * len(wanted)
    pending = sorted(range(len(wanted)), key=lambda index: wanted[index])
    left = budget
    while pending:
        equal = left // len(pending)
        if wanted[pending[0]] > equal:
            for index in pending:
                shares[index] = equal
            break
        index = pending.pop(0)
        shares[index] = wanted[index]
        left -= wanted[index]
    return shares


def fit(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """The last guard of every admin reply: cut at a line (or at the limit) with "…", never a refused message."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    line_end = cut.rfind("\n")
    return (cut[:line_end] if line_end > limit // 2 else cut) + "…"


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(RunPodCommands(bot))
