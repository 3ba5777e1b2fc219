"""The pictures of what members see (docs/img/): the command that makes them plays the real bot against the doubles
and draws only what the bot said; every picture the README and the guides show is in the repository."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from doubles.discord import Message
from doubles.pictures import Picture, draw
from doubles.pictures.__main__ import main
from doubles.pictures.draw import Invocation, draw_message, parse, relative

ROOT = Path(__file__).resolve().parent.parent
PICTURES = ("status", "set-of-4", "variation", "failure", "usage")
# What the renderer draws around a message (Discord's own chrome, not the bot's words).
CHROME = re.compile(r"^(imagine-bot|APP|\w+ used (/[\w ]+|[UV]\d)|Only you can see this · Dismiss message)$")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Picture]:
    """One run of the documented command (`python -m doubles.pictures --out DIR`), in this process."""
    out = tmp_path_factory.mktemp("img")
    made = main(["--out", str(out)])
    assert sorted(path.name for path in out.iterdir()) == sorted(f"{name}.png" for name in PICTURES)
    return {picture.scene.name: picture for picture in made}


def said(message: Message) -> list[str]:
    """Every string of the message a member can read: content, embeds, button labels."""
    strings = [message.content or ""]
    for embed in message.embeds:
        strings.append((embed.get("author") or {}).get("name", ""))
        strings += [embed.get("title", ""), embed.get("description", ""), (embed.get("footer") or {}).get("text", "")]
        for field in embed.get("fields", []):
            strings += [field["name"], field["value"]]
    strings += [button.get("label", "") for row in message.components for button in row["components"]]
    return [string for string in strings if string]


def labels(message: Message) -> list[str]:
    return [button["label"] for row in message.components for button in row["components"]]


@pytest.mark.parametrize("name", PICTURES)
def test_each_picture_is_a_png_readable_at_readme_width(pictures, name):
    picture = pictures[name]
    with Image.open(picture.path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == picture.drawing.size
        assert image.width == 2 * draw.WIDTH  # 640 CSS pixels at 2x: sharp when shown 640 wide
        assert 400 <= image.height <= 2000
        colours = image.getcolors(1 << 16)  # None: more colours than that
        assert colours is None or len(colours) > 50  # drawn on, not a blank card


@pytest.mark.parametrize("name", PICTURES)
def test_every_word_drawn_came_from_the_bot(pictures, name):
    picture = pictures[name]
    scene, names = picture.scene, {}
    readable = {"".join(span.text for span in parse(text, scene.at, names)) for text in said(scene.message)}
    ours = [text for text in picture.drawing.texts if not CHROME.match(text)]
    assert ours and set(ours) <= readable
    assert all("<t:" not in text and "**" not in text for text in picture.drawing.texts)  # markup resolved
    for label in labels(scene.message):
        assert label in picture.drawing.texts


def test_the_live_status_shows_the_painting_in_progress(pictures):
    picture = pictures["status"]
    title, fields = picture.scene.message.embeds[0]["title"], picture.scene.message.embeds[0]["fields"]
    assert title in picture.drawing.texts and "Painting" in title
    assert labels(picture.scene.message) == ["Cancel"]
    assert {"Progress", "Painting since", "Expected done"} <= {field["name"] for field in fields}
    assert "a lighthouse at dusk, oil painting" in picture.drawing.texts  # the prompt, flags taken out
    # Discord's relative timestamps as a member reads them at that moment.
    assert any(re.fullmatch(r"(\d+|a) seconds? ago", text) for text in picture.drawing.texts)
    assert any(re.fullmatch(r"in (\d+|a) seconds?", text) for text in picture.drawing.texts)
    assert any(re.search(r"\d+%$", text) for text in picture.drawing.texts)


def test_the_set_of_4_shows_its_four_pictures_and_u_v_buttons(pictures):
    picture = pictures["set-of-4"]
    message = picture.scene.message
    assert message.embeds[0]["title"] == "✅ Done"
    assert picture.drawing.pictures == [attachment.filename for attachment in message.attachments]
    assert len(picture.drawing.pictures) == 4
    assert {"U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", "Reroll", "Delete"} <= set(picture.drawing.texts)


def test_the_variations_say_what_they_are_and_who_asked(pictures):
    picture = pictures["variation"]
    message = picture.scene.message
    assert message.embeds[0]["author"]["name"] == "Variations (strong) of picture 2 · by Ann"
    assert "Variations (strong) of picture 2 · by Ann" in picture.drawing.texts
    assert len(picture.drawing.pictures) == 4


def test_the_failure_card_says_what_happened_and_offers_retry(pictures):
    picture = pictures["failure"]
    message = picture.scene.message
    assert message.embeds[0]["title"] == "⚠️ No picture this time"
    (what,) = [field["value"] for field in message.embeds[0]["fields"] if field["name"] == "What happened"]
    assert what.startswith("The GPU ran out of memory") and what in picture.drawing.texts
    assert {"Retry", "Delete"} <= set(picture.drawing.texts)


def test_the_usage_report_shows_its_chart_to_the_admin_alone(pictures):
    picture = pictures["usage"]
    message = picture.scene.message
    assert message.ephemeral and picture.drawing.pictures == ["usage.png"]
    assert message.content and message.content in picture.drawing.texts
    assert message.content.startswith("Last 30 days: ")
    assert "Only you can see this · Dismiss message" in picture.drawing.texts


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(8, "in 8 seconds"), (-4, "4 seconds ago"), (1, "in a second"), (-70, "a minute ago"), (600, "in 10 minutes")],
)
def test_relative_times_read_as_discord_writes_them(seconds, shown):
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert relative(now + timedelta(seconds=seconds), now) == shown


def test_without_dejavu_or_an_emoji_font_it_still_draws(monkeypatch, tmp_path):
    """A machine without the fonts gets Pillow's own font and no emoji, never an error."""
    monkeypatch.setattr(draw, "FONT_DIR", tmp_path)
    monkeypatch.setattr(draw, "EMOJI_FONT", tmp_path / "none.ttf")
    for cached in (draw.font, draw.emoji_font, draw._has_glyph, draw._emoji_image):
        cached.cache_clear()
    message = Message(1, 2, "Hello <@7>", [{"title": "🎨 Painting…", "color": 0x5865F2}], [], [], 0, None)
    try:
        drawing = draw_message(message, author="imagine-bot", now=datetime.now(UTC), names={7: "Ann"}, scale=1,
                               invocation=Invocation("Ann", "/imagine"))  # fmt: skip
    finally:
        for cached in (draw.font, draw.emoji_font, draw._has_glyph, draw._emoji_image):
            cached.cache_clear()
    with Image.open(io.BytesIO(drawing.png)) as image:
        assert image.width == draw.WIDTH
    assert {"Hello @Ann", "🎨 Painting…"} <= set(drawing.texts)


IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img\b[^>]*\bsrc=\"([^\"]+)\"")


def test_every_picture_the_readme_and_docs_show_is_in_the_repository():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    shown = []
    for document in documents:
        for match in IMAGE_LINK.finditer(document.read_text(encoding="utf-8")):
            link = match[1] or match[2]
            if re.match(r"^[a-z]+://", link):
                continue
            path = (document.parent / link.split("#")[0]).resolve()
            assert path.is_file(), f"{document.relative_to(ROOT)} shows {link}, which is not in the repository"
            shown.append(path)
    readme_pictures = {path.name for path in shown if path.parent == ROOT / "docs" / "img"}
    assert {f"{name}.png" for name in PICTURES} <= readme_pictures
    for path in shown:
        with Image.open(path) as image:
            image.verify()
