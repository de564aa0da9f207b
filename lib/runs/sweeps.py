"""Parameter sweeps: a base parameter file, a grid of dotted keys, and explicit points, run by an executor.

A sweep file (``params/sweeps/*.yaml``)::

    base: params/demo.yaml        # the parameter file every point starts from
    fixed: {classifier.epochs: 4} # overrides shared by every point (optional)
    grid:                         # cartesian product; a value list per dotted key ...
      seed: [0, 1]
      method:                     # ... or a named axis whose values are bundles of overrides
        - {finetune.method: random}
        - {finetune.method: spectral-clip, gating.enabled: true}
    points:                       # explicit points, not crossed with the grid (controls)
      - {finetune.control: no-fine-tune}
      - set: {finetune.control: random-skip}
        grid: {seed: [0, 1]}      # a point may carry its own small grid
    figures_dir: figures          # where the closing analysis writes its figures (default: <runs_root>/<experiment>/sweep-<name>/figures)
    until: 05_classifier          # the last stage each point runs (optional; 04_generation for notebook 07)
    analysis: 07_mixing           # the notebook run once over the points (optional; default 06_fter_analysis)
    analysis_params:              # papermill parameters of that notebook (optional), e.g. its overrides
      experiment: brackets
      overrides: {mixing.brackets: [25, 50]}

    executor: {engine: slurm, partition: gpu, gpus_per_task: 1, time_min: 240, mem_gb: 32, array: true}
                                  # who runs the points (optional; lib/runs/executors.py lists the settings)

Points already finished are skipped. A random-skip control whose rate is left null runs after the
gated points, since it copies their measured skip rate. The executor is a small interface
(``submit``/``wait``): this process (serial), a local process pool (local), SLURM through submitit (slurm,
or submitit-local to run that path on this machine) or a Ray cluster (ray), see lib/runs/executors.py.

CLI: ``python -m lib.runs.sweeps SWEEP.yaml [--jobs N] [--executor NAME] [--dry-run] [--runs-root DIR]``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import shlex
import sys
import threading
import time
import traceback
import typing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core import config, overrides, paths
from . import runner


# ------------------------------------------------------------------------------------ reading
@dataclass
class Sweep:
    name: str
    base: str
    points: list[dict]
    figures_dir: str | None = None   # None: <runs_root>/<experiment>/sweep-<name>/figures, never the suite's figures/
    until: str = "05_classifier"
    analysis: str = runner.ANALYSIS
    analysis_params: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)      # the ``executor:`` settings (lib/runs/executors.py)


def _is_config_key(dotted: str) -> bool:
    cls = config.Config
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return False
        cls = typing.get_type_hints(cls)[part]
    return True


def _axis(key: str, values) -> list[dict]:
    if not isinstance(values, list) or not values:
        raise config.ParamError(f"grid axis '{key}' must be a non-empty list of values.")
    if _is_config_key(key):
        return [{key: v} for v in values]
    if all(isinstance(v, dict) for v in values):     # a named axis of override bundles
        return [dict(v) for v in values]
    raise config.ParamError(f"grid axis '{key}' is not a parameter (see lib/core/config.py) and its values are "
                            f"not override mappings;{config.did_you_mean(key, config.dotted_keys())} "
                            "use a dotted key such as gating.threshold.")


def expand_grid(grid: dict | None) -> list[dict]:
    """Cartesian product of the axes, in file order (the last axis varies fastest)."""
    axes = [_axis(k, v) for k, v in (grid or {}).items()]
    return [{k: v for bundle in combo for k, v in bundle.items()} for combo in itertools.product(*axes)]


def _explicit(point) -> list[dict]:
    if not isinstance(point, dict):
        raise config.ParamError(f"a sweep point must be a mapping of dotted keys, got {point!r}.")
    if set(point) <= {"set", "grid"} and point:
        return [{**point.get("set", {}), **g} for g in expand_grid(point.get("grid"))]
    return [dict(point)]


def load(path: str | Path, extra: dict | None = None) -> Sweep:
    """Read a sweep file and expand it into points (override dicts), validating each against the schema.

    ``extra`` overrides every point (the CLI's --set), e.g. a threshold rerun of the whole demo.
    """
    given, path = Path(path), paths.resolve(path)
    if not path.exists():
        where = "" if given.expanduser().is_absolute() else \
            f" (a relative path is resolved from the project root {paths.ROOT}, not the current directory)"
        raise config.ParamError(f"sweep file {path} not found{where}; shipped sweeps: "
                                f"{', '.join(p.name for p in sorted((paths.PARAMS / 'sweeps').glob('*.yaml')))}.")
    raw = _read_mapping(path)
    allowed = ["base", "fixed", "grid", "points", "figures_dir", "until", "analysis", "analysis_params", "executor"]
    unknown = set(raw) - set(allowed)
    if unknown:
        raise config.ParamError(f"unknown key(s) {sorted(unknown)} in {path.name}; allowed: {', '.join(allowed)}.")
    until, analysis = raw.get("until", "05_classifier"), str(raw.get("analysis", runner.ANALYSIS))
    if until not in runner.stages.ORDER[:-1]:
        raise config.ParamError(f"until: {until!r} in {path.name} must be one of {runner.stages.ORDER[:-1]}.")
    runner.notebook_for(analysis)       # the closing notebook exists (its number picks it)
    if not isinstance(raw.get("analysis_params") or {}, dict):
        raise config.ParamError(f"analysis_params: in {path.name} must be a mapping of notebook parameters.")
    from . import executors

    settings = executors.check_settings(raw.get("executor"), path.name)
    if "base" not in raw:
        raise config.ParamError(f"{path.name} needs `base:`, the parameter file every point starts from.")
    fixed = raw.get("fixed") or {}
    pts = (expand_grid(raw["grid"]) if raw.get("grid") else []) + \
        [p for point in raw.get("points") or [] for p in _explicit(point)]
    if not pts:
        raise config.ParamError(f"{path.name} declares no points: give `grid:` and/or `points:`.")
    pts = [{**fixed, **p, **(extra or {})} for p in pts]
    for p in pts:  # fail on a bad key before anything runs
        config.load(raw["base"], {k: v for k, v in p.items() if not (k == "gating.skip_rate" and v is None)})
    return Sweep(path.stem, raw["base"], _dedupe(pts), raw.get("figures_dir"), until, analysis,
                 dict(raw.get("analysis_params") or {}), settings)


def _read_mapping(path: Path) -> dict:
    """The sweep file as a mapping; malformed YAML is a ParamError naming the file and the line."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise config.ParamError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise config.ParamError(f"{path} must hold a mapping (base:, grid:, points: ...), not {type(raw).__name__}.")
    for key, kind in (("fixed", dict), ("grid", dict), ("points", list)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise config.ParamError(f"`{key}:` in {path.name} must be a {'mapping' if kind is dict else 'list'}, "
                                    f"got {raw[key]!r}.")
    return raw


def _dedupe(points: list[dict]) -> list[dict]:
    seen, out = set(), []
    for p in points:
        k = yaml.safe_dump(p, sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def waits_for_gated(base: str, point: dict) -> bool:
    """A random-skip control with no rate needs its gated counterpart's measured skip rate first."""
    cfg = config.load(base, point)
    return cfg.finetune.control == "random-skip" and cfg.gating.skip_rate is None


# --------------------------------------------------------------------------------- executors
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
    except Exception:       # e.g. a random-skip control whose gated run failed: no run folder to name
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


class Executor:
    """What a sweep needs from whoever runs its points: submit them, then wait for all of them."""

    def submit(self, task: PointTask) -> Future:
        raise NotImplementedError

    def wait(self) -> list[dict]:
        raise NotImplementedError


class SerialExecutor(Executor):
    """Points one after another in this process (jobs = 1): plain logs, no pool."""
    slots = 1

    def __init__(self, engine=None):
        self.engine, self.results = engine, []

    def submit(self, task):
        fut: Future = Future()
        fut.set_result(run_task(task, self.engine, echo=True))
        self.results.append(fut.result())
        return fut

    def wait(self):
        out, self.results = self.results, []
        return out


def _init_worker(gpu: int | None) -> None:
    """Pin a worker process to its GPU (when there are GPUs) before any CUDA use."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


class LocalPoolExecutor(Executor):
    """Points on this machine, ``jobs`` at a time, one GPU each where GPUs exist. Each point runs in a worker
    process of its own, so a worker that dies (killed, out of memory) fails its own point and no other (a
    shared pool breaks whole, taking every running and queued point with it)."""

    def __init__(self, jobs: int, gpus: int = 0, engine=None):
        self.jobs = min(jobs, gpus) if gpus and jobs else (gpus or jobs)
        self.gpus, self.engine, self.slots = gpus, engine, self.jobs
        self.free = list(range(self.jobs))          # slot numbers; a slot's GPU where there are GPUs
        self.queue: list[tuple] = []                # (task, the future handed out), not started yet
        self.running: dict[Future, tuple] = {}      # the worker's future -> (task, future handed out, slot, pool)
        self.tracked = Tracked()

    def submit(self, task):
        fut = self.tracked.new()
        self.queue.append((task, fut))
        self._launch()
        return fut

    def _launch(self) -> None:
        while self.queue and self.free:
            (task, fut), slot = self.queue.pop(0), self.free.pop(0)
            pool = ProcessPoolExecutor(1, initializer=_init_worker, initargs=(slot if self.gpus else None,))
            inner = pool.submit(run_task, task, self.engine, False)   # each point's output in its run.log
            self.running[inner] = (task, fut, slot, pool)

    def wait(self):
        while self.running or self.queue:
            self._launch()
            done, _ = futures_wait(list(self.running), return_when=FIRST_COMPLETED)
            for inner in done:
                task, fut, slot, pool = self.running.pop(inner)
                pool.shutdown(wait=False)
                self.free.append(slot)
                fut.set_result(self._outcome(inner, task))      # its callbacks may submit more points
        return self.tracked.collect()

    @staticmethod
    def _outcome(inner: Future, task: PointTask) -> dict:
        try:
            return inner.result()
        except BrokenProcessPool:
            return failed(task, "the worker process running this point died (killed, or out of memory); "
                                "rerun the sweep to resume the point")
        except Exception as exc:     # e.g. a result that could not be pickled back
            return failed(task, f"{type(exc).__name__}: {exc}")

    def prepare(self, specs: list[tuple]) -> None:
        """Build the models every point shares side by side before the points start, instead of one point
        building each while the others wait on its lock with a core idle."""
        with ProcessPoolExecutor(max(1, min(self.jobs, len(specs)))) as pool:
            for spec, f in [(spec, pool.submit(build_shared, spec)) for spec in specs]:
                try:
                    f.result()
                except Exception as exc:      # each point that needs it builds it again and fails on its own
                    print(f"  could not build the shared model {spec}: {type(exc).__name__}: {exc}",
                          file=sys.stderr)

    def close(self):
        for *_, pool in self.running.values():
            pool.shutdown(wait=False, cancel_futures=True)


def shared_models(sweep: Sweep, points: list[dict]) -> list[tuple]:
    """The models built locally on first use that these points need: the offline CLIP and the tiny base
    of each seed. Longest build first."""
    from ..tuningset import clip_offline

    specs = []
    for p in points:
        cfg = config.load(sweep.base, {k: v for k, v in p.items() if not (k == "gating.skip_rate" and v is None)})
        if cfg.embedding.clip_pretrained == clip_offline.OFFLINE_TAG:
            specs.append(("clip",))
        if cfg.model.base == "tiny" and cfg.generation.kind in ("diffusion", "vae-roundtrip"):
            specs.append(("tiny", cfg.model.resolution, cfg.model.tiny_pretrain_steps, cfg.seed))
    return sorted(set(specs), key=lambda s: s[0] != "clip")


def build_shared(spec: tuple) -> str:
    """One shared model (a pool task); a model already built is only looked up."""
    from ..tuningset import clip_offline
    from ..finetune import diffusion_model

    if spec[0] == "clip":
        return str(clip_offline.build(clip_offline.DEFAULT_STEPS, progress=False))
    return str(diffusion_model.build_tiny(*spec[1:], progress=False))


def gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def make_executor(jobs: int | None, engine=None, settings: dict | None = None, runs_root="runs",
                  name: str = "sweep") -> Executor:
    """The executor the sweep's ``executor:`` settings name (lib/runs/executors.py); without one, a process pool
    with one worker per GPU where there are GPUs, else ``jobs`` workers (serial for one)."""
    if settings and settings.get("engine"):
        from . import executors

        return executors.make(settings, jobs, engine, runs_root, name)
    gpus = gpu_count()
    if gpus:
        return LocalPoolExecutor(jobs or gpus, gpus, engine)
    jobs = jobs or 1
    return SerialExecutor(engine) if jobs == 1 else LocalPoolExecutor(jobs, 0, engine)


# ---------------------------------------------------------------------------------- the sweep
@dataclass
class Plan:
    sweep: Sweep
    tasks: list[PointTask]
    status: list[str] = field(default_factory=list)     # new / partial / finished per task
    run_ids: list[str] = field(default_factory=list)


def plan(sweep: Sweep, runs_root: str | Path = "runs", notebooks_dir: str | Path = runner.NOTEBOOKS) -> Plan:
    """Every point as a task with its run id and whether it has finished already (gated points first)."""
    pts = sorted(sweep.points, key=lambda p: waits_for_gated(sweep.base, p))   # stable: file order kept
    p = Plan(sweep, [PointTask(sweep.base, pt, str(runs_root), str(notebooks_dir), sweep.until) for pt in pts])
    for t in p.tasks:
        try:
            r = runner.prepare(t.base, t.overrides, runs_root, create=False)
            done = runner.done_through(r, t.until) if t.until else r.finished
            rid, state = r.directory.name, ("finished" if done else "partial" if r.status else "new")
        except config.ParamError:   # random-skip before its gated run: id known only later
            rid, state = runner.run_id(config.load(t.base, t.overrides), t.overrides), "waits for gated run"
        p.run_ids.append(rid)
        p.status.append(state)
    dupes = {r for r in p.run_ids if p.run_ids.count(r) > 1}
    if dupes:
        raise config.ParamError(f"points of {sweep.name} share run id(s) {sorted(dupes)}: they differ only in "
                                "keys the run id does not show; give each point a distinguishing override.")
    return p


def run(sweep_file: str | Path, jobs: int | None = None, runs_root: str | Path = "runs",
        notebooks_dir: str | Path = runner.NOTEBOOKS, dry_run: bool = False, analyse: bool = True,
        executor: Executor | None = None, engine=None, extra: dict | None = None,
        executor_name: str | None = None) -> dict:
    """Run every unfinished point (stages 01-05, or up to the sweep's ``until``), then the closing notebook
    (06, or the sweep's ``analysis``) once over the sweep's runs. ``executor_name`` (the CLI's --executor)
    overrides the engine of the sweep file's ``executor:`` settings."""
    sweep = load(sweep_file, extra)
    p = plan(sweep, runs_root, notebooks_dir)
    print(f"sweep {sweep.name}: {len(p.tasks)} points from {sweep.base}")
    for t, rid, st in zip(p.tasks, p.run_ids, p.status):
        print(f"  [{st:>8}] {rid}")
        if dry_run:
            print(f"             {t.command()}")
    if dry_run:
        return {"plan": p, "results": []}
    settings = {**sweep.executor, **({"engine": executor_name} if executor_name else {})}
    if settings:
        from . import executors

        settings = executors.check_settings(settings, "--executor")
    todo = [(t, st) for t, st in zip(p.tasks, p.status) if st != "finished"]
    # nothing left to run needs no scheduler or cluster
    executor = executor or (make_executor(jobs, engine, settings, runs_root, sweep.name) if todo else
                            SerialExecutor(engine))
    print(f"  {len(p.tasks) - len(todo)} finished already; running {len(todo)}")
    t0 = time.perf_counter()
    if todo and isinstance(executor, LocalPoolExecutor):
        executor.prepare(shared_models(sweep, [t.overrides for t, _ in todo]))
    results = []
    slots = getattr(executor, "slots", 1) or max(1, len(todo))     # None: as many as the scheduler gives
    progress = Progress(sweep.name, len(p.tasks), len(p.tasks) - len(todo), slots)
    results = submit_all(executor, [t for t, _ in todo], progress)
    failed_points = [r for r in results if not r["ok"]]
    for r in failed_points:
        where = f"\n  log: {runner.stages.paths_rel(Path(r['log']))}" if r.get("log") else ""
        if r.get("job_log"):     # a job or worker that died: the scheduler's own log of it
            where += f"\n  job log: {runner.stages.paths_rel(Path(r['job_log']))}"
        print(f"FAILED point {r['overrides']}:\n  {r['error']}{where}", file=sys.stderr)
    out = {"plan": p, "results": results, "seconds": time.perf_counter() - t0, "analysis": None}
    if analyse:
        out["analysis"] = analyse_sweep(sweep, runs_root, notebooks_dir, engine, partial_ok=bool(failed_points))
    if hasattr(executor, "close"):
        executor.close()
    return out


def _gate_key(task: PointTask, counterpart: bool) -> str | None:
    """The stage-03 key of the gated training a point runs (``counterpart``: the one a random-skip control
    copies its skip rate from); None for a point that runs no gate."""
    cfg = config.load(task.base, task.overrides)
    if counterpart:
        return runner.stages.key(runner.gated_counterpart(cfg), "03_dreambooth")
    if cfg.gating.enabled and cfg.finetune.control == "none":
        return runner.stages.key(cfg, "03_dreambooth")
    return None


def submit_all(executor: Executor, tasks: list[PointTask], progress: Progress) -> list[dict]:
    """Submit every point; a random-skip control that copies a gated point's skip rate starts as soon as that
    point has ended (not after a whole first wave), or at once when its gated point is not among these."""
    waits = [waits_for_gated(t.base, t.overrides) for t in tasks]
    keys = [None if w else _gate_key(t, False) for t, w in zip(tasks, waits)]
    gated = {k: i for i, k in enumerate(keys) if k is not None}
    after: dict[int, list[int]] = {}       # a gated point's index -> the controls that wait for it
    now = []
    for i, (t, w) in enumerate(zip(tasks, waits)):
        g = gated.get(_gate_key(t, True)) if w else None
        if g is None:
            now.append(i)
        else:
            after.setdefault(g, []).append(i)

    def submit(i: int) -> None:
        progress.submitted()
        fut = executor.submit(tasks[i])
        fut.add_done_callback(progress.finished)
        for j in after.get(i, []):
            fut.add_done_callback(lambda _f, j=j: submit(j))

    for i in now:
        submit(i)
    return executor.wait()


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """The sweep's progress line, printed as each point finishes: points done / running / failed / left, the
    time so far and an ETA (the mean time of the points finished in this call, over the parallel slots)."""

    def __init__(self, name: str, total: int, done_before: int = 0, slots: int = 1):
        self.name, self.total, self.before, self.slots = name, total, done_before, max(1, slots)
        self.sent = self.done = self.failed = 0
        self.seconds: list[float] = []
        self.t0, self.lock = time.perf_counter(), threading.Lock()

    def submitted(self) -> None:
        with self.lock:
            self.sent += 1

    def finished(self, fut: Future) -> None:
        """A point's future is done (a done-callback): count it and print the line."""
        try:
            r = fut.result()
        except Exception as exc:                 # a worker that died: counted as failed
            r = {"ok": False, "seconds": None, "error": f"{type(exc).__name__}: {exc}"}
        with self.lock:
            if r["ok"]:
                self.done += 1
            else:
                self.failed += 1
            if r.get("seconds") is not None:
                self.seconds.append(r["seconds"])
            print(self.line(), flush=True)

    def line(self) -> str:
        ended = self.done + self.failed
        running = min(self.slots, self.sent - ended)
        left = self.total - self.before - ended - running
        eta = "unknown until a point finishes"
        if self.seconds:
            per = sum(self.seconds) / len(self.seconds)
            eta = _duration(per * (left + running) / self.slots) if left + running else "0s"
        return (f"sweep {self.name}: {self.before + self.done}/{self.total} done, {running} running, "
                f"{self.failed} failed, {left} left; {_duration(time.perf_counter() - self.t0)} elapsed, ETA {eta}")


def analyse_sweep(sweep: Sweep, runs_root, notebooks_dir, engine=None, partial_ok: bool = False) -> Path | None:
    """The closing notebook (06, or the sweep's ``analysis``) once over the sweep's finished runs; output in
    runs/<experiment>/sweep-<name>/. With points missing (``partial_ok``: some failed) it runs over the rest,
    names what it leaves out, and says so when the notebook cannot compute its tables without them."""
    runs, missing = finished_runs(sweep, runs_root)
    if not runs:
        print(f"  no point of {sweep.name} has finished; nothing to analyse", file=sys.stderr)
        return None
    if missing:
        print(f"  analysing {len(runs)} of {len(runs) + len(missing)} points; left out (not finished): "
              + ", ".join(missing), file=sys.stderr)
    exp_dir = paths.resolve(runs_root) / runs[0].cfg.experiment
    out_dir = exp_dir / f"sweep-{sweep.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = runner.notebook_for(sweep.analysis, notebooks_dir)
    figures = paths.resolve(sweep.figures_dir) if sweep.figures_dir else out_dir / "figures"
    params = {"params_file": str(runs[0].directory / "params.yaml"), "runs_root": str(paths.resolve(runs_root)),
              "figures_dir": str(figures), "overrides": {},
              "results_root": str(exp_dir), "runs": [str(r.directory) for r in runs], "interactive": False,
              **sweep.analysis_params}
    print(f"  {nb.stem} over {len(runs)} runs -> {runner.stages.paths_rel(out_dir / nb.name)}")
    try:
        with runner.batch_environment():
            (engine or runner.papermill_engine)(nb, out_dir / nb.name, params, runner.default_kernel())
    except runner.RunFailed as exc:
        if not (partial_ok or missing):
            raise
        print(f"  {nb.stem} could not compute its tables without the missing points ({', '.join(missing)}):\n"
              f"  {exc}", file=sys.stderr)
        return None
    return out_dir / nb.name


def finished_runs(sweep: Sweep, runs_root) -> tuple[list, list[str]]:
    """(the runs of the sweep's points that finished through its ``until``, the run ids of the others)."""
    done, missing = [], []
    for pt in sweep.points:
        try:
            r = runner.prepare(sweep.base, pt, runs_root, create=False)
        except config.ParamError:     # a random-skip control whose gated point never finished stage 03
            missing.append(runner.run_id(config.load(sweep.base, pt), pt))
            continue
        ok = runner.done_through(r, sweep.until) if sweep.until else r.finished
        (done if ok else missing).append(r if ok else r.directory.name)
    return done, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.runs.sweeps", description="Run a parameter sweep.")
    ap.add_argument("sweep", help="e.g. params/sweeps/demo.yaml")
    ap.add_argument("--jobs", type=int, default=None, help="parallel points (default: one per GPU, else 1)")
    ap.add_argument("--executor", default=None, choices=["serial", "local", "slurm", "submitit-local", "ray"],
                    help="who runs the points; overrides the sweep file's executor: engine (lib/runs/executors.py)")
    ap.add_argument("--dry-run", action="store_true", help="list the points and their commands; run nothing")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--notebooks", default=str(runner.NOTEBOOKS))
    ap.add_argument("--no-analysis", action="store_true", help="skip the closing notebook 06")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every point (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        out = run(args.sweep, args.jobs, args.runs_root, args.notebooks, args.dry_run, not args.no_analysis,
                  extra=overrides.parse_sets(args.set), executor_name=args.executor)
    except (runner.RunFailed, config.ParamError, FileNotFoundError) as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(f"sweep done in {out['seconds']:.0f} s")
    return 0 if all(r["ok"] for r in out["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
