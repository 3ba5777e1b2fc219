"""What a member asks for, independent of which worker paints it."""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass

from bot.errors import BotError

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
MAX_PROMPT_LENGTH = 1000
MAX_SEED = 2**32 - 1
MAX_COUNT = 4
MAX_STEPS = 150
MAX_GUIDANCE = 30.0


class InvalidParams(BotError):
    """A parameter is out of range; the message says which and what is allowed."""


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    negative_prompt: str | None = None
    aspect_ratio: str = "1:1"
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    count: int = 1

    def __post_init__(self) -> None:
        prompt = self.prompt.strip()
        if not prompt:
            raise InvalidParams("The prompt is empty: describe the picture you want.")
        if len(prompt) > MAX_PROMPT_LENGTH:
            raise InvalidParams(f"The prompt is {len(prompt)} characters; the most is {MAX_PROMPT_LENGTH}.")
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "negative_prompt", (self.negative_prompt or "").strip() or None)
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise InvalidParams(f"Aspect ratio {_shown(self.aspect_ratio)} is not one of {', '.join(ASPECT_RATIOS)}.")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise InvalidParams(f"The seed must be between 0 and {MAX_SEED}.")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise InvalidParams(f"Steps must be between 1 and {MAX_STEPS}.")
        if self.guidance is not None and not 0 <= self.guidance <= MAX_GUIDANCE:
            raise InvalidParams(f"Guidance must be between 0 and {MAX_GUIDANCE:g}.")
        if not 1 <= self.count <= MAX_COUNT:
            raise InvalidParams(f"Count must be between 1 and {MAX_COUNT}.")

    def with_seed(self) -> GenerationParams:
        """A copy with a concrete seed, so the picture can be reproduced and re-rolled."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    @property
    def ratio(self) -> float:
        width, height = self.aspect_ratio.split(":")
        return int(width) / int(height)


_FLAG = re.compile(r"(?:^|\s)--(ar|aspect|seed|no)\s+(\S.*?)(?=\s--\w|\s*$)", re.IGNORECASE)


def split_inline_flags(prompt: str) -> tuple[str, dict[str, str]]:
    """Take Midjourney-style `--ar 16:9`, `--seed 42` and `--no text` out of a prompt.

    Returns the prompt without them and the flags found (`ar`, `seed`, `no`); the last one wins.
    """
    flags: dict[str, str] = {}
    for match in _FLAG.finditer(prompt):
        name = match.group(1).lower()
        flags["ar" if name == "aspect" else name] = match.group(2).strip()
    return _FLAG.sub(" ", prompt).strip(), flags


def params_from_request(
    prompt: str,
    *,
    negative_prompt: str | None = None,
    aspect_ratio: str | None = None,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    count: int = 1,
) -> GenerationParams:
    """Merge explicit options with inline flags; an explicit option wins over a flag."""
    text, flags = split_inline_flags(prompt)
    if seed is None and "seed" in flags:
        seed = _whole_number("--seed", flags["seed"], MAX_SEED)
    negatives = [part for part in (negative_prompt, flags.get("no")) if part]
    return GenerationParams(
        prompt=text,
        negative_prompt=", ".join(negatives) or None,
        aspect_ratio=aspect_ratio or flags.get("ar", "1:1"),
        seed=seed,
        steps=steps,
        guidance=guidance,
        count=count,
    )


_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and "٣", which int() refuses or reads


def _whole_number(flag: str, value: str, most: int) -> int:
    """An inline flag's value as a whole number from 0 to `most`, or InvalidParams naming the flag."""
    if not _DIGITS.fullmatch(value):
        raise InvalidParams(f"{flag} needs a whole number from 0 to {most}, not {_shown(value)}.")
    digits = value.lstrip("0") or "0"  # counted before int(), which refuses more than 4,300 digits
    if len(digits) > len(str(most)) or int(digits) > most:
        raise InvalidParams(f"{flag} must be between 0 and {most}, not {_shown(value)}.")
    return int(digits)


def _shown(value: str, limit: int = 40) -> str:
    """A member's value quoted back to them, cut short so a long one cannot swamp the message."""
    return repr(value if len(value) <= limit else value[: limit - 1] + "…")
