"""A message the Discord double holds, drawn as Discord's dark theme shows it: the avatar, the bot's name and its APP
tag, the content, the attachments (a set as a grid), each embed with its coloured bar, fields, image and footer, and
the buttons in their rows. Only what the message says is drawn, plus that chrome; `Drawing.texts` lists every
string drawn, so a test can tell that the words came from the bot.

Sizes are Discord's own in CSS pixels (a 16 px name, 14 px embed text, 32 px buttons), drawn at `scale` times
that, so a picture shown at README width stays sharp. Fonts: DejaVu, else Pillow's own; emoji from Noto Color
Emoji where installed (Debian's fonts-noto-color-emoji), else left out rather than drawn as empty boxes.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from doubles.discord import Attachment, Message

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]
Operation = Callable[[Image.Image, ImageDraw.ImageDraw], None]  # one drawing step, run once the size is known

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "mono": "DejaVuSansMono.ttf"}
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_STRIKE = 109  # the only size Noto Color Emoji's bitmaps come in

WIDTH = 640  # the chat column, wide enough for an embed at its widest (520) beside the avatar
EMBED_WIDTH = 520
GUTTER = 72  # where the message body starts: the avatar's column
GALLERY_WIDTH = 520
SINGLE_IMAGE_HEIGHT = 400

BACKGROUND: RGB = (0x31, 0x33, 0x38)
EMBED_BACKGROUND: RGB = (0x2B, 0x2D, 0x31)
CODE_BACKGROUND: RGB = (0x1E, 0x1F, 0x22)
NAME: RGB = (0xF2, 0xF3, 0xF5)
TEXT: RGB = (0xDB, 0xDE, 0xE1)
MUTED: RGB = (0x94, 0x9B, 0xA4)
FOOTER: RGB = (0xB5, 0xBA, 0xC1)
LINK: RGB = (0x00, 0xA8, 0xFC)
BLURPLE: RGB = (0x58, 0x65, 0xF2)
MENTION: RGB = (0xC9, 0xCD, 0xFB)
MENTION_BACKGROUND: RGB = (0x3C, 0x41, 0x70)
TIME_BACKGROUND: RGB = (0x3A, 0x3C, 0x42)
BOXED = frozenset({"code", "time", "mention"})  # span styles drawn on a background of their own
SPAN_BACKGROUNDS = {"code": CODE_BACKGROUND, "time": TIME_BACKGROUND, "mention": MENTION_BACKGROUND}
WHITE: RGB = (0xFF, 0xFF, 0xFF)
# Button styles: primary, secondary, success, danger, link (discord.ButtonStyle's values).
BUTTON_COLOURS: dict[int, RGB] = {
    1: BLURPLE,
    2: (0x4E, 0x50, 0x58),
    3: (0x24, 0x80, 0x46),
    4: (0xDA, 0x37, 0x3C),
    5: (0x4E, 0x50, 0x58),
}

# Discord's inline markdown, as far as the bot uses it: escapes, bold, code, timestamps and mentions.
_MARKUP = re.compile(
    r"\\(?P<escaped>[^\w\s])|\*\*(?P<bold>.+?)\*\*|`(?P<code>[^`]+)`|<t:(?P<time>-?\d+)(?::(?P<style>[tTdDfFR]))?>"
    r"|<@!?(?P<user>\d+)>|<@&(?P<role>\d+)>|<#(?P<channel>\d+)>"
)
_VARIATION_SELECTOR = "\ufe0f"


@dataclass(frozen=True)
class Invocation:
    """Who used which command: the line Discord shows above a reply to a slash command."""

    user: str
    command: str


@dataclass
class Drawing:
    png: bytes
    size: tuple[int, int]
    texts: list[str]  # every string drawn, each as the member reads it (markdown resolved, emoji included)
    pictures: list[str]  # the file names of the attachments drawn, in order


@dataclass(frozen=True)
class Span:
    text: str
    style: str = "regular"  # regular | bold | code | time | mention
    colour: RGB = TEXT


@functools.cache
def font(kind: str, size: int) -> Font:
    """DejaVu where it is installed, else Pillow's own font, so the pictures can be made on any machine."""
    path = FONT_DIR / FONT_FILES[kind]
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


