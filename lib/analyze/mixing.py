"""Training sets that mix real and synthetic images, tested on real: augmentation brackets with random
oversampling (Schaudt et al. 2023, seed 001, Tables 7-9) and fixed-size mixing ratios (seed 003).

For one generator point (a finished stage 04) and its seed's real baseline (stage ``05_real_baseline``):
  - ``07_brackets``: the real training sample (``classifier.n_train_per_class`` per class) plus N synthetic
    images per class for each N in ``mixing.brackets``. The brackets are nested (+50 holds +25's images).
  - ``07_oversampling``: the same real sample plus N copies per class drawn at random, with replacement,
    from it: exactly the bracket's totals, with real images only. It does not depend on the generator, so
    every generator of one data, seed and classifier shares it.
  - ``07_ratios``: ``mixing.total_per_class`` images per class (default ``classifier.n_train_per_class``),
    the real share drawn from the real training pool (the baseline's sample first, so 100:0 at the default
    size is the baseline's sample) and the rest synthetic, for each [real, synthetic] pair of ``mixing.ratios``.
Every arm trains the classifier of ``classifier.arch`` with the real baseline's seed (run seed + 1), so arms
differ only in their data, and is tested on the real baseline's test sample; each folder also carries the
real-only baseline itself (the real baseline's TRTR predictions, arm ``real``), so every difference is
paired on the same test images. The validation split is carved from each arm's training set, whole patients
to one side (an oversampled image and all its copies with them; a synthetic image is its own group:
lib.evaluate.classifier.validation_groups).

Everything that can be checked is checked for every point before the first classifier trains (stage 04
missing, labels that differ between the real and the synthetic set, a bracket or a ratio that needs more
images than the synthetic set or the real pool holds). Stage folders hold, per arm, ``train_<arm>.csv``,
``predictions_<arm>.csv``, ``arm_<arm>.json`` and ``classifier_<arm>.pt`` (a resumed stage skips arms
already written), and ``mixing.csv``, one row of metrics per arm (not ``results.csv``: lib.analyze.collection
reads every results.csv as a stage-05 record).

This module checks the inputs and runs the stages (``measure``); the arms' training sets are built in
lib.analyze.mixing_arms, and the tables and paired comparisons over the measured folders are
lib.analyze.mixing_tables's.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import torch

from ..core import atomic, compute, stages
from ..evaluate import classifier, evaluation, metrics, results
from ..data import curation, domains, leakage
from ..core.config import Config
from ..data.nih import DataError
from ..generate.manifest import read_synthetic
from .mixing_arms import (BASELINE, TABLE, arm_name, bracket_sets, class_counts, file_key, first_per_class,
                          ordered_real, ordered_synthetic, oversampled_sets, ratio_counts, ratio_sets)

log = logging.getLogger(__name__)
EXPERIMENTS = {"brackets": "07_brackets", "oversampling": "07_oversampling", "ratios": "07_ratios"}


# ----------------------------------------------------------------------------------------- inputs
def check_labels(real: pd.DataFrame, synthetic: pd.DataFrame, where: str) -> None:
    """The real and the synthetic set must hold the same classes."""
    r, s = sorted(set(real["label"])), sorted(set(synthetic["label"]))
    if r != s:
        raise DataError(f"the real and the synthetic set of {where} hold different labels: real {r}, synthetic {s} "
                        f"(only in real: {sorted(set(r) - set(s))}, only in synthetic: {sorted(set(s) - set(r))}); "
                        "a mixed training set needs the same classes on both sides.")


def inputs(cfg: Config, runs_root="runs", experiments=("brackets", "ratios"), build: bool = False,
           progress: bool = False) -> dict:
    """What the experiments read, checked: the real training pool, the synthetic set (stage 04), that both
    hold the same labels and that every bracket and ratio fits what they hold. Nothing trains unless
    ``build``, which then adds the real baseline (its sample, test sample and TRTR predictions), trained
    first if this data, seed and classifier have none yet (stage 05_real_baseline, shared with stage 05)."""
    m, c, classes = cfg.mixing, cfg.classifier, domains.classes(cfg)
    where = f"{results.method_name(cfg)} (seed {cfg.seed})"
    out = {"pool": curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["train"]}
    if set(experiments) - {"oversampling"}:
        d04 = stages.require(cfg, "04_generation", runs_root)
        if (d04 / "manifest.csv").exists():      # labels first: read_synthetic names only a missing class
            raw = pd.read_csv(d04 / "manifest.csv")
            if "label" in raw:
                check_labels(out["pool"], raw, where)
        synthetic = read_synthetic(d04 / "manifest.csv")
        have, need_b = min(class_counts(synthetic, classes).values()), max(m.brackets) if "brackets" in experiments else 0
        if need_b > have:
            raise DataError(f"mixing.brackets = {m.brackets}: the largest bracket adds {need_b} synthetic images per "
                            f"class, but the synthetic set of {where} holds only {have} of its smallest class "
                            f"({class_counts(synthetic, classes)}); drop the brackets above {have} or generate more "
                            "(generation.n_per_label).")
        if "ratios" in experiments:
            total = m.total_per_class or c.n_train_per_class
            real_have = min(class_counts(out["pool"], classes).values())
            for r in m.ratios:
                n_real, n_syn = ratio_counts(r, total)
                if n_syn > have or n_real > real_have:
                    side, n, h = ("synthetic set", n_syn, have) if n_syn > have else ("real training pool", n_real,
                                                                                     real_have)
                    raise DataError(f"mixing.ratios {r} at {total} images per class needs {n} images per class of "
                                    f"the {side} of {where}, which holds {h}; lower mixing.total_per_class.")
        out.update(d04=d04, synthetic=synthetic)
    if build:
        dr = _real_baseline(cfg, runs_root, progress)
        out.update(real_dir=dr, train_real=pd.read_csv(dr / "train_real.csv", dtype={"patient": str}),
                   test_real=pd.read_csv(dr / "test_real.csv", dtype={"patient": str}))
    return out


def _real_baseline(cfg: Config, runs_root, progress: bool) -> Path:
    """The real baseline's folder, trained (stage 05's way) only if this data, seed and classifier have none."""
    d = stages.stage_dir(cfg, evaluation.REAL_STAGE, runs_root)
    if (d / "DONE.json").exists():
        return stages.require(cfg, evaluation.REAL_STAGE, runs_root)
    return evaluation.real_baseline(cfg, runs_root, progress)


# ---------------------------------------------------------------------------------------- training
def _train_arm(cfg: Config, out_dir: Path, arm: str, train_df: pd.DataFrame, test_df: pd.DataFrame,
               progress: bool, classes: list[str]) -> None:
    """Train one arm and predict the real test sample, unless a resumed stage already holds both."""
    key, c = file_key(arm), cfg.classifier
    pred, info = out_dir / f"predictions_{key}.csv", out_dir / f"arm_{key}.json"
    if pred.exists() and info.exists():
        return
    dev = compute.device()
    atomic.write_csv(out_dir / f"train_{key}.csv", train_df)
    data = classifier.TensorSet.from_manifest(train_df, c.input_size, dev)
    fit = classifier.train(data, c, cfg.seed + 1, progress, desc=f"({arm})",      # validation: whole patients
                           history_path=out_dir / f"history_{key}.csv")
    test = classifier.TensorSet.from_manifest(test_df, c.input_size, dev)
    atomic.save_torch(out_dir / f"classifier_{key}.pt", fit.model.state_dict())
    atomic.write_csv(pred, results.predictions_frame(test_df, classifier.predict_outputs(fit.model, test), classes))
    counts = train_df.groupby(["label", "source"]).size()
    atomic.write_json(info, {"arm": arm, "n_train": fit.n_train, "n_val": fit.n_val, "epochs_run": len(fit.history),
                             "best_epoch": fit.best_epoch, "train_seconds": round(fit.seconds, 2),
                             "per_class": {f"{lab}|{src}": int(v) for (lab, src), v in counts.items()},
                             "classifier_hash": classifier.model_hash(fit.model)})
    del fit, data, test
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _baseline(out_dir: Path, real_dir: Path) -> None:
    """The real-only baseline: the real baseline's own classifier on the same test sample (TRTR)."""
    if not (out_dir / f"predictions_{BASELINE}.csv").exists():
        shutil.copyfile(real_dir / "predictions_trtr.csv", out_dir / f"predictions_{BASELINE}.csv")
    info = json.loads((real_dir / "direction_real.json").read_text())
    atomic.write_json(out_dir / f"arm_{BASELINE}.json", {"arm": BASELINE, **{k: info[k] for k in (
        "n_train", "n_val", "epochs_run", "best_epoch", "train_seconds", "classifier_hash")}})


