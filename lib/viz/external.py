"""Notebook 02's figures for an external tuning set: the pseudo-label distribution (kept and dropped at the
confidence threshold, and each image's confidence) and a montage per pseudo-label, most confident first."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import domains, images
from ..core import montage, style


def label_distribution(labels: pd.DataFrame, threshold: float, figures_dir, name: str = "02_external_labels"):
    """Left: images per pseudo-label, kept and dropped; right: the confidence of every image, threshold drawn."""
    fig, (ax, ax2) = style.figure(1.0, 0.34, ncols=2)
    classes = domains.order(labels["label"])
    x = np.arange(len(classes))
    kept = [int(((labels["label"] == lab) & labels["kept"]).sum()) for lab in classes]
    dropped = [int(((labels["label"] == lab) & ~labels["kept"]).sum()) for lab in classes]
    colors = [style.label_color(lab, i) for i, lab in enumerate(classes)]
    ax.bar(x, kept, color=colors, label="kept")
    ax.bar(x, dropped, bottom=kept, color=colors, alpha=0.35, hatch="///", edgecolor="0.3", lw=0.3,
           label=f"dropped (< {threshold:g})")
    ax.set_xticks(x, classes)
    ax.set_ylabel("images (pseudo-label)")
    ax.legend(fontsize=6, frameon=False)
    bins = np.linspace(1 / len(classes), 1.0, 21)      # a confidence is at least 1/k
    for lab, col in zip(classes, colors):
        ax2.hist(labels.loc[labels["label"] == lab, "confidence"], bins=bins, color=col, alpha=0.6, label=lab)
    ax2.axvline(threshold, color="0.2", lw=0.8, ls="--")
    ax2.set_xlabel("pseudo-label confidence")
    ax2.set_ylabel("images")
    ax2.legend(fontsize=6, frameon=False)
    style.save(fig, name, figures_dir)
    return fig


def label_montage(labels: pd.DataFrame, size: int, figures_dir, per_row: int = 8, name: str = "02_external_montage"):
    """Per pseudo-label, the most confident kept images, then the least confident kept ones."""
    rows = {}
    for lab in domains.order(labels["label"]):
        g = labels[(labels["label"] == lab) & labels["kept"]].sort_values("confidence", ascending=False)
        for part, pick in (("most", g.head(per_row)), ("least", g.tail(per_row).iloc[::-1])):
            stack = images.load_stack(pick["path"].tolist(), size)
            pad = np.ones((per_row - len(stack), size, size), np.float32)      # short classes: blank cells
            conf = f"{pick['confidence'].min():.2f}-{pick['confidence'].max():.2f}" if len(pick) else "none"
            rows[f"{lab}, {part} confident\n(n={len(g)}, conf {conf})"] = np.concatenate([stack, pad])
    fig, axes = style.figure(0.8, 0.09 * len(rows), nrows=len(rows))
    montage.show_rows(axes, rows, per_row)
    style.save(fig, name, figures_dir)
    return fig
