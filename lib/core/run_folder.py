"""Open a finished run (a demo or sweep point) in a notebook: its folder is all a user names.

A run folder, ``<runs root>/<experiment>/<run id>`` (e.g. ``runs/demo/spectral-clip_n100_thr0.875_seed2``),
holds the resolved parameters the runner executed it with (``params.yaml``) and its status (``run.json``).
A notebook's ``run_dir`` parameter turns into the same ``params_file`` and ``runs_root`` the runner passed,
so the notebook finds the run's stage folders instead of recomputing them; ``finished`` lists the runs
there are to open.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import paths


@dataclass(frozen=True)
class RunFolder:
    directory: Path
    params_file: Path          # the resolved parameters the run executed with: no overrides on top
    runs_root: Path            # two levels up: <runs root>/<experiment>/<run id>
    done_through: str | None   # the last stage it finished (None: none)
    finished: bool


def open_run(run_dir) -> RunFolder:
    """The run folder ``run_dir`` (absolute, or relative to the project root); a clear error if it is none."""
    directory = paths.resolve(run_dir)
    params, record = directory / "params.yaml", directory / "run.json"
    if not params.is_file() or not record.is_file():
        missing = "params.yaml" if not params.is_file() else "run.json"
        raise FileNotFoundError(
            f"run_dir {run_dir!r}: {directory} holds no {missing}, so it is not a run folder. Name a folder "
            "such as runs/demo/spectral-clip_n100_thr0.875_seed2; lib.core.run_folder.finished('runs/demo') "
            "lists them.")
    status = json.loads(record.read_text())
    return RunFolder(directory, params, directory.parent.parent, status.get("done_through"),
                     bool(status.get("finished")))


def finished(root="runs") -> list[str]:
    """The run folders under ``root`` (a runs root or one experiment's folder) that finished stage 05 or
    more, relative to the project root where they lie under it: what ``run_dir`` can be set to."""
    out = []
    for record in sorted(paths.resolve(root).glob("**/run.json")):
        try:
            run = open_run(record.parent)
        except (FileNotFoundError, ValueError):      # a half-written or foreign record: not a run to open
            continue
        if run.finished or (run.done_through or "")[:2] >= "05":   # stage names start with their number
            out.append(_rel(run.directory))
    return out


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(paths.ROOT))
    except ValueError:
        return str(p)