@functools.cache
def emoji_font() -> ImageFont.FreeTypeFont | None:
    return ImageFont.truetype(str(EMOJI_FONT), EMOJI_STRIKE) if EMOJI_FONT.exists() else None


@functools.cache
def _has_glyph(typeface: Font, char: str) -> bool:
    """False when the font would draw its missing-glyph box (the one it draws for an unassigned code point)."""
    return bytes(typeface.getmask(char)) != bytes(typeface.getmask("\U0010fffd"))


@functools.cache
def _emoji_image(char: str, height: int) -> Image.Image | None:
    typeface = emoji_font()
    if typeface is None or not _has_glyph(typeface, char):
        return None
    canvas = Image.new("RGBA", (EMOJI_STRIKE * 2, EMOJI_STRIKE * 2))
    ImageDraw.Draw(canvas).text((0, 0), char, font=typeface, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    return glyph.resize((max(1, round(glyph.width * height / glyph.height)), height), Image.Resampling.LANCZOS)


def relative(moment: datetime, now: datetime) -> str:
    """A `<t:…:R>` timestamp as Discord's client writes it at `now`."""
    seconds = round((moment - now).total_seconds())
    size = abs(seconds)
    if size < 45:
        amount = "a second" if size <= 1 else f"{size} seconds"
    elif size < 90:
        amount = "a minute"
    elif size < 45 * 60:
        amount = f"{round(size / 60)} minutes"
    elif size < 90 * 60:
        amount = "an hour"
    elif size < 22 * 3600:
        amount = f"{round(size / 3600)} hours"
    else:
        amount = f"{max(1, round(size / 86400))} days"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def _timestamp(value: int, style: str | None, now: datetime) -> str:
    moment = datetime.fromtimestamp(value, UTC)
    formats = {"t": "%H:%M", "T": "%H:%M:%S", "d": "%d/%m/%Y", "D": "%d %B %Y", "F": "%A, %d %B %Y %H:%M"}
    if style == "R":
        return relative(moment, now)
    return moment.strftime(formats.get(style or "f", "%d %B %Y %H:%M"))


def parse(text: str, now: datetime, names: dict[int, str], colour: RGB = TEXT, style: str = "regular") -> list[Span]:
    """Discord's inline markdown as spans to draw; `names` turns a mention's id into the name Discord shows."""
    spans: list[Span] = []
    position = 0
    for match in _MARKUP.finditer(text):
        if match.start() > position:
            spans.append(Span(text[position : match.start()], style, colour))
        position = match.end()
        if match["escaped"]:
            spans.append(Span(match["escaped"], style, colour))
        elif match["bold"]:
            spans.append(Span(match["bold"], "bold", NAME))
        elif match["code"]:
            spans.append(Span(match["code"], "code", TEXT))
        elif match["time"]:
            spans.append(Span(_timestamp(int(match["time"]), match["style"], now), "time", TEXT))
        elif match["user"]:
            spans.append(Span("@" + names.get(int(match["user"]), "unknown-user"), "mention", MENTION))
        elif match["role"]:
            spans.append(Span("@role", "mention", MENTION))
        else:
            spans.append(Span("#channel", "mention", MENTION))
    if position < len(text):
        spans.append(Span(text[position:], style, colour))
    return spans


@dataclass
class _Piece:
    text: str
    span: Span
    width: float


@dataclass
class Painter:
    """Lays a message out top to bottom in CSS pixels, recording what to draw; `render` then draws it at scale."""

    scale: int
    now: datetime
    names: dict[int, str]
    y: float = 16
    height_floor: float = 0
    texts: list[str] = field(default_factory=list)
    pictures: list[str] = field(default_factory=list)
    _ops: list[Operation] = field(default_factory=list)

    # sizes and primitives ------------------------------------------------------------------------------
    def px(self, value: float) -> int:
        return round(value * self.scale)

    def face(self, style: str, size: int) -> Font:
        kind = {"bold": "bold", "code": "mono"}.get(style, "regular")
        return font(kind, self.px(size * (0.85 if style == "code" else 1)))

    def measure(self, text: str, style: str, size: int) -> float:
        width = 0.0
        typeface = self.face(style, size)
        for kind, run in _runs(text, typeface):
            if kind == "text":
                width += typeface.getlength(run) / self.scale
            else:
                width += sum(self._emoji_width(char, size) for char in run)
        return width + (6 if style in BOXED else 0)

    def _emoji_width(self, char: str, size: int) -> float:
        glyph = _emoji_image(char, self.px(size * 1.25))
        return 0 if glyph is None else glyph.width / self.scale + 2

    def box(self, x: float, y: float, width: float, height: float, colour: RGB, radius: float = 0) -> None:
        rect = (self.px(x), self.px(y), self.px(x + width) - 1, self.px(y + height) - 1)
        self._ops.append(lambda _, draw: draw.rounded_rectangle(rect, radius=self.px(radius), fill=colour))

    def circle(self, x: float, y: float, diameter: float, colour: RGB) -> None:
        rect = (self.px(x), self.px(y), self.px(x + diameter) - 1, self.px(y + diameter) - 1)
        self._ops.append(lambda _, draw: draw.ellipse(rect, fill=colour))

    def elbow(self, left: float, top: float, right: float, bottom: float) -> None:
        """The quarter circle Discord draws from a reply's avatar up to the line it answers."""
        box = (self.px(left), self.px(top), self.px(2 * right - left), self.px(2 * bottom - top))
        colour = (0x4E, 0x50, 0x58)
        self._ops.append(lambda _, draw: draw.arc(box, 180, 270, fill=colour, width=self.px(2)))

    def picture(self, image: Image.Image, x: float, y: float, width: float, height: float, radius: float = 4) -> None:
        size = (self.px(width), self.px(height))
        fitted = ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=self.px(radius), fill=255)
        corner = (self.px(x), self.px(y))
        self._ops.append(lambda canvas, _: canvas.paste(fitted, corner, mask))

    def text(self, x: float, y: float, text: str, style: str, size: int, colour: RGB) -> float:
        """One line of text at (x, y), emoji included; returns its width."""
        typeface = self.face(style, size)
        cursor = x + (3 if style in BOXED else 0)
        baseline_shift = (size * 0.12) if style == "code" else 0
        for kind, run in _runs(text, typeface):
            if kind == "text":
                point = (self.px(cursor), self.px(y + baseline_shift))
                self._ops.append(_text_op(point, run, typeface, colour))
                cursor += typeface.getlength(run) / self.scale
                continue
            for char in run:
                glyph = _emoji_image(char, self.px(size * 1.25))
                if glyph is None:
                    continue
                point = (self.px(cursor + 1), self.px(y - size * 0.1))
                self._ops.append(_paste_op(glyph, point))
                cursor += glyph.width / self.scale + 2
        return cursor - x + (3 if style in BOXED else 0)

    # text blocks ---------------------------------------------------------------------------------------
    def paragraph(self, spans: Sequence[Span], x: float, width: float, size: int, line_height: float) -> float:
        """Spans wrapped within `width`, drawn from self.y on; returns the height used."""
        lines: list[list[_Piece]] = [[]]
        used = 0.0
        for span in spans:
            # Code and mentions stay whole (a timestamp, a progress bar); words of other text wrap.
            chunks = [span.text] if span.style in BOXED else re.split(r"(\n| )", span.text)
            for chunk in chunks:
                if chunk == "\n":
                    lines.append([])
                    used = 0.0
                    continue
                if not chunk or (chunk == " " and not lines[-1]):
                    continue
                width_of = self.measure(chunk, span.style, size)
                if used + width_of > width and lines[-1] and chunk != " ":
                    lines.append([])
                    used = 0.0
                lines[-1].append(_Piece(chunk, span, width_of))
                used += width_of
        top = self.y
        for line in lines:
            cursor = x
            for piece in line:
                if piece.span.style in BOXED:
                    background = SPAN_BACKGROUNDS[piece.span.style]
                    self.box(cursor, self.y - 1, piece.width, size + 5, background, radius=3)
                self.text(cursor, self.y, piece.text, piece.span.style, size, piece.span.colour)
                cursor += piece.width
            self.y += line_height
        self.texts.append("".join(span.text for span in spans))
        return self.y - top

    def markdown(
        self,
        text: str,
        x: float,
        width: float,
        size: int,
        line_height: float,
        colour: RGB = TEXT,
        style: str = "regular",
    ) -> float:
        return self.paragraph(parse(text, self.now, self.names, colour, style), x, width, size, line_height)

    def render(self, width: float) -> Image.Image:
        height = max(self.y, self.height_floor) + 16
        canvas = Image.new("RGB", (self.px(width), self.px(height)), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        for operation in self._ops:
            operation(canvas, draw)
        return canvas

    def decode(self, attachment: Attachment) -> Image.Image | None:
        """An attachment's picture, noted as drawn; None for a file that is no picture (left out)."""
        try:
            with Image.open(io.BytesIO(attachment.data)) as image:
                image.load()
                picture = image.copy()
        except (OSError, ValueError):
            return None
        self.pictures.append(attachment.filename)
        return picture

    def mark(self) -> int:
        return len(self._ops)

    def behind(self, mark: int, draw: Callable[[], None]) -> None:
        """Runs `draw` (which records operations) and moves what it recorded to `mark`: drawn under later ones."""
        start = len(self._ops)
        draw()
        added = self._ops[start:]
        del self._ops[start:]
        self._ops[mark:mark] = added


def _text_op(point: tuple[int, int], text: str, typeface: Font, colour: RGB) -> Operation:
    return lambda _, draw: draw.text(point, text, font=typeface, fill=colour)


def _paste_op(image: Image.Image, point: tuple[int, int]) -> Operation:
    return lambda canvas, _: canvas.paste(image, point, image)


def _runs(text: str, typeface: Font) -> list[tuple[str, str]]:
    """The text cut into runs the text font draws and runs of emoji: characters it has no glyph for, and those
    asked for as emoji (followed by U+FE0F, as "⚠️" is) where an emoji font has them."""
    runs: list[tuple[str, str]] = []
    for index, char in enumerate(text):
        if char == _VARIATION_SELECTOR:
            continue
        as_emoji = text[index + 1 : index + 2] == _VARIATION_SELECTOR and _emoji_image(char, 16) is not None
        kind = "text" if char.isspace() or (_has_glyph(typeface, char) and not as_emoji) else "emoji"
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + char)
        else:
            runs.append((kind, char))
    return runs


