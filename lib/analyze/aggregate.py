"""Statistics over seeds of the collected records (lib.analyze.collection): per method, tuning size and
setting the mean, s.d. and t-interval of every metric, and two-level bootstrap CIs (seeds, then test images)
of the seed-mean AUROCs and of the ratios of those means.

A record also carries the synthetic set's fidelity, diversity and memorization (``fidelity.fid``,
``memorization.copy_fraction``, ... each with its image-bootstrap CI; stage 05, lib.evaluate.fidelity).
``summary`` averages them over seeds like the matrix's metrics (``fidelity_summary``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from ..core import stats
from ..evaluate import metrics
from . import power
from .collection import GROUP, metric_columns
from .matrix import CELLS, RATIOS, cells_of, read_predictions


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    n1 = y.sum(); n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        return np.nan
    return (rankdata(s)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1)


SIDE = {"a": "real", "trtr": "real", "b": "synthetic", "tsts": "synthetic"}   # which test set a cell uses


def _cell_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """The fast binary AUROC of a score, or the macro one-vs-rest AUROC of N x k probabilities."""
    return _auroc(y, s) if s.ndim == 1 else metrics.macro_auroc(y, s)


def _scores(y, s, o) -> tuple[np.ndarray, np.ndarray]:
    """What a cell's AUROC is taken of: the binary score, or the normalised outputs of more classes."""
    return (y, s) if o.shape[1] == 2 else (y, metrics.probabilities(o))


def _load(results_dir) -> tuple[dict, tuple | None]:
    """Per cell (labels, scores or N x k probabilities); the detector's (is_synthetic, score) when the
    record has one."""
    cells = {d: _scores(*read_predictions(results_dir, d)) for d in cells_of(results_dir)}
    det = Path(results_dir) / "predictions_det.csv"
    if det.exists():
        p = pd.read_csv(det)
        return cells, ((p["source"] == "synthetic").to_numpy().astype(int), p["score"].to_numpy(float))
    return cells, None


def _seed_aurocs(cells: dict, det, rng=None) -> dict:
    """AUROC of every cell (and the detector) of one seed; with ``rng``, on resampled test rows, the
    cells that share a test set sharing the same rows."""
    out, idx = {}, {}
    for d, (y, s) in cells.items():
        ix = idx.setdefault(SIDE[d], rng.integers(0, len(y), len(y)) if rng is not None else slice(None))
        out[d] = _cell_auroc(y[ix], s[ix])
    if det is not None:
        ix = rng.integers(0, len(det[0]), len(det[0])) if rng is not None else slice(None)
        out["det"] = _auroc(det[0][ix], det[1][ix])
    return out


def _pooled(means: dict) -> dict:
    """The ratios of seed-mean AUROCs."""
    out = {}
    for name, (num, den, chance) in RATIOS.items():
        if num in means and den in means:
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = float(np.float64(means[num] - chance) / np.float64(means[den] - chance))
    return out


def bootstrap_ci(results_dirs: list, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Two-level percentile CIs of the seed-mean AUROCs and of the ratios of those means: a replicate
    draws seeds with replacement, then test rows within each drawn seed, so the interval holds the
    spread between seeds (generator and classifier training) as well as test-set sampling. A ratio
    whose denominator's interval reaches chance is undefined (NaN, ``<ratio>_defined`` False)."""
    rng = np.random.default_rng(seed)
    data = [_load(d) for d in results_dirs]
    point = pd.DataFrame([_seed_aurocs(c, det) for c, det in data]).mean().to_dict()
    point.update(_pooled(point))
    reps = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(data), len(data))
        means = pd.DataFrame([_seed_aurocs(*data[i], rng=rng) for i in picks]).mean().to_dict()
        reps.append({**means, **_pooled(means)})
    reps = pd.DataFrame(reps)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for name in reps.columns:
        if name in RATIOS:
            continue
        v = reps[name].to_numpy(float)
        v = v[np.isfinite(v)]
        key = f"auroc_{name}" if name in CELLS or name == "det" else name
        out[f"{key}_pooled"] = point.get(name, np.nan)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = np.percentile(v, [lo, hi]) if len(v) else (np.nan, np.nan)
    out.update(ratio_intervals(point, reps, level))
    return out


def ratio_intervals(point: dict, reps: pd.DataFrame, level: float = 0.95) -> dict:
    """Each ratio of seed-mean AUROCs with its interval, under the one rule lib.core.stats applies to point
    estimates and replicates alike: undefined when the denominator's interval reaches its pole, and a replicate
    whose denominator is at or past the pole counted in the tail its numerator's sign gives."""
    out = {}
    for name, (num, den, pole) in RATIOS.items():
        if num not in reps or den not in reps:
            continue
        r = stats.chance_ratio(point[num], point[den], reps[num], reps[den], chance=pole, level=level)
        out.update({f"{name}_pooled": r["value"], f"{name}_ci_low": r["ci_low"], f"{name}_ci_high": r["ci_high"],
                    f"{name}_defined": bool(r["defined"])})
    return out


