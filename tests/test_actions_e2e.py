"""Issue 23's member actions end to end, through the real bot against the Discord and RunPod doubles: /settings
(remembered defaults per member per server), Remix forms on V, Vary and Reroll, Upscale (Subtle)/(Creative),
Zoom Out and Pan where the worker paints outside a picture, and how many pictures a variation makes."""

from __future__ import annotations

import base64
import io

import discord
import pytest
from PIL import Image

from bot.crypto import Vault
from bot.params import OUTPAINT_STRENGTH, UPSCALE_STRENGTH, UPSCALE_STRENGTHS, GenerationParams
from bot.presets import PRESETS
from bot.storage import GuildEndpoint
from cogs.imagine import VARY_STRENGTH
from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID, DEFAULT_USER_ID, OTHER_CHANNEL_ID, OTHER_GUILD_ID, UserSpec
from doubles.discord.model import APP_PERMISSIONS, two_guilds
from doubles.harness import API_KEY, ENDPOINT, TEST_ENCRYPTION_KEY, button, png_for, running_bot
from doubles.outputs import make_png
from doubles.runpod import Script

OTHER_MEMBER = UserSpec(id=DEFAULT_USER_ID + 5, username="bea", global_name="Bea")
OUTPAINT_WORKFLOW = (
    '{"1": {"inputs": {"text": "{{prompt}}", "image": "{{image}}", "mask": "{{mask}}", "denoise": "{{strength}}",'
    ' "width": "{{width}}", "height": "{{height}}"}}}'
)
IMAGE_WORKFLOW = '{"1": {"inputs": {"text": "{{prompt}}", "image": "{{image}}", "denoise": "{{strength}}"}}}'


def painted(job_input) -> Script:
    count = job_input.get("num_images") or 1
    pngs = [png_for(f"{job_input.get('prompt')}|{job_input.get('seed')}|{n}") for n in range(count)]
    return Script(queue_s=0.02, run_s=0.05, output=outputs.sdxl(*pngs))


@pytest.fixture
async def harness(runpod, tmp_path):
    async with running_bot(runpod, worker=painted, guilds=two_guilds(), database_url=f"sqlite:///{tmp_path}/b.db") as h:
        yield h


def custom_ids(message) -> list[list[str]]:
    return [[component["custom_id"] for component in row["components"]] for row in message.components]


def new_jobs(harness, known: set[str]):
    return [job for job in harness.runpod.jobs.values() if job.id not in known]


async def settings(harness, user: UserSpec | None = None, guild_id: int = DEFAULT_GUILD_ID, **options) -> str:
    """/settings as a member types it; the private reply they read."""
    channel = OTHER_CHANNEL_ID if guild_id == OTHER_GUILD_ID else None
    kwargs = {"channel_id": channel} if channel else {}
    interaction = harness.discord.slash("settings", options, user=user, guild_id=guild_id, **kwargs)
    await harness.discord.send(interaction)
    await harness.discord.wait_for(lambda: harness.private_replies(interaction))
    return harness.private_replies(interaction)[-1]


async def click(harness, message, action: str, **kwargs):
    interaction = harness.discord.click(button(message, action), message_id=message.id, **kwargs)
    await harness.discord.send(interaction)
    return interaction


def form(harness, interaction) -> tuple[str, list[str], dict]:
    """The form (modal) the bot opened: its custom_id, its inputs' custom_ids, and the whole callback data."""
    (call,) = [c for c in harness.discord.calls_for("callback", interaction.token) if c.json["type"] == 9]
    data = call.json["data"]
    return data["custom_id"], [row["components"][0]["custom_id"] for row in data["components"]], data


async def submit(harness, custom_id: str, values: dict[str, str], **kwargs):
    interaction = harness.discord.submit_modal(custom_id, values, **kwargs)
    await harness.discord.send(interaction)
    return interaction


async def use_comfyui(harness, workflow: str, models=("default",)) -> None:
    vault = Vault((TEST_ENCRYPTION_KEY,))
    for name in models:
        await harness.bot.storage.save_guild_endpoint(
            GuildEndpoint(DEFAULT_GUILD_ID, name, ENDPOINT, vault.encrypt(API_KEY), "comfyui", workflow)
        )


# --- /settings ---------------------------------------------------------------------------------------------------