def _run(cfg: Config, out_dir: Path, sets: dict[str, pd.DataFrame], meta: dict[str, dict], ins: dict,
         progress: bool) -> None:
    out_dir = Path(out_dir)
    atomic.write_csv(out_dir / "test_real.csv", ins["test_real"])
    _baseline(out_dir, ins["real_dir"])
    classes = domains.classes(cfg)       # once: a folder or csv source is read to find them
    with compute.cpu_threads(cfg.classifier.cpu_threads):
        for arm, df in sets.items():
            _train_arm(cfg, out_dir, arm, df, ins["test_real"], progress, classes)
    rows = [_row(out_dir, BASELINE, {"n_real": cfg.classifier.n_train_per_class, "n_synthetic": 0, "n_copies": 0},
                 cfg, classes)]
    rows += [_row(out_dir, arm, meta[arm], cfg, classes) for arm in sets]
    atomic.write_csv(out_dir / TABLE, pd.DataFrame(rows))


def _row(out_dir: Path, arm: str, meta: dict, cfg: Config, classes: list[str]) -> dict:
    """One arm's metrics on the real test sample (lib.evaluate.metrics.summary) and its bookkeeping."""
    key = file_key(arm)
    pred = pd.read_csv(out_dir / f"predictions_{key}.csv")
    y, o = results.arrays(pred)
    info = json.loads((out_dir / f"arm_{key}.json").read_text())
    total = meta["n_real"] + meta["n_synthetic"] + meta["n_copies"]
    return {"arm": arm, **meta, "total_per_class": total,
            "synthetic_share": meta["n_synthetic"] / total if total else float("nan"),
            "seed": cfg.seed, "arch": cfg.classifier.arch, "predictions": f"predictions_{key}.csv",
            **{k: info.get(k) for k in ("n_train", "n_val", "epochs_run", "train_seconds", "classifier_hash")},
            **metrics.summary(y, o, cfg.classifier.threshold, classes)}


