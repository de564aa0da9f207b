"""Checks the pipeline steps register on the parameters whose allowed values only they know.

lib.core sits below the steps and imports none of them, yet some values can only be judged by a step: the
shapes the shapes domain draws (data.classes), the backbones the classifier builds (classifier.arch). Such a
step registers a check on its section::

    from ..core import config

    @config.checks.register("classifier")
    def check_config(cfg):
        if cfg.classifier.arch not in ARCHS:
            raise config.ParamError(f"unknown classifier.arch {cfg.classifier.arch!r} ...")

and lib/core/config/validation.py runs a section's checks where it checks that section itself, so the error
comes at load time, as the schema's own do. A check raises ParamError, or returns what is wrong (a message,
or a list of them: the first is raised) or None.

STEP_MODULES names the modules that register checks. They are imported by name (importlib) the first time
checks run, so every registration is in place before any parameter file is judged, with no import of a step
in lib.core. A step module that registers a check adds its name here.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Callable

from .schema import Config, ParamError

STEP_MODULES = ("lib.data.shapes", "lib.evaluate.backbones", "lib.tuningset.selection", "lib.generate.references")
SECTIONS = tuple(name for name, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp))
CHECKS: dict[str, list[Callable]] = {}
_imported = False


def register(section: str):
    """Decorator: ``check(cfg)`` judges the parameter section ``section`` (a Config field, e.g. "data")."""
    if section not in SECTIONS:
        raise ValueError(f"no parameter section {section!r} to check; sections: {', '.join(SECTIONS)}.")

    def add(check: Callable):
        if check not in CHECKS.setdefault(section, []):
            CHECKS[section].append(check)
        return check
    return add


def run(cfg: Config, *sections: str) -> None:
    """Every check registered on these sections, in registration order; the first fault is raised."""
    import_step_modules()
    for check in [c for s in sections for c in CHECKS.get(s, [])]:
        problem = check(cfg)
        if isinstance(problem, (list, tuple)):
            problem = problem[0] if problem else None
        if problem:
            raise ParamError(str(problem))


def import_step_modules() -> None:
    """Import the registering modules once (a module's import registers its checks)."""
    global _imported
    if not _imported:
        for name in STEP_MODULES:
            importlib.import_module(name)
        _imported = True
