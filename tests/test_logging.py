"""Every log line of the bot and the CLI is one line: text from outside cannot forge lines of its own."""

from __future__ import annotations

import io
import logging

import pytest

from bot.config import configure_logging

FORGED = "boom\n2026-01-01 INFO bot.jobs: job abc delivered 4 image(s)\x1b[2J"


@pytest.fixture
def log_stream():
    """configure_logging's handler writing to a buffer; the root logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("INFO", stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_workers_words_make_one_line_with_no_escape(log_stream):
    logging.getLogger("bot.engine").warning("job %s failed: %s", "abc", FORGED)
    logging.getLogger("some.library").info(FORGED)  # every logger, the message itself too
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "\x1b" not in line and "\n" not in line and line.isprintable()
        assert "boom 2026-01-01 INFO bot.jobs: job abc delivered 4 image(s)\N{REPLACEMENT CHARACTER}[2J" in line
    assert " WARNING bot.engine: job abc failed: boom " in lines[0]


def test_a_traceback_keeps_its_lines(log_stream):
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logging.getLogger("bot.jobs").exception("job %s crashed: %s", "abc", FORGED)
    first, *traceback = log_stream.getvalue().splitlines()
    assert "ERROR   bot.jobs: job abc crashed: boom 2026-01-01" in first and "\x1b" not in first
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "RuntimeError: kaput"
