"""Member parameters, inline flags, and how each worker preset names them."""

from __future__ import annotations

import base64
import dataclasses
import json
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.params import (
    ASPECT_RATIOS,
    DEFAULT_STRENGTH,
    MAX_SEED,
    UPSCALE_STRENGTH,
    GenerationParams,
    InvalidParams,
    params_from_request,
    split_inline_flags,
)
from bot.presets import PRESETS, comfy_image_name, parse_workflow, start_strength


def test_inline_flags_are_taken_out_of_the_prompt():
    text, flags = split_inline_flags("a lighthouse at dusk --ar 16:9 --seed 42 --no text, watermark")
    assert text == "a lighthouse at dusk"
    assert flags == {"ar": "16:9", "seed": "42", "no": "text, watermark"}


def test_explicit_options_win_over_flags_and_negatives_merge():
    params = params_from_request("cat --ar 16:9 --seed 5 --no dogs", aspect_ratio="1:1", seed=9, negative_prompt="blur")
    assert (params.prompt, params.aspect_ratio, params.seed) == ("cat", "1:1", 9)
    assert params.negative_prompt == "blur, dogs"


def test_double_dash_inside_words_is_not_a_flag():
    text, flags = split_inline_flags("an em--dash and a sign saying --hello")
    assert flags == {}
    assert text == "an em--dash and a sign saying --hello"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "   "}, "empty"),
        ({"prompt": "x" * 1001}, "1001 characters"),
        ({"prompt": "x", "aspect_ratio": "5:1"}, "5:1"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": 2**32}, "seed"),
        ({"prompt": "x", "steps": 0}, "Steps"),
        ({"prompt": "x", "guidance": 31.0}, "Guidance"),
        ({"prompt": "x", "count": 5}, "Count"),
    ],
)
def test_out_of_range_parameters_are_refused_clearly(kwargs, message):
    with pytest.raises(InvalidParams, match=message):
        GenerationParams(**kwargs)


def test_bad_seed_flag_is_refused():
    with pytest.raises(InvalidParams, match="--seed"):
        params_from_request("cat --seed lucky")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("²", "--seed needs a whole number from 0 to 4294967295, not '²'."),  # isdigit() says yes, int() no
        ("٣", "--seed needs a whole number from 0 to 4294967295, not '٣'."),  # int() would read 3
        ("𝟗", "--seed needs a whole number from 0 to 4294967295, not '𝟗'."),
        ("-1", "--seed needs a whole number from 0 to 4294967295, not '-1'."),
        ("4.5", "--seed needs a whole number from 0 to 4294967295, not '4.5'."),
        ("4294967296", "--seed must be between 0 and 4294967295, not '4294967296'."),
        ("9" * 5000, f"--seed must be between 0 and 4294967295, not '{'9' * 39}…'."),  # int() refuses 4301+ digits
    ],
)
def test_a_seed_flag_is_ascii_digits_in_range_or_one_clear_message(value, message):
    with pytest.raises(InvalidParams) as refused:
        params_from_request(f"cat --seed {value} --ar 16:9")
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("\x01" * 40, "'" + "\\x01" * 9 + "…'"),  # 160 characters once escaped: cut after escaping
        ("\U000e0001" * 40, "'" + "\\U000e0001" * 3 + "…'"),  # astral and unprintable: 10 characters each
        ("ab\x1b[2J" + "c" * 40, "'ab\\x1b[2J" + "c" * 30 + "…'"),
        ("\x01" * 3, "'" + "\\x01" * 3 + "'"),  # short enough escaped: shown whole
    ],
)
def test_a_value_quoted_back_is_escaped_then_cut_to_its_limit(value, shown):
    assert len(shown) <= 42  # 40 between the quotes
    with pytest.raises(InvalidParams) as refused:
        params_from_request(f"cat --seed {value}")
    assert str(refused.value) == f"--seed needs a whole number from 0 to 4294967295, not {shown}."
    with pytest.raises(InvalidParams) as refused:
        GenerationParams("x", aspect_ratio=value)
    assert str(refused.value) == f"Aspect ratio {shown} is not one of {', '.join(ASPECT_RATIOS)}."


