"""JSON written by RunPod or by a worker, parsed within limits: never a RecursionError, and never a structure
that takes far more memory than its text.

What a worker returns is whatever its handler returned (docs/runpod-api.md, Output shapes of image workers), so
it may be hostile: JSON nested thousands deep makes the standard library's parser, and any code that walks the
result, recurse until Python refuses; JSON made of tiny values (`[[],[],[],...`) costs some fifty times its text
once parsed. Both are refused on sight with `JSONRefused`, which says why.

The check costs less than the parse: text too short to hold that many values or levels is not looked at, and in
longer text the strings (an answer's megabytes of base64) are stepped over, not read.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# An image worker's output nests four or five deep: {"output": {"images": [{"data": ...}]}}.
MAX_DEPTH = 64
# ...and holds a few dozen values around its pictures (A1111's parameters, the longest, about a hundred). A parsed
# value costs 30 to 200 bytes where its text may take two ("0," or "[]"), so this bounds a parse near 20 MB.
MAX_VALUES = 100_000
# Strings stepped over one by one before the rest is counted whole: an answer holds a few hundred at most.
_MAX_STEPS = 4096


class JSONRefused(ValueError):
    """JSON refused on sight; `str()` says why, e.g. "nests deeper than 64 levels"."""


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Any:
    """The parsed value. `JSONRefused` when it nests too deep or holds too many values, another `ValueError`
    when it is not JSON at all."""
    # Every value but the first follows a comma or opens a container: text of n characters holds at most n + 1.
    if len(data) >= max_values and _values_at_most(data, max_values) > max_values:
        raise JSONRefused(f"holds more than {max_values:,} values")
    try:
        # orjson reads a finished job's megabytes of base64 in half the time, and refuses nesting past 1024.
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if "depth" in str(error) or "ecursion" in str(error):
            raise JSONRefused(f"nests deeper than {max_depth} levels") from None
        try:  # the standard library takes what orjson refuses but JSON allows (integers beyond 64 bits)
            value = json.loads(data)
        except RecursionError:
            raise JSONRefused(f"nests deeper than {max_depth} levels") from None
    # Each level opens with a bracket of its own: shorter text cannot nest deeper.
    if len(data) > max_depth and _deeper_than(value, max_depth):
        raise JSONRefused(f"nests deeper than {max_depth} levels")
    return value


def _values_at_most(data: bytes | bytearray | str, limit: int) -> int:
    """An upper bound on how many values (keys included) the text holds, without parsing it: every value after a
    container's first follows a comma, and a first one opens its container. Only commas and brackets outside
    strings count, as the parser reads them: from one unescaped quote to the next, the text is stepped over with
    `find` (memchr: a picture's megabytes of base64 in microseconds). Stops counting once past `limit`; each
    string is a value too, so a flood of them stops it as soon."""
    # UTF-8 keeps the structural characters as they are, and no other character's bytes look like them.
    raw = data.encode() if isinstance(data, str) else data
    count, position, opening = 1, 0, -1  # `opening`: where the string being read began, or -1 outside one
    for _ in range(_MAX_STEPS):  # a step per string, or per escaped quote within one
        if count > limit:
            return count
        if opening < 0:
            opening = raw.find(b'"', position)
            stop = len(raw) if opening < 0 else opening
            count += raw.count(b",", position, stop) + raw.count(b"[", position, stop) + raw.count(b"{", position, stop)
            if opening < 0:
                return count
            position = opening + 1
        closing = raw.find(b'"', position)
        if closing < 0:  # an unterminated string is not JSON: the parser refuses it
            return count
        position = closing + 1
        if _backslashes_before(raw, closing, opening + 1) % 2 == 0:  # not escaped: the string ends here
            count, opening = count + 1, -1
    # Thousands of strings, or of escaped quotes: not an image worker's answer. The rest is counted whole,
    # strings and all (more than there are, never fewer), at memory speed instead of a step per string.
    return count + raw.count(b",", position) + raw.count(b"[", position) + raw.count(b"{", position)


def _backslashes_before(raw: bytes | bytearray, index: int, floor: int) -> int:
    """How many backslashes run back from `index` (not before `floor`), read in growing windows: as long as
    the run, never the whole string before it."""
    size = 16
    while True:
        start = max(floor, index - size)
        window = raw[start:index]
        run = len(window) - len(window.rstrip(b"\\"))
        if run < len(window) or start == floor:
            return run
        size *= 4


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than `max_depth`; a loop, not a recursion, whatever the depth."""
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
