"""Run the pipeline's notebooks 01-06 in order with papermill, for one parameter set.

A run lives in ``runs/<experiment>/<run-id>/``: the resolved parameters (``params.yaml``), a status
record (``run.json``) and one output notebook per executed stage. The run id is built from the
parameters that vary between runs (method, tuning size, threshold, control, seed and any override),
e.g. ``spectral-clip_n100_thr0.3_seed0``.

- A finished run is never overwritten; running it again is a no-op that says so.
- An unfinished run resumes at its first unfinished stage. A stage it finished earlier counts only while
  its key is the same (changed data, e.g. new NIH metadata, gives new keys): else it is redone, or reused
  for the new key, and its old output notebook is kept as ``<notebook>.<old key>.ipynb``.
- A stage already finished for these parameters (its folder holds DONE.json, e.g. curation when only
  the gating threshold changed) is not executed again: the run records it as reused and points at the
  notebook that produced it.
- A failing cell or a dead kernel (out of memory, killed) stops the run; the partial output notebook
  is kept, run.json records the error, and the message names the notebook, the cell (its index in the
  source notebook) and its first line. Rerunning resumes.
- One process at a time runs a run folder (``.run.lock``): an identical run started meanwhile waits, then
  finds the run finished (or resumes where the first stopped) and never re-executes its notebooks.
  run.json is merged under a lock on every update, with a ``history`` of each process's stage events.

CLI: ``python -m lib.runs.runner PARAMS [--set key=value ...] [--runs-root DIR] [--notebooks DIR]``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core import atomic, config, overrides, paths, stages
from . import kernels
from ..core.run_names import _fmt, run_id  # noqa: F401  (the runner's names for run folders)
from .controls import copies_gated, gated_counterpart, gated_skip_rate, gated_trained, resolve_config  # noqa: F401
from ..generate import references

NOTEBOOKS = paths.ROOT / "notebooks"
ANALYSIS = "06_fter_analysis"
BATCH = "SUITE_BATCH"                 # set in the kernels of batch runs: widgets print their first state
REFERENCE_SKIPS = ("02_clustering", "03_dreambooth")   # a reference generator starts at stage 04
log = logging.getLogger("lib.runs.runner")


class RunFailed(RuntimeError):
    """A notebook cell failed; the message names the notebook, the cell and the partial output."""


# ------------------------------------------------------------------------------------- naming
def method_label(cfg: config.Config) -> str:
    """The method as results tables name it."""
    from ..evaluate.results import method_name

    return method_name(cfg)


def params_hash(cfg: config.Config) -> str:
    # The mixing and transfer sections are read only by notebooks 07 and 08, over finished runs (lib/analyze/mixing.py,
    # lib/analyze/transfer.py): they name no run.
    # development_seeds records how the parameters were chosen and computes nothing.
    return cfg.section_hash(*(k for k in cfg.to_dict() if k not in ("mixing", "transfer", "development_seeds")))


# ------------------------------------------------------------------------------- notebooks
def notebook_for(stage: str, notebooks_dir: str | Path = NOTEBOOKS) -> Path:
    """The notebook of a stage: the one file in notebooks_dir whose name starts with the stage number."""
    nb_dir = paths.resolve(notebooks_dir)
    found = sorted(p for p in nb_dir.glob(f"{stage[:2]}_*.ipynb") if not p.name.startswith("."))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one notebook {stage[:2]}_*.ipynb for stage {stage} in {nb_dir}, "
                                f"found {[p.name for p in found] or 'none'}.")
    return found[0]


def default_kernel() -> str:
    """The project's kernel when registered (make setup does it), else the current python's."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager
        return "synth-suite" if "synth-suite" in KernelSpecManager().find_kernel_specs() else "python3"
    except Exception:
        return "python3"


@contextlib.contextmanager
def batch_environment(progress: bool = False):
    """Kernel environment for batch runs: no tqdm line per update in the logs, and no widgets (no front end
    will ever draw them; an Output widget in a headless kernel once hung a demo run for good)."""
    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "TQDM_MININTERVAL", "PYTHONWARNINGS", BATCH)}
    os.environ["TQDM_MININTERVAL"] = "30"
    os.environ[BATCH] = "1"
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------------- the run
@dataclass
class Run:
    cfg: config.Config
    overrides: dict
    runs_root: Path
    directory: Path
    status: dict = field(default_factory=dict)
    saved: dict = field(default_factory=dict, repr=False)   # stage entries as this process last wrote them

    @property
    def record_path(self) -> Path:
        return self.directory / "run.json"

    @property
    def finished(self) -> bool:
        return bool(self.status.get("finished"))

    def reload(self) -> None:
        """run.json as on disk now (another process may have advanced the run since prepare read it)."""
        if self.record_path.exists():
            self.status = json.loads(self.record_path.read_text())
            self.saved = copy.deepcopy(self.status.get("stages", {}))

    def save(self) -> None:
        """Merge this process's stage changes into run.json under a lock: concurrent runs keep both histories."""
        mine = {s: v for s, v in self.status.get("stages", {}).items() if v != self.saved.get(s)}
        now = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), "host": platform.node()}
        events = [{"stage": s, **now, **{k: v[k] for k in ("status", "key", "error") if k in v}}
                  for s, v in mine.items()]
        with atomic.exclusive(self.directory / ".run.json.lock"):
            disk = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}
            self.status = merge_status(disk, self.status, mine, events)
            atomic.write_json(self.record_path, self.status)
        self.saved = copy.deepcopy(self.status.get("stages", {}))


