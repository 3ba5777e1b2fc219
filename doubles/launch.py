"""`python -m doubles.launch [run|sync]`: the real `python -m bot`, pointed at the Discord double.

The double's addresses come from DISCORD_DOUBLE_REST and DISCORD_DOUBLE_GATEWAY; nothing else changes,
so a test can SIGTERM or SIGKILL a real bot process.
"""

from __future__ import annotations

import os
import sys

import discord
import yarl

from bot.__main__ import main

discord.http.Route.BASE = os.environ["DISCORD_DOUBLE_REST"]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_DOUBLE_GATEWAY"])

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
