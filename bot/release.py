"""`python -m bot release`, a PaaS's release phase: publish the slash commands only when they changed.

Discord limits how many commands an application may create a day, and a global publish reaches clients
slowly; so the payload `CommandTree.sync()` would send is hashed, and published only when the hash differs
from the one stored (in the database, by application) at the last publish.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.storage import Storage

if TYPE_CHECKING:
    from bot.bot import ImagineBot


@dataclass(frozen=True)
class Publication:
    names: tuple[str, ...]
    published: bool

    def __str__(self) -> str:
        names = ", ".join(self.names)
        if self.published:
            return f"published {len(self.names)} global command(s): {names}"
        return f"slash commands unchanged since the last publish ({names}): not published again"


def command_payload(bot: ImagineBot) -> list[dict[str, Any]]:
    """What `bot.tree.sync()` sends Discord for the global commands, in a stable order."""
    tree = bot.tree
    payload = [dict(command.to_dict(tree)) for command in tree.get_commands()]
    return sorted(payload, key=lambda command: (command.get("type", 1), command["name"]))


def payload_hash(payload: list[dict[str, Any]]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


async def publish_commands(bot: ImagineBot, storage: Storage, *, only_if_changed: bool) -> Publication:
    """Publish the global commands of a logged-in bot (always, or only when they changed) and remember them."""
    application_id = bot.application_id
    assert application_id is not None, "only a logged-in bot knows its application"
    payload = command_payload(bot)
    digest = payload_hash(payload)
    names = tuple(command["name"] for command in payload)
    if only_if_changed and await storage.published_commands(application_id) == digest:
        return Publication(names, published=False)
    synced = await bot.tree.sync()
    await storage.commands_published(application_id, digest)
    return Publication(tuple(command.name for command in synced), published=True)