def _referenced(url: str | None, attachments: Sequence[Attachment]) -> Attachment | None:
    if not url or not url.startswith("attachment://"):
        return None
    name = url.removeprefix("attachment://")
    return next((attachment for attachment in attachments if attachment.filename == name), None)


def _colour(value: Any) -> RGB:
    number = int(value) if isinstance(value, int) else 0x1E1F22
    return ((number >> 16) & 0xFF, (number >> 8) & 0xFF, number & 0xFF)


def _blend(colour: RGB, other: RGB, amount: float) -> RGB:
    red, green, blue = (round(a + (b - a) * amount) for a, b in zip(colour, other, strict=True))
    return (red, green, blue)


def draw_message(
    message: Message,
    *,
    author: str,
    now: datetime,
    invocation: Invocation | None = None,
    names: dict[int, str] | None = None,
    scale: int = 2,
) -> Drawing:
    """`message` as a member sees it in the channel at `now` (relative times are counted from it)."""
    painter = Painter(scale, now, names or {})
    if invocation is not None:
        _invocation_line(painter, invocation)
    _author_line(painter, author, now)
    right = WIDTH - 16
    if message.content:
        painter.markdown(message.content, GUTTER, right - GUTTER, 16, 22)
        painter.y += 2
    shown_in_embeds = {
        id(attachment)
        for embed in message.embeds
        for key in ("image", "thumbnail")
        if (attachment := _referenced((embed.get(key) or {}).get("url"), message.attachments)) is not None
    }
    gallery = [attachment for attachment in message.attachments if id(attachment) not in shown_in_embeds]
    if gallery:
        _gallery(painter, gallery)
    for embed in message.embeds:
        _embed(painter, embed, message.attachments)
    if message.components:
        _components(painter, message.components)
    if message.ephemeral:
        _ephemeral_note(painter)
    image = painter.render(WIDTH)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return Drawing(buffer.getvalue(), image.size, painter.texts, painter.pictures)


