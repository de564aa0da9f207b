"""Classifier repeats (``classifier.repeats``, issue 22): each classifier of stage 05 that the matrix reads (direction a's,
and the real baseline's behind TRTR and TRTS) trained R times, so the training noise of one classifier shrinks in the
per-seed estimate and can be measured (lib.analyze.variance).

With R = 1: one classifier per direction with the direction's seed, its validation split, the plain file names, and no
stage key or record field mentions repeats. With R > 1, repeat r trains with
``classifier.repeat_seed(seed, r)`` (repeat 0 keeps the direction's seed), which also draws its validation split (at
every R by patient wherever the training sample records one: lib.evaluate.classifier.validation_groups); its weights,
record and history are
``classifier_<key>_r<r>.pt``, ``direction_<key>_r<r>.json``, ``history_<key>_r<r>.csv`` (repeat 0 keeps the plain names:
the fidelity features read ``classifier_real.pt``), and its predictions ``predictions_<cell>_r<r>.csv``.
The record averages *estimates*: each metric of a cell is the mean over the repeats of that repeat's metric (``matrix``),
its AUROC interval the percentile interval of the per-replicate mean AUROC (every repeat resampled on the same test
images), and the ratios are those of the mean AUROCs; each cell's per-repeat AUROCs are listed (``<cell>_auroc_repeats``,
``tr_repeats``). Why estimates rather than the mean output per image (an ensemble): benchmarks/results/bench_repeats.txt.
On the demo (spectral-clip, 2 seeds x 6 repeats) the per-seed AUROC(a) from 3 repeats varies with the repeats drawn by
s.d. 0.016 averaged as estimates against 0.031 as an ensemble (TR: 0.044 against 0.080), and the ensemble sits 0.016
above the single-classifier AUROC it would stand for, a shift that grows with R: averaged estimates keep AUROC's
meaning (one classifier trained on the set) at every R. ``predictions_<cell>.csv`` still holds the mean output per test
image, for readers that need one set of predictions (notebook 05's figures, DeLong within a seed); the record's numbers
recompute from the per-repeat files (lib.evaluate.results.recompute_from_predictions).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import metrics

CELLS = ("a", "b", "trtr", "tsts")       # the matrix's cells; the detector is trained once


def count(cfg) -> int:
    return int(cfg.classifier.repeats)


def name(key: str, repeat: int) -> str:
    """The file tag of a direction's repeat: the plain key for repeat 0."""
    return key if repeat == 0 else f"{key}_r{repeat}"


def suffix(repeat: int, repeats: int) -> str:
    """The predictions files' suffix of a repeat: none when there is one repeat."""
    return "" if repeats == 1 else f"_r{repeat}"


def predictions_path(out_dir: Path, cell: str, repeat: int, repeats: int) -> Path:
    """Where one repeat's predictions go: the cell's own file when there is one repeat."""
    return Path(out_dir) / f"predictions_{cell}{suffix(repeat, repeats)}.csv"


def auroc_of(y: np.ndarray, outputs: np.ndarray) -> float:
    """The overall AUROC as the record has it: normalised score for two classes, macro one-vs-rest for more."""
    p = metrics.probabilities(outputs)
    return metrics.auroc(y, p[:, 1]) if p.shape[1] == 2 else metrics.macro_auroc(y, p)


def _mean_field(values: list):
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return bool(any(values))                 # e.g. collapsed: flagged when any repeat collapsed
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return float(np.mean(values))
    return values[0]


def matrix(per_repeat: list[dict], threshold: float = 0.5, n_boot: int = 200, seed: int = 0,
           detection: tuple | None = None, classes=None) -> dict:
    """metrics.matrix over R repeats, averaged as estimates (see the module's docstring). ``per_repeat``: one
    cells dict per repeat, each as metrics.matrix takes it, every repeat on the same test sets."""
    per = [metrics.matrix(cells, threshold, n_boot, seed, classes=classes) for cells in per_repeat]
    out = {k: _mean_field([p[k] for p in per]) for k in per[0]}
    # each test set resampled once, the same rows for every repeat (and for both cells that share it)
    rng = np.random.default_rng(seed)
    test_of = {k: metrics.CELLS[k][1] for k in per_repeat[0]}
    sizes = {t: len(per_repeat[0][k][0]) for k, t in test_of.items()}
    idx = {t: rng.integers(0, n, (n_boot, n)) for t, n in sorted(sizes.items())}
    aurocs, reps = {}, {}
    for k in per_repeat[0]:
        reps[k] = np.mean([metrics._reps(metrics._check_k(*c[k])[0], c[k][1], idx[test_of[k]]) for c in per_repeat],
                          axis=0)
        out[f"{k}_auroc_ci_low"], out[f"{k}_auroc_ci_high"] = metrics._interval(reps[k])
        aurocs[k] = out[f"{k}_auroc"]
        out[f"{k}_auroc_repeats"] = json.dumps([p[f"{k}_auroc"] for p in per])
    out.update(metrics.ratios(aurocs, reps))
    if "a" in aurocs and "trtr" in aurocs:
        out["tr_repeats"] = json.dumps([(p["a_auroc"] - 0.5) / (p["trtr_auroc"] - 0.5) if p["trtr_auroc"] != 0.5
                                        else float("nan") for p in per])
    if detection is not None:
        out.update(metrics.detection_metrics(*detection, n_boot=n_boot, seed=seed + 7, classes=classes))
    out["repeats"] = len(per_repeat)
    return out


def infos(per_repeat: list[dict]) -> dict:
    """One direction's record over its repeats: repeat 0's fields, with the training seconds of all of them (the
    planner's cost) and every repeat's classifier hash."""
    out = dict(per_repeat[0])
    if len(per_repeat) > 1:
        out["train_seconds"] = round(sum(i["train_seconds"] for i in per_repeat), 2)
        out["classifier_hash"] = ",".join(i["classifier_hash"] for i in per_repeat)
    return out
