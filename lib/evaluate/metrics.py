"""Classification metrics, the trainability matrix, chance-aware ratios and bootstrap intervals.

Written in numpy (checked against scikit-learn in tests/test_metrics.py) so a metric can be recomputed
from saved predictions alone. Labels are class indices 0 .. k-1 and ``outputs`` hold one column per class.
Binary (the thesis's task: label 1 is "Unhealthy", label 0 "No Finding"), a score is P(label 1) and a
threshold decides. With k > 2 classes the decision is the largest output, and the overall AUROC is the
macro average of the one-vs-rest AUROCs of the normalised outputs (scikit-learn's
``roc_auc_score(multi_class="ovr", average="macro")``); for k = 2 that average equals the binary AUROC,
so one definition covers both, and chance is 0.5 either way.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
from scipy.stats import rankdata

from ..data.nih import LABELS


def class_names(k: int, classes=None) -> list[str]:
    """The names of k classes: ``classes``, the thesis's two by default, else "0" .. "k-1"."""
    if classes is not None:
        if len(classes) != k:
            raise ValueError(f"{k} output columns but {len(classes)} class names {list(classes)}.")
        return list(classes)
    return list(LABELS) if k == 2 else [str(i) for i in range(k)]


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


def confusion(y_true, y_pred, k: int = 2) -> np.ndarray:
    """k x k counts, rows = true class, columns = predicted class (scikit-learn's layout)."""
    y, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    return np.array([[np.sum((y == t) & (p == q)) for q in range(k)] for t in range(k)])


def probabilities(outputs) -> np.ndarray:
    """Per-class outputs normalised to sum to 1 per image (a 1-D score s stands for (1 - s, s))."""
    o = _outputs(outputs)
    return o / np.clip(o.sum(1, keepdims=True), 1e-12, None)