async def test_settings_are_remembered_privately_and_used_by_imagine_unless_an_option_or_flag_says_otherwise(
    harness,
):
    assert (await settings(harness)).startswith("You have no defaults in this server")
    reply = await settings(harness, aspect_ratio="16:9", count=2, negative_prompt="blurry", remix=True)
    assert reply.splitlines() == [
        "✅ Saved. Your defaults in this server (only you see them):",
        "• Aspect ratio: 16:9",
        "• Pictures: 2",
        "• Without (negative prompt): “blurry”",
        "• Remix: on: V, Vary and Reroll ask for the prompt first",
        "Options of /imagine and inline flags (--ar, --no) still win. Forget one with `/settings clear:`.",
    ]
    wide = PRESETS["sdxl"].size(GenerationParams("x", aspect_ratio="16:9"))
    final = await harness.finished(await harness.imagine("by default", seed=1))
    (job,) = harness.runpod.jobs.values()
    assert ((job.input["width"], job.input["height"]), job.input["negative_prompt"]) == (wide, "blurry")
    assert job.input["num_images"] == 2 and len(final.attachments) == 2

    known = set(harness.runpod.jobs)
    await harness.finished(await harness.imagine("square --ar 1:1 --no text", count=1, seed=2))
    (job,) = new_jobs(harness, known)
    assert (job.input["width"], job.input["height"], job.input["num_images"]) == (1024, 1024, 1)
    assert job.input["negative_prompt"] == "text"  # --no replaces the default, as an option would

    known = set(harness.runpod.jobs)  # another member, and the same member in another server: no defaults
    await harness.finished(await harness.imagine("theirs", user=OTHER_MEMBER, seed=3))
    (job,) = new_jobs(harness, known)
    assert (job.input["width"], job.input.get("negative_prompt"), job.input["num_images"]) == (1024, None, 1)
    assert (await settings(harness, guild_id=OTHER_GUILD_ID)).startswith("You have no defaults in this server")

    reply = await settings(harness, clear="negative_prompt")
    assert "Without" not in reply and "• Aspect ratio: 16:9" in reply
    assert (await settings(harness, clear="all")).startswith("✅ Saved. You have no defaults in this server")
    assert await harness.bot.storage.member_settings(DEFAULT_GUILD_ID, DEFAULT_USER_ID) == {}


async def test_settings_survive_a_restart(runpod, discord_double, database_url):
    url = database_url  # a SQLite file, and PostgreSQL
    async with running_bot(runpod, database_url=url, discord_double=discord_double, worker=painted) as harness:
        await settings(harness, aspect_ratio="9:16")
    async with running_bot(runpod, database_url=url, discord_double=discord_double, worker=painted) as harness:
        assert "• Aspect ratio: 9:16" in await settings(harness)
        await harness.finished(await harness.imagine("tall"))
        (job,) = runpod.jobs.values()
    assert (job.input["width"], job.input["height"]) == PRESETS["sdxl"].size(GenerationParams("x", aspect_ratio="9:16"))


async def test_a_default_model_is_used_and_falls_back_with_a_note_once_removed(harness):
    await use_comfyui(harness, IMAGE_WORKFLOW, models=("default",))
    vault = Vault((TEST_ENCRYPTION_KEY,))
    await harness.bot.storage.save_guild_endpoint(
        GuildEndpoint(DEFAULT_GUILD_ID, "fast", "other-endpoint", vault.encrypt(API_KEY), "sdxl")
    )
    assert "no model called “nope”" in await settings(harness, model="nope")
    assert "• Model: “fast”" in await settings(harness, model="fast")
    final = await harness.finished(await harness.imagine("on fast"))
    (job,) = harness.runpod.jobs.values()
    assert job.endpoint_id == "other-endpoint" and final.embeds[0]["title"] == "✅ Done"

    await harness.bot.storage.delete_guild_endpoint(DEFAULT_GUILD_ID, "fast")
    assert "“fast” (no longer on this server: /imagine uses the server's default)" in await settings(harness)
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(png_for("comfy")))
    option = harness.discord.attachment_option(make_png(16, 16), "start.png", "image/png")
    interaction = await harness.imagine("fell back", image=option)
    final = await harness.finished(interaction)
    assert final.embeds[0]["title"] == "✅ Done"
    assert final.content == (
        "Your default model “fast” is no longer on this server, so this uses the server's default. See /settings."
    )
    assert [job.endpoint_id for job in harness.runpod.jobs.values()] == ["other-endpoint", ENDPOINT]


