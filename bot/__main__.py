"""`python -m bot [run|generate|sync|release|check]`: every entry point, each failing with one clear line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import aiohttp
import discord

from bot import __version__, generate, release, tasks
from bot.config import MIN_SECRET_LENGTH, Settings, configure_logging, load_settings
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
LOGIN_TIMEOUT = 60.0  # a route that drops packets would otherwise hold the login for aiohttp's 5 minutes


class DiscordUnreachable(BotError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            f"cannot reach Discord ({reason}): check this machine's network (DNS, firewall, proxy), "
            "or Discord's status at https://discordstatus.com"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Discord /imagine bot on RunPod serverless")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the Discord bot (the default)")
    commands.add_parser("sync", help="publish the slash commands globally, then exit")
    commands.add_parser(
        "release",
        help="migrate the database and publish the slash commands if they changed since the last publish "
        "(a PaaS release phase), then exit",
    )
    commands.add_parser("check", help="check the configuration, token, commands, database and RunPod; then exit")
    generate.add_arguments(
        commands.add_parser("generate", help="paint from the terminal and save the pictures as PNG files")
    )
    return parser


async def log_in(bot: discord.Client, token: str) -> None:
    """Log in over REST: a refused token or no route to Discord is one clear error, not a traceback."""
    try:
        await asyncio.wait_for(bot.login(token), LOGIN_TIMEOUT)
    except discord.LoginFailure:
        raise ConfigError("DISCORD_TOKEN was refused by Discord: reset it in the developer portal") from None
    except TimeoutError:
        raise DiscordUnreachable(f"no answer to the login within {LOGIN_TIMEOUT:.0f} s") from None
    except (OSError, aiohttp.ClientError) as error:  # refused, reset, no DNS, no route
        raise DiscordUnreachable(printable(str(error) or type(error).__name__)) from None
    except discord.DiscordServerError as error:  # 5xx after discord.py's own retries
        raise DiscordUnreachable(f"Discord answered {error.status}") from None


async def connect(bot: discord.Client) -> None:
    """Go online and stay (discord.py reconnects by itself); what escapes is a gateway never reached at all
    (a sharded bot asks for its shards over REST first)."""
    try:
        await bot.connect()
    except (OSError, aiohttp.ClientError, discord.GatewayNotFound, discord.DiscordServerError) as error:
        raise DiscordUnreachable(printable(str(error) or type(error).__name__)) from None


async def run_bot(settings: Settings, *, command: str = "run") -> None:
    """Run the bot (`run`), or log in to publish its commands and leave (`sync`, `release`).

    Own the loop: SIGTERM (every PaaS deploy and restart) closes the bot cleanly instead of killing it.
    """
    from bot.bot import make_bot  # the terminal commands need no discord.py start-up

    token = settings.require_discord_token()
    if command == "run":
        log.info("runpod-imagine-bot %s starting", __version__)
        _warn_about_settings(settings)
    storage = await Storage.open(settings.database_url.reveal())  # migrates: the release phase's first task
    if command == "release":
        print(f"database migrated: schema at revision {await storage.schema_revision()}")
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
        web = WebServer(bot, settings.port) if settings.port and command == "run" else None
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
                await log_in(bot, token.reveal())
                if command == "run":
                    await connect(bot)
                else:
                    print(await release.publish_commands(bot, storage, only_if_changed=command == "release"))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if web is not None:
                await web.stop()
            await storage.close()


def _warn_about_settings(settings: Settings) -> None:
    """What the operator should fix, said once at start; the bot runs regardless."""
    if os.environ.get("DYNO") and settings.database_url.reveal().startswith("sqlite"):  # Heroku sets DYNO
        log.warning(
            "DATABASE_URL is a SQLite file on the dyno's disk, which is wiped at every restart (at least daily): "
            "unfinished jobs, server keys and rules are lost with it. Add PostgreSQL and set DATABASE_URL."
        )
    if settings.runpod_local:
        log.warning("%s", LOCAL_MODE_NOTE.format(url=settings.runpod_api_url))
    if not settings.encryption_keys:
        log.warning(
            "BOT_ENCRYPTION_KEY is not set: server admins cannot connect their own RunPod keys (/runpod setup "
            "refuses), and after a restart a job's status goes on in a new message. Set it to a random secret of "
            "at least %d characters (python -m bot check tells what else is missing)",
            MIN_SECRET_LENGTH,
        )
    if settings.public_url and not settings.encryption_keys:
        log.warning("PUBLIC_URL is set but BOT_ENCRYPTION_KEY is not: webhooks are off (their addresses are signed)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":  # reports configuration errors itself, as one of its lines
        from bot import check

        return check.main()
    try:
        settings = load_settings()
        if args.command == "generate":
            configure_logging(settings.log_level, sys.stderr, settings.secrets)  # stdout carries the saved paths
            asyncio.run(generate.generate(args, settings))  # names each saved picture on stdout as it is saved
            return 0
        configure_logging(settings.log_level, sys.stdout, settings.secrets)
        asyncio.run(run_bot(settings, command=args.command or "run"))
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
