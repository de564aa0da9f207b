"""One sweep point as a task: what a worker, a job or a Ray task needs to run it, how it runs (in this
process, its output appended to the point's run.log) and the small summary it returns, also for a point
whose worker or job died without one. Every executor (lib/runs/executors/) runs points through run_task.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core import config
from . import runner


@dataclass
class PointTask:
    """One point: everything a worker, or a remote scheduler, needs to run it."""
    base: str
    overrides: dict
    runs_root: str = "runs"
    notebooks_dir: str = str(runner.NOTEBOOKS)
    until: str | None = "05_classifier"
    kernel: str | None = None

    def command(self) -> str:
        """The same point as a shell command (what a scheduler would launch)."""
        sets = " ".join(f"--set {shlex.quote(f'{k}={_yaml_scalar(v)}')}" for k, v in self.overrides.items())
        until = f" --until {self.until}" if self.until else ""
        return (f"python -m lib.runs.runner {shlex.quote(self.base)} {sets} --runs-root {shlex.quote(self.runs_root)}"
                f" --notebooks {shlex.quote(self.notebooks_dir)}{until}").replace("  ", " ")


def _yaml_scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def run_task(task: PointTask, engine=None, echo: bool = True) -> dict:
    """Run one point in this process; returns a small picklable summary.

    Everything the point prints, and the notebooks' cell output papermill logs, is appended to
    ``<run dir>/run.log`` (the point's log); with ``echo`` it reaches the console too (serial sweeps),
    without it (pool workers) the console gets one line naming the log."""
    t0 = time.perf_counter()
    kw = {"engine": engine} if engine else {}
    log_path = None
    try:
        log_path = runner.prepare(task.base, task.overrides, task.runs_root).directory / "run.log"
        if not echo:
            print(f"  started {log_path.parent.name} (log: {runner.stages.paths_rel(log_path)})", flush=True)
        with point_log(log_path, echo):
            r = runner.run(task.base, task.overrides, task.runs_root, task.notebooks_dir, task.kernel,
                           until=task.until, **kw)
        return {"run": str(r.directory), "ok": True, "seconds": time.perf_counter() - t0, "error": None,
                "log": str(log_path)}
    except Exception as exc:     # anything a point raises is that point's failure, never the sweep's
        known = isinstance(exc, (runner.RunFailed, config.ParamError, FileNotFoundError))
        error = str(exc) if known else f"{type(exc).__name__}: {exc}"
        if log_path is not None and log_path.exists():     # the log ends with why (what a remote job's user reads)
            with open(log_path, "a") as fh:
                fh.write(("" if known else traceback.format_exc()) + f"FAILED: {error}\n")
        return {"run": None, "ok": False, "seconds": time.perf_counter() - t0, "error": error,
                "overrides": task.overrides, "log": None if log_path is None else str(log_path)}


def failed(task: PointTask, error: str, job_log: str | None = None) -> dict:
    """The summary of a point that never returned one (its job or worker died, or raised outside the runner)."""
    log = None
    try:
        log = str(runner.prepare(task.base, task.overrides, task.runs_root, create=False).directory / "run.log")
    except Exception:       # e.g. a random-skip or equal-updates control whose gated run failed: no run folder to name
        pass
    return {"run": None, "ok": False, "seconds": None, "error": error, "overrides": task.overrides,
            "log": log if log and Path(log).exists() else None, "job_log": job_log}


class Tracked:
    """Futures an executor resolves in its ``wait`` (in this thread, so a done-callback may submit more points),
    in the order the points end; results kept in submission order."""

    def __init__(self):
        self.futures: list[Future] = []

    def new(self) -> Future:
        fut: Future = Future()
        self.futures.append(fut)
        return fut

    def collect(self) -> list[dict]:
        out = [f.result() for f in self.futures]
        self.futures = []
        return out


class _Tee:
    """A text stream writing to several (the point's log and the console)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for st in self.streams:
            st.write(text)
        return len(text)

    def flush(self):
        for st in self.streams:
            st.flush()


@contextlib.contextmanager
def point_log(path: Path, echo: bool = True):
    """Append this process's output (print, logging, papermill's cell output) to ``path`` inside the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root, pm_log = logging.getLogger(), logging.getLogger("papermill")
    saved = root.handlers[:], pm_log.level
    with open(path, "a", buffering=1) as fh:
        fh.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()}\n")
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.handlers = (saved[0] if echo else []) + [handler]
        if pm_log.getEffectiveLevel() > logging.INFO:
            pm_log.setLevel(logging.INFO)          # the notebooks' cell output, as lib.runs.runner's CLI logs it
        out, err = (_Tee(fh, sys.stdout), _Tee(fh, sys.stderr)) if echo else (fh, fh)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        finally:
            root.handlers = saved[0]
            pm_log.setLevel(saved[1])