def test_a_seed_flag_with_leading_zeros_is_read_as_the_number():
    assert params_from_request("cat --seed 0042").seed == 42
    assert params_from_request("cat --seed 4294967295").seed == 4294967295
    assert params_from_request("cat --seed " + "0" * 5000 + "1").seed == 1  # int() of all 5001 digits raises


def test_with_seed_fixes_a_seed_once():
    params = GenerationParams("x").with_seed()
    assert params.seed is not None
    assert params.with_seed() is params


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_sizes_keep_the_ratio_and_the_workers_rules(ratio):
    params = GenerationParams("x", aspect_ratio=ratio)
    wanted = params.ratio
    for name in ("sdxl", "a1111"):
        width, height = PRESETS[name].size(params)
        assert width % 64 == 0 and height % 64 == 0
        assert abs(width / height - wanted) / wanted < 0.1
        assert 0.8 < width * height / 1024**2 < 1.2
    width, height = PRESETS["sd15"].size(params)
    assert width in PRESETS["sd15"].sides and height in PRESETS["sd15"].sides
    assert abs(width / height - wanted) / wanted < 0.15


def test_sdxl_input_uses_worker_sdxl_names():
    params = GenerationParams("a lighthouse", negative_prompt="fog", aspect_ratio="16:9", seed=42, count=2)
    assert PRESETS["sdxl"].build_input(params) == {
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "width": 1344,
        "height": 768,
        "seed": 42,
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "num_images": 2,
    }


def test_a1111_and_sd15_inputs_use_their_names():
    params = GenerationParams("x", seed=1, steps=30, guidance=5.0, count=3)
    a1111 = PRESETS["a1111"].build_input(params)
    assert (a1111["steps"], a1111["cfg_scale"], a1111["batch_size"]) == (30, 5.0, 3)
    assert "negative_prompt" not in a1111
    sd15 = PRESETS["sd15"].build_input(params)
    assert (sd15["num_inference_steps"], sd15["guidance_scale"], sd15["num_outputs"]) == (30, 5.0, 3)
    assert (sd15["width"], sd15["height"]) == (512, 512)


def test_a_preset_refuses_more_images_than_its_worker_makes():
    with pytest.raises(InvalidParams, match="at most 2"):
        PRESETS["sdxl"].build_input(GenerationParams("x", seed=1, count=3))


WORKFLOW = json.dumps(
    {
        "3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "steps": "{{ steps }}", "cfg": "{{guidance}}"}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": "{{count}}"},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece, {{prompt}}"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative_prompt}}"}},
    }
)


def test_comfyui_template_fills_placeholders_keeping_numbers_numbers():
    workflow = parse_workflow(WORKFLOW)
    params = GenerationParams("a cat", aspect_ratio="3:4", seed=7, steps=20, guidance=6.5, count=2)
    graph = PRESETS["comfyui"].build_input(params, workflow)["workflow"]
    assert graph["3"]["inputs"] == {"seed": 7, "steps": 20, "cfg": 6.5}
    assert graph["5"]["inputs"] == {"width": 896, "height": 1152, "batch_size": 2}
    assert graph["6"]["inputs"]["text"] == "masterpiece, a cat"
    assert graph["7"]["inputs"]["text"] == ""
    assert "{{" in json.dumps(workflow)  # the template itself is untouched


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"1": {"inputs": {"text": "no placeholder"}}}', "{{prompt}}"),
        ('{"1": {"inputs": {"text": "{{prompt}} {{lora}}"}}}', "lora"),
    ],
)
def test_bad_comfyui_templates_are_refused_clearly(text, message):
    with pytest.raises(InvalidParams, match=message):
        parse_workflow(text)


def test_comfyui_without_template_is_refused():
    with pytest.raises(InvalidParams, match="no workflow template"):
        PRESETS["comfyui"].build_input(GenerationParams("x", seed=1))


@given(st.text(min_size=1, max_size=200))
def test_flag_parsing_never_crashes_and_keeps_words(prompt):
    text, flags = split_inline_flags(prompt)
    assert set(flags) <= {"ar", "seed", "no"}
    assert len(text) <= len(prompt)