FINAL = ("executed", "reused", "skipped")


def merge_status(disk: dict, ours: dict, changed: dict, events: list[dict]) -> dict:
    """run.json as on disk, with this process's changed stage entries and events added.

    A stage another process finished is not downgraded by ours (e.g. our 'reused' of a stage it executed,
    or a failure after it sealed the stage); every event is kept in ``history``.
    """
    if not disk:
        return {**ours, "history": list(ours.get("history", [])) + events}
    out = {**{k: v for k, v in ours.items() if k not in ("stages", "history")},
           **{k: v for k, v in disk.items() if v is not None}}
    out["stages"] = dict(disk.get("stages", {}))
    for stage, entry in changed.items():
        theirs = out["stages"].get(stage, {})
        same = theirs.get("key") == entry.get("key")      # a stage redone for a new key replaces the old record
        keep = same and theirs.get("status") in FINAL and (entry.get("status") not in FINAL or
                                                  (theirs["status"] == "executed" and entry["status"] != "executed"))
        if not keep:
            out["stages"][stage] = entry
    last = [x for x in (disk.get("done_through"), ours.get("done_through")) if x]
    if last:
        out["done_through"] = max(last, key=stages.ORDER.index)
    out["history"] = list(disk.get("history", [])) + events
    return out


def prepare(params_file: str | Path, overrides: dict | None = None, runs_root: str | Path = "runs",
            create: bool = True) -> Run:
    """Find (or, with ``create``, start) the run folder for these parameters and read its status."""
    runs_root = paths.resolve(runs_root)
    cfg = resolve_config(params_file, overrides, runs_root)
    base = runs_root / cfg.experiment / run_id(cfg, overrides)
    directory, h = base, params_hash(cfg)
    record, other = directory / "run.json", base.with_name(f"{base.name}_{h[:6]}")   # same readable id, other params
    if record.exists() and json.loads(record.read_text()).get("params_hash") != h:
        directory = other
    elif not record.exists() and (other / "run.json").exists():
        directory = other                  # made beside a folder of other parameters since removed
    run = Run(cfg, dict(overrides or {}), runs_root, directory)
    if run.record_path.exists():
        run.status = json.loads(run.record_path.read_text())
        run.saved = copy.deepcopy(run.status.get("stages", {}))
    elif create:
        directory.mkdir(parents=True, exist_ok=True)
        atomic.write_text(directory / "params.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=True))
        run.status = {"run_id": directory.name, "params_hash": h, "params_file": str(params_file),
                      "overrides": run.overrides, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "finished": None, "stages": {}}
        run.save()
    return run


def done_through(run_: Run, stage: str) -> bool:
    """Whether the run has finished every stage up to and including ``stage``."""
    last = run_.status.get("done_through")
    return run_.finished or (last is not None and stages.ORDER.index(last) >= stages.ORDER.index(stage))


def _previous_notebook(run: Run, stage: str, stage_key: str) -> str | None:
    """The output notebook of the run that executed this stage folder, for the reuse record."""
    for rec in sorted((run.runs_root / run.cfg.experiment).glob("*/run.json")):
        st = json.loads(rec.read_text()).get("stages", {}).get(stage, {})
        if st.get("status") == "executed" and st.get("key") == stage_key:
            return str(rec.parent / st["notebook"])
    return None


def papermill_engine(nb: Path, out_nb: Path, parameters: dict, kernel: str) -> None:
    """Execute one notebook with papermill. A failing cell or a dead kernel becomes RunFailed naming the
    notebook, the cell (its index in the source notebook) and its first line, and the output notebook."""
    import papermill as pm
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import DeadKernelError

    kept = f"\n  partial output notebook kept: {out_nb}\n  rerunning the same command resumes at this stage."
    try:
        kernels.with_start_retries(lambda: pm.execute_notebook(
            str(nb), str(out_nb), parameters=parameters, kernel_name=kernel, log_output=True, progress_bar=False,
            cwd=str(paths.ROOT), kernel_manager_class=kernels.manager_class()), out_nb, nb.name)
    except pm.PapermillExecutionError as exc:
        index, first_line = _source_cell(out_nb, exc.cell_index, exc.source)
        raise RunFailed(f"{nb.name} failed in cell {index} ({first_line!r}; execution count {exc.exec_count}): "
                        f"{exc.ename}: {exc.evalue}{kept}") from None
    except NoSuchKernel:
        raise RunFailed(f"{nb.name}: no Jupyter kernel named {kernel!r}; `make setup` registers the suite's "
                        "(python -m lib.runs.setup_env), `jupyter kernelspec list` shows those there are") from None
    except Exception as exc:
        if kernels.is_start_failure(exc, out_nb):
            raise RunFailed(f"{nb.name}: the kernel {kernel!r} failed to start {kernels.START_TRIES} times "
                            f"({type(exc).__name__}: {exc}); check that its python can import ipykernel{kept}") from None
        if not isinstance(exc, DeadKernelError):
            raise
        index, first_line = _source_cell(out_nb, None)
        raise RunFailed(f"{nb.name}: the kernel died in cell {index} ({first_line!r}), e.g. out of memory or "
                        f"killed ({type(exc).__name__}: {exc}){kept}") from None


def _still_done(run_: Run, stage: str, st: dict) -> bool:
    """Whether a stage this run finished earlier still stands: recorded under the key these parameters and
    the data on disk give now (new NIH metadata is a new key), and its folder still sealed. A stale one's
    output notebook is set aside (``<name>.<old key>.ipynb``), so re-executing it loses nothing."""
    skey = stages.key(run_.cfg, stage)
    old = st.get("key", skey)                 # records of older versions carry no key: taken as they are
    sealed = stage == ANALYSIS or (stages.stage_dir(run_.cfg, stage, run_.runs_root) / "DONE.json").exists()
    if old == skey and sealed:
        return True
    nb = run_.directory / Path(str(st.get("notebook") or "")).name
    if old != skey and st.get("status") == "executed" and nb.is_file():
        os.replace(nb, nb.with_name(f"{nb.stem}.{old}{nb.suffix}"))
    why = f"its key is now {skey} (the data or parameters changed)" if old != skey else "its stage folder is gone"
    print(f"  {stage}: done earlier in this run for key {old}, but {why}; looking at it again")
    return False


def _source_cell(out_nb: Path, index: int | None, source: str | None = None) -> tuple[int | None, str]:
    """(index in the source notebook, first line) of the executed notebook's cell ``index``; with None,
    of the last cell papermill started (the one a dead kernel was running).

    The output notebook holds papermill's error banner and anchor cells and its injected-parameters
    cell; none of them is in the source notebook, so they are not counted.
    """
    import nbformat

    try:
        cells = [c for c in nbformat.read(out_nb, as_version=4).cells
                 if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    except (OSError, ValueError):
        return index, _first_line(source or "")
    if index is None:
        started = [i for i, c in enumerate(cells) if c.metadata.get("papermill", {}).get("start_time")]
        if not started:
            return None, ""
        index = started[-1]
    injected = sum("injected-parameters" in c.metadata.get("tags", []) for c in cells[:index])
    text = source if source is not None else (cells[index].source if index < len(cells) else "")
    return index - injected, _first_line(text)


def _first_line(text: str) -> str:
    return next((line for line in text.strip().splitlines()), "")


def run(params_file: str | Path, overrides: dict | None = None, runs_root: str | Path = "runs",
        notebooks_dir: str | Path = NOTEBOOKS, kernel: str | None = None, figures_dir: str | Path | None = None,
        until: str | None = None, analysis_params: dict | None = None, progress: bool = False,
        engine=papermill_engine) -> Run:
    """Run (or resume) notebooks 01-06 for one parameter set; returns the run with its status.

    ``engine(notebook, output, parameters, kernel)`` executes one notebook (papermill by default; a
    scheduler or a test may pass another).
    """
    run_ = prepare(params_file, overrides, runs_root)
    rel = stages.paths_rel(run_.directory)
    if not run_.finished:
        # One process per run folder: an identical run started meanwhile waits here, then finds the run
        # finished, instead of executing its notebooks again over the first one's outputs.
        with atomic.exclusive(run_.directory / ".run.lock", what=f"run {rel}, which another process is running"):
            run_.reload()
            if not run_.finished:
                return _resume(run_, notebooks_dir, kernel, figures_dir, until, analysis_params, progress, engine)
    print(f"run {rel} already finished on {run_.status['finished']}; nothing to do "
          "(its notebooks are kept; change a parameter or the runs root for a new run).")
    return run_


def _resume(run_: Run, notebooks_dir, kernel, figures_dir, until, analysis_params, progress, engine) -> Run:
    """Execute (or reuse) the run's stages from its first unfinished one, under the run's lock."""
    rel = stages.paths_rel(run_.directory)
    kernel = kernel or default_kernel()
    figures_dir = paths.resolve(figures_dir) if figures_dir else run_.directory / "figures"
    last = stages.ORDER.index(until) if until else len(stages.ORDER) - 1
    print(f"run {rel}: stages {stages.ORDER[0][:2]}-{stages.ORDER[last][:2]}")
    for stage in stages.ORDER[: last + 1]:
        nb = notebook_for(stage, notebooks_dir)
        st = run_.status["stages"].get(stage, {})
        if st.get("status") in ("executed", "reused"):
            if _still_done(run_, stage, st):
                print(f"  {stage}: done earlier in this run ({st['status']})")
                continue
            st = {}                        # a stale record: the stage is looked at afresh for its key now
        if stage in REFERENCE_SKIPS and references.is_reference(run_.cfg):
            run_.status["stages"][stage] = {"status": "skipped", "reason": "a reference generator needs no "
                                            "tuning set and no fine-tuning"}
            print(f"  {stage}: skipped (reference generator {run_.cfg.generation.kind!r})")
            continue
        sdir, skey = stages.stage_dir(run_.cfg, stage, run_.runs_root), stages.key(run_.cfg, stage)
        if st.get("key", skey) != skey:
            st = {}                        # a failure under another key (older data) says nothing about this one
        lock = run_.runs_root / run_.cfg.experiment / "stages" / f".{stage}-{skey}.lock"
        with atomic.exclusive(lock, what=f"stage {stage} ({skey}), which another process is running"):
            # Reuse a sealed stage only if this run never tried its notebook: after a failure the
            # notebook runs again (cheaply, run_stage reuses the artefacts) to complete its output.
            if stage != ANALYSIS and stages.is_done(sdir) and not st:
                run_.status["stages"][stage] = {"status": "reused", "key": skey, "stage_dir": str(sdir),
                                                "notebook": _previous_notebook(run_, stage, skey), "pid": os.getpid()}
                run_.save()
                print(f"  {stage}: already finished for these parameters; reusing {stages.paths_rel(sdir)}")
                continue
            out_nb = run_.directory / nb.name
            run_.status["stages"][stage] = {"status": "running", "key": skey, "notebook": nb.name, "pid": os.getpid()}
            run_.save()
            print(f"  {stage}: executing {nb.name}")
            t0 = time.perf_counter()
            parameters = {"params_file": str(run_.directory / "params.yaml"), "runs_root": str(run_.runs_root),
                          "figures_dir": str(figures_dir), "overrides": {}}
            if stage == ANALYSIS:
                parameters.update(results_root=str(run_.runs_root / run_.cfg.experiment), interactive=False,
                                  **(analysis_params or {}))
            try:
                with batch_environment(progress):
                    engine(nb, out_nb, parameters, kernel)
            except BaseException as exc:   # a failing cell, a dead kernel, an interrupt: recorded, then raised
                run_.status["stages"][stage].update(
                    status="failed", pid=os.getpid(),
                    error=str(exc) if isinstance(exc, RunFailed) else f"{type(exc).__name__}: {exc}")
                run_.save()
                raise
            if stage != ANALYSIS and not stages.is_done(sdir):
                msg = (f"{nb.name} ran without sealing its stage folder {sdir} (no DONE.json)"
                       if not (sdir / "DONE.json").exists() else f"{sdir} changed after {nb.name} sealed it: "
                       f"{stages.changed(sdir)}")
                run_.status["stages"][stage].update(status="failed", error=msg, pid=os.getpid())
                run_.save()
                raise RunFailed(msg)
            secs = round(time.perf_counter() - t0, 1)
            run_.status["stages"][stage].update(status="executed", stage_dir=str(sdir), seconds=secs, pid=os.getpid())
            run_.save()
            print(f"  {stage}: done in {secs:.1f} s")
    if until is None:
        run_.status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        run_.save()
        print(f"run {rel} finished")
    elif not done_through(run_, until):
        run_.status["done_through"] = until
        run_.save()
    return run_


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.runs.runner", description=__doc__.split("\n")[0])
    ap.add_argument("params", help="parameter file, e.g. params/demo.yaml")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted-key override (repeatable)")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder holding 01_*.ipynb ... 06_*.ipynb")
    ap.add_argument("--figures-dir", default=None, help="default: <run>/figures")
    ap.add_argument("--until", choices=stages.ORDER, help="stop after this stage")
    ap.add_argument("--kernel", default=None)
    ap.add_argument("--progress", action="store_true", help="keep tqdm bars (one line per 30 s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        run(args.params, overrides.parse_sets(args.set), args.runs_root, args.notebooks, args.kernel, args.figures_dir,
            args.until, progress=args.progress)
    except (RunFailed, config.ParamError, FileNotFoundError) as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
