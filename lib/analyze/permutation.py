"""The label-shuffled reference's permutation null (issue 22, deliverable 6a): is its AUROC(a) what chance gives?

Each draw shuffles the labels of the label-shuffled run's own training sample (stage 05's ``train_a.csv``: the
held-out real images it is made from, the same class counts), trains the classifier exactly as stage 05 trains
direction a (lib.evaluate.classifier.train with the run's classifier section; a classifier seed of its own per draw,
so the null holds the training noise the observed value has) and tests it on the run's real test sample
(``test_a.csv``), recording AUROC(a) as stage 05 computes it (lib.evaluate.metrics.macro_auroc; with
classifier.repeats R > 1, the mean of R classifiers' AUROCs, each with its repeat seed, as
lib.evaluate.repeats averages the observed value). Draws are cached,
one file each, in ``stages/06_permutation_null-<stage-05 key>/`` beside the run's sealed stage-05 folder (never in
it), so a rerun, or more draws, trains only what is missing.

The check is on the statistic the study reports, the seed mean: ``null_of_mean`` resamples means of one draw per
seed (each seed's draw from that seed's own null, as the observed mean takes one value per seed), and the observed
seed mean must lie within its 2.5-97.5 percentiles. Judging each seed alone would test as many hypotheses as seeds;
each seed's rank in its own null is reported beside it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, compute, config
from ..data import domains
from ..evaluate import classifier, metrics, repeats, results
from .collection import params_of

STAGE = "06_permutation_null"
MIN_DRAWS = 30              # in all, over the seeds of the check
SALT = 0x9E11               # keeps the draws' random streams apart from every other use of the run seed


def null_dir(results_dir) -> Path:
    """stages/06_permutation_null-<key>/ for the stage-05 folder stages/05_classifier-<key>/."""
    d = Path(results_dir)
    return d.parent / f"{STAGE}-{d.name.split('-', 1)[1]}"


def permuted(train: pd.DataFrame, seed: int, draw: int) -> pd.DataFrame:
    """The training sample with its labels permuted (same images, same class counts), seeded by run seed and draw."""
    rng = np.random.default_rng([seed, draw, SALT])
    return train.assign(label=rng.permutation(train["label"].to_numpy()))


def classifier_seed(seed: int, draw: int) -> int:
    return int(np.random.SeedSequence([seed, draw, SALT]).generate_state(1)[0] % (2 ** 31))


def run_config(results_dir) -> config.Config:
    """The configuration a stage-05 folder was made with (its results record's parameters)."""
    return config.from_dict(params_of(pd.Series(results.read(results_dir))))


def draw(results_dir, j: int, progress: bool = False) -> dict:
    """Draw j of a run's null (trained once, then read back)."""
    path = null_dir(results_dir) / f"draw_{j:03d}.json"
    if path.exists():
        return json.loads(path.read_text())
    d, cfg = Path(results_dir), run_config(results_dir)
    c, dev, classes = cfg.classifier, compute.device(), domains.classes(cfg)
    train = permuted(pd.read_csv(d / "train_a.csv", dtype={"patient": str}), cfg.seed, j)
    test = pd.read_csv(d / "test_a.csv", dtype={"patient": str})
    seed, n = classifier_seed(cfg.seed, j), repeats.count(cfg)
    aurocs, fits = [], []
    with compute.cpu_threads(c.cpu_threads):
        data = classifier.TensorSet.from_manifest(train, c.input_size, dev, classes)
        test_data = classifier.TensorSet.from_manifest(test, c.input_size, dev, classes)
        for r in range(n):      # classifier.repeats as stage 05 trains them; the record averages their AUROCs
            fits.append(classifier.train(data, c, classifier.repeat_seed(seed, r), progress, desc=f"permutation {j}",
                                         n_classes=len(classes)))
            outputs = classifier.predict_outputs(fits[-1].model, test_data)
            aurocs.append(metrics.macro_auroc(classifier.labels_of(test, classes), outputs))
    rec = {"auroc_a": float(np.mean(aurocs)), "auroc_a_repeats": aurocs, "draw": j, "run_seed": cfg.seed,
           "classifier_seed": seed, "epochs_run": [len(f.history) for f in fits],
           "stopped_early": [bool(f.stopped_early) for f in fits],
           "train_seconds": round(sum(f.seconds for f in fits), 2), "results_dir": str(d)}
    atomic.write_json(path, rec)
    return rec


def draws(results_dir, n: int, progress: bool = False) -> np.ndarray:
    """AUROC(a) of the first n draws of a run's null."""
    return np.array([draw(results_dir, j, progress)["auroc_a"] for j in range(n)])


def per_seed(n_seeds: int, total: int = MIN_DRAWS) -> int:
    """Draws per seed so that the check holds at least ``total`` in all."""
    return max(1, math.ceil(total / max(n_seeds, 1)))


def null_of_mean(null: dict, n_resample: int = 10_000, seed: int = 0) -> np.ndarray:
    """Means over seeds of one draw per seed, resampled: the null distribution of the seed mean."""
    rng = np.random.default_rng(seed)
    return np.mean([rng.choice(np.asarray(v), n_resample) for v in null.values()], axis=0)


def check(observed: dict, null: dict, level: float = 0.95, n_resample: int = 10_000) -> dict:
    """Whether the observed seed mean lies in the null's central ``level`` range of the seed mean.
    ``observed``: seed -> AUROC(a); ``null``: seed -> that seed's null draws."""
    seeds = sorted(observed)
    means = null_of_mean({s: null[s] for s in seeds}, n_resample)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    value = float(np.mean([observed[s] for s in seeds]))
    ranks = {s: float(np.mean(np.asarray(null[s]) <= observed[s])) for s in seeds}
    return {"value": value, "null_low": float(lo), "null_high": float(hi), "null_mean": float(means.mean()),
            "seeds": len(seeds), "draws": int(sum(len(null[s]) for s in seeds)),
            "p": float(min(1.0, 2 * min(np.mean(means <= value), np.mean(means >= value)))),
            "holds": bool(lo <= value <= hi), "seed_ranks": ranks}


def label_shuffled(records: pd.DataFrame, method: str = "label-shuffled", total: int = MIN_DRAWS,
                   progress: bool = False) -> dict | None:
    """The check for the records' label-shuffled runs (None when there are none); trains missing draws."""
    runs = records[records["method"] == method] if "method" in records else records.iloc[:0]
    if runs.empty:
        return None
    n = per_seed(runs["seed"].nunique(), total)
    null = {int(r["seed"]): draws(r["results_dir"], n, progress) for _, r in runs.iterrows()}
    observed = {int(r["seed"]): float(r["auroc_a"]) for _, r in runs.iterrows()}
    return {**check(observed, null), "null": null}