DIGITS_OF_ANY_SCRIPT = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=12)
FLAG_VALUES = st.one_of(
    st.text(max_size=30),
    DIGITS_OF_ANY_SCRIPT,
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["²", "¹²", "4²", "①", "٣", "𝟗", "9" * 5000, "0" * 5000 + "7"]),  # str.isdigit() takes all
    st.sampled_from([*ASPECT_RATIOS, "5:4", "²:¹", "16:9²", "１６:９"]),
)
INLINE_FLAGS = st.builds(
    "{}{}{}".format,
    st.sampled_from(["--ar", "--aspect", "--seed", "--no", "--SEED", "--Ar", "--steps", "--", "—seed"]),
    st.sampled_from([" ", "  ", "\t", "\u3000", "\n", ""]),
    FLAG_VALUES,
)


@given(
    st.lists(st.one_of(st.text(max_size=40), INLINE_FLAGS, INLINE_FLAGS), max_size=6),
    st.sampled_from([" ", "  ", "\t", "", "\n"]),
)
@example(["a lighthouse", "--seed ²", "--ar 16:9"], " ")  # the case, always tried
@example(["cat", "--seed " + "9" * 5000], " ")
def test_any_prompt_with_any_inline_flags_parses_or_is_refused_clearly(pieces, separator):
    try:
        params = params_from_request(separator.join(pieces))
    except InvalidParams as refused:
        assert str(refused) and "\n" not in str(refused) and len(str(refused)) < 200
    else:
        assert params.prompt and params.aspect_ratio in ASPECT_RATIOS
        assert params.seed is None or 0 <= params.seed <= MAX_SEED


# --- image-to-image -------------------------------------------------------------------------------------------

URL = "https://cdn.discordapp.com/attachments/1/2/cat.png?ex=6650&is=66&hm=ab"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))

IMG2IMG_WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
    "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {"seed": "{{seed}}", "steps": "{{steps}}", "cfg": "{{guidance}}", "denoise": "{{strength}}"},
    },
    "5": {"class_type": "ImageScale", "inputs": {"width": "{{width}}", "height": "{{height}}"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}},
}


def test_old_ledger_rows_without_the_image_keys_still_load():
    row = {
        "prompt": "a lighthouse",
        "negative_prompt": None,
        "aspect_ratio": "16:9",
        "seed": 42,
        "steps": None,
        "guidance": None,
        "count": 2,
    }
    params = GenerationParams(**row)
    assert (params.image_url, params.strength, params.upscale) == (None, None, False)
    assert PRESETS["sdxl"].build_input(params) == PRESETS["sdxl"].build_input(GenerationParams(**row))
    again = GenerationParams(**dataclasses.asdict(GenerationParams(**row, image_url=URL, strength=0.4)))
    assert (again.image_url, again.strength) == (URL, 0.4)  # new rows round-trip too


def test_an_image_request_keeps_url_and_strength():
    params = params_from_request("a cat --ar 3:2", image_url=URL, strength=0.25)
    assert (params.prompt, params.aspect_ratio, params.image_url, params.strength) == ("a cat", "3:2", URL, 0.25)
    assert params_from_request("a cat", image_url=URL).strength is None  # the preset picks the default


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_url": "data:image/png;base64,iVBORw0KGgo="}, "http"),
        ({"image_url": "file:///etc/passwd"}, "http"),
        ({"image_url": "ftp://example.com/cat.png"}, "http"),
        ({"image_url": "cdn.discordapp.com/cat.png"}, "http"),
        ({"image_url": "https://"}, "http"),
        ({"image_url": "https://example.com/a cat.png"}, "http"),
        ({"image_url": "https://example.com/\ncat.png"}, "http"),
        ({"image_url": "https://[::1/cat.png"}, "http"),
        ({"image_url": "https://example.com/" + "a" * 2030}, "2048"),
        ({"image_url": 42}, "http"),
        ({"image_url": URL, "strength": 1.01}, "Strength"),
        ({"image_url": URL, "strength": -0.1}, "Strength"),
        ({"image_url": URL, "strength": math.nan}, "Strength"),
        ({"image_url": URL, "strength": math.inf}, "Strength"),
        ({"image_url": URL, "strength": True}, "Strength"),
        ({"image_url": URL, "strength": "0.5"}, "Strength"),
        ({"strength": 0.5}, "attach a picture"),
        ({"upscale": True}, "Upscale needs a picture"),
    ],
)
def test_bad_image_parameters_are_refused_clearly(kwargs, message):
    with pytest.raises(InvalidParams, match=message) as refused:
        GenerationParams("x", **kwargs)
    text = str(refused.value)
    assert text.endswith(".") and "\n" not in text and len(text) < 120  # one sentence, never the URL echoed back


