"""Notebook 02's figures: 2-D maps of the embeddings, a montage per cluster, cluster sizes and duplicates."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from ..data import domains, images
from ..core import montage, style


def tsne(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE map (PCA start, so the same input gives the same map)."""
    perplexity = float(min(30, max(2, (len(X) - 1) // 3)))
    with threadpool_limits(1):   # small maps: threads on shared cores only add waiting
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500).fit_transform(X)


def embedding_maps(pool: pd.DataFrame, vectors: dict, clusters: dict, figures_dir, seed: int = 0,
                   name: str = "02_embedding_map"):
    """One row per method: its embedding's t-SNE map coloured by label, then by cluster (marker = label)."""
    methods = list(vectors)
    fig, axes = style.figure(1.0, 0.45 * len(methods), nrows=len(methods), ncols=2, squeeze=False)
    labels = pool["label"].to_numpy()
    names = domains.order(labels)
    markers = {lab: "o^sDvP*X"[i % 8] for i, lab in enumerate(names)}
    for row, method in zip(axes, methods):
        xy = tsne(vectors[method], seed)
        for i, label in enumerate(markers):
            r = labels == label
            row[0].scatter(*xy[r].T, s=4, color=style.label_color(label, i), label=label, lw=0)
            row[1].scatter(*xy[r].T, s=6, c=clusters[method][r], cmap="tab10", vmin=0, vmax=9,
                           marker=markers[label], lw=0, label=label)
        row[0].set_ylabel(method)
        for ax in row:
            ax.set_xticks([]); ax.set_yticks([])
    axes[0, 0].set_title("by label"); axes[0, 1].set_title("by cluster (marker: label)")
    axes[0, 0].legend(fontsize=6, markerscale=2, frameon=False)
    style.save(fig, name, figures_dir)
    return fig


def cluster_montage(pool: pd.DataFrame, clusters: np.ndarray, size: int, figures_dir, method: str,
                    per_row: int = 8, seed: int = 0):
    """One strip of images per (label, cluster), titled with the cluster's size."""
    rng = np.random.default_rng(seed)
    rows = {}
    for label in sorted(pool["label"].unique()):
        for c in sorted(set(clusters[pool["label"].to_numpy() == label])):
            members = pool[(pool["label"] == label).to_numpy() & (clusters == c)]
            pick = members.iloc[rng.permutation(len(members))[:per_row]]
            stack = images.load_stack(pick["path"].tolist(), size)
            pad = np.ones((per_row - len(stack), size, size), np.float32)   # short clusters: blank cells
            rows[f"{label} c{c} (n={len(members)})"] = np.concatenate([stack, pad])
    fig, axes = style.figure(0.8, 0.075 * len(rows), nrows=len(rows))
    montage.show_rows(axes, rows, per_row)
    fig.suptitle(method, fontsize=8)
    style.save(fig, f"02_montage_{method}", figures_dir)
    return fig


def cluster_bars(summary: pd.DataFrame, figures_dir, name: str = "02_cluster_sizes"):
    """Per clustering method: each cluster's size in the pool, and the duplicates its quota needed."""
    summary = summary[summary["cluster"] >= 0]
    methods = list(dict.fromkeys(summary["method"]))
    fig, axes = style.figure(1.0, 0.3 * len(methods), nrows=len(methods), squeeze=False)
    for ax, method in zip(axes[:, 0], methods):
        s = summary[summary["method"] == method].reset_index(drop=True)
        x = np.arange(len(s)) + np.where(s["label"] == s["label"].iloc[0], 0, 1)   # a gap between labels
        index = {l: i for i, l in enumerate(sorted(s["label"].unique()))}   # as the embedding map colours them
        colors = [style.label_color(l, index[l]) for l in s["label"]]
        ax.bar(x, s["size"], color=colors, alpha=0.45, label="cluster size")
        ax.bar(x, s["duplicates"], color=colors, hatch="///", edgecolor="black", lw=0.3, label="duplicates")
        ax.plot(x, s["taken"], "k_", ms=8, label="taken (quota)")
        short = {l: "".join(w[0] for w in l.split()) for l in s["label"].unique()}   # "No Finding" -> "NF"
        ax.set_xticks(x, [f"{short[l]}{c}" for l, c in zip(s["label"], s["cluster"])], fontsize=5, rotation=90)
        ax.set_ylabel(method, fontsize=7)
    axes[0, 0].legend(fontsize=6, frameon=False, ncols=3)
    style.save(fig, name, figures_dir)
    return fig
