"""Stage 03: DreamBooth fine-tuning with optional active gating (thesis section 4.8, Algorithm 1).

The stage around the training loop (lib.finetune.trainer): its inputs (stage 02's tuning set), one joint
model or one model per label, the no-fine-tune control (the base model recorded, nothing trained), the
summary, and the resealed stage (lib.finetune.checkpoints.finished). Under ``accelerate launch`` every
process runs it and rank 0 alone writes (lib.finetune.multiprocess, which also holds the command line).

Artefacts in the stage folder: ``model/`` (or ``model_<label>/``) pipeline folders, ``gating_log.csv``,
``loss_log.csv``, ``validation/step_XXXXXX.{png,npy,json}``, ``validation_log.csv`` (the KID of each
validation save against the tuning images, on fidelity.trace features), ``train_summary.json``,
``checkpoints/``. The three logs are rewritten at every validation and checkpoint while training runs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from ..core import atomic, stages
from ..core.config import Config
from ..data.domains import classes as classes_of
from ..data.nih import DataError
from . import checkpoints, processes
from .prompts import slug
from .trainer import Trainer, precision, save_logs


# ------------------------------------------------------------------------------------------ inputs
def tuning_set_path(cfg: Config, runs_root="runs") -> Path:
    return stages.require(cfg, "02_clustering", runs_root) / f"tuning_{cfg.finetune.method}.csv"


def tuning_set(cfg: Config, runs_root="runs") -> pd.DataFrame:
    """Stage 02's tuning set for finetune.method; a clear error when it is missing or empty."""
    p = tuning_set_path(cfg, runs_root)
    if not p.exists():
        have = sorted(f.stem.removeprefix("tuning_") for f in p.parent.glob("tuning_*.csv"))
        raise DataError(f"no tuning set for finetune.method = {cfg.finetune.method!r} in {p.parent}; "
                        f"stage 02 wrote: {', '.join(have) or 'none'}. Set finetune.method to one of these "
                        "or add it to selection.methods and rerun notebook 02.")
    df = pd.read_csv(p)
    if len(df) == 0:
        raise DataError(f"the tuning set {p} is empty: nothing to fine-tune on. Raise selection.per_label "
                        "or pools.tuning and rerun notebooks 01-02.")
    labels = classes_of(cfg)
    unknown = sorted(set(df["label"].astype(str)) - set(labels))
    if unknown:
        raise DataError(f"tuning set {p} has labels {unknown}; expected {labels}.")
    return df.reset_index(drop=True)


def _gated_summary(stage_dir, key: str, missing: str, param: str):
    """One field of a finished gated stage-03 run's train_summary.json, which a control copies."""
    f = Path(stage_dir) / "train_summary.json"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: the gated run has not finished stage 03. Run it first, or "
                                f"set {param} by hand.")
    value = json.loads(f.read_text()).get(key)
    if value is None:
        raise ValueError(f"{f} records no {missing}; set {param} by hand.")
    return value


def skip_rate_of(stage_dir) -> float:
    """The skip rate a finished gated stage-03 run reached (for the random-skip control)."""
    return float(_gated_summary(stage_dir, "skip_rate", "skip rate (a no-fine-tune run?)", "gating.skip_rate"))


def trained_of(stage_dir) -> int:
    """The updates a finished gated stage-03 run trained (for the equal-updates control)."""
    return int(_gated_summary(stage_dir, "trained", "trained update count", "finetune.updates"))


def model_dir_names(cfg: Config) -> dict[str, str]:
    """Label -> model folder name inside the stage folder."""
    if cfg.finetune.model_layout == "joint":
        return {label: "model" for label in classes_of(cfg)}
    return {label: f"model_{slug(label)}" for label in classes_of(cfg)}


def model_path(stage_dir, cfg: Config, label: str) -> str:
    """The pipeline folder that draws ``label`` (the base model for the no-fine-tune control)."""
    d = Path(stage_dir)
    summary = json.loads((d / "train_summary.json").read_text())
    if summary.get("control") == "no-fine-tune":
        return summary["base"]
    return str(d / model_dir_names(cfg)[label])


# ----------------------------------------------------------------------------------------- stage 03
def data_vectors(cfg: Config, df: pd.DataFrame, progress: bool = True):
    """The CLIP embedder of notebook 02 and the tuning images' vectors from its cache."""
    from ..tuningset import embeddings

    vecs = embeddings.embed_manifest(df, "clip", cfg.embedding, cfg.data.image_size, progress)
    emb = embeddings.clip_embedder(cfg.embedding)
    return emb.embed, vecs


