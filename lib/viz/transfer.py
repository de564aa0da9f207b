"""Notebook 08's figure: the source x target matrix as heat maps of AUROC and balanced accuracy, the
diagonal (each source tested on a disjoint part of its own set) outlined, collapsed classifiers marked. The
diagonal is not a bound: a source can score higher on another set (an easier one) than on its own, and the
caption counts how often it does."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from ..core import style
from ..analyze import transfer

PANELS = (("auroc", "AUROC", 1.0), ("balanced_accuracy", "balanced accuracy (%)", 100.0))


def _panel(ax, table: pd.DataFrame, metric: str, title: str, k: float):
    m = transfer.matrix(table, metric)
    low, high = transfer.matrix(table, f"{metric}_ci_low"), transfer.matrix(table, f"{metric}_ci_high")
    flat = transfer.matrix(table.assign(collapsed=table["collapsed"].astype(float)), "collapsed")
    im = ax.imshow(k * m.to_numpy(float), cmap="viridis", vmin=k * 0.5, vmax=k * 1.0)   # chance .. perfect
    n = len(m)
    for i in range(n):
        for j in range(n):
            v = m.iat[i, j]
            f = ".2f" if k == 1 else ".0f"
            text = "–" if pd.isna(v) else f"{k * v:{f}}\n[{k * low.iat[i, j]:{f}}, {k * high.iat[i, j]:{f}}]"
            if flat.iat[i, j] == 1:
                text += "\ncollapsed"
            ax.text(j, i, text, ha="center", va="center", fontsize=5,
                    color="white" if pd.isna(v) else style.ink(im.cmap(im.norm(k * v))))
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, lw=1.4, ec="#d55e00"))   # the diagonal
    ax.set_xticks(range(n), m.columns, rotation=30, ha="right", fontsize=6)
    ax.set_yticks(range(n), m.index, fontsize=6)
    ax.set_xlabel("target (test)")
    ax.set_title(title, fontsize=7)
    return im


def above_diagonal(table: pd.DataFrame, metric: str) -> tuple[int, int]:
    """How many off-diagonal cells score above their row's diagonal (the source on its own set), of how many."""
    m = transfer.matrix(table, metric).to_numpy(float)
    own = np.diag(m)[:, None]
    off = ~np.eye(len(m), dtype=bool) & ~np.isnan(m) & ~np.isnan(own)
    return int((m > own)[off].sum()), int(off.sum())


def caption(table: pd.DataFrame) -> str:
    """The footnote: what the outline means, that it is no bound, and how often a row's other cells beat it."""
    beat = "; ".join(f"{title.split(' (')[0]} {a} of {n}" for metric, title, _ in PANELS
                     for a, n in [above_diagonal(table, metric)])
    return ("outlined: each source tested on its own kind (a disjoint part of its set); it is not a bound: "
            f"off-diagonal cells above their row's diagonal: {beat}.\nCells: value [95% bootstrap CI over the "
            "target's test images]; colour from chance to 1")


def heatmap(table: pd.DataFrame, figures_dir, name: str = "08_source_target"):
    """AUROC and balanced accuracy, sources as rows, targets as columns; the diagonal outlined."""
    fig, axes = style.figure(1.0, 0.5, ncols=2)
    axes = np.atleast_1d(axes)
    if table.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no source x target results", ha="center", va="center", transform=ax.transAxes)
    else:
        for ax, (metric, title, k) in zip(axes, PANELS):
            im = _panel(ax, table, metric, title, k)
            fig.colorbar(im, ax=ax, shrink=0.8)
        axes[0].set_ylabel("source (train)")
        axes[1].set_yticks(range(table["source"].nunique()), [])      # the same sources as on the left
    if not table.empty:
        fig.text(0.5, -0.06, caption(table), ha="center", va="top", fontsize=5.5, color="0.3")
    style.save(fig, name, figures_dir)
    return fig