async def test_a_default_count_over_the_server_s_limit_is_refused_when_set(harness):
    await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"max_count": 2})
    assert await settings(harness, count=3) == "This server allows at most 2 pictures per job."
    assert await harness.bot.storage.member_settings(DEFAULT_GUILD_ID, DEFAULT_USER_ID) == {}


# --- Remix ---------------------------------------------------------------------------------------------------------


async def test_remix_opens_a_form_on_vary_and_runs_the_edited_prompt_and_strength(harness):
    final = await harness.finished(await harness.imagine("a red fox", seed=4))
    await settings(harness, remix=True)
    known = set(harness.runpod.jobs)
    vary = await click(harness, final, "vary:strong")
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", vary.token))
    custom_id, inputs, data = form(harness, vary)
    assert custom_id == f"imagine-remix:vary:strong:{harness.sent[0].id}:{final.id}"
    assert inputs == ["prompt", "strength"]
    prefilled = [row["components"][0].get("value") for row in data["components"]]
    assert prefilled == ["a red fox", f"{VARY_STRENGTH['strong']:g}"]
    assert new_jobs(harness, known) == []  # nothing runs before the form is sent

    remixed = await submit(harness, custom_id, {"prompt": "a blue fox", "strength": "0.5"})
    done = await harness.finished(remixed)
    (job,) = new_jobs(harness, known)
    assert (job.input["prompt"], job.input["strength"]) == ("a blue fox", 0.5)
    assert job.input["image_url"] == harness.discord.message_json(final)["attachments"][0]["url"]
    assert done.attachments[0].data == png_for(f"a blue fox|{job.input['seed']}|0")
    record = await harness.bot.storage.job(remixed.id)
    assert (record.params["prompt"], record.params["strength"]) == ("a blue fox", 0.5)


async def test_remix_on_reroll_asks_only_for_the_prompt_and_bad_strength_is_refused_without_a_job(harness):
    final = await harness.finished(await harness.imagine("a cat"))
    await settings(harness, remix=True)
    reroll = await click(harness, final, "reroll")
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", reroll.token))
    custom_id, inputs, _ = form(harness, reroll)
    assert inputs == ["prompt"] and custom_id.startswith("imagine-remix:reroll:")
    known = set(harness.runpod.jobs)
    await harness.finished(await submit(harness, custom_id, {"prompt": "a dog --ar 16:9 --no cats"}))
    (job,) = new_jobs(harness, known)
    assert (job.input["prompt"], job.input["negative_prompt"]) == ("a dog", "cats")  # its flags apply too
    wide = PRESETS["sdxl"].size(GenerationParams("x", aspect_ratio="16:9"))
    assert (job.input["width"], job.input["height"]) == wide
    odd = await submit(harness, custom_id, {"prompt": "a dog --ar 5:4"})
    await harness.discord.wait_for(lambda: harness.private_replies(odd))
    assert harness.private_replies(odd)[0].startswith("Aspect ratio '5:4' is not one of")

    vary = await click(harness, final, "vary:subtle")
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", vary.token))
    vary_form, _, _ = form(harness, vary)
    known = set(harness.runpod.jobs)
    bad = await submit(harness, vary_form, {"prompt": "a dog", "strength": "lots"})
    await harness.discord.wait_for(lambda: harness.private_replies(bad))
    assert harness.private_replies(bad) == ["Strength must be a number between 0 and 1, like 0.5."]
    empty = await submit(harness, vary_form, {"prompt": "   ", "strength": "0.3"})
    await harness.discord.wait_for(lambda: harness.private_replies(empty))
    assert harness.private_replies(empty) == ["The prompt is empty: describe the picture you want."]
    assert new_jobs(harness, known) == []


async def test_remix_follows_the_clicker_and_a_form_of_another_server_runs_nothing(harness):
    final = await harness.finished(await harness.imagine("mine"))
    await settings(harness, remix=True)
    known = set(harness.runpod.jobs)
    theirs = await click(harness, final, "vary:strong", user=OTHER_MEMBER)  # Bea has no Remix: it just runs
    await harness.finished(theirs)
    (job,) = new_jobs(harness, known)
    assert job.input["prompt"] == "mine"

    custom_id = f"imagine-remix:vary:strong:{harness.sent[0].id}:{final.id}"
    known = set(harness.runpod.jobs)
    forged = await submit(
        harness, custom_id, {"prompt": "elsewhere", "strength": "0.9"}, guild_id=OTHER_GUILD_ID,
        channel_id=OTHER_CHANNEL_ID,
    )  # fmt: skip
    await harness.discord.wait_for(lambda: harness.private_replies(forged))
    assert harness.private_replies(forged) == ["I have no record of this job any more."]
    assert new_jobs(harness, known) == []


