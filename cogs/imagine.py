"""`/imagine` and everything a member clicks on its messages.

A new job (from the command, Reroll or the Edit form) is parsed, checked privately (`bot.admission`),
deferred, and handed to the job runner. Clicks on a job's buttons (`bot.buttons`) arrive here as the
`job_button` event and are resolved from the ledger, so buttons posted before a restart still work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.admission import NEEDED_PERMISSIONS, Request, preflight, refuse_unpostable
from bot.buttons import REMIXABLE, ButtonAction, JobButton, Variation, result_view
from bot.errors import BotError
from bot.forms import BoundForm, submitted_values
from bot.jobs import Origin
from bot.live import TRANSPORT_ERRORS, retrying
from bot.params import (
    ASPECT_RATIOS,
    MAX_COUNT,
    MAX_GUIDANCE,
    MAX_PROMPT_LENGTH,
    MAX_SEED,
    MAX_STEPS,
    OUTPAINT_STRENGTH,
    UPSCALE_STRENGTHS,
    GenerationParams,
    InvalidParams,
    MemberDefaults,
    outpaint_growth,
    params_from_request,
    split_inline_flags,
)
from bot.presenter import is_nsfw
from bot.presets import PRESETS
from bot.replies import explain, reply_privately
from bot.storage import JobRecord
from bot.text import size_text

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

# How far a variation moves from its picture (the image-to-image strength): Midjourney's V buttons are strong.
VARY_STRENGTH = {Variation.SUBTLE: 0.35, Variation.STRONG: 0.75}
# What Zoom Out, Pan, Vary and Upscale start from: a picture of the clicked message.
FROM_A_PICTURE = (ButtonAction.VARY, ButtonAction.UPSCALE, ButtonAction.ZOOM, ButtonAction.PAN)
MODEL_GONE = (
    "Your default model “{name}” is no longer on this server, so this uses the server's default. See /settings."
)
REMIX_KIND = "imagine-remix"
REMIX_FORM = re.compile(
    rf"{REMIX_KIND}:(?P<action>{ButtonAction.VARY}|{ButtonAction.REROLL})(?::(?P<argument>[0-9]{{1,2}}|subtle|strong))?"
    r":(?P<key>[0-9]{1,20}):(?P<message>[0-9]{0,20})"
)
# A job from a button, resolved after the deferral: its parameters and model.
Resolver = Callable[[], Awaitable[tuple[GenerationParams, "str | None"]]]
# An image prompt: what is checked on Discord's word (type and size) before any GPU time is paid.
IMAGE_PROMPT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
MAX_IMAGE_PROMPT_BYTES = 10 * 1024 * 1024


class Imagine(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(JobButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(JobButton)

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
        image="A picture to start from (PNG, JPEG or WebP)",
        strength="How far to move from that picture: 0 keeps it, 1 ignores it",
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
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        model: app_commands.Range[str, 1, 32] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
    ) -> None:
        if strength is not None and image is None:
            raise InvalidParams("Strength says how far to move from a picture: add one with the image option.")
        request = functools.partial(
            params_from_request,
            prompt,
            negative_prompt=negative_prompt,
            aspect_ratio=aspect_ratio,
            seed=seed,
            steps=steps,
            guidance=guidance,
            count=count,
            image_url=image_prompt_url(image) if image is not None else None,
            strength=strength,
        )
        request()  # bad input is refused now, privately, before anything is deferred

        async def with_member_defaults() -> tuple[GenerationParams, str | None]:
            defaults = await self.member_defaults(interaction)
            chosen = model
            if chosen is None and defaults.model is not None:
                chosen = await self._default_model(interaction, defaults.model)
            return request(defaults=defaults), chosen

        await self.run_new(interaction, with_member_defaults, model)

    @imagine.autocomplete("count")  # type: ignore[arg-type]  # discord.py types autocomplete for text options only
    async def counts(
        self, interaction: discord.Interaction[ImagineBot], current: int | str | None
    ) -> list[app_commands.Choice[int]]:
        """Only the counts this server allows: a member is never offered what would then be refused."""
        policy = await self.bot.endpoints.policy(interaction.guild_id)
        most = max(1, min(MAX_COUNT, policy.max_count))
        return [app_commands.Choice(name=str(count), value=count) for count in range(1, most + 1)]

    @imagine.autocomplete("model")
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

    async def member_defaults(self, interaction: discord.Interaction[Any]) -> MemberDefaults:
        """What the member set with /settings in this server."""
        if interaction.guild_id is None:
            return MemberDefaults()
        stored = await self.bot.storage.member_settings(interaction.guild_id, interaction.user.id)
        return MemberDefaults.from_stored(stored)

    async def _default_model(self, interaction: discord.Interaction[Any], name: str) -> str | None:
        """The member's default model, or None (the server's default) when it is no longer on this server; then
        the card says so above the job (the deferred reply is the card: a followup now would replace it)."""
        if any(saved.name == name for saved in await self.bot.endpoints.models(interaction.guild_id or 0)):
            return name
        shown = discord.utils.escape_markdown(name)
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content=MODEL_GONE.format(name=shown))
        return None

    async def run_new(
        self, interaction: discord.Interaction[Any], params: GenerationParams | Resolver, model: str | None = None
    ) -> None:
        """A new job from a command, a button or a form: the same checks and limits for all. Deferred first:
        the checks read the database, and Discord wants an answer within 3 s however busy the bot is
        (docs/discord-notes.md, Interaction deadlines). A refusal still reaches the member alone. `params` may
        be a `Resolver` that reads what it needs (the member's defaults, a message) after the deferral."""
        if interaction.guild_id is None:  # Discord hides the command in DMs; a forged one must not run unmetered
            raise app_commands.NoPrivateMessage()
        if not self.bot.runner.accepting:
            raise BotError("The bot is restarting; try again in a minute.")
        permissions = interaction.app_permissions
        request = Request(
            guild_id=interaction.guild_id,
            member_id=interaction.user.id,
            nsfw_channel=is_nsfw(interaction.channel),
            missing_permissions=tuple(name for name in NEEDED_PERMISSIONS if not getattr(permissions, name)),
        )
        refuse_unpostable(request)  # before the public "thinking…": a refusal is seen by the member alone
        await interaction.response.defer(thinking=True)
        try:
            if not isinstance(params, GenerationParams):
                params, model = await params()
            params = await _fresh_start_picture(interaction, params)
            admission = await preflight(self.bot.endpoints, request, params, model)
            await self.bot.runner.start(await _origin(interaction), admission)
        except Exception:
            # Refused (or failed): the public "thinking" placeholder goes; the error handler tells why privately.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            raise

    # --- a job's buttons -----------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_job_button(
        self, interaction: discord.Interaction[ImagineBot], action: ButtonAction, key: str, argument: str | None
    ) -> None:
        try:
            await self._on_button(interaction, action, key, argument)
        except Exception as error:  # a button has no command tree to report to
            await reply_privately(interaction, explain(interaction, error))

    async def _on_button(
        self, interaction: discord.Interaction[ImagineBot], action: ButtonAction, key: str, argument: str | None
    ) -> None:
        record = await self.bot.storage.job(int(key))
        if record is None or record.guild_id != interaction.guild_id:
            await interaction.response.send_message("I have no record of this job any more.", ephemeral=True)
            return
        if action is ButtonAction.INFO:
            await self._info(interaction, record)
            return
        if action in (ButtonAction.CANCEL, ButtonAction.DELETE) and not _may_moderate(interaction, record):
            await interaction.response.send_message(
                f"Only the member who asked for this picture, or a moderator, can {action} it.", ephemeral=True
            )
            return
        params = GenerationParams(**record.params)
        if action is ButtonAction.CANCEL:
            await self._cancel(interaction, record)
        elif action is ButtonAction.DELETE:
            await self._delete(interaction, record, argument)
        elif action is ButtonAction.EDIT:
            await interaction.response.send_modal(EditModal(interaction, self, params, record.model))
        elif action is ButtonAction.PICK:
            await self._pick(interaction, record, params, int(argument or 1))
        elif action in REMIXABLE and (await self.member_defaults(interaction)).remix:
            await interaction.response.send_modal(
                remix_form(record, action, argument, params, _message_id(interaction))
            )
        else:
            message = interaction.message
            source = _picture(message, _picture_number(action, argument)) if action in FROM_A_PICTURE else None
            await self.run_new(interaction, self._resolver(interaction, record, action, argument, source, message))

    def _resolver(
        self,
        interaction: discord.Interaction[ImagineBot],
        record: JobRecord,
        action: ButtonAction,
        argument: str | None,
        source: discord.Attachment | None,
        message: discord.Message | None,
        *,
        prompt: str | None = None,
        strength: float | None = None,
    ) -> Resolver:
        """What a button (or its Remix form, with the member's `prompt` and `strength`) runs, read after the
        deferral: a variation makes as many pictures as the member's /settings count (1 without one), wherever
        it is pressed."""

        async def resolve() -> tuple[GenerationParams, str | None]:
            params = GenerationParams(**record.params)
            if prompt is not None:
                params = with_prompt(params, prompt)
            if action is ButtonAction.REROLL:
                return dataclasses.replace(params, seed=None), record.model
            if action is ButtonAction.RETRY:
                return params, record.model
            if source is None:
                raise BotError("That picture is no longer on this message.")
            move = f"{action}:{argument}" if argument else str(action)
            start = dataclasses.replace(
                params, image_url=source.url, image_message_id=message.id if message else None, seed=None,
                upscale=False, outpaint=None, count=1, **_made_by(interaction, record, move),
            )  # fmt: skip
            if action is ButtonAction.VARY:
                variation = Variation(argument) if argument in tuple(Variation) else Variation.STRONG
                most = (await self.bot.endpoints.policy(interaction.guild_id)).max_count
                count = min((await self.member_defaults(interaction)).count or 1, max(1, most))
                chosen = VARY_STRENGTH[variation] if strength is None else strength
                return dataclasses.replace(start, strength=chosen, count=count), record.model
            if action is ButtonAction.UPSCALE:  # a bare "upscale" (older messages) keeps the preset's strength
                upscaled = UPSCALE_STRENGTHS.get(argument or "")  # the picture's own seed, as before
                return dataclasses.replace(start, strength=upscaled, upscale=True, seed=params.seed), record.model
            outpaint = f"{action}:{argument}"
            if outpaint_growth(outpaint) is None:
                raise BotError("This button is not one the bot knows.")
            return dataclasses.replace(start, strength=OUTPAINT_STRENGTH, outpaint=outpaint), record.model

        return resolve

    async def remixed(self, interaction: discord.Interaction[ImagineBot], form: re.Match[str]) -> None:
        """A submitted Remix form: the button's job with the member's prompt (and strength). The form's
        custom_id names the job and the message clicked, so a form opened before a restart still runs."""
        values = submitted_values(interaction)
        record = await self.bot.storage.job(int(form["key"]))
        if record is None or record.guild_id != interaction.guild_id:
            await interaction.response.send_message("I have no record of this job any more.", ephemeral=True)
            return
        action, argument = ButtonAction(form["action"]), form["argument"]
        prompt = values.get("prompt", "")
        with_prompt(GenerationParams(**record.params), prompt)  # bad input is refused now, before the deferral
        strength = _strength(values["strength"]) if "strength" in values else None
        message_id = int(form["message"]) if form["message"] else None

        async def resolve() -> tuple[GenerationParams, str | None]:
            message = await self._message(interaction, message_id) if action in FROM_A_PICTURE else None
            source = _picture(message, _picture_number(action, argument)) if message is not None else None
            resolver = self._resolver(
                interaction, record, action, argument, source, message, prompt=prompt, strength=strength
            )
            return await resolver()

        await self.run_new(interaction, resolve)

    async def _message(self, interaction: discord.Interaction[Any], message_id: int | None) -> discord.Message:
        """The message a Remix form was opened from, read again: its pictures' addresses are fresh."""
        if interaction.message is not None and interaction.message.id == message_id:
            return interaction.message
        channel = interaction.client.get_partial_messageable(interaction.channel_id or 0, guild_id=interaction.guild_id)
        try:
            message = await channel.fetch_message(message_id or 0)
        except discord.NotFound:
            raise BotError("The picture this form was opened on was deleted.") from None
        except (*TRANSPORT_ERRORS, discord.HTTPException):
            raise BotError("The picture this form was opened on could not be read from Discord. Try again.") from None
        if message.author.id != self.bot.user.id:  # a form's custom_id is the member's to forge: only our pictures
            raise BotError("That picture is no longer on this message.")
        return message

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[ImagineBot]) -> None:
        """Remix forms are answered here, not by a Modal object: those live only in this process's memory."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: Any = interaction.data or {}
        custom_id = data.get("custom_id")
        form = REMIX_FORM.fullmatch(custom_id) if isinstance(custom_id, str) else None
        if form is None:
            return
        try:
            await self.remixed(interaction, form)
        except Exception as error:  # no command tree to report to
            await reply_privately(interaction, explain(interaction, error))

    async def _info(self, interaction: discord.Interaction[ImagineBot], record: JobRecord) -> None:
        """A job's details, privately; RunPod's ids only for its requester and the server's moderators."""
        policy = await self.bot.endpoints.policy(record.guild_id)
        permissions = interaction.permissions
        show_ids = interaction.user.id == record.user_id or permissions.manage_guild or permissions.manage_messages
        preset = PRESETS.get(record.worker)
        embed = render.info_embed(record, policy.cost(record.execution_ms), preset=preset, show_ids=show_ids)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    async def _pick(
        self, interaction: discord.Interaction[ImagineBot], record: JobRecord, params: GenerationParams, number: int
    ) -> None:
        """U<n>: picture n of a set, posted on its own at full size, with the buttons of a single picture."""
        source = _picture(interaction.message, number)
        await interaction.response.defer(thinking=True)
        data = await source.read()
        try:
            endpoint = await self.bot.endpoints.for_guild(record.guild_id, record.model)
            can_vary, can_outpaint = endpoint.takes_images, endpoint.paints_outside
        except BotError:  # the endpoint is gone: the picture can still be posted, but not varied
            can_vary = can_outpaint = False
        clicker = interaction.user
        by = clicker.display_name if clicker.id != record.user_id else None
        embed = render.picked_embed(params, record.user_name, number, _pictures_on(interaction), by)
        await interaction.followup.send(
            embed=embed,
            file=discord.File(BytesIO(data), filename=source.filename),
            view=result_view(str(record.request_id), 1, can_vary=can_vary, can_outpaint=can_outpaint),
        )

    async def _delete(
        self, interaction: discord.Interaction[ImagineBot], record: JobRecord, target: str | None
    ) -> None:
        """Delete asks first (privately), naming the message; the confirming click deletes that message."""
        if target is None:
            assert interaction.message is not None
            view = discord.ui.View(timeout=None)
            view.add_item(JobButton(ButtonAction.DELETE, str(record.request_id), str(interaction.message.id)))
            what = "picture" if interaction.message.attachments else "message"
            await interaction.response.send_message(
                f"Delete this {what} for everyone in the channel? This cannot be undone.", view=view, ephemeral=True
            )
            return
        await interaction.response.defer(ephemeral=True)
        channel = self.bot.get_partial_messageable(interaction.channel_id or 0, guild_id=interaction.guild_id)
        with contextlib.suppress(discord.NotFound):  # deleted already: the member's wish holds
            await channel.get_partial_message(int(target)).delete()
        await interaction.edit_original_response(content="Deleted.", view=None)
        log.info("%s: result message %s deleted by user %s", _logged(record), target, interaction.user.id)

    async def _cancel(self, interaction: discord.Interaction[ImagineBot], record: JobRecord) -> None:
        if record.delivered_at is not None or not self.bot.runner.is_live(record.request_id):
            await interaction.response.send_message("This job has already finished.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.bot.runner.cancel(record.request_id, by=interaction.user.display_name)
        except BotError as error:
            await interaction.followup.send(f"Could not cancel: {error.explanation}", ephemeral=True)
            return
        log.info("%s: cancelled by user %s", _logged(record), interaction.user.id)
        await interaction.followup.send("Cancelled.", ephemeral=True)


def _logged(record: JobRecord) -> str:
    """A job as a log line names it: its request, and its RunPod job once it has one (never `None`)."""
    return f"request {record.request_id}" + (f" (job {record.runpod_job_id})" if record.runpod_job_id else "")


class EditModal(BoundForm):
    """The prompt, prefilled: change it and the job runs again with the other parameters kept."""

    def __init__(
        self, opener: discord.Interaction[ImagineBot], cog: Imagine, params: GenerationParams, model: str | None
    ) -> None:
        super().__init__(opener, kind="imagine-edit-form", title="Edit and run again")
        self._cog = cog
        self._params = params
        self._model = model
        prompt: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Prompt",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=params.prompt,
            max_length=1000,
        )
        self.add_item(prompt)

    async def submitted(self, interaction: discord.Interaction[ImagineBot], values: dict[str, str]) -> None:  # type: ignore[override]
        params = dataclasses.replace(self._params, prompt=values.get("prompt", ""), seed=None)
        await self._cog.run_new(interaction, params, self._model)


