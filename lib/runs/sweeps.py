"""Running a parameter sweep: its points planned (finished ones skipped), submitted to an executor, a
progress line as each ends, then the closing analysis once over them.

The sweep file (base, grid, points, executor ...) is read by lib/runs/sweep_spec.py; a point runs through
lib/runs/points.py; who runs it is an engine of lib/runs/executors/ (this process (serial), a local process
pool (local), SLURM through submitit (slurm, or submitit-local to run that path on this machine) or a Ray
cluster (ray), or one a module there registers). Points already finished are skipped. A random-skip control
whose rate is left null, or an equal-updates control whose update count is, starts when its gated point ends,
since it copies that point's measured skip rate (or trained update count).

CLI: ``python -m lib.runs.sweeps SWEEP.yaml [--jobs N] [--executor NAME] [--dry-run] [--runs-root DIR]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from ..core import config, overrides, paths
from . import executors, runner
from .points import PointTask
from .sweep_spec import Sweep, load, waits_for_gated


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
        except config.ParamError:   # random-skip or equal-updates before its gated run: id known only later
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
        executor: executors.Executor | None = None, engine=None, extra: dict | None = None,
        executor_name: str | None = None) -> dict:
    """Run every unfinished point (stages 01-05, or up to the sweep's ``until``), then the closing notebook
    (06, or the sweep's ``analysis``) once over the sweep's runs. ``executor_name`` (the CLI's --executor)
    overrides the engine of the sweep file's ``executor:`` settings."""
    sweep = load(sweep_file, extra)
    p = plan(sweep, runs_root, notebooks_dir)
    print(f"sweep {sweep.name}: {len(p.tasks)} points from {sweep.base}")
    if extra:
        what = " ".join(f"{k}={v}" for k, v in extra.items())
        if len(sweep.unchanged) == len(sweep.points):
            print(f"  --set {what} changes nothing: every point's stage folders stay as they were")
        elif sweep.unchanged:
            print(f"  --set {what} changes {len(sweep.points) - len(sweep.unchanged)} point(s); the other "
                  f"{len(sweep.unchanged)} keep their run folders (marked 'unchanged')")
    for t, rid, st in zip(p.tasks, p.run_ids, p.status):
        print(f"  [{st:>8}] {rid}" + ("  (unchanged)" if t.overrides in sweep.unchanged else ""))
        if dry_run:
            print(f"             {t.command()}")
    if dry_run:
        return {"plan": p, "results": []}
    settings = executors.check_settings({**sweep.executor, **({"engine": executor_name} if executor_name else {})},
                                        "--executor")
    todo = [(t, st) for t, st in zip(p.tasks, p.status) if st != "finished"]
    # nothing left to run needs no scheduler or cluster
    executor = executor or executors.make(settings if todo else {"engine": "serial"}, jobs, engine, runs_root,
                                          sweep.name)
    print(f"  {len(p.tasks) - len(todo)} finished already; running {len(todo)}")
    t0 = time.perf_counter()
    if todo and hasattr(executor, "prepare"):     # e.g. the local pool builds the shared models first
        executor.prepare(shared_models(sweep, [t.overrides for t, _ in todo]))
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
    """The stage-03 key of the gated training a point runs (``counterpart``: the one a random-skip or equal-updates
    control copies its skip rate or update count from); None for a point that runs no gate."""
    cfg = config.load(task.base, task.overrides)
    if counterpart:
        return runner.stages.key(runner.gated_counterpart(cfg), "03_dreambooth")
    if cfg.gating.enabled and cfg.finetune.control == "none":
        return runner.stages.key(cfg, "03_dreambooth")
    return None


def submit_all(executor: executors.Executor, tasks: list[PointTask], progress: Progress) -> list[dict]:
    """Submit every point; a control that copies a gated point's measured value starts as soon as that
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

    # The sweep keeps its own queue and hands the executor no more than its slots, so that a control whose gated
    # point has just ended goes in first, ahead of points queued earlier (an executor's own queue is first come).
    ready, limit, running = list(now), getattr(executor, "slots", None) or len(tasks), [0]

    def submit_next() -> None:
        while ready and running[0] < limit:
            i = ready.pop(0)
            running[0] += 1
            progress.submitted()
            executor.submit(tasks[i]).add_done_callback(lambda fut, i=i: ended(i, fut))

    def ended(i: int, fut) -> None:
        progress.finished(fut)
        running[0] -= 1
        ready[:0] = after.get(i, [])
        submit_next()

    submit_next()
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
              **({"pairs": named_pairs(sweep, runs_root)} if sweep.pairs else {}),   # the file's named comparisons
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


def named_pairs(sweep: Sweep, runs_root) -> list[dict]:
    """The sweep file's ``pairs:`` as the analysis reads them (lib.analyze.named_pairs; notebook 06's ``pairs``): the
    name, each side's selector as text and the run folders of its finished points."""
    out = []
    for p in sweep.pairs:
        runs = {s: finished_runs(dataclasses.replace(sweep, points=getattr(p, f"{s}_points")), runs_root)[0]
                for s in ("a", "b")}
        out.append({"name": p.name, "a": p.describe("a"), "b": p.describe("b"),
                    "a_runs": [str(r.directory) for r in runs["a"]], "b_runs": [str(r.directory) for r in runs["b"]]})
    return out


def finished_runs(sweep: Sweep, runs_root) -> tuple[list, list[str]]:
    """(the runs of the sweep's points that finished through its ``until``, the run ids of the others)."""
    done, missing = [], []
    for pt in sweep.points:
        try:
            r = runner.prepare(sweep.base, pt, runs_root, create=False)
        except config.ParamError:     # a random-skip or equal-updates control whose gated point never finished stage 03
            missing.append(runner.run_id(config.load(sweep.base, pt), pt))
            continue
        ok = runner.done_through(r, sweep.until) if sweep.until else r.finished
        (done if ok else missing).append(r if ok else r.directory.name)
    return done, missing



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



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.runs.sweeps", description="Run a parameter sweep.")
    ap.add_argument("sweep", help="e.g. params/sweeps/demo.yaml")
    ap.add_argument("--jobs", type=int, default=None, help="parallel points (default: one per GPU, else 1)")
    ap.add_argument("--executor", default=None, choices=executors.names(),
                    help="who runs the points; overrides the sweep file's executor: engine (lib/runs/executors/)")
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
