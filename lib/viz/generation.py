"""Notebook 04's views: what generated the set, and synthetic images beside real ones per label."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import domains, images
from ..core import montage, style


def describe(summary: dict, cfg) -> None:
    g = cfg.generation
    print(f"model: {summary['model']} (hash {summary['model_hash']}); scheduler {g.scheduler}, {g.steps} steps, "
          f"guidance {g.guidance_scale}, batch {g.batch_size}; no safety checker")
    for label, prompt in summary["prompts"].items():
        print(f"  {label!r}: prompt {prompt!r}")
    if summary.get("generated_this_call"):
        print(f"generated {summary['generated_this_call']} images at {summary['images_per_second']} images/s")


def per_label_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images, distinct seeds and distinct files per label: equal counts, no duplicate."""
    return manifest.groupby("label").agg(images=("image_id", "size"), seeds=("seed", "nunique"),
                                         files=("file", "nunique")).reindex(domains.order(manifest["label"]))


def montage_vs_real(manifest: pd.DataFrame, real: pd.DataFrame, size: int, figures_dir,
                    per_row: int = 10, name: str = "04_synthetic_vs_real", seed: int = 0):
    """For each label a row of synthetic images and a row of real tuning-pool images of that label."""
    rng = np.random.default_rng(seed)
    rows = {}
    for label in domains.order(manifest["label"]):
        for kind, df in (("synthetic", manifest), ("real", real)):
            sub = df[df["label"] == label]
            pick = sub.iloc[np.sort(rng.permutation(len(sub))[:per_row])]
            rows[f"{kind}\n{label}"] = images.load_stack(pick["path"].tolist(), size)
    fig, axes = style.figure(1.0, 0.1 * len(rows) * 10 / per_row, nrows=len(rows))
    montage.show_rows(axes, rows, per_row)
    style.save(fig, name, figures_dir)
    return fig


def intensity_figure(manifest: pd.DataFrame, real: pd.DataFrame, size: int, figures_dir,
                     n: int = 200, name: str = "04_intensity", seed: int = 0):
    """Mean-intensity distributions, synthetic against real, per label: a quick check of the drift."""
    rng = np.random.default_rng(seed)
    classes = domains.order(manifest["label"])
    fig, axes = style.figure(1.0, 0.3, ncols=len(classes), sharey=True)
    for i, (ax, label) in enumerate(zip(axes, classes)):
        for kind, df, ls in (("synthetic", manifest, "-"), ("real", real, "--")):
            sub = df[df["label"] == label]
            pick = sub.iloc[rng.permutation(len(sub))[:n]]
            means = images.load_stack(pick["path"].tolist(), size).mean(axis=(1, 2))
            ax.hist(means, bins=20, range=(0, 1), histtype="step", linestyle=ls, label=kind,
                    color=style.label_color(label, i))
        ax.set_title(label); ax.set_xlabel("mean intensity")
    axes[0].set_ylabel("images"); axes[0].legend(frameon=False)
    style.save(fig, name, figures_dir)
    return fig
