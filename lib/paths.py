"""Project paths, resolved from the project root so notebooks run from any working directory."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
MODELS = ROOT / "models"
RUNS = ROOT / "runs"
FIGURES = ROOT / "figures"
PARAMS = ROOT / "params"


def resolve(path: str | Path | None) -> Path | None:
    """Absolute paths stay; relative ones are taken from the project root (never the kernel's cwd)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p
