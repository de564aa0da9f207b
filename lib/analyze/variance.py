"""Variance components of AUROC(a) and TR from a nested run: generator seeds x classifier repeats x test images.

A record with ``classifier.repeats`` R > 1 keeps each repeat's predictions (lib.evaluate.repeats). Repeat j of seed i
gives one estimate x_ij on the seed's test sample, and B test-image bootstrap replicates of it (the same resampled
images for every repeat of the seed, and for AUROC(a) and TRTR inside TR). Method of moments (one-way random effects,
unbalanced allowed):
  - between repeats within a seed (classifier training: seed, validation split): MS_within;
  - between seeds: (MS_between - MS_within) / n0, minus the test-sample part below (each seed tests on its own sample,
    shared by its repeats, so that noise moves whole seeds);
  - test images within a repeat: the mean bootstrap variance of x_ij.
Negative moment estimates are set to 0 (and their share with them). A single-seed, single-repeat estimate has variance
seed + repeat + test; the mean of R repeats of one seed has seed + test + repeat / R, which is what
lib.analyze.power.plan assumes (``plan_inputs``). With two seeds the between-seed part rests on one degree of freedom.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import power
from ..evaluate import repeats as evaluate_repeats, results

METRICS = {"auroc_a": "AUROC(a)", "tr": "TR"}
PARTS = ("seed", "repeat", "test")


# ------------------------------------------------------------------------------------- estimator
def nested(estimates: pd.DataFrame, test_var=None) -> dict:
    """Components from one estimate per (seed, repeat) (columns seed, repeat, value) and the bootstrap variance of
    each (``test_var``: a column ``test_var`` of ``estimates``, a number, or None for no test part)."""
    d = estimates.dropna(subset=["value"])
    g = d.groupby("seed")["value"]
    n_i, means = g.size().to_numpy(float), g.mean()
    S, N = len(n_i), n_i.sum()
    out = {"n_seeds": S, "n_estimates": int(N), "repeats": float(n_i.mean()) if S else math.nan}
    ss_w = float(((d["value"] - d["seed"].map(means)) ** 2).sum())
    ms_w = ss_w / (N - S) if N > S else math.nan
    if S > 1:
        ms_b = float((n_i * (means.to_numpy() - d["value"].mean()) ** 2).sum()) / (S - 1)
        n0 = (N - (n_i ** 2).sum() / N) / (S - 1)
        between = (ms_b - (ms_w if np.isfinite(ms_w) else 0.0)) / n0
    else:
        between = math.nan
    if test_var is None:
        v_test = 0.0
    elif isinstance(test_var, (int, float)):
        v_test = float(test_var)
    else:
        v_test = float(np.nanmean(d["test_var"] if isinstance(test_var, str) else test_var))
    out.update(var_repeat=max(ms_w, 0.0) if np.isfinite(ms_w) else math.nan, var_test=v_test,
               var_seed=max(between - v_test, 0.0) if np.isfinite(between) else math.nan,
               var_seed_raw=between - v_test,          # untruncated: unbiased, may be negative
               var_between_seeds=between, mean=float(d["value"].mean()) if N else math.nan)
    total = sum(out[f"var_{p}"] for p in PARTS)
    for p in PARTS:
        out[f"sd_{p}"] = math.sqrt(out[f"var_{p}"]) if np.isfinite(out[f"var_{p}"]) else math.nan
        out[f"share_{p}"] = out[f"var_{p}"] / total if np.isfinite(total) and total > 0 else math.nan
    return out


# ----------------------------------------------------------------------------------- from outputs
def _estimates(arrays: dict, n_boot: int, seed: int) -> pd.DataFrame:
    """Per (seed, repeat): AUROC(a) and TR on the full test sample, and their bootstrap variances. ``arrays`` maps
    (seed, repeat, cell) to (image ids, class indices, outputs) for cells a and trtr (the same real test sample)."""
    rows = []
    for s in sorted({k[0] for k in arrays}):
        reps = sorted(r for (s2, r, c) in arrays if s2 == s and c == "a" and (s, r, "trtr") in arrays)
        if not reps:
            continue
        ids, y, _ = arrays[(s, reps[0], "a")]
        order = np.argsort(ids, kind="stable")
        idx = np.random.default_rng([seed, int(s)]).integers(0, len(y), (n_boot, len(y)))
        for r in reps:
            a, t = (_aligned(arrays[(s, r, c)], ids[order]) for c in ("a", "trtr"))
            auc = {c: evaluate_repeats.auroc_of(y[order], o) for c, o in (("a", a), ("trtr", t))}
            boot = {c: np.array([evaluate_repeats.auroc_of(y[order][i], o[i]) for i in idx])
                    for c, o in (("a", a), ("trtr", t))}
            tr_boot = _tr(boot["a"], boot["trtr"])
            rows.append({"seed": s, "repeat": r, "auroc_a": auc["a"], "tr": float(_tr(auc["a"], auc["trtr"])),
                         "auroc_a_test_var": float(np.nanvar(boot["a"], ddof=1)),
                         "tr_test_var": float(np.nanvar(tr_boot, ddof=1))})
    return pd.DataFrame(rows)


def _aligned(arr: tuple, ids: np.ndarray) -> np.ndarray:
    """A repeat's outputs in the order of ``ids`` (an error when it answers other images)."""
    own, _, o = arr
    pos = pd.Series(np.arange(len(own)), index=own)
    if len(own) != len(ids) or not pos.index.isin(ids).all():
        raise ValueError("the repeats of one seed answer different test images; they cannot be compared.")
    return o[pos.loc[ids].to_numpy()]