async def _origin(interaction: discord.Interaction[Any]) -> Origin:
    try:  # a reset or a 5xx passes; without the id the status goes on in the channel
        message_id: int | None = (await retrying(interaction.original_response, (0.2, 1.0))).id
    except (*TRANSPORT_ERRORS, discord.HTTPException):
        message_id = None
    return Origin(
        request_id=interaction.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id or 0,
        user_id=interaction.user.id,
        user_name=interaction.user.display_name,
        token=interaction.token,
        token_expires_at=interaction.expires_at,
        message_id=message_id,
        filesize_limit=interaction.filesize_limit,
    )


def image_prompt_url(image: discord.Attachment) -> str:
    """An image prompt's address on Discord's CDN, once its type and size (as Discord reports them) pass."""
    content_type = (image.content_type or "").split(";")[0].strip().lower()
    if content_type not in IMAGE_PROMPT_TYPES:
        raise InvalidParams("The picture to start from must be a PNG, JPEG or WebP file.")
    if image.size > MAX_IMAGE_PROMPT_BYTES:
        raise InvalidParams(
            f"The picture to start from is {size_text(image.size)}; the most is {size_text(MAX_IMAGE_PROMPT_BYTES)}."
        )
    return image.url


def _picture(message: discord.Message | None, number: int) -> discord.Attachment:
    """Picture `number` (from 1) of the message whose button was clicked: the message holds the pictures, so a
    button posted before a restart still finds its own."""
    pictures = message.attachments if message is not None else []
    if not 1 <= number <= len(pictures):
        raise BotError("That picture is no longer on this message.")
    return pictures[number - 1]


