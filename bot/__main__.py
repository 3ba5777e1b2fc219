"""`python -m bot [run|generate|check|sync]`: every entry point, each failing with one clear line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot import generate
from bot.config import configure_logging, load_settings
from bot.errors import BotError, ConfigError

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Discord /imagine bot on RunPod serverless")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the Discord bot (the default)")
    generate.add_arguments(commands.add_parser("generate", help="run one job from the terminal and save the PNG"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "generate":
            configure_logging(settings.log_level, sys.stderr)  # stdout carries the saved paths
            paths = asyncio.run(generate.generate(args, settings))
            for path in paths:
                print(path)
            return 0
        raise ConfigError("the Discord bot is not built yet: use `python -m bot generate`")
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except BotError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
