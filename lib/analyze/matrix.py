"""The trainability matrix's cells as a results record holds them: one predictions file per cell.

A record is stage 05's ``results.csv`` (one row) beside one predictions file per cell of the trainability
matrix (``predictions_{a,b,trtr,tsts}.csv``: image_id, label, score, p[<class>]) and the detector's
``predictions_det.csv``. Cell a trains on synthetic and tests on real (TSTR), b trains on real and tests on
synthetic (TRTS), trtr and tsts stay on one side. FTER = AUROC(a) / AUROC(b); the chance-corrected FTER and
TR = (AUROC(a) - .5) / (AUROC(trtr) - .5) know where chance is (RATIOS). A record's classes, in label-index
order, are the ``p[<class>]`` columns of its predictions files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import domains
from ..evaluate import results

DIRECTIONS = {"a": "train synthetic, test real", "b": "train real, test synthetic", "trtr": "train real, test real",
              "tsts": "train synthetic, test synthetic"}
CELLS = list(DIRECTIONS)
RATIOS = {"fter": ("a", "b", 0.0), "cc_fter": ("a", "b", 0.5), "tr": ("a", "trtr", 0.5)}  # num, den, chance


def read_predictions(results_dir, direction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class indices, scores, N x k per-class outputs) of one cell's predictions, classes in the order of
    its p[...] columns (binary: 1 = the thesis's Unhealthy, the score P(class 1))."""
    pred = pd.read_csv(Path(results_dir) / f"predictions_{direction}.csv")
    classes = results.classes_of(pred)
    unknown = set(pred["label"].astype(str)) - set(classes)
    if unknown:
        raise ValueError(f"{results_dir}/predictions_{direction}.csv has labels {sorted(unknown)}; "
                         f"expected {classes}.")
    s = pred["score"].to_numpy(dtype=float)
    cols = results.output_columns(classes)
    outputs = pred[cols].to_numpy(float) if all(c in pred for c in cols) else np.stack([1 - s, s], 1)
    y = pred["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy().astype(int)
    return y, s, outputs


def cells_of(results_dir) -> list[str]:
    return [d for d in CELLS if (Path(results_dir) / f"predictions_{d}.csv").exists()]


def record_classes(results_dir, labels=None) -> list[str]:
    """A record's classes in label-index order: its first predictions file's p[...] columns, else (no
    predictions) the order ``labels`` give (lib.data.domains.order)."""
    cells = cells_of(results_dir)
    if cells:
        return results.classes_of(pd.read_csv(Path(results_dir) / f"predictions_{cells[0]}.csv", nrows=1))
    return domains.order([] if labels is None else labels)
