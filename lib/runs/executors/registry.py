"""The executor registry: engine name -> factory, and the settings each engine reads.

An executor runs a sweep's points. It is any object with ``submit(task) -> Future`` (a PointTask of
lib/runs/points.py; the future resolves to run_task's summary) and ``wait() -> list[dict]`` (every submitted
point's summary, in submission order; done-callbacks on the futures may submit more points), optionally
``slots`` (points at once: the sweep hands it no more at a time, and sizes the ETA by it; None: all at once), ``prepare(specs)`` (build the
shared models first) and ``close()``. A factory makes one from the sweep file's ``executor:`` settings::

    @register("mine", settings={"workers": WHOLE_POSITIVE})
    def make_mine(settings: dict, ctx: Context) -> Executor:
        return MineExecutor(settings.get("workers", 1), ctx.engine)

The sweep file's ``executor: {engine: mine, workers: 4}`` and ``--executor mine`` then pick it, and its
settings are checked when the sweep is read (an unknown setting or a bad value names the key).
"""
from __future__ import annotations

import importlib
import os
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from ...core import config, paths
from ..points import PointTask


class EngineUnavailable(config.ParamError):
    """The sweep asks for an engine this machine does not have (not installed, no scheduler, no cluster)."""


class Executor:
    """What a sweep needs from whoever runs its points: submit them, then wait for all of them."""
    slots: int | None = 1

    def submit(self, task: PointTask) -> Future:
        raise NotImplementedError

    def wait(self) -> list[dict]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers, pools or connections still held (after wait)."""


@dataclass(frozen=True)
class Setting:
    """One ``executor:`` setting an engine reads: what a value must be, in words, and the test of it."""
    want: str
    ok: Callable[[Any], bool]


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


WHOLE = Setting("a whole number >= 0", lambda v: _whole(v) and v >= 0)
WHOLE_POSITIVE = Setting("a whole number of at least 1", lambda v: _whole(v) and v >= 1)
POSITIVE = Setting("a positive number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)
FLAG = Setting("true or false", lambda v: isinstance(v, bool))
TEXT = Setting("a string", lambda v: isinstance(v, str))
SHELL_LINES = Setting("a list of shell lines", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))


@dataclass(frozen=True)
class Context:
    """What the sweep tells every factory besides the settings."""
    jobs: int | None = None         # --jobs: points at once, where the engine runs them here
    engine: Callable | None = None  # how a notebook is executed (papermill; tests pass a stand-in)
    runs_root: str = "runs"
    sweep: str = "sweep"            # the sweep's name (job names, log folders)


@dataclass(frozen=True)
class Engine:
    factory: Callable[[dict, Context], Executor]
    settings: dict[str, Setting]


ENGINES: dict[str, Engine] = {}


def register(name: str, settings: dict[str, Setting] | None = None):
    """Decorator: ``factory(settings, ctx) -> Executor`` becomes the engine ``name``, reading ``settings``."""
    def add(factory: Callable[[dict, Context], Executor]):
        if name in ENGINES:
            raise ValueError(f"executor engine {name!r} is registered twice.")
        ENGINES[name] = Engine(factory, dict(settings or {}))
        return factory
    return add


def names() -> list[str]:
    """The registered engines (--executor's choices), in registration order."""
    return list(ENGINES)


def setting_names() -> list[str]:
    """Every setting some engine reads, ``engine`` first (each engine ignores the others', so --executor can
    switch engines without editing the file)."""
    return list(dict.fromkeys(["engine"] + [k for e in ENGINES.values() for k in e.settings]))


def check_settings(raw, where: str = "the sweep file") -> dict:
    """The ``executor:`` mapping, validated: known keys, sensible types. A bare name is ``{engine: name}``."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"engine": raw}
    if not isinstance(raw, dict):
        raise config.ParamError(f"executor: in {where} must be a mapping such as {{engine: slurm, partition: gpu}}, "
                                f"got {raw!r}.")
    allowed = setting_names()
    for key, value in raw.items():
        if key not in allowed:
            raise config.ParamError(f"unknown executor setting {key!r} in {where};"
                                    f"{config.did_you_mean(key, allowed)} allowed: {', '.join(allowed)}.")
        want = _problem(key, value, raw.get("engine"))
        if want:
            raise config.ParamError(f"executor setting {key}: {value!r} in {where} must be {want}.")
    return dict(raw)


def _problem(key: str, value, engine: str | None) -> str | None:
    """What ``value`` must be instead, or None; a setting is judged by the chosen engine's own test when it
    reads the key, else by the first engine's that does."""
    if key == "engine":
        return None if value in ENGINES else f"one of {', '.join(ENGINES)}"
    readers = [e.settings[key] for n, e in ENGINES.items() if key in e.settings and n == engine] or \
        [e.settings[key] for e in ENGINES.values() if key in e.settings]
    return None if readers[0].ok(value) else readers[0].want


def gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def default_engine(jobs: int | None) -> str:
    """No engine named: a process pool with one worker per GPU where there are GPUs, else ``jobs`` workers
    (in this process for one)."""
    return "local" if gpu_count() or (jobs or 1) > 1 else "serial"


def make(settings: dict | None = None, jobs: int | None = None, engine=None, runs_root="runs",
         name: str = "sweep") -> Executor:
    """The executor the (checked) settings name, or the default one for ``jobs`` when they name none."""
    settings = dict(settings or {})
    kind = settings.get("engine") or default_engine(jobs)
    if kind not in ENGINES:
        raise config.ParamError(f"executor engine {kind!r} is not registered; engines: {', '.join(ENGINES)}.")
    return ENGINES[kind].factory(settings, Context(jobs, engine, str(runs_root), name))


# ---------------------------------------------------------------------- helpers of engines elsewhere
def require_package(module: str, pin: str):
    """``module`` imported, or EngineUnavailable naming the pip install (an engine's package is optional)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EngineUnavailable(f"the {module} executor needs the {module} package: "
                                f"pip install {pin} (pinned in requirements.txt).") from None


def pythonpath() -> str:
    """PYTHONPATH for jobs and workers: this project first, so they import ``lib`` from the same tree."""
    return os.pathsep.join([str(paths.ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
