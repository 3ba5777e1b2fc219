"""Pictures of what members see, made from the real bot's messages: `flows` plays them against the doubles,
`draw` draws each message as Discord's dark theme shows it. `python -m doubles.pictures` writes docs/img/*.png."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from .draw import Drawing, draw_message
from .flows import USERS, Scene, play

__all__ = ["Picture", "make_pictures"]


@dataclass(frozen=True)
class Picture:
    scene: Scene
    drawing: Drawing
    path: Path


def make_pictures(folder: Path, *, scale: int = 2) -> list[Picture]:
    """Plays every scene and writes `<scene>.png` into `folder`; returns what was drawn, texts included."""
    scenes = asyncio.run(play())
    folder.mkdir(parents=True, exist_ok=True)
    names = {user.id: user.global_name or user.username for user in USERS}
    pictures = []
    for scene in scenes:
        drawing = draw_message(
            scene.message, author=scene.author, now=scene.at, invocation=scene.invocation, names=names, scale=scale
        )
        path = folder / f"{scene.name}.png"
        path.write_bytes(drawing.png)
        pictures.append(Picture(scene, drawing, path))
    return pictures
