"""The two-way evaluation (thesis 4.4.1, steps 4-6) and stage 05.

(a) train CheXNet on the synthetic set, an equal number per class, and test on the real test pool;
(b) train it on the same number per class from the real training pool and test on synthetic images.
FTER = AUROC(a) / AUROC(b). Before anything trains, the real test pool is checked against every
training source and the generator's tuning set: a shared image, content hash or patient stops the run.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, classifier, compute, curation, metrics, nih, provenance, results, stages
from .config import Config
from .curation import LeakageError
from .nih import DataError

log = logging.getLogger(__name__)
DIRECTIONS = {"a": "train synthetic, test real", "b": "train real, test synthetic"}


# ------------------------------------------------------------------------------------------ inputs
def read_synthetic(path: str | Path) -> pd.DataFrame:
    """The stage-04 manifest, checked: not empty, the needed columns, both classes present."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"synthetic manifest {path} not found; run notebooks/04_generation.ipynb first.")
    df = pd.read_csv(path)
    if df.empty:
        raise DataError(f"synthetic manifest {path} is empty; stage 04 generated no image.")
    missing = [c for c in ("image_id", "path", "label") if c not in df.columns]
    if missing:
        raise DataError(f"synthetic manifest {path} lacks column(s) {missing}.")
    absent = [lab for lab in nih.LABELS if not (df["label"] == lab).any()]
    if absent:
        raise DataError(f"the synthetic set {path} has no image of class {absent}; both classes are needed. "
                        "Check generation.n_per_label and the prompts (finetune.label_words).")
    return df


def per_class(df: pd.DataFrame, n: int, seed: int, what: str) -> pd.DataFrame:
    """Exactly n random images of each class from df (an error when a class has fewer)."""
    parts = []
    for i, label in enumerate(nih.LABELS):
        rows = df[df["label"] == label]
        if len(rows) < n:
            raise DataError(f"{what} has {len(rows)} '{label}' image(s) but classifier.n_train_per_class = {n}; "
                            "lower it or enlarge the source (generation.n_per_label / pools.train).")
        parts.append(rows.sample(n=n, random_state=seed + i))
    return pd.concat(parts).reset_index(drop=True)


def test_sample(df: pd.DataFrame, n: int, seed: int, what: str) -> pd.DataFrame:
    """n random images (all of them when the source is smaller, logged)."""
    if len(df) < n:
        log.warning("%s holds %d images, fewer than classifier.n_test = %d; testing on all of them.", what, len(df), n)
        return df.reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def check_no_leakage(test: pd.DataFrame, sources: dict[str, pd.DataFrame]) -> None:
    """Refuse when a real test image, content hash or patient appears in any training source or tuning set."""
    for name, src in sources.items():
        for col in ("image_id", "hash", "patient"):
            if col not in test or col not in src:
                continue
            shared = set(test[col].dropna().astype(str)) & set(src[col].dropna().astype(str))
            if shared:
                raise LeakageError(
                    f"refusing to evaluate: the real test pool and {name} share {len(shared)} {col} value(s), "
                    f"e.g. {sorted(shared)[:5]}. The test pool must be disjoint from every training source "
                    "and the generator's tuning set; rebuild the pools (notebook 01) or fix that manifest.")


def tuning_set(cfg: Config, runs_root) -> tuple[pd.DataFrame | None, str]:
    """The generator's tuning-set manifest (stage 02), or None for the no-fine-tune control."""
    try:
        d02 = stages.require(cfg, "02_clustering", runs_root)
    except FileNotFoundError:
        if cfg.finetune.control == "no-fine-tune":
            return None, "none (no-fine-tune control)"
        raise
    path = d02 / f"tuning_{cfg.finetune.method}.csv"
    if not path.exists():
        if cfg.finetune.control == "no-fine-tune":
            return None, "none (no-fine-tune control)"
        raise FileNotFoundError(f"tuning set {path} not found; stage 02 writes tuning_<method>.csv for each "
                                f"selection method, and finetune.method = {cfg.finetune.method!r}.")
    return pd.read_csv(path, dtype={"patient": str}), str(stages.paths_rel(path))


