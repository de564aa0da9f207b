"""Notebook 06's per-acquisition-mode figure (mode world only, lib.analyze.subgroups): per mode, each method's
AUROC(a) as the seed mean with its t-interval, beside the real-trained classifier's AUROC on the same images
(the per-mode ceiling) and chance; modes in order of prevalence, each labelled with its test images per run."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analyze import subgroups
from ..core import style
from ..data.phantoms import MODES


def _color(label: str):
    """A gated run in active gating's colour; the others in their method's."""
    return style.color("active-gating" if label.endswith("(gated)") else label)


def figure(summary: pd.DataFrame, figures_dir=None, name: str = "06_by_subgroup"):
    modes = [m for m in MODES if m in set(summary[subgroups.MODE])]
    methods = style.method_order(summary["method"].unique())
    fig, ax = style.figure(1.0, 0.45)
    width = 0.8 / max(len(methods), 1)
    ceiling = summary.groupby(subgroups.MODE)["auroc_trtr"].mean()
    for j, mode in enumerate(modes):
        ax.plot([j - 0.42, j + 0.42], [ceiling[mode]] * 2, color="0.35", lw=1.0,
                label="real-trained (ceiling)" if j == 0 else None)
    for i, method in enumerate(methods):
        t = summary[summary["method"] == method].set_index(subgroups.MODE).reindex(modes)
        x = np.arange(len(modes)) - 0.4 + width * (i + 0.5)
        ok = np.isfinite(t["auroc_a_t_low"].to_numpy(float))
        err = np.where(ok, [t["auroc_a"] - t["auroc_a_t_low"], t["auroc_a_t_high"] - t["auroc_a"]], 0.0)
        ax.errorbar(x, t["auroc_a"], yerr=err, fmt="o", ms=3, lw=0.8, capsize=1.5, color=_color(method),
                    label=method)
    ax.axhline(0.5, color="0.75", lw=0.6, ls="--", label="chance")
    per_run = summary.groupby(subgroups.MODE)["images_per_run"].mean()
    ax.set_xticks(range(len(modes)), [f"{m.replace('_', chr(10))}\n({per_run[m]:.0f}/run)" for m in modes],
                  fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUROC(a), the mode's test images")
    ax.set_title("seed means with 95% t-intervals over seeds (none below 3 seeds); test images per run below",
                 fontsize=6.5)
    ax.legend(fontsize=5.5, frameon=False, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    if figures_dir is not None:
        style.save(fig, name, figures_dir)
    return fig


def report(records: pd.DataFrame, figures_dir=None) -> pd.DataFrame | None:
    """Notebook 06's one call: when records were drawn in the mode world, the per-mode table saved
    (06_by_subgroup.csv, 06_by_subgroup_runs.csv) and the figure drawn; else None."""
    dirs, labels = subgroups.mode_world_runs(records)
    if not dirs:
        return None
    if figures_dir is not None:
        subgroups.write(dirs, figures_dir, labels=labels)
    summary, _ = subgroups.by_subgroup(dirs, labels=labels)
    figure(summary, figures_dir)
    return summary