def _invocation_line(painter: Painter, invocation: Invocation) -> None:
    """The curved line and "<user> used /command" above a reply to a slash command."""
    y = painter.y
    painter.elbow(36, y + 9, GUTTER - 8, y + 26)
    painter.circle(GUTTER, y + 1, 16, (0x80, 0x84, 0x8E))
    cursor: float = GUTTER + 20
    cursor += painter.text(cursor, y + 1, invocation.user, "bold", 13, NAME) + 4
    cursor += painter.text(cursor, y + 1, "used", "regular", 13, MUTED) + 4
    painter.text(cursor, y + 1, invocation.command, "regular", 13, LINK)
    painter.texts.append(f"{invocation.user} used {invocation.command}")
    painter.y = y + 24


def _author_line(painter: Painter, author: str, now: datetime) -> None:
    y = painter.y
    painter.circle(16, y + 2, 40, BLURPLE)
    initial = author[:1].upper()
    initial_width = painter.measure(initial, "bold", 20)
    painter.text(36 - initial_width / 2, y + 10, initial, "bold", 20, WHITE)
    cursor = GUTTER + painter.text(GUTTER, y, author, "bold", 16, NAME) + 6
    tag_width = painter.measure("APP", "bold", 10) + 8
    painter.box(cursor, y + 3, tag_width, 15, BLURPLE, radius=3)
    painter.text(cursor + 4, y + 4, "APP", "bold", 10, WHITE)
    cursor += tag_width + 8
    painter.text(cursor, y + 4, f"Today at {now:%H:%M}", "regular", 12, MUTED)
    painter.texts += [author, "APP"]
    painter.height_floor = y + 44
    painter.y = y + 24