def _picture_number(action: ButtonAction, argument: str | None) -> int:
    """Which picture of the clicked message a button starts from: V<n> names one; everything else is on one."""
    if action is ButtonAction.VARY and argument is not None and argument.isdigit():
        return int(argument)
    return 1


def with_prompt(params: GenerationParams, text: str) -> GenerationParams:
    """A Remix form's prompt in place of the job's; its inline flags --ar and --no change those too (a --seed is
    left out: Reroll and variations pick a new one)."""
    prompt, flags = split_inline_flags(text)
    return dataclasses.replace(
        params,
        prompt=prompt,
        aspect_ratio=flags.get("ar", params.aspect_ratio),
        negative_prompt=flags.get("no", params.negative_prompt),
    )


def _strength(text: str) -> float:
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        raise InvalidParams("Strength must be a number between 0 and 1, like 0.5.") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise InvalidParams("Strength must be between 0 and 1.")
    return value


def remix_form(
    record: JobRecord, action: ButtonAction, argument: str | None, params: GenerationParams, message_id: int | None
) -> discord.ui.Modal:
    """Remix: the prompt (and, for a variation, its strength) prefilled before the button runs. Its custom_id says
    what to run (`REMIX_FORM`), so the submission needs nothing kept in memory."""
    button = f"{action}:{argument}" if argument else str(action)
    custom_id = f"{REMIX_KIND}:{button}:{record.request_id}:{message_id or ''}"
    title = "Remix: reroll" if action is ButtonAction.REROLL else "Remix: variations"
    form: discord.ui.Modal = discord.ui.Modal(title=title, custom_id=custom_id)
    prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Prompt", custom_id="prompt", style=discord.TextStyle.paragraph, default=params.prompt,
        max_length=MAX_PROMPT_LENGTH,
    )  # fmt: skip
    form.add_item(prompt)
    if action is ButtonAction.VARY:
        variation = Variation(argument) if argument in tuple(Variation) else Variation.STRONG
        strength: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label="Strength (0 keeps the picture, 1 ignores it)", custom_id="strength",
            default=f"{VARY_STRENGTH[variation]:g}", max_length=8,
        )  # fmt: skip
        form.add_item(strength)
    form.stop()  # finished before it is sent: discord.py keeps no object for it, the listener answers it
    return form