def _check_k(y_true, outputs) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and normalised N x k outputs, checked against each other."""
    p = probabilities(outputs)
    y = np.asarray(y_true).astype(int).ravel()
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} rows of outputs.")
    if not np.isfinite(p).all():
        raise ValueError("outputs contain NaN or infinity.")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be class indices 0 .. {p.shape[1] - 1}.")
    return y, p


def macro_auroc(y_true, outputs) -> float:
    """The mean over classes of the one-vs-rest AUROC of each normalised output; NaN when a class is absent.
    Two classes: the binary AUROC of P(class 1) (the two one-vs-rest AUROCs are equal)."""
    y, p = _check_k(y_true, outputs)
    if p.shape[1] == 2:
        return auroc(y, p[:, 1])
    per = [auroc(y == c, p[:, c]) for c in range(p.shape[1])]
    return float("nan") if any(np.isnan(per)) else float(np.mean(per))


def decide(outputs, threshold: float = 0.5) -> np.ndarray:
    """Predicted class indices: P(class 1) >= threshold for two classes, the largest output for more."""
    p = probabilities(outputs)
    return (p[:, 1] >= threshold).astype(int) if p.shape[1] == 2 else np.argmax(p, axis=1)


def _ratio(a, b) -> float:
    return float(a / b) if b else 0.0  # scikit-learn's zero_division=0 convention


def summary(y_true, outputs, threshold: float = 0.5, classes=None) -> dict:
    """Every metric of one evaluation, as a flat dict (per-class keys carry the class name).

    ``outputs`` holds one sigmoid output per class (N x k). The overall AUROC is macro_auroc (binary: the
    AUROC of p1 / (p0 + p1)); decisions are ``decide``'s; the per-class AUROC of class c uses output c
    alone, one-vs-rest, as CheXNet reports one AUROC per label. A 1-D ``outputs`` is taken as the binary
    score. ``classes`` names the columns (default: the thesis's two).
    """
    out2 = _outputs(outputs)
    y, _ = _check_k(y_true, out2)
    k = out2.shape[1]
    names = class_names(k, classes)
    pred = decide(out2, threshold)
    cm = confusion(y, pred, k)
    out = {"n": int(len(y)), "auroc": macro_auroc(y, out2), "accuracy": float(np.mean(pred == y))}
    recalls = []
    for c, name in enumerate(names):
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
    for t in range(k):
        for q in range(k):
            out[f"cm[{names[t]}->{names[q]}]"] = int(cm[t, q])
    out["collapsed"] = collapsed(pred)
    p = probabilities(out2)
    out.update({name: float(fn(y, p)) for name, fn in METRICS.items()})
    return out


# ------------------------------------------------------------------------------ metrics of your own
# A metric is a function of one cell's (class indices 0 .. k-1, N x k normalised outputs; for two classes column 1
# is P(class 1), the score) returning one number. Registered, every cell of the matrix computes it: the results
# record and results.csv get <cell>_<name> (a_<name>, b_<name>, trtr_<name>, tsts_<name>), stage 05's metric
# table a row, and results.recompute_from_predictions recomputes it from the saved predictions.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {}
BUILT_IN = ("n", "auroc", "accuracy", "balanced_accuracy", "collapsed", "auroc_ci_low", "auroc_ci_high")


def register(name: str):
    """Decorator: ``fn(labels, probabilities) -> float`` becomes the metric ``name`` of every cell."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in BUILT_IN or name in METRICS:
        raise ValueError(f"metric name {name!r} must be new (not {', '.join([*BUILT_IN, *METRICS])}) and written in "
                         "lower-case letters, digits and '_', starting with a letter.")

    def add(fn: Callable[[np.ndarray, np.ndarray], float]):
        METRICS[name] = fn
        return fn
    return add


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


def _reps(y, o, idx: np.ndarray) -> np.ndarray:
    """(Macro) AUROC of each bootstrap replicate, given the outputs and the replicates' row indices."""
    p = probabilities(o)
    if p.shape[1] == 2:
        s = p[:, 1]
        return np.array([auroc(y[i], s[i]) for i in idx])
    return np.array([macro_auroc(y[i], p[i]) for i in idx])


def ratios(aurocs: dict[str, float], reps: dict[str, np.ndarray], level: float = 0.95) -> dict:
    """FTER = a / b (the thesis's), chance-corrected FTER = (a - .5) / (b - .5) and the trainability
    ratio TR = (a - .5) / (TRTR - .5), each with a percentile CI over the paired replicates. A ratio
    whose denominator's CI reaches chance (or 0 for FTER) is undefined: NaN and a reason, never a number."""
    from ..core import stats

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
           detection: tuple | None = None, classes=None) -> dict:
    """Every cell of the trainability matrix (prefix a_, b_, trtr_, tsts_), detection AUROC (det_) and
    the three ratios, as one flat dict. ``cells`` maps a cell to (class indices, N x k outputs); ``classes``
    names the k classes (default: the thesis's two). Ratios use the (macro) AUROC.

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
        m = summary(y, o, threshold, classes)
        y, _ = _check_k(y, o)
        reps[k] = _reps(y, o, idx[test_of[k]])
        m["auroc_ci_low"], m["auroc_ci_high"] = _interval(reps[k])
        out.update({f"{k}_{name}": v for name, v in m.items()})
        aurocs[k] = m["auroc"]
    out.update(ratios(aurocs, reps))
    if detection is not None:
        out.update(detection_metrics(*detection, n_boot=n_boot, seed=seed + 7, classes=classes))
    return out


def detection_metrics(is_synthetic, p_synthetic, labels, n_boot: int = 200, seed: int = 0, classes=None) -> dict:
    """Distinguishability: AUROC of a real-vs-synthetic classifier on held-out images (0.5 means the
    two cannot be told apart), overall and within each class, with bootstrap CIs."""
    y, s = _check(is_synthetic, p_synthetic)
    labels = np.asarray(labels)
    out = {"det_n": int(len(y)), "det_auroc": auroc(y, s)}
    out["det_auroc_ci_low"], out["det_auroc_ci_high"] = auroc_ci(y, s, n_boot, seed)
    for c, name in enumerate(classes or _order(labels)):
        m = labels == name
        out[f"det_auroc[{name}]"] = auroc(y[m], s[m])
        lo, hi = auroc_ci(y[m], s[m], n_boot, seed + 1 + c)
        out[f"det_auroc[{name}]_ci_low"], out[f"det_auroc[{name}]_ci_high"] = lo, hi
    return out


def _order(labels) -> list[str]:
    from ..data.domains import order

    return order(labels)