def _gallery(painter: Painter, attachments: Sequence[Attachment]) -> None:
    """Pictures as Discord lays them out: one at its own shape, two or more in a grid of squares."""
    images = [image for attachment in attachments if (image := painter.decode(attachment)) is not None]
    top = painter.y + 4
    if len(images) == 1:
        (image,) = images
        ratio = min(GALLERY_WIDTH / image.width, SINGLE_IMAGE_HEIGHT / image.height)
        shown_width, shown_height = image.width * ratio, image.height * ratio
        painter.picture(image, GUTTER, top, shown_width, shown_height, radius=8)
        painter.y = top + shown_height + 4
        return
    columns = 2 if len(images) in (2, 4) else 3
    cell = (GALLERY_WIDTH - 4 * (columns - 1)) / columns
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        painter.picture(image, GUTTER + column * (cell + 4), top + row * (cell + 4), cell, cell, radius=8)
    rows = (len(images) + columns - 1) // columns
    painter.y = top + rows * (cell + 4)


def _embed(painter: Painter, embed: dict[str, Any], attachments: Sequence[Attachment]) -> None:
    top = painter.y + 4
    mark = painter.mark()
    left, inner = GUTTER + 4 + 12, EMBED_WIDTH - 4 - 24
    thumbnail = _referenced((embed.get("thumbnail") or {}).get("url"), attachments)
    text_width = inner - (96 if thumbnail else 0)
    painter.y = top + 12
    if author := (embed.get("author") or {}).get("name"):  # what a job made from a picture is, above its title
        painter.markdown(str(author), left, text_width, 14, 19, NAME, "bold")
        painter.y += 4
    if embed.get("title"):
        painter.markdown(str(embed["title"]), left, text_width, 16, 22, NAME, "bold")
        painter.y += 4
    if embed.get("description"):
        painter.markdown(str(embed["description"]), left, text_width, 14, 19)
        painter.y += 4
    _fields(painter, embed.get("fields") or [], left, inner)
    image = _referenced((embed.get("image") or {}).get("url"), attachments)
    if image is not None and (decoded := painter.decode(image)) is not None:
        ratio = min(inner / decoded.width, SINGLE_IMAGE_HEIGHT / decoded.height)
        painter.picture(decoded, left, painter.y + 8, decoded.width * ratio, decoded.height * ratio)
        painter.y += 8 + decoded.height * ratio
    footer = (embed.get("footer") or {}).get("text")
    if footer:
        painter.y += 8
        painter.markdown(str(footer), left, inner, 12, 16, FOOTER)
    if thumbnail is not None and (small := painter.decode(thumbnail)) is not None:
        painter.picture(small, left + inner - 80, top + 12, 80, 80)
        painter.y = max(painter.y, top + 12 + 80)
    bottom = painter.y + 12
    colour = _colour(embed.get("color"))

    def background() -> None:
        painter.box(GUTTER, top, EMBED_WIDTH, bottom - top, EMBED_BACKGROUND, radius=4)
        painter.box(GUTTER, top, 4, bottom - top, colour, radius=2)

    painter.behind(mark, background)
    painter.y = bottom


