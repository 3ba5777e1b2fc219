"""Text for people, with no Discord in it: what outside text must lose before it reaches a terminal or a
log line."""

from __future__ import annotations

# What worker text must not bring to a terminal: the control characters (C0, DEL and C1; ESC starts the
# ANSI/OSC sequences that retitle, clear or rewrite a terminal or plant hyperlinks, CR rewrites the line),
# the bidi controls that reorder what is shown, and lone surrogates. Line breaks and tabs become spaces.
_SPACES = "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029"
_UNPRINTABLE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
_UNPRINTABLE += [*range(0x2066, 0x206A), *range(0xD800, 0xE000)]
_PRINTABLE = {code: " " if chr(code) in _SPACES else "\N{REPLACEMENT CHARACTER}" for code in _UNPRINTABLE}


def printable(text: object) -> str:
    """Text from RunPod or a worker, safe to write to a terminal or a log: one line, every control
    character shown as U+FFFD (or a space for line breaks and tabs), so it can never move the cursor,
    send an escape sequence or start a line of its own; ordinary Unicode text is kept as it is."""
    return str(text).translate(_PRINTABLE)
