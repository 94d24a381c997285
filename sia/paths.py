"""Where the bundled configs, tasks and sweeps are: next to the package in a source checkout
(editable install, the repo itself), or inside it (``sia/_bundled/``) in a built wheel."""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
BUNDLED = PACKAGE / "_bundled"


def _find(name: str) -> Path:
    for candidate in (PACKAGE.parent / name, BUNDLED / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"SIA's {name}/ folder is missing (looked in {PACKAGE.parent} and {BUNDLED}); "
                            f"reinstall the package")


def conf_dir() -> Path:
    return _find("conf")


def tasks_dir() -> Path:
    return _find("tasks")


def sweeps_dir() -> Path:
    return _find("sweeps")
