"""Calibrating the metrics on reference generators whose right answer is known.

A reference set (lib.generate.references) flows through stages 05-06 like any synthetic set. Some of its
numbers hold by construction, and a metric is trustworthy only if it puts the references in the
order their construction implies:
  - real-holdout is real data: TR's interval must contain 1;
  - label-shuffled carries no label signal: AUROC(a)'s interval must contain 0.5; given its permutation null
    (lib.analyze.permutation: the classifier retrained on permuted labels of the same training sample, at least 30
    draws), its seed mean must lie in the null's 95% range of the seed mean instead, which holds at any seed count.
``checks`` tests those statements on a study (the seed-level t-interval, none below 3 seeds); ``orderings`` lists
the order every metric gives. ``view_floor`` adds the AUROC the view (AP/PA) alone gives on the real pools
(lib.analyze.view_floor) as a row to read the references against: an AUROC(a) at or below it shows no more than
the view does.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.style import REFERENCES
from . import permutation
from . import view_floor as _view_floor

# (reference, metric, the value its interval must contain, why)
EXPECTED = [("real-holdout", "tr", 1.0, "unseen real images carry all of real data's signal"),
            ("label-shuffled", "auroc_a", 0.5, "permuted labels carry no label signal")]
METRICS = {"auroc_a": "AUROC(a)", "fter": "FTER", "cc_fter": "FTER (chance-corr.)", "tr": "TR",
           "auroc_det": "detection"}


def references(s: pd.DataFrame) -> pd.DataFrame:
    """The summary rows of reference generators, in their fixed order."""
    order = {m: i for i, m in enumerate(REFERENCES)}
    part = s[s["method"].isin(order)].copy()
    return part.assign(_o=part["method"].map(order)).sort_values("_o").drop(columns="_o")


def value(r: pd.Series, metric: str) -> tuple[float, float, float]:
    """(seed-mean value, CI low, CI high) of a summary row; NaN when undefined."""
    return tuple(float(r.get(f"{metric}_{k}", np.nan)) for k in ("pooled", "ci_low", "ci_high"))


def seed_value(r: pd.Series, metric: str) -> tuple[float, float, float, int]:
    """(seed mean, t-interval low, high, seeds) of a summary row: the seed-level statement (no interval
    below 3 seeds)."""
    v, lo, hi = (float(r.get(f"{metric}_{k}", np.nan)) for k in ("mean", "t_low", "t_high"))
    return v, lo, hi, int(r.get(f"{metric}_n", r.get("n_seeds", 0)) or 0)


def permutation_null(records: pd.DataFrame, draws: int = permutation.MIN_DRAWS, progress: bool = False) -> dict | None:
    """The label-shuffled runs' permutation null and its check (lib.analyze.permutation.label_shuffled); None when
    the records hold no label-shuffled run. Trains the draws not cached yet (one classifier each)."""
    return permutation.label_shuffled(records, total=draws, progress=progress)


def view_floor(records: pd.DataFrame) -> dict | None:
    """The view-only floor of the records' real pools (lib.analyze.view_floor.floor); None without views."""
    return _view_floor.floor(records)


def _floor_row(floor: dict) -> dict:
    per = ", ".join(f"seed {k}: {v:.3f}" for k, v in sorted(floor["per_seed"].items()))
    return {"reference": "view only (real)", "metric": "AUROC", "must contain": np.nan, "value": floor["value"],
            "ci_low": floor["ci_low"], "ci_high": floor["ci_high"], "seeds": floor["seeds"],
            "interval": "t-interval over seeds" if np.isfinite(floor["ci_low"]) else "none below 3 seeds",
            "holds": None,
            "why": f"the floor: logistic regression on the view (AP/PA) alone, trained on the real training sample and "
                   f"tested on the real test sample ({per}); an AUROC(a) at or below it shows no more than the view"}


def _null_row(null: dict) -> dict:
    return {"reference": "label-shuffled", "metric": "AUROC(a)", "must contain": np.nan, "value": null["value"],
            "ci_low": null["null_low"], "ci_high": null["null_high"], "seeds": null["seeds"],
            "interval": f"permutation null of the seed mean, 95% range ({null['draws']} draws)",
            "holds": null["holds"],
            "why": f"permuted labels carry no label signal: the seed mean must be one chance gives (p {null['p']:.2f})"}


def checks(s: pd.DataFrame, null: dict | None = None, floor: dict | None = None) -> pd.DataFrame:
    """Each statement that holds by construction, on the references this study has, judged on the t-interval
    over seeds; with fewer than 3 seeds it cannot be judged ("holds" is None) and the row says so. With ``null``
    (permutation_null), label-shuffled is judged on its permutation null instead. With ``floor`` (view_floor), a
    last row gives the view-only AUROC, a level to read the others against ("holds" None: nothing to judge)."""
    rows = []
    for ref, metric, target, why in EXPECTED:
        if ref == "label-shuffled" and null is not None:
            rows.append(_null_row(null))
            continue
        for _, r in s[s["method"] == ref].iterrows():
            v, lo, hi, n = seed_value(r, metric)
            judged = np.isfinite(lo) and np.isfinite(hi)
            rows.append({"reference": ref, "metric": METRICS[metric], "must contain": target, "value": v,
                         "ci_low": lo, "ci_high": hi, "seeds": n, "interval": "t-interval over seeds",
                         "holds": bool(lo <= target <= hi) if judged else None,
                         "why": why if judged else f"{why}; not judged: {n} seed(s), 3 needed for an interval"})
    if floor is not None:
        rows.append(_floor_row(floor))
    return pd.DataFrame(rows)


def orderings(s: pd.DataFrame) -> pd.DataFrame:
    """Per metric, the references from highest to lowest ('undefined' ones last, named)."""
    ref = references(s)
    rows = []
    for metric, name in METRICS.items():
        vals = [(r["method"], value(r, metric)[0]) for _, r in ref.iterrows()]
        defined = sorted([v for v in vals if np.isfinite(v[1])], key=lambda v: -v[1])
        undefined = [m for m, x in vals if not np.isfinite(x)]
        text = " > ".join(f"{m} ({x:.2f})" for m, x in defined)
        rows.append({"metric": name, "order (high to low)": text + (f"; undefined: {', '.join(undefined)}"
                                                                   if undefined else "")})
    return pd.DataFrame(rows)
