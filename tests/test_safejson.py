"""The JSON check every RunPod answer goes through (bot/safejson.py): what it refuses, and that stepping over
strings instead of reading them never lets a structure through that counting every character would refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import safejson
from bot.safejson import JSONRefused

# Strings made of the characters that could fool a scan: quotes, backslashes, brackets, commas, and non-ASCII.
tricky_text = st.text(alphabet='a\\"[]{},: é€😀', max_size=8)
# Integers within 64 bits: orjson reads larger ones as floats, which is not what this property is about.
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=40,
)


def value_count(value: Any) -> int:
    """Values as the limit counts them: every container, key and leaf."""
    if isinstance(value, dict):
        return 1 + sum(1 + value_count(child) for child in value.values())
    if isinstance(value, list):
        return 1 + sum(value_count(child) for child in value)
    return 1


@settings(max_examples=400, deadline=None)
@given(value=values, ascii_only=st.booleans(), as_text=st.booleans())
def test_the_scan_never_counts_fewer_values_than_the_parse_makes(value, ascii_only, as_text):
    text = json.dumps(value, ensure_ascii=ascii_only)
    data: str | bytes = text if as_text else text.encode()
    assert safejson._values_at_most(data, 10**9) >= value_count(value)
    limit = value_count(value) - 1
    if limit >= 1:
        with pytest.raises(JSONRefused, match=f"holds more than {limit:,} values"):
            safejson.loads(data, max_values=limit)
    assert safejson.loads(data, max_values=safejson._values_at_most(data, 10**9)) == value


def test_brackets_hidden_behind_escaped_quotes_are_counted():
    """`"\\"` does not end a string and `"\\\\"` does: what follows each is counted as the parser reads it."""
    hidden = json.dumps(['\\"' + "[]," * 10, "\\\\", *([[]] * 20)]).encode()
    assert safejson._values_at_most(hidden, 10**9) >= 23
    with pytest.raises(JSONRefused):
        safejson.loads(hidden, max_values=22)


@pytest.mark.parametrize(
    "body",
    [
        b"[" + b'"",' * 200_000 + b'""]',  # a flood of strings: each is a value
        b"[" + b'"\\"",' * 120_000 + b'""]',  # ...with escaped quotes in each
        b"[" + b"[]," * 200_000 + b"[]]",  # no strings at all
    ],
    ids=["empty-strings", "escaped-quotes", "empty-lists"],
)
def test_floods_of_tiny_values_are_refused_before_they_are_parsed(body):
    with pytest.raises(JSONRefused, match="holds more than 100,000 values"):
        safejson.loads(body)


def test_a_picture_answer_is_read_and_short_answers_are_not_scanned_at_all():
    picture = {"images": [{"filename": "a.png", "type": "base64", "data": "QUJD" * 600_000}], "seed": 42}
    answer = json.dumps({"id": "x", "status": "COMPLETED", "output": picture}).encode()
    assert safejson._values_at_most(answer, safejson.MAX_VALUES) == 23  # 2.4 MB, its 11 strings stepped over
    assert safejson.loads(answer)["output"] == picture
    deep = b"[" * 65 + b"]" * 65
    with pytest.raises(JSONRefused, match="nests deeper than 64 levels"):
        safejson.loads(deep)
    assert safejson.loads(b"[" * 64 + b"]" * 64) == json.loads(b"[" * 64 + b"]" * 64)
