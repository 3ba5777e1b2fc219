"""The layout the README draws: imports run one way (cogs -> runner -> engine -> client), and the core
that talks to RunPod, the ledger and the rules knows nothing of Discord."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs")
# No Discord in these: the RunPod client and engine, where jobs run, the rules, the ledger, the CLI.
DISCORD_FREE = (
    "bot.admission",
    "bot.clock",
    "bot.config",
    "bot.crypto",
    "bot.endpoints",
    "bot.engine",
    "bot.errors",
    "bot.generate",
    "bot.images",
    "bot.lifecycle",
    "bot.params",
    "bot.policy",
    "bot.polling",
    "bot.presets",
    "bot.ratelimit",
    "bot.runpod",
    "bot.status",
    "bot.storage",
    "bot.tasks",
    "bot.text",
    "bot.usage",
)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            name = f"{package}.{path.stem}" if path.stem != "__init__" else package
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module this file imports, wherever the import stands (top, function, TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {found for found in imports(path) if found in known} - {name} for name, path in known.items()}


def test_no_import_cycle_among_the_bots_modules():
    edges = graph()
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(edges[module]):
            if state.get(imported) == "open":
                cycle = [*trail[trail.index(imported) :], imported] if imported in trail else [module, imported]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if imported not in state:
                visit(imported, [*trail, imported])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_core_never_imports_discord_or_the_discord_side():
    edges = graph()
    for module in DISCORD_FREE:
        path = modules()[module]
        assert not any(name == "discord" or name.startswith("discord.") for name in imports(path)), module
        assert not {"bot.bot", "bot.jobs", "bot.live", "bot.render", "bot.buttons"} & edges[module], module


def test_bot_never_imports_a_cog():
    for module, imported in graph().items():
        if module.startswith("bot"):
            assert not any(name.startswith("cogs") for name in imported), module


# Discord's markup: a timestamp, a user or role mention, a channel, a custom emoji. Drawn on the Discord side only.
DISCORD_MARKUP = ("<t:", "<@", "<#", "<:")


def strings(path: Path) -> list[tuple[int, str]]:
    """Every string a module can build (f-strings' literal parts too), with its line; docstrings, which describe
    rather than build, and comments are not strings here."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_the_core_never_writes_discord_markup():
    found = [
        f"{module}:{line}: {text!r}"
        for module in DISCORD_FREE
        for line, text in strings(modules()[module])
        if any(markup in text for markup in DISCORD_MARKUP)
    ]
    assert not found, "Discord markup is drawn in bot/render.py, not in the core:\n" + "\n".join(found)


def test_the_markup_scan_sees_f_strings_and_skips_docstrings_and_comments(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""A module that mentions <t:123:R> in its docstring."""\n'
        "# and <@1> in a comment\n"
        "def reset(moment):\n"
        '    """Drawn as <t:...:R> on the Discord side."""\n'
        '    return f"more <t:{int(moment)}:R>."\n'
    )
    assert [text for _, text in strings(sample) if "<t:" in text] == ["more <t:"]


def test_the_runner_keeps_queue_submit_and_follow_only():
    """Resume and sweep live in bot/recovery.py, what members see in bot/presenter.py: JobRunner stays small."""
    tree = ast.parse(modules()["bot.jobs"].read_text())
    (runner,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "JobRunner"]
    assert runner.end_lineno is not None
    assert runner.end_lineno - runner.lineno + 1 <= 350
    methods = {node.name for node in runner.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert not {"resume", "resume_all", "sweep", "sweep_forever"} & methods


def test_only_the_ledger_writes_a_job_s_state():
    """Every change of a job's state is one of the ledger's named moves (bot/lifecycle.py): outside bot/storage.py
    no code passes a ledger state as `state=`, but a new job's first line (waiting), and nothing calls the old
    untyped `update_job`."""
    writers = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "state" and name != "bot.storage":
                value = ast.unparse(node.value)
                if "LedgerState" in value and value != "LedgerState.WAITING":
                    writers.append(f"{name}:{node.lineno}: state={value}")
            if isinstance(node, ast.Attribute) and node.attr in ("update_job", "claim_delivery"):
                writers.append(f"{name}:{node.lineno}: {node.attr}")
    assert writers == []
