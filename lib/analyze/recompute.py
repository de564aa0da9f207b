"""Every reported metric recomputed with scikit-learn from the saved predictions alone, independently of
the code that wrote the record (lib.evaluate.metrics), and compared with the record (``check``). With more
than two classes the overall AUROC is the macro one-vs-rest AUROC and a decision the largest output.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .matrix import RATIOS, cells_of, read_predictions, record_classes


class AnalysisMismatch(AssertionError):
    """A reported number differs from the one recomputed from the raw predictions."""



def _sk_auroc(y, s) -> float:
    """scikit-learn's AUROC, NaN where one class is absent (as lib.evaluate.metrics has it)."""
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, s) if len(np.unique(y)) == 2 else np.nan


def _recompute_cell(d: str, y, s, o, threshold: float, classes: list[str]) -> dict:
    """One cell's metrics with scikit-learn. Binary: the score against the threshold; more classes: the
    macro one-vs-rest AUROC of the row-normalised outputs and the largest output as the decision."""
    from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

    if len(classes) == 2:
        pred, overall = (s >= threshold).astype(int), roc_auc_score(y, s)
    else:
        p = o / o.sum(1, keepdims=True)
        pred = p.argmax(1)
        present = len(np.unique(y)) == len(classes)     # sklearn refuses an absent class; it is NaN here
        overall = roc_auc_score(y, p, multi_class="ovr", average="macro") if present else np.nan
    out = {f"auroc_{d}": overall, f"acc_{d}": accuracy_score(y, pred)}
    for c, name in enumerate(classes):
        out[f"auroc_{d}_{name}"] = _sk_auroc(y == c, o[:, c])
        out[f"acc_{d}_{name}"] = recall_score(y, pred, labels=[c], average=None, zero_division=0)[0]
    return out


def _recompute_one(r: pd.Series) -> dict:
    """One record's metrics with scikit-learn: per-class AUROC from each class's own output."""
    from sklearn.metrics import roc_auc_score

    out, det = {}, Path(r["results_dir"]) / "predictions_det.csv"
    p = pd.read_csv(det) if det.exists() else None
    classes = record_classes(r["results_dir"], None if p is None else p["label"])
    n = int(r["repeats"]) if pd.notna(r.get("repeats", np.nan)) else 1    # classifier repeats: mean of estimates
    for d in cells_of(r["results_dir"]):
        parts = [_recompute_cell(d, *read_predictions(r["results_dir"], d if n == 1 else f"{d}_r{j}"),
                                 r["decision_threshold"], classes) for j in range(n)]
        out.update({k: float(np.mean([p[k] for p in parts])) for k in parts[0]})
    if p is not None:
        out["auroc_det"] = roc_auc_score(p["source"] == "synthetic", p["score"])
        for name in classes:
            q = p[p["label"].astype(str) == name]
            out[f"auroc_det_{name}"] = _sk_auroc(q["source"] == "synthetic", q["score"])
    if _not_estimable(r):          # the held-out cells were too small to measure: recorded as NaN (see below)
        out = {k: (np.nan if _HELD_OUT.search(k) else v) for k, v in out.items()}
    for name, (num, den, chance) in RATIOS.items():
        if f"auroc_{num}" in out and f"auroc_{den}" in out:
            defined = r.get(f"{name}_defined", True) in (True, "True")
            den_above = out[f"auroc_{den}"] - chance
            out[name] = (out[f"auroc_{num}"] - chance) / den_above if defined and den_above else np.nan
    return out


_HELD_OUT = re.compile(r"_(b|tsts|det)(_|$)")         # metrics measured on the held-out synthetic images


def _not_estimable(r: pd.Series) -> bool:
    """Whether the record says its held-out cells could not be estimated, checked against its own test_b.csv
    (counted here from the file: fewer than 2 unique images of some class), not taken on its word."""
    note = r.get("held_out_note")
    if not (isinstance(note, str) and note):
        return False
    test = pd.read_csv(Path(r["results_dir"]) / "test_b.csv", dtype=str)
    key = test["hash"] if "hash" in test and test["hash"].notna().all() else test["image_id"]
    unique = test.assign(key=key).groupby("label")["key"].nunique()
    classes = record_classes(r["results_dir"], None)
    if all(unique.get(c, 0) >= 2 for c in classes):
        raise AnalysisMismatch(f"{r['results_dir']} records its held-out cells as not estimable ({note}), but its "
                               f"test_b.csv holds {dict(unique)} unique images per class.")
    return True


def recompute(df: pd.DataFrame) -> pd.DataFrame:
    """Every metric of each record again, with scikit-learn, from its saved predictions only."""
    return pd.DataFrame([_recompute_one(r) for _, r in df.iterrows()], index=df.index)


def check(df: pd.DataFrame, atol: float = 1e-9) -> pd.DataFrame:
    """Compare every reported metric with its recomputation; raises AnalysisMismatch on any difference."""
    if df.empty:
        return pd.DataFrame(columns=["metric", "checked", "max_abs_diff"])
    again = recompute(df)
    report = []
    for c in again.columns:
        if c not in df.columns:
            continue
        diff = (df[c].astype(float) - again[c]).abs()
        diff[df[c].isna() & again[c].isna()] = 0.0        # undefined both ways is agreement
        report.append({"metric": c, "checked": int(diff.notna().sum()), "max_abs_diff": float(diff.max())})
        bad = diff.isna() | (diff > atol)
        if bad.any():
            i = bad.idxmax()
            raise AnalysisMismatch(f"{c} of {df.at[i, 'results_dir']} is {df.at[i, c]} in results.csv but "
                                   f"{again.at[i, c]} recomputed from the predictions.")
    return pd.DataFrame(report)