async def test_a_remix_form_opened_before_a_restart_runs_after_it(runpod, discord_double, tmp_path):
    url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=url, discord_double=discord_double, worker=painted) as harness:
        final = await harness.finished(await harness.imagine("before"))
        await settings(harness, remix=True)
        vary = await click(harness, final, "vary:subtle")
        await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", vary.token))
        custom_id, _, _ = form(harness, vary)
        known = set(runpod.jobs)
    async with running_bot(runpod, database_url=url, discord_double=discord_double, worker=painted) as harness:
        done = await harness.finished(await submit(harness, custom_id, {"prompt": "after", "strength": "0.2"}))
        (job,) = new_jobs(harness, known)
    assert (job.input["prompt"], job.input["strength"]) == ("after", 0.2)
    assert job.input["image_url"] == discord_double.message_json(final)["attachments"][0]["url"]
    assert done.embeds[0]["title"] == "✅ Done"


# --- Upscale (Subtle) / (Creative) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["subtle", "creative"])
async def test_upscale_subtle_and_creative_send_the_picture_doubled_at_their_strengths(harness, kind):
    await use_comfyui(harness, IMAGE_WORKFLOW)
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(make_png(40, 30, seed=1)))
    option = harness.discord.attachment_option(make_png(8, 8), "seed.png", "image/png")
    final = await harness.finished(await harness.imagine("enlarge", image=option))
    known = set(harness.runpod.jobs)
    upscale = await click(harness, final, f"upscale:{kind}")
    done = await harness.finished(upscale)
    (job,) = new_jobs(harness, known)
    (entry,) = job.input["images"]
    assert Image.open(io.BytesIO(base64.b64decode(entry["image"]))).size == (80, 60)
    assert job.input["workflow"]["1"]["inputs"]["denoise"] == UPSCALE_STRENGTHS[kind]
    assert done.embeds[0]["title"] == "✅ Done"
    assert custom_ids(done)[0][2:] == [f"imagine:upscale:{k}:{upscale.id}" for k in ("subtle", "creative")]


async def test_a_bare_upscale_button_from_an_older_message_still_runs_at_its_old_strength(harness):
    final = await harness.finished(await harness.imagine("old message"))
    known = set(harness.runpod.jobs)
    legacy_id = f"imagine:upscale:{harness.sent[0].id}"  # the one Upscale (2x) button messages had before
    old_button = {"type": 2, "style": 2, "label": "Upscale (2x)", "custom_id": legacy_id}
    harness.discord.messages[final.id].components = [{"type": 1, "components": [old_button]}]
    legacy = harness.discord.click(legacy_id, message_id=final.id)
    await harness.discord.send(legacy)
    await harness.finished(legacy)
    (job,) = new_jobs(harness, known)
    assert job.input["strength"] == UPSCALE_STRENGTH


# --- Zoom Out and Pan ----------------------------------------------------------------------------------------------


async def outpainting_result(harness, workflow: str = OUTPAINT_WORKFLOW, picture: bytes | None = None):
    await use_comfyui(harness, workflow)
    picture = picture or make_png(64, 48, seed=7)
    harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(picture))
    option = harness.discord.attachment_option(make_png(8, 8), "seed.png", "image/png")
    interaction = await harness.imagine("a harbour", image=option)
    return interaction, await harness.finished(interaction), picture


def sent_images(job) -> dict[str, Image.Image]:
    return {entry["name"]: Image.open(io.BytesIO(base64.b64decode(entry["image"]))) for entry in job.input["images"]}