@pytest.mark.parametrize(
    "url", [URL, "http://example.com/x.png", "HTTPS://EXAMPLE.COM/X.PNG", "https://e.x/" + "a" * 2036]
)
def test_http_and_https_links_up_to_2048_characters_are_taken(url):
    assert GenerationParams("x", image_url=url).image_url == url


@pytest.mark.parametrize("strength", [0, 0.0, 0.5, 1, 1.0])
def test_strength_takes_the_whole_closed_range_as_a_float(strength):
    params = GenerationParams("x", image_url=URL, strength=strength)
    assert params.strength == strength and isinstance(params.strength, float)


def test_default_strengths():
    assert start_strength(GenerationParams("x", image_url=URL)) == DEFAULT_STRENGTH == 0.6
    assert start_strength(GenerationParams("x", image_url=URL, upscale=True)) == UPSCALE_STRENGTH == 0.3
    assert start_strength(GenerationParams("x", image_url=URL, upscale=True, strength=0.5)) == 0.5


def test_which_presets_can_start_from_an_image():
    assert {name: preset.image_input for name, preset in PRESETS.items()} == {
        "sdxl": "url",
        "a1111": None,
        "sd15": "url",
        "comfyui": "base64",
    }
    assert [name for name, preset in PRESETS.items() if preset.can_start_from_image] == ["sdxl", "sd15", "comfyui"]


def test_sdxl_image_job_sends_the_url_and_strength_under_worker_sdxl_names():
    params = GenerationParams("a lighthouse", negative_prompt="fog", aspect_ratio="16:9", seed=42, image_url=URL)
    assert PRESETS["sdxl"].build_input(params, image=PNG) == {  # bytes are ignored: worker-sdxl fetches the URL
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "width": 1344,
        "height": 768,
        "seed": 42,
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "num_images": 1,
        "image_url": URL,
        "strength": 0.6,
    }


def test_sdxl_image_job_puts_chosen_steps_where_its_refiner_reads_them():
    params = GenerationParams("x", seed=1, steps=30, image_url=URL, strength=0.5)
    job = PRESETS["sdxl"].build_input(params)
    assert (job["num_inference_steps"], job["refiner_inference_steps"], job["strength"]) == (30, 30, 0.5)


def test_sdxl_image_job_makes_one_picture():
    # handler.py's image_url path calls the refiner without num_images_per_prompt: one picture per job
    params = GenerationParams("x", seed=1, count=2, image_url=URL)
    assert PRESETS["sdxl"].max_count_for(params) == 1
    assert PRESETS["sdxl"].max_count_for(dataclasses.replace(params, image_url=None)) == 2
    with pytest.raises(InvalidParams, match="at most 1 picture per job when it starts from a picture"):
        PRESETS["sdxl"].build_input(params)


def test_sd15_image_job_sends_init_image_and_prompt_strength():
    params = GenerationParams("x", seed=3, count=3, image_url=URL, strength=0.45)
    assert PRESETS["sd15"].build_input(params) == {
        "prompt": "x",
        "width": 512,
        "height": 512,
        "seed": 3,
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "num_outputs": 3,
        "init_image": URL,
        "prompt_strength": 0.45,
    }


@pytest.mark.parametrize(
    ("name", "field", "least"), [("sdxl", "strength", 1 / 50), ("sd15", "prompt_strength", 1 / 30)]
)
def test_a_strength_too_small_for_one_step_is_raised_to_one_step(name, field, least):
    job = PRESETS[name].build_input(GenerationParams("x", seed=1, image_url=URL, strength=0.0))
    assert job[field] == pytest.approx(least)
    job = PRESETS[name].build_input(GenerationParams("x", seed=1, steps=4, image_url=URL, strength=0.1))
    assert job[field] == 0.25


