"""The view-only floor: the AUROC a classifier reaches from the X-ray's view (AP or PA) alone.

In the phantom pools (as in NIH's) AP images are more common among the sick, so the view predicts the label
(AUROC about 0.59 on the demo's pools) with no finding seen. A synthetic or reference set whose AUROC(a) is not
above this floor shows no more than the view. The classifier: logistic regression on the view indicator with an
intercept, unregularised, whose fitted probabilities are the training sample's class shares per view; so the
score of a test image is P(class | its view) in the training sample (a view the training sample lacks: the class
shares overall). Per seed it trains on the real baseline's training sample and tests on its real test sample
(stage 05_real_baseline: the TRTR cell's own images), AUROC as lib.evaluate.metrics computes it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core import paths, stats
from ..data import domains
from ..evaluate import metrics

VIEW = "view"


def scores(train: pd.DataFrame, test: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """N x k: each test image's class shares among the training images of its view."""
    overall = train["label"].value_counts(normalize=True).reindex(classes, fill_value=0.0)
    shares = pd.crosstab(train[VIEW], train["label"], normalize="index").reindex(columns=classes, fill_value=0.0)
    return np.stack([shares.loc[v].to_numpy() if v in shares.index else overall.to_numpy() for v in test[VIEW]])


def auroc(train: pd.DataFrame, test: pd.DataFrame, classes: list[str] | None = None) -> float:
    """The view-only classifier's (macro) AUROC on ``test``; NaN when a set has no view column or one class."""
    if VIEW not in train or VIEW not in test or train[VIEW].isna().any() or test[VIEW].isna().any():
        return float("nan")
    classes = classes or domains.order(pd.concat([train["label"], test["label"]]))
    y = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return metrics.macro_auroc(y, scores(train, test, classes))


def per_seed(records: pd.DataFrame) -> pd.DataFrame:
    """seed, auroc, n_train, n_test: one row per real baseline the records name (each seed's own pools)."""
    rows = []
    for (seed, folder), _ in records.groupby(["seed", "real_baseline"]):
        d = paths.resolve(folder)
        train, test = (pd.read_csv(d / f, dtype={"patient": str}) for f in ("train_real.csv", "test_real.csv"))
        rows.append({"seed": int(seed), "auroc": auroc(train, test), "n_train": len(train), "n_test": len(test),
                     "real_baseline": folder})
    return pd.DataFrame(rows, columns=["seed", "auroc", "n_train", "n_test", "real_baseline"])


def floor(records: pd.DataFrame) -> dict | None:
    """The seed mean of the view-only AUROC, its t-interval over seeds (none below 3) and the per-seed values;
    None when the records name no real baseline or their images record no view."""
    if records is None or "real_baseline" not in records or records["real_baseline"].isna().all():
        return None
    seeds = per_seed(records.dropna(subset=["real_baseline"]))
    seeds = seeds[np.isfinite(seeds["auroc"])]
    if seeds.empty:
        return None
    s = stats.seed_summary(seeds.groupby("seed")["auroc"].mean())
    judged = s["n"] >= 3
    return {"value": s["mean"], "ci_low": s["t_low"] if judged else np.nan, "ci_high": s["t_high"] if judged else np.nan,
            "seeds": s["n"], "per_seed": dict(zip(seeds["seed"], seeds["auroc"]))}
