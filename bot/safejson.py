"""JSON written by RunPod or by a worker, parsed within limits: never a RecursionError, and never a structure
that takes far more memory than its text.

What a worker returns is whatever its handler returned (docs/runpod-api.md, Output shapes of image workers), so
it may be hostile: JSON nested thousands deep makes the standard library's parser, and any code that walks the
result, recurse until Python refuses; JSON made of tiny values (`[[],[],[],...`) costs some fifty times its text
once parsed. Both are refused on sight with `JSONRefused`, which says why.
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


class JSONRefused(ValueError):
    """JSON refused on sight; `str()` says why, e.g. "nests deeper than 64 levels"."""


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Any:
    """The parsed value. `JSONRefused` when it nests too deep or holds too many values, another `ValueError`
    when it is not JSON at all."""
    if _values_at_most(data) > max_values:
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
    if _deeper_than(value, max_depth):
        raise JSONRefused(f"nests deeper than {max_depth} levels")
    return value


def _values_at_most(data: bytes | bytearray | str) -> int:
    """An upper bound on how many values (keys included, halved) the text holds, without parsing it: every value
    after a container's first follows a comma. Commas inside strings count too, which only errs on the safe side;
    base64 has none. A pass over the bytes at memory speed: a few milliseconds for a 64 MB answer."""
    if isinstance(data, str):
        return data.count(",") + data.count("[") + data.count("{") + 1
    return data.count(b",") + data.count(b"[") + data.count(b"{") + 1


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
