"""A Discord /imagine bot on RunPod serverless. `__version__` is pyproject.toml's, its one source."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "runpod-imagine-bot"


def _version() -> str:
    # A PaaS runs the bot from its checkout without installing it (requirements.txt holds the locked dependencies
    # only), so the checkout's pyproject.toml comes first; an installed copy has its metadata.
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        with pyproject.open("rb") as file:
            project = tomllib.load(file).get("project", {})
        if project.get("name") == DISTRIBUTION:
            return str(project["version"])
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()