def test_a1111_refuses_an_image_in_a_full_sentence():
    assert not PRESETS["a1111"].can_start_from_image and not PRESETS["a1111"].takes_image()
    with pytest.raises(InvalidParams) as refused:
        PRESETS["a1111"].build_input(GenerationParams("x", seed=1, image_url=URL), image=PNG)
    assert str(refused.value) == "This server's worker (a1111) cannot start from a picture."


def test_comfyui_image_job_uploads_the_bytes_and_fills_image_and_strength():
    workflow = parse_workflow(json.dumps(IMG2IMG_WORKFLOW))
    params = GenerationParams("a cat", seed=7, image_url=URL, strength=0.35)
    job = PRESETS["comfyui"].build_input(params, workflow, image=PNG)
    name = comfy_image_name(PNG)
    assert name.startswith("imagine-") and name.endswith(".png")
    assert job["images"] == [{"name": name, "image": base64.b64encode(PNG).decode()}]
    graph = job["workflow"]
    assert graph["1"]["inputs"] == {"image": name}
    assert graph["3"]["inputs"] == {"seed": 7, "steps": 25, "cfg": 7.0, "denoise": 0.35}
    assert graph["5"]["inputs"] == {"width": 1024, "height": 1024}
    assert graph["6"]["inputs"] == {"text": "a cat"}
    assert set(job) == {"workflow", "images"}
    assert "{{" in json.dumps(workflow)


def test_comfyui_image_job_uses_the_default_strength_and_needs_the_bytes():
    workflow = parse_workflow(json.dumps(IMG2IMG_WORKFLOW))
    params = GenerationParams("a cat", seed=7, image_url=URL)
    assert PRESETS["comfyui"].build_input(params, workflow, image=PNG)["workflow"]["3"]["inputs"]["denoise"] == 0.6
    with pytest.raises(ValueError, match="bytes"):
        PRESETS["comfyui"].build_input(params, workflow)
    PRESETS["comfyui"].refuse(params, workflow)  # a preflight needs no bytes


def test_comfyui_templates_must_match_the_kind_of_job():
    text_only = parse_workflow(WORKFLOW)
    with_image = parse_workflow(json.dumps(IMG2IMG_WORKFLOW))
    assert PRESETS["comfyui"].takes_image(with_image) and not PRESETS["comfyui"].takes_image(text_only)
    assert not PRESETS["comfyui"].takes_image(None)
    with pytest.raises(InvalidParams, match=r"no \{\{image\}\} placeholder"):
        PRESETS["comfyui"].build_input(GenerationParams("x", seed=1, image_url=URL), text_only, image=PNG)
    with pytest.raises(InvalidParams, match="attach one"):
        PRESETS["comfyui"].build_input(GenerationParams("x", seed=1), with_image)


def test_comfyui_text_job_fills_strength_as_full_denoise():
    workflow = parse_workflow('{"3": {"inputs": {"text": "{{prompt}}", "denoise": "{{strength}}"}}}')
    job = PRESETS["comfyui"].build_input(GenerationParams("x", seed=1), workflow)
    assert job == {"workflow": {"3": {"inputs": {"text": "x", "denoise": 1.0}}}}