def run_brackets(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> None:
    """Stage 07_brackets: the real sample plus N synthetic images per class, per bracket."""
    ins = inputs(cfg, runs_root, ("brackets",), build=True, progress=progress)
    leakage.check_content(ins["test_real"], {"the synthetic set": ins["synthetic"],
                                             "the real training sample": ins["train_real"]})
    classes = domains.classes(cfg)
    syn = ordered_synthetic(ins["synthetic"], cfg.seed, classes)
    sets = bracket_sets(ins["train_real"], syn, cfg.mixing.brackets, classes)
    n = cfg.classifier.n_train_per_class
    meta = {arm_name("synthetic", b): {"n_real": n, "n_synthetic": b, "n_copies": 0} for b in cfg.mixing.brackets}
    _run(cfg, Path(out_dir), sets, meta, ins, progress)


def run_oversampling(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> None:
    """Stage 07_oversampling: the real sample plus N random copies of its images per class, per bracket."""
    ins = inputs(cfg, runs_root, ("oversampling",), build=True, progress=progress)
    sets = oversampled_sets(ins["train_real"], cfg.mixing.brackets, cfg.seed, domains.classes(cfg))
    n = cfg.classifier.n_train_per_class
    meta = {arm_name("oversampled", b): {"n_real": n, "n_synthetic": 0, "n_copies": b} for b in cfg.mixing.brackets}
    _run(cfg, Path(out_dir), sets, meta, ins, progress)


def run_ratios(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> None:
    """Stage 07_ratios: a fixed number of images per class at each real:synthetic ratio."""
    ins = inputs(cfg, runs_root, ("ratios",), build=True, progress=progress)
    total = cfg.mixing.total_per_class or cfg.classifier.n_train_per_class
    classes = domains.classes(cfg)
    real = ordered_real(ins["train_real"], ins["pool"], cfg.seed)
    leakage.check_content(ins["test_real"], {"the synthetic set": ins["synthetic"],
                                             "the real training pool": first_per_class(real, total, classes)})
    sets = ratio_sets(real, ordered_synthetic(ins["synthetic"], cfg.seed, classes), cfg.mixing.ratios, total,
                      classes)
    meta = {}
    for r in cfg.mixing.ratios:
        n_real, n_syn = ratio_counts(r, total)
        meta[arm_name("ratio", ratio=tuple(r))] = {"n_real": n_real, "n_synthetic": n_syn, "n_copies": 0}
    _run(cfg, Path(out_dir), sets, meta, ins, progress)


RUNNERS = {"brackets": run_brackets, "oversampling": run_oversampling, "ratios": run_ratios}


def stage(cfg: Config, experiment: str, runs_root="runs", progress: bool = True) -> Path:
    """One experiment's stage folder for one point: keyed, resumable, reused when finished, never overwritten."""
    name = EXPERIMENTS[experiment]
    lock = stages.stage_dir(cfg, name, runs_root).with_suffix(".lock")
    with atomic.exclusive(lock, what=f"stage {name}, which another process is computing"):
        return stages.run_stage(cfg, name, RUNNERS[experiment], runs_root, progress=progress)


def experiments_of(which: str | list[str], cfg: Config) -> list[str]:
    """'brackets' (with oversampling when mixing.oversample), 'ratios' or 'both' -> the stages to run."""
    names = ["brackets", "ratios"] if which == "both" else [which] if isinstance(which, str) else list(which)
    bad = sorted(set(names) - set(EXPERIMENTS))
    if bad:
        raise ValueError(f"unknown mixing experiment(s) {bad}; use 'brackets', 'ratios' or 'both'.")
    if "brackets" in names and cfg.mixing.oversample and "oversampling" not in names:
        names.insert(names.index("brackets") + 1, "oversampling")
    return names


def measure(cfgs: list[Config], which: str | list[str] = "both", runs_root="runs", progress: bool = False
            ) -> list[dict]:
    """Every point's experiments: all inputs checked first (a bad bracket stops before anything trains),
    then each stage run or reused. Returns [{"cfg", "generator", "seed", "<experiment>": stage folder}]."""
    plans = [(cfg, experiments_of(which, cfg)) for cfg in cfgs]
    for cfg, names in plans:
        inputs(cfg, runs_root, names)
    for cfg, _ in plans:            # the real baselines first, so each 07 stage records it as an input
        _real_baseline(cfg, runs_root, progress)
    out = []
    for cfg, names in plans:
        rec = {"cfg": cfg, "generator": results.method_name(cfg), "seed": cfg.seed}
        for name in names:
            rec[name] = stage(cfg, name, runs_root, progress)
        out.append(rec)
    return out


def point_configs(params_file, runs: list | None = None, overrides: dict | None = None) -> list[Config]:
    """The configs of finished run folders (their params.yaml) with the mixing overrides on top, or the
    parameter file's own point when ``runs`` is None."""
    from ..core import config, paths

    if not runs:
        return [config.load(params_file, overrides)]
    return [config.load(paths.resolve(r) / "params.yaml", overrides) for r in runs]