def summary(df: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per method, tuning size and gating setting: seeds, mean and std of every metric over seeds, the
    t-interval over seeds (the primary statement; NaN below 3 seeds), and two-level bootstrap CIs (seeds, then
    test images), kept for the figures and for within-seed statements."""
    cols = metric_columns(df)
    if df.empty:
        return pd.DataFrame(columns=GROUP + ["n_seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")])
    rows = []
    for key, g in df.groupby(GROUP, sort=False):
        row = dict(zip(GROUP, key), n_seeds=len(g), seeds=",".join(map(str, sorted(g["seed"]))))
        for c in cols:
            t = power.seed_interval(g[c].astype(float).to_numpy())     # no interval below 3 seeds
            row.update({f"{c}_mean": t["mean"], f"{c}_std": t["sd"], f"{c}_t_low": t["low"], f"{c}_t_high": t["high"],
                        f"{c}_n": t["n"]})
        row.update(bootstrap_ci(list(g["results_dir"]), n_boot, seed))
        row.update(fidelity_summary(g, n_boot, seed))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------- fidelity over seeds
# Record fields (overall values; each has _ci_low/_ci_high) -> (table header, column)
FIDELITY = {"fidelity.fid": ("Fidelity", "FID"), "fidelity.kid": ("Fidelity", "KID"),
            "fidelity.precision": ("Fidelity", "precision"), "fidelity.density": ("Fidelity", "density"),
            "fidelity.recall": ("Diversity", "recall"), "fidelity.coverage": ("Diversity", "coverage"),
            "fidelity.diversity_synthetic": ("Diversity", "(MS-)SSIM syn."),
            "fidelity.diversity_real": ("Diversity", "(MS-)SSIM real"),
            "memorization.copy_fraction": ("Memorization", "copies"),
            "memorization.ratio_median": ("Memorization", "d seen / d unseen")}
_FIDELITY_RANGE = {"fid": (0, np.inf), "density": (0, np.inf), "ratio_median": (0, np.inf),
                   "diversity_synthetic": (-1, 1), "diversity_real": (-1, 1), "kid": (-np.inf, np.inf)}
_FIDELITY_SALT = 0xF1D


def fidelity_summary(g: pd.DataFrame, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Each fidelity metric (FIDELITY) of one method's runs: mean, s.d. and t-interval over seeds, and
    ``_pooled`` (the seed mean) with a two-level percentile CI. A replicate draws seeds with replacement,
    then each drawn seed's value from its image-bootstrap distribution, approximated by the two-piece normal
    that matches the record's own 95% CI (sd (value - ci_low) / 1.96 below, (ci_high - value) / 1.96 above,
    clipped to the metric's range): stage 05 keeps the CI, not the replicates. With one seed the interval is
    about that seed's own. Records without the fields (older runs) give NaN."""
    def column(name):
        return g[name].astype(float).to_numpy() if name in g else np.full(len(g), np.nan)

    rng = np.random.default_rng([seed, _FIDELITY_SALT])
    z = norm.ppf((1 + level) / 2)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    kinds = g["param.fidelity.extractor"].dropna().astype(str) if "param.fidelity.extractor" in g else []
    out = {"fidelity_extractor": ", ".join(sorted(set(kinds))) if "fidelity.fid" in g else ""}
    for key in FIDELITY:
        v, lo, hi = column(key), column(f"{key}_ci_low"), column(f"{key}_ci_high")
        t = stats.seed_summary(v, level)
        out.update({f"{key}_mean": t["mean"], f"{key}_std": t["sd"], f"{key}_t_low": t["t_low"],
                    f"{key}_t_high": t["t_high"]})
        ok = np.isfinite(v) & np.isfinite(lo) & np.isfinite(hi)
        v, lo, hi = v[ok], lo[ok], hi[ok]
        if not len(v):
            out[f"{key}_pooled"] = out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = np.nan
            continue
        below, above = np.maximum(v - lo, 0) / z, np.maximum(hi - v, 0) / z
        picks = rng.integers(0, len(v), (n_boot, len(v)))
        e = rng.standard_normal((n_boot, len(v)))
        draws = np.clip(v[picks] + np.where(e < 0, e * below[picks], e * above[picks]),
                        *_FIDELITY_RANGE.get(key.split(".", 1)[1], (0, 1)))
        out[f"{key}_pooled"] = float(v.mean())
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = (float(x) for x in np.percentile(draws.mean(1), q))
    return out
