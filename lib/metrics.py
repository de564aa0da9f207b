"""Classification metrics, the trainability matrix, chance-aware ratios and bootstrap intervals.

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


def summary(y_true, outputs, threshold: float = 0.5) -> dict:
    """Every metric of one evaluation, as a flat dict (per-class keys carry the class name).

    ``outputs`` holds one sigmoid output per class (N x 2). The overall AUROC and every thresholded
    metric use the binary score p1 / (p0 + p1); the per-class AUROC of class c uses output c alone,
    one-vs-rest, as CheXNet reports one AUROC per label. A 1-D ``outputs`` is taken as that score.
    """
    out2 = _outputs(outputs)
    y, s = _check(y_true, score_of(out2))
    pred = (s >= threshold).astype(int)
    cm = confusion(y, pred)
    out = {"n": int(len(y)), "auroc": auroc(y, s), "accuracy": float(np.mean(pred == y))}
    recalls = []
    for c, name in enumerate(LABELS):
        tp = cm[c, c]; fp = cm[:, c].sum() - tp; fn = cm[c, :].sum() - tp
        prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        recalls.append(rec)
        out[f"auroc[{name}]"] = auroc(y == c, out2[:, c])
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


def _outputs(outputs) -> np.ndarray:
    """N x 2 per-class outputs; a 1-D score s stands for the outputs (1 - s, s)."""
    o = np.asarray(outputs, dtype=np.float64)
    return np.stack([1 - o, o], axis=1) if o.ndim == 1 else o


def score_of(outputs) -> np.ndarray:
    """The binary score of per-class outputs: p1 / (p0 + p1) (a 1-D score is returned as it is)."""
    o = _outputs(outputs)
    return o[:, 1] / np.clip(o.sum(1), 1e-12, None)


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


# ---------------------------------------------------------------------- the trainability matrix
# Cells of the matrix: which classifier (trained on) meets which test set.
CELLS = {"a": ("synthetic", "real"), "b": ("real", "synthetic"), "trtr": ("real", "real"),
         "tsts": ("synthetic", "synthetic")}
CELL_NAMES = {"a": "TSTR (a)", "b": "TRTS (b)", "trtr": "TRTR", "tsts": "TSTS"}


def _reps(y, s, idx: np.ndarray) -> np.ndarray:
    """AUROC of each bootstrap replicate, given the replicates' row indices (n_boot x n)."""
    return np.array([auroc(y[i], s[i]) for i in idx])


def ratios(aurocs: dict[str, float], reps: dict[str, np.ndarray], level: float = 0.95) -> dict:
    """FTER = a / b (the thesis's), chance-corrected FTER = (a - .5) / (b - .5) and the trainability
    ratio TR = (a - .5) / (TRTR - .5), each with a percentile CI over the paired replicates. A ratio
    whose denominator's CI reaches chance (or 0 for FTER) is undefined: NaN and a reason, never a number."""
    from . import stats

    out = {}
    for name, (num, den, fn) in {"fter": ("a", "b", stats.plain_ratio), "cc_fter": ("a", "b", stats.chance_ratio),
                                 "tr": ("a", "trtr", stats.chance_ratio)}.items():
        if num not in aurocs or den not in aurocs:
            continue
        r = fn(aurocs[num], aurocs[den], reps[num], reps[den], level=level)
        out.update({name: r["value"], f"{name}_ci_low": r["ci_low"], f"{name}_ci_high": r["ci_high"],
                    f"{name}_defined": bool(r["defined"]), f"{name}_note": r["reason"]})
    return out


def matrix(cells: dict[str, tuple], threshold: float = 0.5, n_boot: int = 200, seed: int = 0,
           detection: tuple | None = None) -> dict:
    """Every cell of the trainability matrix (prefix a_, b_, trtr_, tsts_), detection AUROC (det_) and
    the three ratios, as one flat dict. ``cells`` maps a cell to (0/1 labels, N x 2 outputs).

    Cells that share a test set (a and trtr: the real test set; b and tsts: held-out synthetic) are
    resampled with the same row indices, so TR's interval is paired; the two test sets are resampled
    independently. ``detection`` is (0/1 synthetic flags, P(synthetic), class labels of the images).
    """
    rng = np.random.default_rng(seed)
    test_of = {k: CELLS[k][1] for k in cells}
    sizes = {t: len(cells[k][0]) for k, t in test_of.items()}
    idx = {t: rng.integers(0, n, (n_boot, n)) for t, n in sorted(sizes.items())}
    out, aurocs, reps = {}, {}, {}
    for k, (y, o) in cells.items():
        m = summary(y, o, threshold)
        y, s = _check(y, score_of(o))
        reps[k] = _reps(y, s, idx[test_of[k]])
        m["auroc_ci_low"], m["auroc_ci_high"] = _interval(reps[k])
        out.update({f"{k}_{name}": v for name, v in m.items()})
        aurocs[k] = m["auroc"]
    out.update(ratios(aurocs, reps))
    if detection is not None:
        out.update(detection_metrics(*detection, n_boot=n_boot, seed=seed + 7))
    return out


def detection_metrics(is_synthetic, p_synthetic, labels, n_boot: int = 200, seed: int = 0) -> dict:
    """Distinguishability: AUROC of a real-vs-synthetic classifier on held-out images (0.5 means the
    two cannot be told apart), overall and within each class, with bootstrap CIs."""
    y, s = _check(is_synthetic, p_synthetic)
    labels = np.asarray(labels)
    out = {"det_n": int(len(y)), "det_auroc": auroc(y, s)}
    out["det_auroc_ci_low"], out["det_auroc_ci_high"] = auroc_ci(y, s, n_boot, seed)
    for c, name in enumerate(LABELS):
        m = labels == name
        out[f"det_auroc[{name}]"] = auroc(y[m], s[m])
        lo, hi = auroc_ci(y[m], s[m], n_boot, seed + 1 + c)
        out[f"det_auroc[{name}]_ci_low"], out[f"det_auroc[{name}]_ci_high"] = lo, hi
    return out
