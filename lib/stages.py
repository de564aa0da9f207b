"""Pipeline stages and where their artefacts live.

Each stage's folder is keyed by a hash of exactly the parameter sections it (and the stages before
it) depends on. Changing the gating threshold therefore changes the keys of stages 03-05 only, and
curation, embeddings and clustering are found already done.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from . import atomic, paths, provenance
from .config import Config, GatingConfig

ORDER = ["01_data_curation", "02_clustering", "03_dreambooth", "04_generation", "05_classifier",
         "06_fter_analysis"]
_OWN = {
    "01_data_curation": ["seed", "data", "pools"],
    "02_clustering": ["embedding", "cluster", "selection"],
    "03_dreambooth": ["model", "finetune", "gating"],
    "04_generation": ["generation"],
    "05_classifier": ["classifier"],
    "06_fter_analysis": [],
}


def sections(stage: str) -> list[str]:
    """Every parameter section the stage depends on, its own and its upstream stages'."""
    if stage not in _OWN:
        raise KeyError(f"unknown stage {stage!r}; stages are {', '.join(ORDER)}")
    out: list[str] = []
    for s in ORDER[: ORDER.index(stage) + 1]:
        out += _OWN[s]
    return out


def key(cfg: Config, stage: str) -> str:
    from .phantoms import GENERATOR_VERSION

    base = _keyed(cfg).section_hash(*sections(stage))
    # A new phantom generator is new data: it must not reuse stages built on the old one.
    return base if cfg.data.source != "phantom" else f"{base}p{GENERATOR_VERSION}"


def unused_gating(cfg: Config) -> set[str]:
    """Gating fields that cannot change a decision of this run, so no stage key holds them.

    Gating means nothing to an ungated run (unless a random-skip control copies its rate), so a
    threshold sweep never redoes the ungated points; the absolute threshold means nothing in quantile
    mode, and the quantile window nothing in absolute mode.
    """
    g = cfg.gating
    if not (g.enabled or cfg.finetune.control == "random-skip"):
        return {f.name for f in dataclasses.fields(GatingConfig)} - {"enabled"}
    return {"threshold"} if g.mode == "quantile" else {"skip_fraction", "warmup_batches"}


def _keyed(cfg: Config) -> Config:
    """The config as stage keys see it: unused gating settings at their defaults."""
    default = GatingConfig()
    unused = {name: getattr(default, name) for name in unused_gating(cfg)}
    return dataclasses.replace(cfg, gating=dataclasses.replace(cfg.gating, **unused))


def stage_dir(cfg: Config, stage: str, runs_root: str | Path = "runs") -> Path:
    """runs/<experiment>/stages/<stage>-<key>/: the artefacts of one stage for these parameters."""
    return paths.resolve(runs_root) / cfg.experiment / "stages" / f"{stage}-{key(cfg, stage)}"


def is_done(directory: Path) -> bool:
    return (Path(directory) / "DONE.json").exists()


def mark_done(directory: Path, cfg: Config, stage: str, **extra) -> Path:
    """Seal a stage: its parameters, code version and time. A sealed stage is never redone."""
    record = {"stage": stage, "key": key(cfg, stage), "params": cfg.to_dict(),
              "code_version": provenance.code_version(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              **extra}
    return atomic.write_json(Path(directory) / "DONE.json", record, overwrite=False)


def require(cfg: Config, stage: str, runs_root: str | Path = "runs") -> Path:
    """The folder of a finished upstream stage, or an error that says which notebook to run first."""
    d = stage_dir(cfg, stage, runs_root)
    if not is_done(d):
        raise FileNotFoundError(f"stage {stage} has not finished for these parameters (looked in {d}). "
                                f"Run notebooks/{stage}.ipynb with the same parameter file first, "
                                "or `make run PARAMS=...` to run the whole pipeline.")
    return d


def run_stage(cfg: Config, stage: str, fn, runs_root: str | Path = "runs", **kwargs) -> Path:
    """Run ``fn(cfg, out_dir, runs_root=runs_root, **kwargs)`` unless this stage already finished for these parameters.

    A finished stage is reused, never overwritten; an unfinished one resumes in the same folder
    (its functions skip artefacts already written).
    """
    out = stage_dir(cfg, stage, runs_root)
    if is_done(out):
        print(f"{stage}: already finished for these parameters, reusing {paths_rel(out)}")
        return out
    out.mkdir(parents=True, exist_ok=True)
    fn(cfg, out, runs_root=runs_root, **kwargs)
    mark_done(out, cfg, stage)
    return out


def paths_rel(p: Path) -> str:
    try:
        return str(Path(p).relative_to(paths.ROOT))
    except ValueError:
        return str(p)