async def test_zoom_out_sends_the_picture_centred_on_a_doubled_canvas_and_a_mask_of_the_new_area(harness):
    interaction, final, picture = await outpainting_result(harness)
    request = interaction.id
    assert custom_ids(final)[:3] == [
        [f"imagine:{a}:{request}" for a in ("vary:subtle", "vary:strong", "upscale:subtle", "upscale:creative")],
        [f"imagine:zoom:2:{request}", f"imagine:zoom:1.5:{request}"],
        [f"imagine:pan:{d}:{request}" for d in ("left", "right", "up", "down")],
    ]
    known = set(harness.runpod.jobs)
    zoom = await click(harness, final, "zoom:2")
    done = await harness.finished(zoom)
    (job,) = new_jobs(harness, known)
    inputs = job.input["workflow"]["1"]["inputs"]
    images = sent_images(job)
    canvas, mask = images[inputs["image"]], images[inputs["mask"]]
    assert canvas.size == mask.size == (128, 96) and (inputs["width"], inputs["height"]) == (128, 96)
    assert inputs["denoise"] == OUTPAINT_STRENGTH and inputs["text"] == "a harbour"
    original = Image.open(io.BytesIO(picture)).convert("RGB")
    assert canvas.convert("RGB").crop((32, 24, 96, 72)).tobytes() == original.tobytes()  # the very pixels
    assert canvas.getpixel((0, 0))[:3] == (127, 127, 127)
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((64, 48)) == 0  # paint around, keep the middle
    assert mask.getpixel((33, 48)) == 255  # the picture's edge is repainted a little, so no seam shows
    assert done.embeds[0]["title"] == "✅ Done"
    assert "Zoomed out 2×" in str(done.embeds[0])  # the result says what it is
    record = await harness.bot.storage.job(zoom.id)
    assert (record.params["outpaint"], record.params["made_by"]) == ("zoom:2", "zoom:2")
    assert record.params["picture"] is None  # a factor, not a picture's number
    info = await click(harness, done, "info")
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", info.token))
    (callback,) = harness.discord.calls_for("callback", info.token)
    fields = {field["name"]: field["value"] for field in callback.json["data"]["embeds"][0]["fields"]}
    assert fields["Size"] == "The picture's own, on a larger canvas"  # not the aspect ratio's size, never sent


async def test_pan_left_grows_the_canvas_on_the_left_only(harness):
    _, final, picture = await outpainting_result(harness)
    known = set(harness.runpod.jobs)
    panned = await harness.finished(await click(harness, final, "pan:left"))
    assert "Panned left" in str(panned.embeds[0])
    (job,) = new_jobs(harness, known)
    inputs = job.input["workflow"]["1"]["inputs"]
    images = sent_images(job)
    canvas, mask = images[inputs["image"]], images[inputs["mask"]]
    assert canvas.size == (96, 48)
    assert (
        canvas.convert("RGB").crop((32, 0, 96, 48)).tobytes()
        == Image.open(io.BytesIO(picture)).convert("RGB").tobytes()
    )
    assert mask.getpixel((10, 10)) == 255 and mask.getpixel((95, 47)) == 0 and mask.getpixel((41, 0)) == 0


async def test_zoom_and_pan_appear_only_where_the_worker_paints_outside_a_picture(harness):
    final = await harness.finished(await harness.imagine("on sdxl"))
    shown = [custom_id for row in custom_ids(final) for custom_id in row]
    assert not [c for c in shown if ":zoom:" in c or ":pan:" in c]
    known = set(harness.runpod.jobs)
    forged_id = f"imagine:zoom:2:{harness.sent[0].id}"  # a zoom button on a picture it was never offered on
    harness.discord.messages[final.id].components = [
        {"type": 1, "components": [{"type": 2, "style": 2, "label": "Zoom Out 2x", "custom_id": forged_id}]}
    ]
    forged = harness.discord.click(forged_id, message_id=final.id)
    await harness.discord.send(forged)
    await harness.discord.wait_for(lambda: harness.private_replies(forged))
    assert harness.private_replies(forged) == [
        "This server's worker (sdxl) cannot paint outside a picture (Zoom Out, Pan)."
    ]
    assert new_jobs(harness, known) == []

    _, without_mask, _ = await outpainting_result(harness, IMAGE_WORKFLOW)  # comfyui, but no {{mask}}
    shown = [custom_id for row in custom_ids(without_mask) for custom_id in row]
    assert not [c for c in shown if ":zoom:" in c or ":pan:" in c]


async def test_zoom_keeps_the_canvas_within_what_the_worker_takes(harness):
    _, final, _ = await outpainting_result(harness, picture=make_png(1536, 1536, seed=2))
    known = set(harness.runpod.jobs)
    await harness.finished(await click(harness, final, "zoom:2"), timeout=30)
    (job,) = new_jobs(harness, known)
    inputs = job.input["workflow"]["1"]["inputs"]
    canvas = sent_images(job)[inputs["image"]]
    assert canvas.width * canvas.height <= PRESETS["comfyui"].max_start_pixels
    assert canvas.width % 8 == canvas.height % 8 == 0 and canvas.width == canvas.height


# --- how many pictures a variation makes ---------------------------------------------------------------------------