def run(cfg: Config, out_dir, runs_root=None, progress: bool = True, resume: bool = True,
        resume_from=None, stop_after: int | None = None, rank_report=None) -> dict:
    """Stage 03: fine-tune (or record the base model for no-fine-tune) and write the artefacts listed above.

    ``runs_root`` defaults to the one ``out_dir`` lies in (<runs_root>/<experiment>/stages/<stage>-<key>).
    Under ``accelerate launch`` every process calls it and rank 0 alone writes (lib/finetune/multiprocess.py);
    ``rank_report`` (a folder, for tests) gets each rank's decisions and weight hash."""
    from ..core import compute

    if runs_root is None:
        runs_root = Path(out_dir).resolve().parents[2]

    with compute.cpu_threads(cfg.finetune.cpu_threads):      # left alone on a CUDA machine
        return _run(cfg, Path(out_dir), runs_root, progress, resume, resume_from, stop_after, rank_report)


def _run(cfg: Config, out: Path, runs_root, progress, resume, resume_from, stop_after, rank_report=None) -> dict:
    from . import diffusion_model, gating

    state = processes.state()
    main = state.is_main_process
    out.mkdir(parents=True, exist_ok=True)
    folders = set() if cfg.finetune.control == "no-fine-tune" else set(model_dir_names(cfg).values())
    done = checkpoints.finished(out, folders)
    if done is not None:        # resumed after it finished (DONE.json deleted): nothing to redo or rewrite
        return done if main else {}
    gating.check(cfg.gating)
    t0 = time.perf_counter()
    with state.main_process_first():      # one process builds the tiny base; the others load it
        base = diffusion_model.base_for(cfg.model, seed=cfg.seed, progress=progress and main)
    summary = {"control": cfg.finetune.control, "base": base, "method": cfg.finetune.method,
               "gating": cfg.gating.enabled and cfg.finetune.control == "none", "mode": cfg.gating.mode,
               "threshold": cfg.gating.threshold, "aggregation": cfg.gating.aggregation,
               "model_layout": cfg.finetune.model_layout}
    if cfg.finetune.control == "no-fine-tune":
        summary.update(steps=0, trained=0, skipped=0, skip_rate=None, wall_seconds=time.perf_counter() - t0,
                       models={label: base for label in classes_of(cfg)}, tuning_set=None)
        if main:
            save_logs(out, [], [])
            atomic.write_json(out / "train_summary.json", summary)
        return summary
    df = tuning_set(cfg, runs_root)
    embed = vectors = None
    if summary["gating"] and main:        # rank 0 alone scores the gate (on the whole batch) and broadcasts it
        embed, vectors = data_vectors(cfg, df, progress)
    names = model_dir_names(cfg)
    jobs = {"model": df} if cfg.finetune.model_layout == "joint" else {
        names[label]: df[df["label"] == label] for label in classes_of(cfg)}
    fit = {"resume": resume, "resume_from": resume_from, "stop_after": stop_after}
    parts, all_g, all_l = _train_models(cfg, out, jobs, base, (embed, vectors), progress, fit, rank_report)
    if not main:
        return {}
    save_logs(out, all_g, all_l)
    steps = sum(p["steps"] for p in parts.values())
    skipped = sum(p["skipped"] for p in parts.values())
    summary.update(steps=steps, trained=steps - skipped, skipped=skipped, skip_rate=skipped / max(steps, 1),
                   skip_rate_target=cfg.gating.skip_rate if cfg.finetune.control == "random-skip" else None,
                   updates_target=cfg.finetune.updates if cfg.finetune.control == "equal-updates" else None,
                   gating_seconds=sum(p["gating_seconds"] for p in parts.values()),
                   wall_seconds=time.perf_counter() - t0, parts=parts,
                   models={label: str(out / names[label]) for label in classes_of(cfg)},
                   tuning_set=stages.paths_rel(tuning_set_path(cfg, runs_root)), n_tuning=len(df),
                   device=str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                   mixed_precision=precision(cfg.finetune.mixed_precision), num_processes=state.num_processes)
    atomic.write_json(out / "train_summary.json", summary)
    for name in jobs:
        atomic.write_json(out / name / "train_summary.json", summary)
    return summary


def _train_models(cfg: Config, out: Path, jobs: dict, base: str, gate_inputs: tuple, progress: bool, fit: dict,
                  rank_report) -> tuple[dict, list, list]:
    """Train and save each model of ``jobs`` (folder name -> its rows of the tuning set) in turn, each after
    the models before it. ``gate_inputs``: the CLIP embedder and the tuning set's vectors (None, None on the
    processes that do not score the gate). Returns each model's fit summary, and all gating and loss rows."""
    embed, vectors = gate_inputs
    all_g, all_l, parts = [], [], {}
    for name, part in jobs.items():
        if len(part) == 0:
            raise DataError(f"the tuning set has no '{name}' images; per-label layout needs every label.")
        tr = Trainer(cfg, out, part, name, base, progress, embed,
                     None if vectors is None else vectors[part.index.to_numpy()])
        tr.earlier = (list(all_g), list(all_l))
        parts[name] = tr.fit(**fit)
        tr.release_optimizer()
        tr.save_model()
        if rank_report is not None:
            processes.write_rank_report(tr, rank_report)
        all_g += tr.gating_rows
        all_l += tr.loss_rows
        del tr
    return parts, all_g, all_l
