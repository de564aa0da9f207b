"""Project paths, resolved from the project root so notebooks run from any working directory."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # lib/core/paths.py
DATA = ROOT / "data"
MODELS = ROOT / "models"
RUNS = ROOT / "runs"
FIGURES = ROOT / "figures"
PARAMS = ROOT / "params"
RUNS_ENV = "SUITE_RUNS_ROOT"       # another runs root for the notebooks' default (make test: runs/.test)


def resolve(path: str | Path | None) -> Path | None:
    """Absolute paths stay; relative ones are taken from the project root (never the kernel's cwd)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def runs_root(value: str | Path | None = None) -> Path:
    """The runs root a notebook was given; None: $SUITE_RUNS_ROOT when set (the tests' own root, so they
    never touch a user's runs), else runs/ under the project root."""
    if value is None:
        value = os.environ.get(RUNS_ENV) or RUNS
    return resolve(value)
