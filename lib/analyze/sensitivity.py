"""Dose-response of the trainability ratio (issue 22, deliverable 7): the partly-shuffled reference series.

``generation.kind: partly-shuffled`` (lib.generate.references) keeps real-holdout's images and permutes the labels
of ``generation.shuffled_fraction`` of each class: at 0 it is real-holdout's set (TR about 1), at 1 label-shuffled's
(TR about 0). A metric that measures label signal must fall monotonically between them. ``table`` gives TR per
fraction (seed mean with its t-interval over seeds, none below 3 seeds), ``fit`` the line through it: each seed's
least-squares slope, intercept and R^2 (and the quadratic term of a second-degree fit, the curvature), then a
t-interval over seeds of each, so the seed is the unit as everywhere else in notebook 06.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core import atomic, paths
from . import power

KIND = "partly-shuffled"
COLUMNS = ["fraction", "seeds", "tr", "tr_ci_low", "tr_ci_high", "tr_sd", "auroc_a", "auroc_a_ci_low",
           "auroc_a_ci_high", "tr_fit"]


def series(records: pd.DataFrame) -> pd.DataFrame:
    """One row per partly-shuffled record: fraction, seed, tr, auroc_a (empty when the records hold none)."""
    if records.empty or "method" not in records:
        return pd.DataFrame(columns=["fraction", "seed", "tr", "auroc_a"])
    part = records[records["method"] == KIND]
    return pd.DataFrame({"fraction": [float(p["generation"]["shuffled_fraction"]) for p in part["params"]],
                         "seed": part["seed"].astype(int).to_numpy(),
                         "tr": part["tr"].astype(float).to_numpy() if "tr" in part else np.nan,
                         "auroc_a": part["auroc_a"].astype(float).to_numpy()}).sort_values(["fraction", "seed"],
                                                                                           ignore_index=True)


def _per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Each seed's line through its finite (fraction, TR) points: slope, intercept, R^2, curvature."""
    rows = []
    for seed, g in df[np.isfinite(df["tr"])].groupby("seed"):
        x, y = g["fraction"].to_numpy(float), g["tr"].to_numpy(float)
        if len(np.unique(x)) < 3:       # a curvature needs three distinct fractions
            continue
        slope, intercept = np.polyfit(x, y, 1)
        ss = float(((y - y.mean()) ** 2).sum())
        r2 = 1 - float(((y - (intercept + slope * x)) ** 2).sum()) / ss if ss > 0 else np.nan
        curvature = np.polyfit(x, y, 2)[0]
        by_f = g.groupby("fraction")["tr"].mean().sort_index().to_numpy()
        rows.append({"seed": seed, "slope": slope, "intercept": intercept, "r2": r2, "curvature": curvature,
                     "monotonic": bool(np.all(np.diff(by_f) < 0))})
    return pd.DataFrame(rows, columns=["seed", "slope", "intercept", "r2", "curvature", "monotonic"])


def fit(df: pd.DataFrame, level: float = 0.95) -> dict:
    """Slope, intercept, R^2 and curvature as seed means with t-intervals over seeds (NaN below 3 seeds), and
    whether the seed-mean TR falls strictly with every step of the fraction (``monotonic``) and in how many seeds
    it does. ``df``: fraction, seed, tr (``series``)."""
    per = _per_seed(df)
    out = {"seeds": len(per), "monotonic_seeds": int(per["monotonic"].sum())}
    for name in ("slope", "intercept", "r2", "curvature"):
        s = power.seed_interval(per[name], level)
        out.update({f"{name}_mean": s["mean"], f"{name}_low": s["low"], f"{name}_high": s["high"]})
    out["r2_high"] = min(out["r2_high"], 1.0)          # R^2 is at most 1; the t-interval does not know it
    means = df[np.isfinite(df["tr"])].groupby("fraction")["tr"].mean().sort_index().to_numpy()
    out["monotonic"] = bool(len(means) > 1 and np.all(np.diff(means) < 0))
    return out


def table(df: pd.DataFrame, fitted: dict | None = None, level: float = 0.95) -> pd.DataFrame:
    """Per fraction: TR and AUROC(a) as seed means with t-intervals over seeds, and the fitted line's TR."""
    fitted = fit(df, level) if fitted is None else fitted
    rows = []
    for f, g in df.groupby("fraction", sort=True):
        tr, a = power.seed_interval(g["tr"], level), power.seed_interval(g["auroc_a"], level)
        rows.append({"fraction": f, "seeds": tr["n"], "tr": tr["mean"], "tr_ci_low": tr["low"],
                     "tr_ci_high": tr["high"], "tr_sd": tr["sd"], "auroc_a": a["mean"], "auroc_a_ci_low": a["low"],
                     "auroc_a_ci_high": a["high"],
                     "tr_fit": fitted["intercept_mean"] + fitted["slope_mean"] * f})
    return pd.DataFrame(rows, columns=COLUMNS)


def describe(t: pd.DataFrame, fitted: dict) -> str:
    """One paragraph: TR at each fraction, the slope, the linearity, and whether TR falls monotonically."""
    def ci(lo, hi):
        return f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "(n<3)"

    points = "; ".join(f"{r.fraction:.0%}: {r.tr:.2f} {ci(r.tr_ci_low, r.tr_ci_high)}" for r in t.itertuples())
    f = fitted
    return (f"Dose-response (partly-shuffled, {f['seeds']} seed(s) with a fit): TR by label-free share {points}. "
            f"Slope {f['slope_mean']:.2f} {ci(f['slope_low'], f['slope_high'])}, intercept "
            f"{f['intercept_mean']:.2f} {ci(f['intercept_low'], f['intercept_high'])}; linearity R^2 "
            f"{f['r2_mean']:.3f} {ci(f['r2_low'], f['r2_high'])}, curvature (quadratic term) "
            f"{f['curvature_mean']:.2f} {ci(f['curvature_low'], f['curvature_high'])}. Seed-mean TR falls "
            f"{'monotonically' if f['monotonic'] else 'NOT monotonically'} ({f['monotonic_seeds']} of {f['seeds']} "
            "seeds monotonic on their own).")


def save(t: pd.DataFrame, fitted: dict, figures_dir) -> list:
    """06_sensitivity.csv (per fraction) and 06_sensitivity_fit.csv (the line, one row) in the figures folder."""
    out = paths.resolve(figures_dir)
    return [atomic.write_csv(out / "06_sensitivity.csv", t),
            atomic.write_csv(out / "06_sensitivity_fit.csv", pd.DataFrame([fitted]))]