async def test_a_variation_makes_the_member_s_count_wherever_it_is_pressed(harness):
    set_of_two = await harness.finished(await harness.imagine("a pair", count=2))
    single = await harness.finished(await harness.imagine("alone"))
    picked = await click(harness, set_of_two, "pick:1")
    await harness.discord.wait_for(lambda: getattr(harness.discord.original_message(picked.token), "components", None))
    u1 = harness.discord.original_message(picked.token)

    async def pictures_made(message, action) -> int:
        known = set(harness.runpod.jobs)
        await harness.finished(await click(harness, message, action))
        return sum(job.input["num_images"] for job in new_jobs(harness, known))

    assert [
        await pictures_made(m, a) for m, a in ((set_of_two, "vary:1"), (single, "vary:strong"), (u1, "vary:subtle"))
    ] == [1, 1, 1]
    await settings(harness, count=3)
    assert [
        await pictures_made(m, a) for m, a in ((set_of_two, "vary:2"), (single, "vary:subtle"), (u1, "vary:strong"))
    ] == [3, 3, 3]


# --- the ledger ----------------------------------------------------------------------------------------------------


async def test_member_settings_are_kept_per_member_per_server_on_each_database(database_url):
    from bot.storage import Storage

    storage = await Storage.open(database_url)
    try:
        await storage.save_member_settings(1, 10, {"aspect_ratio": "16:9", "remix": True})
        await storage.save_member_settings(2, 10, {"count": 3})
        await storage.save_member_settings(1, 11, {"model": "fast"})
        assert await storage.member_settings(1, 10) == {"aspect_ratio": "16:9", "remix": True}
        assert await storage.member_settings(2, 10) == {"count": 3}
        await storage.save_member_settings(1, 10, {"negative_prompt": "text"})  # replaced, not merged
        assert await storage.member_settings(1, 10) == {"negative_prompt": "text"}
        await storage.save_member_settings(1, 10, {})  # forgotten
        assert await storage.member_settings(1, 10) == {}
        assert await storage.member_settings(1, 11) == {"model": "fast"}
    finally:
        await storage.close()


async def test_zoom_pan_and_upscale_buttons_posted_before_a_restart_still_run(runpod, discord_double, tmp_path):
    url = f"sqlite:///{tmp_path}/bot.db"
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        _, final, _ = await outpainting_result(harness)
        known = set(runpod.jobs)
    async with running_bot(runpod, database_url=url, discord_double=discord_double) as harness:
        harness.runpod.default_script = lambda job_input: Script(output=outputs.comfyui(make_png(64, 48, seed=1)))
        for action in ("pan:down", "zoom:1.5", "upscale:creative"):
            assert (await harness.finished(await click(harness, final, action))).embeds[0]["title"] == "✅ Done"
        pan, zoom, upscale = new_jobs(harness, known)
    assert [sent_images(job)[job.input["workflow"]["1"]["inputs"]["image"]].size for job in (pan, zoom)] == [
        (64, 72),
        (96, 72),
    ]
    assert upscale.input["workflow"]["1"]["inputs"]["denoise"] == UPSCALE_STRENGTHS["creative"]


async def test_zoom_where_the_bot_cannot_post_and_a_banned_remix_prompt_are_refused_privately(harness):
    _, final, _ = await outpainting_result(harness)
    known = set(harness.runpod.jobs)
    without_attach = APP_PERMISSIONS & ~discord.Permissions(attach_files=True).value
    zoom = await click(harness, final, "zoom:2", app_permissions=without_attach)
    await harness.discord.wait_for(lambda: harness.private_replies(zoom))
    assert harness.private_replies(zoom) == [
        "I cannot post pictures in this channel: I am missing Attach Files. Ask an admin to allow it."
    ]

    await harness.bot.storage.save_guild_policy(DEFAULT_GUILD_ID, {"banned_words": ["dragon"]})
    await settings(harness, remix=True)
    vary = await click(harness, final, "vary:subtle")
    await harness.discord.wait_for(lambda: harness.discord.calls_for("callback", vary.token))
    custom_id, _, _ = form(harness, vary)
    banned = await submit(harness, custom_id, {"prompt": "a dragon", "strength": "0.4"})
    await harness.discord.wait_for(lambda: harness.private_replies(banned))
    assert "dragon" in harness.private_replies(banned)[0]
    assert new_jobs(harness, known) == []
    assert not [m for m in harness.discord.messages.values() if m.interaction_token in (zoom.token, banned.token)
                and not m.deleted and not m.ephemeral]  # fmt: skip
