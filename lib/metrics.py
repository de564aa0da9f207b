"""Classification metrics for the binary task, bootstrap intervals and the FTER.

Written in numpy (checked against scikit-learn in tests/test_metrics.py) so a metric can be recomputed
from saved predictions alone. Label 1 is "Unhealthy", label 0 "No Finding"; a score is P(label 1).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .nih import LABELS


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1.")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity.")
    return y, s


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half); NaN for one class."""
    y, s = _check(y_true, y_score)
    n1 = int(y.sum()); n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def confusion(y_true, y_pred) -> np.ndarray:
    """2 x 2 counts, rows = true class, columns = predicted class (scikit-learn's layout)."""
    y, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    return np.array([[np.sum((y == t) & (p == q)) for q in (0, 1)] for t in (0, 1)])


def _ratio(a, b) -> float:
    return float(a / b) if b else 0.0  # scikit-learn's zero_division=0 convention


def summary(y_true, y_score, threshold: float = 0.5) -> dict:
    """Every metric of one evaluation, as a flat dict (per-class keys carry the class name)."""
    y, s = _check(y_true, y_score)
    pred = (s >= threshold).astype(int)
    cm = confusion(y, pred)
    out = {"n": int(len(y)), "auroc": auroc(y, s), "accuracy": float(np.mean(pred == y))}
    recalls = []
    for c, name in enumerate(LABELS):
        tp = cm[c, c]; fp = cm[:, c].sum() - tp; fn = cm[c, :].sum() - tp
        prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        recalls.append(rec)
        # One-vs-rest AUROC of class c: the score for c is s (class 1) or 1 - s (class 0).
        out[f"auroc[{name}]"] = auroc(y == c, s if c == 1 else 1 - s)
        out[f"accuracy[{name}]"] = rec  # per-class accuracy = share of that class predicted correctly
        out[f"precision[{name}]"] = prec
        out[f"recall[{name}]"] = rec
        out[f"f1[{name}]"] = _ratio(2 * prec * rec, prec + rec)
        out[f"support[{name}]"] = int(cm[c, :].sum())
        out[f"predicted[{name}]"] = int(cm[:, c].sum())
    out["balanced_accuracy"] = float(np.mean(recalls))
    for t in (0, 1):
        for q in (0, 1):
            out[f"cm[{LABELS[t]}->{LABELS[q]}]"] = int(cm[t, q])
    out["collapsed"] = collapsed(pred)
    return out


def collapsed(y_pred) -> bool:
    """A classifier that puts every test image in the same class."""
    return len(np.unique(np.asarray(y_pred))) < 2


def _bootstrap_aurocs(y, s, n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n)
    for b in range(n):
        idx = rng.integers(0, len(y), len(y))
        out[b] = auroc(y[idx], s[idx])
    return out


def _interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def auroc_ci(y_true, y_score, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for AUROC (resamples that hold one class are dropped)."""
    y, s = _check(y_true, y_score)
    return _interval(_bootstrap_aurocs(y, s, n_boot, np.random.default_rng(seed)), level)


def fter(auroc_a: float, auroc_b: float) -> float:
    """FTER = AUROC(train synthetic, test real) / AUROC(train real, test synthetic)."""
    return float(auroc_a / auroc_b) if auroc_b and np.isfinite(auroc_b) else float("nan")


def fter_ci(y_a, s_a, y_b, s_b, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval for FTER, resampling both test sets independently in each replicate."""
    y_a, s_a = _check(y_a, s_a)
    y_b, s_b = _check(y_b, s_b)
    rng = np.random.default_rng(seed)
    a = _bootstrap_aurocs(y_a, s_a, n_boot, rng)
    b = _bootstrap_aurocs(y_b, s_b, n_boot, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _interval(a / b, level)


def evaluate(y_true, y_score, threshold: float = 0.5, n_boot: int = 200, seed: int = 0) -> dict:
    """summary() plus the AUROC bootstrap interval."""
    out = summary(y_true, y_score, threshold)
    out["auroc_ci_low"], out["auroc_ci_high"] = auroc_ci(y_true, y_score, n_boot, seed)
    return out


def two_way(y_a, s_a, y_b, s_b, threshold: float = 0.5, n_boot: int = 200, seed: int = 0) -> dict:
    """Both directions' metrics (prefixed a_ and b_), FTER and its interval, as one flat dict."""
    ma = evaluate(y_a, s_a, threshold, n_boot, seed)
    mb = evaluate(y_b, s_b, threshold, n_boot, seed + 1)
    out = {**{f"a_{k}": v for k, v in ma.items()}, **{f"b_{k}": v for k, v in mb.items()}}
    out["fter"] = fter(ma["auroc"], mb["auroc"])
    out["fter_ci_low"], out["fter_ci_high"] = fter_ci(y_a, s_a, y_b, s_b, n_boot, seed + 2)
    return out