@pytest.mark.parametrize(
    ("data", "extension"),
    [
        (PNG, "png"),
        (b"\xff\xd8\xff\xe0" + bytes(20), "jpg"),
        (b"GIF89a" + bytes(20), "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(20), "webp"),
        (b"not an image", "png"),
    ],
)
def test_comfyui_upload_names_carry_the_image_type_and_differ_by_content(data, extension):
    name = comfy_image_name(data)
    assert name.endswith("." + extension)
    assert comfy_image_name(data + b"!") != name


@pytest.mark.parametrize("name", ["sdxl", "comfyui"])
@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_upscale_doubles_the_size_the_preset_would_send(name, ratio):
    params = GenerationParams("x", seed=1, aspect_ratio=ratio, image_url=URL, upscale=True)
    width, height = PRESETS[name].size(params)
    assert PRESETS[name].job_size(params) == (2 * width, 2 * height)
    assert PRESETS[name].job_size(dataclasses.replace(params, upscale=False)) == (width, height)


def test_upscale_on_sdxl_sends_twice_the_size_and_the_gentle_strength():
    params = GenerationParams("x", seed=1, aspect_ratio="16:9", image_url=URL, upscale=True)
    job = PRESETS["sdxl"].build_input(params)
    assert (job["width"], job["height"], job["strength"], job["image_url"]) == (2688, 1536, 0.3, URL)


def test_upscale_on_comfyui_fills_twice_the_size():
    workflow = parse_workflow(json.dumps(IMG2IMG_WORKFLOW))
    params = GenerationParams("x", seed=1, aspect_ratio="3:4", image_url=URL, upscale=True)
    graph = PRESETS["comfyui"].build_input(params, workflow, image=PNG)["workflow"]
    assert graph["5"]["inputs"] == {"width": 1792, "height": 2304}
    assert graph["3"]["inputs"]["denoise"] == 0.3


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_upscale_on_sd15_is_as_large_as_its_sides_allow_keeping_the_shape(ratio):
    sd15 = PRESETS["sd15"]
    params = GenerationParams("x", seed=1, aspect_ratio=ratio, image_url=URL, upscale=True)
    width, height = sd15.job_size(params)
    assert width in sd15.sides and height in sd15.sides
    assert max(width, height) == 768
    assert width * height <= 786432  # predict.py refuses more pixels than 1024x768
    assert abs(width / height - params.ratio) / params.ratio < 0.2
    job = sd15.build_input(params)
    assert (job["width"], job["height"], job["prompt_strength"]) == (width, height, 0.3)


def test_text_jobs_ignore_image_bytes_given_by_mistake():
    params = GenerationParams("a lighthouse", seed=42)
    for name in ("sdxl", "a1111", "sd15"):
        assert PRESETS[name].build_input(params, image=PNG) == PRESETS[name].build_input(params)


IMAGE_PARAMS = st.builds(
    GenerationParams,
    prompt=st.text(min_size=1, max_size=50).filter(str.strip),
    aspect_ratio=st.sampled_from(ASPECT_RATIOS),
    seed=st.integers(0, MAX_SEED),
    steps=st.none() | st.integers(1, 150),
    guidance=st.none() | st.floats(0, 30),
    count=st.just(1),
    image_url=st.just(URL),
    strength=st.none() | st.floats(0, 1),
    upscale=st.booleans(),
)


@given(IMAGE_PARAMS, st.binary(min_size=1, max_size=64))
def test_any_image_job_maps_onto_every_preset_that_takes_images(params, data):
    workflow = parse_workflow(json.dumps(IMG2IMG_WORKFLOW))
    wanted = start_strength(params)
    for name, image_field, strength_field, default_steps in (
        ("sdxl", "image_url", "strength", 50),
        ("sd15", "init_image", "prompt_strength", 30),
    ):
        job = PRESETS[name].build_input(params)
        steps = params.steps or default_steps
        assert job[image_field] == URL
        assert wanted <= job[strength_field] <= 1.0
        assert int(steps * job[strength_field]) >= 1  # diffusers runs int(steps * strength) steps
        assert job[strength_field] == wanted or int(steps * wanted) < 1  # raised only to reach one step
        json.dumps(job)  # what POST /run will send
    job = PRESETS["comfyui"].build_input(params, workflow, image=data)
    assert base64.b64decode(job["images"][0]["image"]) == data
    assert job["workflow"]["1"]["inputs"]["image"] == job["images"][0]["name"]
    assert job["workflow"]["3"]["inputs"]["denoise"] == wanted
    width, height = PRESETS["comfyui"].size(params)
    scale = 2 if params.upscale else 1
    assert job["workflow"]["5"]["inputs"] == {"width": scale * width, "height": scale * height}
    with pytest.raises(InvalidParams):
        PRESETS["a1111"].build_input(params)


@given(st.text(max_size=300))
def test_any_image_link_is_taken_or_refused_clearly(url):
    try:
        params = GenerationParams("x", image_url=url)
    except InvalidParams as refused:
        assert str(refused) in {
            "The picture to start from must be an http(s) link.",
            "The picture link must be an http(s) URL of at most 2048 characters.",
        }
    else:
        assert params.image_url == url and url.lower().startswith(("http://", "https://"))