# ------------------------------------------------------------------------------------- directions
def _direction(key: str, train_df, test_df, cfg: Config, out_dir: Path, seed: int, progress: bool) -> dict:
    """Train, predict, save predictions and the classifier; resumes when the direction already finished."""
    info_path, pred_path = out_dir / f"direction_{key}.json", out_dir / f"predictions_{key}.csv"
    if info_path.exists() and pred_path.exists():
        return json.loads(info_path.read_text())
    c = cfg.classifier
    dev = classifier.device()
    train_set = classifier.TensorSet.from_manifest(train_df, c.input_size, dev)
    fit = classifier.train(train_set, c, seed, progress, desc=f"({key}) {DIRECTIONS[key]}")
    del train_set
    scores = classifier.predict(fit.model, classifier.TensorSet.from_manifest(test_df, c.input_size, dev))
    atomic.save_torch(out_dir / f"classifier_{key}.pt", fit.model.state_dict())
    atomic.write_csv(pred_path, results.predictions_frame(test_df, scores))
    info = {"n_train": fit.n_train, "n_val": fit.n_val, "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
            "stopped_early": fit.stopped_early, "train_seconds": round(fit.seconds, 2),
            "classifier_hash": classifier.model_hash(fit.model), "history": fit.history.to_dict("list")}
    atomic.write_json(info_path, info)
    return info


def _generator_record(d04: Path) -> dict:
    p = d04 / "generation_summary.json"
    return json.loads(p.read_text()) if p.exists() else {}


def run(cfg: Config, out_dir: str | Path, runs_root: str | Path = "runs", progress: bool = True) -> dict:
    """Stage 05: leakage check, both directions, metrics, FTER, the results record. Returns the row."""
    out_dir = Path(out_dir)
    if (out_dir / "results.json").exists():  # finished before a crash that came ahead of DONE.json
        return results.read(out_dir)
    c = cfg.classifier
    d01, d04 = stages.require(cfg, "01_data_curation", runs_root), stages.require(cfg, "04_generation", runs_root)
    pools = curation.load_pools(d01)
    synthetic = read_synthetic(d04 / "manifest.csv")
    tuning, tuning_src = tuning_set(cfg, runs_root)

    train_a = per_class(synthetic, c.n_train_per_class, cfg.seed, "the synthetic set")
    train_b = per_class(pools["train"], c.n_train_per_class, cfg.seed, "the real training pool")
    test_a = test_sample(pools["test"], c.n_test, cfg.seed, "the real test pool")
    test_b = test_sample(synthetic, c.n_test, cfg.seed + 1, "the synthetic set")
    sources = {"the real training pool": pools["train"], "the synthetic training set": train_a}
    if tuning is not None:
        sources[f"the generator's tuning set ({tuning_src})"] = tuning
    check_no_leakage(pools["test"], sources)

    for name, df in (("train_a", train_a), ("test_a", test_a), ("train_b", train_b), ("test_b", test_b)):
        atomic.write_csv(out_dir / f"{name}.csv", df)
    with compute.cpu_threads(c.cpu_threads):
        info = {k: _direction(k, tr, te, cfg, out_dir, cfg.seed + i, progress)
                for i, (k, tr, te) in enumerate((("a", train_a, test_a), ("b", train_b, test_b)))}

    ya, sa = results.arrays(results.read_predictions(out_dir / "predictions_a.csv", test_a))
    yb, sb = results.arrays(results.read_predictions(out_dir / "predictions_b.csv", test_b))
    row = {"experiment": cfg.experiment, "method": results.method_name(cfg), "tuning_method": cfg.finetune.method,
           "tuning_per_label": cfg.selection.per_label, "tuning_size": None if tuning is None else len(tuning),
           "seed": cfg.seed, "bootstrap_seed": cfg.seed}
    row.update(metrics.two_way(ya, sa, yb, sb, c.threshold, c.bootstrap, row["bootstrap_seed"]))
    for k, v in info.items():
        row.update({f"{k}_{f}": v[f] for f in ("n_train", "n_val", "epochs_run", "best_epoch", "stopped_early",
                                               "train_seconds", "classifier_hash")})
    gen = _generator_record(d04)
    hashes = lambda df: provenance.hash_strings(df["hash"] if "hash" in df else df["image_id"])  # noqa: E731
    row.update({"data_hash_train_a": hashes(train_a), "data_hash_test_a": hashes(test_a),
                "data_hash_train_b": hashes(train_b), "data_hash_test_b": hashes(test_b),
                "data_hash_synthetic": hashes(synthetic), "generator_model": gen.get("model"),
                "generator_hash": gen.get("model_hash"), "code_version": provenance.code_version()})
    row.update(flatten_params(cfg))
    results.write(out_dir, row)
    return row


def flatten_params(cfg: Config) -> dict:
    return results.flatten(cfg.to_dict(), "param.")


def load(stage_dir: str | Path) -> dict:
    """What notebook 05 shows: the row, the predictions and the training histories."""
    stage_dir = Path(stage_dir)
    out = {"row": results.read(stage_dir)}
    for k in DIRECTIONS:
        out[f"pred_{k}"] = pd.read_csv(stage_dir / f"predictions_{k}.csv")
        out[f"info_{k}"] = json.loads((stage_dir / f"direction_{k}.json").read_text())
    return out
