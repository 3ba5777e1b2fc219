"""What a member asks for, independent of which worker paints it."""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from bot.errors import BotError

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
MAX_PROMPT_LENGTH = 1000
MAX_SEED = 2**32 - 1
MAX_COUNT = 4
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_IMAGE_URL_LENGTH = 2048
DEFAULT_STRENGTH = 0.6  # how far a variation or image prompt moves from its picture unless asked otherwise
UPSCALE_STRENGTH = 0.3  # low, so "Upscale (2x)" adds detail without repainting the picture
# Upscale (Subtle) and Upscale (Creative): the same 2x image-to-image, keeping closer to the picture or adding more.
UPSCALE_STRENGTHS = {"subtle": 0.2, "creative": 0.5}
# Zoom Out <factor> and Pan <direction> (outpainting): how the canvas grows around the picture. The new area is
# painted from noise (strength 1.0) while the mask keeps the picture itself.
ZOOM_FACTORS = ("2", "1.5")
PAN_DIRECTIONS = ("left", "right", "up", "down")
PAN_GROWTH = 1.5  # a pan adds half the picture's width (or height) on its side
OUTPAINT_STRENGTH = 1.0


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
    # Image-to-image. Defaults keep ledger rows written before these fields loadable with GenerationParams(**row).
    image_url: str | None = None  # http(s) URL of the picture to start from; only ever a Discord attachment's
    strength: float | None = None  # 0..1, how far to move from image_url; None lets the preset pick its default
    upscale: bool = False  # "Upscale (2x)": image_url at twice the size, gently (UPSCALE_STRENGTH)
    # The bot's message the picture to start from is attached to (Vary, Upscale): read again for a fresh address
    # when a later Retry, Reroll or Edit reuses it, since Discord's addresses expire after about a day.
    image_message_id: int | None = None
    # Zoom Out and Pan: "zoom:<factor>" or "pan:<direction>", painted around image_url on a larger canvas.
    outpaint: str | None = None
    # What a job made from a picture is, for its label ("Variations (strong) of picture 3", bot/render.py): the
    # button that made it (`vary:strong`, `vary:3`, `upscale`, as its custom_id names it), the picture's number in
    # its set (None when the set had one), and who asked for that set, so a click by someone else is named.
    made_by: str | None = None
    picture: int | None = None
    set_owner_id: int | None = None

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
        self._check_image()

    def _check_image(self) -> None:
        if self.image_url is not None:
            _check_image_url(self.image_url)
        if self.strength is not None:
            # bool is an int too, and NaN passes no comparison: both refused by the same sentence
            if isinstance(self.strength, bool) or not isinstance(self.strength, int | float):
                raise InvalidParams("Strength must be a number between 0 and 1.")
            if not (math.isfinite(self.strength) and 0.0 <= self.strength <= 1.0):
                raise InvalidParams("Strength must be between 0 and 1.")
            object.__setattr__(self, "strength", float(self.strength))
            if self.image_url is None:
                raise InvalidParams("Strength only applies when you attach a picture to start from.")
        if self.upscale and self.image_url is None:
            raise InvalidParams("Upscale needs a picture to start from.")
        if self.outpaint is not None:
            if outpaint_growth(self.outpaint) is None:
                raise InvalidParams(f"{_shown(str(self.outpaint))} is not a zoom or pan this bot knows.")
            if self.image_url is None:
                raise InvalidParams("Zoom Out and Pan need a picture to start from.")

    def with_seed(self) -> GenerationParams:
        """A copy with a concrete seed, so the picture can be reproduced and re-rolled."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    @property
    def ratio(self) -> float:
        width, height = self.aspect_ratio.split(":")
        return int(width) / int(height)


def outpaint_growth(outpaint: str) -> tuple[float, float, float, float] | None:
    """How much a Zoom Out or Pan adds on each side (left, top, right, bottom), as fractions of the picture's
    width or height; None for anything else. Zoom Out 2 adds half a picture on each side, so the picture is
    half as wide on the new canvas; Pan left adds half a picture on the left."""
    kind, _, value = outpaint.partition(":")
    if kind == "zoom" and value in ZOOM_FACTORS:
        side = (float(value) - 1) / 2
        return side, side, side, side
    if kind == "pan" and value in PAN_DIRECTIONS:
        grow = PAN_GROWTH - 1
        return {
            "left": (grow, 0.0, 0.0, 0.0),
            "up": (0.0, grow, 0.0, 0.0),
            "right": (0.0, 0.0, grow, 0.0),
            "down": (0.0, 0.0, 0.0, grow),
        }[value]
    return None


@dataclass(frozen=True)
class MemberDefaults:
    """What a member set with /settings in one server; `/imagine` uses it where no option or flag says otherwise."""

    aspect_ratio: str | None = None
    model: str | None = None
    count: int | None = None
    negative_prompt: str | None = None
    remix: bool = False  # V, Vary and Reroll open a form with the prompt (and strength) before running

    @classmethod
    def from_stored(cls, stored: dict[str, object]) -> MemberDefaults:
        """From the ledger's JSON; a value no longer valid (or never valid) is left out rather than refused."""
        ratio, model, count, negative = (
            stored.get(name) for name in ("aspect_ratio", "model", "count", "negative_prompt")
        )
        return cls(
            aspect_ratio=ratio if ratio in ASPECT_RATIOS else None,
            model=model if isinstance(model, str) and model else None,
            count=count if type(count) is int and 1 <= count <= MAX_COUNT else None,
            negative_prompt=negative if isinstance(negative, str) and negative.strip() else None,
            remix=stored.get("remix") is True,
        )

    def stored(self) -> dict[str, object]:
        """What is worth remembering: the fields that differ from having no defaults."""
        values = dataclasses.asdict(self)
        return {name: value for name, value in values.items() if value not in (None, False)}


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
    count: int | None = None,
    image_url: str | None = None,
    strength: float | None = None,
    defaults: MemberDefaults | None = None,
) -> GenerationParams:
    """Merge explicit options with inline flags and the member's /settings: an explicit option wins over a flag,
    and either over a remembered default."""
    defaults = defaults or MemberDefaults()
    text, flags = split_inline_flags(prompt)
    if seed is None and "seed" in flags:
        seed = _whole_number("--seed", flags["seed"], MAX_SEED)
    negatives = [part for part in (negative_prompt, flags.get("no")) if part] or [defaults.negative_prompt or ""]
    return GenerationParams(
        prompt=text,
        negative_prompt=", ".join(part for part in negatives if part) or None,
        aspect_ratio=aspect_ratio or flags.get("ar") or defaults.aspect_ratio or "1:1",
        seed=seed,
        steps=steps,
        guidance=guidance,
        count=count or defaults.count or 1,
        image_url=image_url,
        strength=strength,
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


def _check_image_url(url: object) -> None:
    """An image to start from must be a plain http(s) URL the worker can fetch (no data:, file: or the like)."""
    if not isinstance(url, str) or len(url) > MAX_IMAGE_URL_LENGTH:
        raise InvalidParams(f"The picture link must be an http(s) URL of at most {MAX_IMAGE_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        parts = None
    # whitespace or control characters would be re-read differently by the worker's HTTP client
    if (
        parts is None
        or parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or not url.isprintable()
        or " " in url
    ):
        raise InvalidParams("The picture to start from must be an http(s) link.")


def _shown(value: str, limit: int = 40) -> str:
    """A member's value quoted back to them, at most `limit` characters between its quotes, so a long one
    cannot swamp the message.

    Escaped first, then cut: repr() writes a control or unprintable character as up to 10 ("\\x01",
    "\\U000e0001"), so the cut is measured on what is shown, and falls between escapes, never inside one.
    """
    quoted = repr(value)
    if len(quoted) <= limit + 2:
        return quoted
    for kept in range(min(len(value), limit - 1), 0, -1):  # every character shows as one or more
        quoted = repr(value[:kept] + "…")
        if len(quoted) <= limit + 2:
            return quoted
    return repr("…")