def _pictures_on(interaction: discord.Interaction[Any]) -> int:
    return len(interaction.message.attachments) if interaction.message is not None else 0


def _made_by(interaction: discord.Interaction[Any], record: JobRecord, move: str) -> dict[str, Any]:
    """What a job made by a button on a result is, for its label (bot/render.py, `made_label`): the move, the
    number of the picture in its set (V<n>; None on a single picture), and who asked for that set."""
    kind, _, argument = move.partition(":")
    picture = int(argument) if kind == ButtonAction.VARY and argument.isdigit() else None  # zoom:2 is a factor
    return {"made_by": move, "picture": picture, "set_owner_id": record.user_id}


def _message_id(interaction: discord.Interaction[Any]) -> int | None:
    return interaction.message.id if interaction.message is not None else None


async def _fresh_start_picture(interaction: discord.Interaction[Any], params: GenerationParams) -> GenerationParams:
    """The picture a Retry, Reroll or Edit starts from again, at the address its message has now: Discord's
    addresses carry an expiry (`ex=`) and stop working after about a day. Not read again when the message was
    just clicked (its address came with the click)."""
    if params.image_url is None or params.image_message_id in (None, _message_id(interaction)):
        return params
    attachment_id = _attachment_id(params.image_url)
    channel = interaction.client.get_partial_messageable(interaction.channel_id or 0, guild_id=interaction.guild_id)
    try:
        message = await channel.fetch_message(params.image_message_id or 0)
    except discord.NotFound:
        raise BotError("The picture this started from was deleted, so it cannot be used again.") from None
    except (*TRANSPORT_ERRORS, discord.HTTPException):
        return params  # the address it has may still work; reading the picture says clearly if not
    for attachment in message.attachments:
        if attachment.id == attachment_id:
            return dataclasses.replace(params, image_url=attachment.url)
    raise BotError("The picture this started from is no longer on its message, so it cannot be used again.")


def _attachment_id(url: str) -> int | None:
    """An attachment's id from its address (`…/attachments/<channel>/<attachment>/<file name>`)."""
    parts = urlsplit(url).path.split("/")
    if "attachments" in parts and len(parts) > parts.index("attachments") + 2:
        candidate = parts[parts.index("attachments") + 2]
        return int(candidate) if candidate.isdigit() else None
    return None


def _may_moderate(interaction: discord.Interaction[Any], record: JobRecord) -> bool:
    return interaction.user.id == record.user_id or interaction.permissions.manage_messages


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Imagine(bot))
