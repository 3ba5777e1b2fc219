"""Units of issue 23's member actions: member defaults, the zoom and pan geometry, the mask, the buttons'
custom_ids and which workflows paint outside a picture."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bot.buttons import JobButton, result_view
from bot.outpaint import canvas_size, make_canvas, make_mask, picture_box
from bot.params import (
    PAN_DIRECTIONS,
    ZOOM_FACTORS,
    GenerationParams,
    InvalidParams,
    MemberDefaults,
    outpaint_growth,
    params_from_request,
)
from bot.presets import PRESETS, parse_workflow
from doubles.outputs import make_png

URL = "https://cdn.discordapp.com/attachments/1/2/a.png"
MOVES = [f"zoom:{factor}" for factor in ZOOM_FACTORS] + [f"pan:{direction}" for direction in PAN_DIRECTIONS]


def test_only_the_offered_zooms_and_pans_are_moves():
    assert all(outpaint_growth(move) is not None for move in MOVES)
    for junk in ("zoom:3", "zoom:", "pan:diagonal", "pan", "zoom:1.5.5", "", "upscale:subtle"):
        assert outpaint_growth(junk) is None
    with pytest.raises(InvalidParams, match="not a zoom or pan"):
        GenerationParams("x", image_url=URL, outpaint="zoom:10")
    with pytest.raises(InvalidParams, match="need a picture to start from"):
        GenerationParams("x", outpaint="zoom:2")


@given(
    width=st.integers(8, 4000),
    height=st.integers(8, 4000),
    move=st.sampled_from(MOVES),
    max_pixels=st.sampled_from([1024 * 768, 2048 * 2048]),
)
def test_a_canvas_fits_the_worker_and_holds_the_picture_in_its_shape(width, height, move, max_pixels):
    size = canvas_size(width, height, move, max_pixels=max_pixels)
    assert size[0] * size[1] <= max_pixels
    assert size[0] % 8 == size[1] % 8 == 0
    left, top, right, bottom = picture_box(size, move)
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    across, down = right - left, bottom - top
    # in its shape, but for the canvas's sides being cut to multiples of 8 (and the box rounded to pixels)
    assert abs((across / down) / (width / height) - 1) <= 10 / across + 10 / down + 0.01


def test_zoom_centres_the_picture_and_pan_adds_on_its_side():
    assert picture_box((200, 100), "zoom:2") == (50, 25, 150, 75)
    assert picture_box((150, 150), "zoom:1.5") == (25, 25, 125, 125)
    assert picture_box((150, 100), "pan:left") == (50, 0, 150, 100)
    assert picture_box((150, 100), "pan:right") == (0, 0, 100, 100)
    assert picture_box((100, 150), "pan:up") == (0, 50, 100, 150)
    assert picture_box((100, 150), "pan:down") == (0, 0, 100, 100)


def test_the_mask_paints_the_new_area_and_the_seam_and_keeps_the_rest():
    mask = Image.open(io.BytesIO(make_mask((160, 80), "pan:right")))
    assert mask.mode == "L" and mask.size == (160, 80)
    assert mask.getpixel((0, 0)) == 0 and mask.getpixel((0, 79)) == 0  # the picture's outer edges stay
    assert mask.getpixel((100, 40)) == 255 and mask.getpixel((107 - 8, 40)) == 255  # new area and seam
    assert mask.getpixel((90, 40)) == 0
    whole = Image.open(io.BytesIO(make_mask((64, 64), None)))
    assert whole.getextrema() == (255, 255)  # no move: the whole picture may change
    tiny = Image.open(io.BytesIO(make_mask((16, 16), "zoom:2")))  # an 8x8 picture is all seam
    assert tiny.getextrema() == (255, 255)


def test_a_canvas_too_large_for_its_bytes_is_sent_as_jpeg():
    picture = make_png(256, 256, seed=3)
    canvas = make_canvas(picture, "The picture", "zoom:2", max_pixels=2048 * 2048, max_bytes=20_000)
    assert canvas.startswith(b"\xff\xd8\xff") and len(canvas) <= 20_000


def test_member_defaults_keep_only_what_is_still_valid():
    stored = {"aspect_ratio": "5:4", "model": "", "count": 9, "negative_prompt": "  ", "remix": "yes"}
    assert MemberDefaults.from_stored(stored) == MemberDefaults()
    defaults = MemberDefaults(aspect_ratio="3:2", model="fast", count=2, negative_prompt="text", remix=True)
    assert MemberDefaults.from_stored(defaults.stored()) == defaults
    assert MemberDefaults.from_stored({"count": True}).count is None


def test_options_and_flags_win_over_member_defaults():
    defaults = MemberDefaults(aspect_ratio="16:9", count=3, negative_prompt="blur")
    params = params_from_request("a cat", defaults=defaults)
    assert (params.aspect_ratio, params.count, params.negative_prompt) == ("16:9", 3, "blur")
    params = params_from_request("a cat --ar 1:1 --no dogs", count=1, defaults=defaults)
    assert (params.aspect_ratio, params.count, params.negative_prompt) == ("1:1", 1, "dogs")
    params = params_from_request("a cat", aspect_ratio="2:3", negative_prompt="text", defaults=defaults)
    assert (params.aspect_ratio, params.negative_prompt) == ("2:3", "text")


def test_every_new_button_s_custom_id_comes_back_as_itself():
    template = JobButton.__discord_ui_compiled_template__
    for argument in ("subtle", "creative", "2", "1.5", "left", "right", "up", "down"):
        action = {"subtle": "upscale", "creative": "upscale", "2": "zoom", "1.5": "zoom"}.get(argument, "pan")
        match = template.fullmatch(f"imagine:{action}:{argument}:123")
        assert match is not None and (match["action"], match["argument"], match["key"]) == (action, argument, "123")
    assert template.fullmatch("imagine:upscale:123")["argument"] is None  # older messages' button
    assert template.fullmatch("imagine:zoom:1.5.5:123") is None


def test_zoom_and_pan_buttons_only_where_the_worker_paints_outside():
    def ids(view):
        return [item.custom_id for item in view.children]  # type: ignore[attr-defined]

    plain = ids(result_view("7", 1, can_vary=True))
    assert "imagine:upscale:subtle:7" in plain and not [c for c in plain if ":zoom:" in c or ":pan:" in c]
    outpainting = ids(result_view("7", 1, can_vary=True, can_outpaint=True))
    assert [c for c in outpainting if ":zoom:" in c or ":pan:" in c] == [
        "imagine:zoom:2:7", "imagine:zoom:1.5:7", *(f"imagine:pan:{d}:7" for d in PAN_DIRECTIONS)
    ]  # fmt: skip
    assert [c for c in ids(result_view("7", 4, can_vary=True, can_outpaint=True)) if ":zoom:" in c] == []


def test_which_comfyui_workflows_paint_outside_a_picture():
    comfyui = PRESETS["comfyui"]
    with_mask = parse_workflow('{"1": {"inputs": {"t": "{{prompt}}", "i": "{{image}}", "m": "{{mask}}"}}}')
    image_only = parse_workflow('{"1": {"inputs": {"t": "{{prompt}}", "i": "{{image}}"}}}')
    assert comfyui.paints_outside(with_mask) and not comfyui.paints_outside(image_only)
    assert not PRESETS["sdxl"].paints_outside(None)
    with pytest.raises(InvalidParams, match="has a \\{\\{mask\\}\\} but no \\{\\{image\\}\\}"):
        parse_workflow('{"1": {"inputs": {"t": "{{prompt}}", "m": "{{mask}}"}}}')
    with pytest.raises(InvalidParams, match="no \\{\\{mask\\}\\} placeholder"):
        comfyui.refuse(GenerationParams("x", image_url=URL, outpaint="pan:up"), image_only)
