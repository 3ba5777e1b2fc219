"""`python -m bot [run|generate|sync|check]`: every entry point, each failing with one clear line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import aiohttp
import discord

from bot import generate, tasks
from bot.config import Settings, configure_logging, load_settings
from bot.engine import LOCAL_MODE_NOTE, RunPodContext
from bot.errors import BotError, ConfigError
from bot.images import ImageFetcher
from bot.metrics import Metrics
from bot.storage import Storage
from bot.text import printable
from bot.web import WebServer

log = logging.getLogger("bot")

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
RUNPOD_CONNECTIONS = 100  # aiohttp's default pool, made explicit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Discord /imagine bot on RunPod serverless")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the Discord bot (the default)")
    commands.add_parser("sync", help="publish the slash commands globally, then exit")
    commands.add_parser("check", help="check the configuration, token, commands, database and RunPod; then exit")
    generate.add_arguments(commands.add_parser("generate", help="run one job from the terminal and save the PNG"))
    return parser


async def run_bot(settings: Settings, *, sync_only: bool = False) -> None:
    """Own the loop: SIGTERM (every PaaS deploy and restart) closes the bot cleanly instead of killing it."""
    from bot.bot import make_bot  # the terminal commands need no discord.py start-up

    token = settings.require_discord_token()
    if os.environ.get("DYNO") and settings.database_url.reveal().startswith("sqlite"):  # Heroku sets DYNO
        log.warning(
            "DATABASE_URL is a SQLite file on the dyno's disk, which is wiped at every restart (at least daily): "
            "unfinished jobs, server keys and rules are lost with it. Add PostgreSQL and set DATABASE_URL."
        )
    if settings.runpod_local:
        log.warning("%s", LOCAL_MODE_NOTE.format(url=settings.runpod_api_url))
    storage = await Storage.open(settings.database_url.reveal())
    # The pool every RunPod request draws from; one API key may hold a quarter of it (`RunPodContext.key_requests`).
    connector = aiohttp.TCPConnector(limit=RUNPOD_CONNECTIONS)
    metrics = Metrics()
    async with (
        aiohttp.ClientSession(connector=connector, trace_configs=[metrics.runpod_trace()]) as session,
        ImageFetcher(memory=settings.picture_memory) as fetcher,
    ):
        runpod = RunPodContext(session, fetcher, api_url=settings.runpod_api_url, local=settings.runpod_local)
        bot = make_bot(settings, storage=storage, runpod=runpod, metrics=metrics)
        # Up before the login, so a PaaS that waits for $PORT at boot sees it at once (/healthz: 503 until ready).
        web = WebServer(bot, settings.port) if settings.port and not sync_only else None
        if web is not None:
            await web.start()
        loop = asyncio.get_running_loop()

        def on_signal(name: str) -> None:
            log.info("%s received: closing", name)
            runpod.drop_picture_work()  # no queued picture may hold up the exit
            tasks.spawn(bot.close(), name=f"close on {name}")

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            async with bot:
                if sync_only:
                    await bot.login(token.reveal())
                    synced = await bot.tree.sync()
                    print(f"published {len(synced)} global command(s): {', '.join(c.name for c in synced)}")
                else:
                    await bot.start(token.reveal())
        except discord.LoginFailure:
            raise ConfigError("DISCORD_TOKEN was refused by Discord: reset it in the developer portal") from None
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if web is not None:
                await web.stop()
            await storage.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":  # reports configuration errors itself, as one of its lines
        from bot import check

        return check.main()
    try:
        settings = load_settings()
        if args.command == "generate":
            configure_logging(settings.log_level, sys.stderr, settings.secrets)  # stdout carries the saved paths
            for path in asyncio.run(generate.generate(args, settings)):
                print(path)
            return 0
        configure_logging(settings.log_level, sys.stdout, settings.secrets)
        asyncio.run(run_bot(settings, sync_only=args.command == "sync"))
        return 0
    except ConfigError as error:
        print(f"configuration error: {printable(error)}", file=sys.stderr)
        return EXIT_CONFIG
    except BotError as error:  # often the worker's or RunPod's own words (engine.describe_worker_error)
        print(f"error: {printable(error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