def _fields(painter: Painter, fields: list[dict[str, Any]], left: float, inner: float) -> None:
    """Fields in rows: up to three inline ones side by side, any other on a row of its own."""
    rows: list[list[dict[str, Any]]] = []
    for embed_field in fields:
        if embed_field.get("inline") and rows and len(rows[-1]) < 3 and rows[-1][0].get("inline"):
            rows[-1].append(embed_field)
        else:
            rows.append([embed_field])
    for row in rows:
        painter.y += 6
        top, bottom = painter.y, painter.y
        column_width = inner / 3 if row[0].get("inline") else inner
        for index, embed_field in enumerate(row):
            x = left + index * column_width
            painter.y = top
            painter.markdown(str(embed_field.get("name", "")), x, column_width - 8, 14, 19, NAME, "bold")
            painter.y += 1
            painter.markdown(str(embed_field.get("value", "")), x, column_width - 8, 14, 19)
            bottom = max(bottom, painter.y)
        painter.y = bottom


def _components(painter: Painter, rows: list[dict[str, Any]]) -> None:
    painter.y += 8
    for row in rows:
        x: float = GUTTER
        for component in row.get("components", []):
            if component.get("type") != 2:
                continue
            x += _button(painter, component, x, painter.y) + 8
        painter.y += 32 + 8


def _button(painter: Painter, component: dict[str, Any], x: float, y: float) -> float:
    label = str(component.get("label") or "")
    emoji = str((component.get("emoji") or {}).get("name") or "")
    text = f"{emoji} {label}".strip() if emoji else label
    width = max(painter.measure(text, "bold", 14) + 32, 60)
    colour = BUTTON_COLOURS.get(int(component.get("style", 2)), BUTTON_COLOURS[2])
    ink = WHITE
    if component.get("disabled"):
        colour, ink = _blend(colour, BACKGROUND, 0.5), _blend(WHITE, BACKGROUND, 0.5)
    painter.box(x, y, width, 32, colour, radius=8)
    text_width = painter.measure(text, "bold", 14)
    painter.text(x + (width - text_width) / 2, y + 7, text, "bold", 14, ink)
    painter.texts.append(text)
    return width


def _ephemeral_note(painter: Painter) -> None:
    painter.y += 4
    cursor = GUTTER + painter.text(GUTTER, painter.y, "Only you can see this ·", "regular", 12, MUTED) + 4
    painter.text(cursor, painter.y, "Dismiss message", "regular", 12, LINK)
    painter.texts.append("Only you can see this · Dismiss message")
    painter.y += 18
