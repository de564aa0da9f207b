"""Memorization: is a synthetic image nearer the generator's tuning images than real images it never saw?

Distances are Euclidean, in the feature space of fidelity.memorization_extractor (lib.evaluate.features; pixels by
default, since a classifier's features discard the within-class detail that tells two patients apart, and
"same" follows fidelity.extractor). For each synthetic image s:

- ``d_tuning``: the distance to its nearest tuning image (any class: a copy is a copy);
- ``d_holdout``: the distance to its nearest held-out real image (never seen by the generator). The
  held-out set is first subsampled (seeded) to the tuning set's size, because a nearest-neighbour distance
  shrinks as the set grows: with equal sizes a generator that copies nothing gives ratios around 1;
- ``ratio`` = d_tuning / d_holdout (< 1: nearer the tuning set than unseen real images are);
- ``copy``: d_tuning < copy_threshold x ``scale``, where scale is the **median real-to-real nearest-
  neighbour distance**: over the (subsampled) held-out images, the distance to their nearest tuning image,
  i.e. how far apart two different real images of this distribution typically are. The default
  fidelity.copy_threshold = 0.2 flags a synthetic image five times nearer a tuning image than that.

The held-out set must hold at least as many images as the tuning set, and none of the tuning images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .fidelity_metrics import ALL, COLUMNS, TooFewImages, ci, resample_counts, sq_dists

_SALT = 0x3E3
_BLOCK = 2048


def nearest(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query row to its nearest ref row, and that row's index (float64, blockwise)."""
    query, ref = np.asarray(query, np.float64), np.asarray(ref, np.float64)
    dist, idx = np.empty(len(query)), np.empty(len(query), np.int64)
    for s in range(0, len(query), _BLOCK):
        q = query[s:s + _BLOCK]
        idx[s:s + _BLOCK] = sq_dists(q, ref).argmin(1)
        dist[s:s + _BLOCK] = np.linalg.norm(q - ref[idx[s:s + _BLOCK]], axis=1)   # exact: a copy is at 0
    return dist, idx


def analyse(synthetic: np.ndarray, tuning: np.ndarray, holdout: np.ndarray, copy_threshold: float = 0.2,
            seed: int = 0, labels=None) -> tuple[pd.DataFrame, dict]:
    """Per synthetic image: label, d_tuning, tuning_index, d_holdout, ratio, copy; and what the flag used."""
    if len(tuning) < 1:
        raise TooFewImages("memorization needs the tuning set's features; got none.")
    if len(holdout) < len(tuning):
        raise TooFewImages(f"memorization needs at least as many held-out real images as tuning images "
                           f"({len(tuning)}), got {len(holdout)}: nearest-neighbour distances to sets of unequal "
                           "size are not comparable. Pass a larger held-out set (e.g. the real test pool).")
    rng = np.random.default_rng([seed, _SALT])
    held = np.asarray(holdout)[np.sort(rng.choice(len(holdout), len(tuning), replace=False))]
    real_nn, _ = nearest(held, tuning)
    scale = float(np.median(real_nn))
    if scale <= 0 or (real_nn <= 1e-9 * max(scale, 1e-12)).any():
        raise ValueError(f"{int((real_nn <= 1e-9 * max(scale, 1e-12)).sum())} held-out image(s) coincide with a "
                         "tuning image (distance 0): the held-out set must hold real images the generator never saw.")
    d_tune, t_idx = nearest(synthetic, tuning)
    d_hold, _ = nearest(synthetic, held)
    threshold = copy_threshold * scale
    labels = np.full(len(synthetic), ALL) if labels is None else np.asarray(labels).astype(str)
    table = pd.DataFrame({"label": labels, "d_tuning": d_tune, "d_tuning_scaled": d_tune / scale,
                          "tuning_index": t_idx, "d_holdout": d_hold,
                          "ratio": d_tune / np.maximum(d_hold, 1e-12 * scale), "copy": d_tune < threshold})
    info = {"scale": scale, "threshold": threshold, "copy_threshold": copy_threshold, "n_tuning": len(tuning),
            "n_holdout": len(held), "n_holdout_given": len(holdout), "n_synthetic": len(synthetic)}
    return table, info


def summary(table: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Fraction flagged as copies, median and mean ratio, and the fraction nearer the tuning set (ratio < 1),
    per class and overall, with CIs from resampling the synthetic images within each class."""
    rng = np.random.default_rng([seed, _SALT, 1])
    counts = resample_counts(table["label"], n_boot, rng)
    stats = {"copy_fraction": lambda t, w: np.average(t["copy"], weights=w),
             "ratio_median": lambda t, w: _weighted_median(t["ratio"].to_numpy(), w),
             "ratio_mean": lambda t, w: np.average(t["ratio"], weights=w),
             "nearer_tuning_fraction": lambda t, w: np.average(t["ratio"] < 1, weights=w)}
    parts = [(g, table.index[table["label"] == g].to_numpy()) for g in sorted(table["label"].unique()) if g != ALL]
    rows = []
    for group, idx in [*parts, (ALL, table.index.to_numpy())]:
        t = table.loc[idx]
        for name, fn in stats.items():
            reps = [fn(t, c[idx]) for c in counts if c[idx].sum() > 0]
            lo, hi = ci(reps)
            rows.append({"group": group, "metric": name, "value": float(fn(t, None)), "ci_low": lo, "ci_high": hi,
                         "n_real": 0, "n_fake": len(t), "note": f"{int(t['copy'].sum())} flagged"})
    return pd.DataFrame(rows, columns=COLUMNS)


def _weighted_median(v: np.ndarray, w=None) -> float:
    if w is None:
        return float(np.median(v))
    order = np.argsort(v)
    cum = np.cumsum(np.asarray(w, np.float64)[order])
    return float(v[order][np.searchsorted(cum, cum[-1] / 2)])


def montage(table: pd.DataFrame, figures_dir, name: str = "06_memorization", n: int = 8, size: int = 64):
    """The n synthetic images nearest a tuning image (top row) above that tuning image (bottom row), titled
    with their distance as a multiple of the real-to-real scale (flagged copies in red). Needs the columns
    synthetic_path and tuning_path."""
    from ..data import images
    from ..core import style

    top = table.nsmallest(n, "d_tuning")
    fig, axes = style.figure(1.0, aspect=2.4 / max(len(top), 1), nrows=2, ncols=max(len(top), 1), squeeze=False)
    for col, (_, r) in enumerate(top.iterrows()):
        for row, key in enumerate(("synthetic_path", "tuning_path")):
            ax = axes[row, col]
            ax.imshow(images.load_gray(r[key], size), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]); ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[0, col].set_title(f"{r['d_tuning_scaled']:.2f}x" + (" copy" if r["copy"] else ""), fontsize=6,
                               color="red" if r["copy"] else "black")
    axes[0, 0].set_ylabel("synthetic", fontsize=7)
    axes[1, 0].set_ylabel("nearest\ntuning", fontsize=7)
    fig.suptitle("distance to the nearest tuning image, in units of the median real-to-real nearest-neighbour "
                 "distance", fontsize=6)
    style.save(fig, name, figures_dir)
    return fig
