"""Member parameters, inline flags, and how each worker preset names them."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.params import (
    ASPECT_RATIOS,
    MAX_SEED,
    GenerationParams,
    InvalidParams,
    params_from_request,
    split_inline_flags,
)
from bot.presets import PRESETS, parse_workflow


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