def _tr(a, t):
    a, t = np.asarray(a, float), np.asarray(t, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t != 0.5, (a - 0.5) / (t - 0.5), np.nan)


def components(arrays: dict, n_boot: int = 200, seed: int = 0) -> dict[str, dict]:
    """{metric: nested(...)} for AUROC(a) and TR, from per-repeat outputs (see _estimates)."""
    est = _estimates(arrays, n_boot, seed)
    if est.empty:
        return {}
    return {m: nested(est.assign(value=est[m], test_var=est[f"{m}_test_var"]), "test_var") for m in METRICS}


def from_predictions(df: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> dict[str, dict]:
    """Components from a long frame: seed, repeat, cell (a, trtr), image_id, y (class index) and output columns
    (``p[<class>]``, or p0 and p1)."""
    cols = [c for c in df.columns if c.startswith("p[")] or ["p0", "p1"]
    arrays = {(s, r, c): (g["image_id"].to_numpy(), g["y"].to_numpy(int), g[cols].to_numpy(float))
              for (s, r, c), g in df.groupby(["seed", "repeat", "cell"])}
    return components(arrays, n_boot, seed)


def from_records(df: pd.DataFrame, by: tuple[str, ...] = ("method", "tuning_size", "setting"), n_boot: int = 200,
                 seed: int = 0) -> pd.DataFrame:
    """The components of every group of collected records (lib.analyze.collection) that carry repeats (R > 1),
    read from their per-repeat predictions; one row per group and metric (``table``). Empty when none does."""
    if "repeats" not in df or not (pd.to_numeric(df["repeats"], errors="coerce") > 1).any():
        return pd.DataFrame()
    df = df[pd.to_numeric(df["repeats"], errors="coerce") > 1]
    keys = [k for k in by if k in df]
    parts = []
    for name, g in df.groupby(keys, dropna=False, sort=False):
        arrays = {}
        for _, rec in g.iterrows():
            for r in range(int(rec["repeats"])):
                for cell in ("a", "trtr"):
                    arrays[(int(rec["seed"]), r, cell)] = cell_arrays(Path(rec["results_dir"]), cell, r,
                                                                      int(rec["repeats"]))
        t = table(components(arrays, n_boot, seed))
        values = name if isinstance(name, tuple) else (name,)
        for k, v in reversed(list(zip(keys, values))):
            t.insert(0, k, v)
        parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def cell_arrays(results_dir: Path, cell: str, repeat: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, class indices, N x k outputs) of one repeat's predictions of a cell (lib.evaluate.repeats)."""
    pred = results.read_predictions(evaluate_repeats.predictions_path(results_dir, cell, repeat, n))
    y, o = results.arrays(pred)
    return pred["image_id"].to_numpy(), y, np.stack([1 - o, o], 1) if o.ndim == 1 else o


# ---------------------------------------------------------------------------------- presentation
def table(comp: dict[str, dict]) -> pd.DataFrame:
    """One row per metric: seeds, repeats per seed, and the s.d. and share of each component."""
    rows = []
    for m, c in comp.items():
        row = {"metric": METRICS.get(m, m), "seeds": c["n_seeds"], "repeats": c["repeats"], "mean": c["mean"]}
        for p in PARTS:
            row[f"sd_{p}"], row[f"share_{p}"] = c[f"sd_{p}"], c[f"share_{p}"]
        rows.append(row)
    return pd.DataFrame(rows).round(4)


def plan_inputs(comp: dict, difference: bool = True) -> tuple[float, float]:
    """(sd_generator, sd_classifier) for lib.analyze.power.plan from one metric's components: what R repeats do not
    shrink (seeds and test sample) and what they do (one classifier's training). For a paired difference of two
    methods (``difference``) each part counts twice (independent generators and classifiers; the shared test
    sample's cancellation is ignored, so the plan errs towards more seeds)."""
    k = 2.0 if difference else 1.0
    return math.sqrt(k * (comp["var_seed"] + comp["var_test"])), math.sqrt(k * comp["var_repeat"])


def plan(comp: dict, delta: float, seconds_generator: float, seconds_classifier: float,
         difference: bool = True, max_repeats: int = 8) -> pd.DataFrame:
    """Generator seeds x classifier repeats that find ``delta`` at 80% power, cheapest first (power.plan)."""
    sd_g, sd_c = plan_inputs(comp, difference)
    return power.plan(delta, sd_g, sd_c, seconds_generator, seconds_classifier, max_repeats=max_repeats)

