"""The planner's trade-off figure: the smallest ΔAUROC(a) each comparison can detect (80% power, paired t-test over
seeds) against the wall-time budget, from the pilot's own wall times (lib.analyze.tradeoff)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core import style

LINESTYLES = ["-", "--", ":", "-."]


def figure(fine: pd.DataFrame, marked: pd.DataFrame, figures_dir=None, name: str = "06_planner_tradeoff"):
    """``fine``: the curve on a dense grid of budgets (drawn as steps); ``marked``: at the budgets the table gives,
    labelled with their design (seeds x repeats). Both axes logarithmic."""
    fig, ax = style.figure(0.75, 0.62)
    for i, (comp, g) in enumerate(fine.groupby("comparison", sort=False)):
        color = style.label_color(comp, i)          # one per comparison: several share their first method
        g = g[np.isfinite(g["mde"])]
        if g.empty:
            continue
        ax.step(g["budget_min"], g["mde"], where="post", color=color, lw=0.9, ls=LINESTYLES[i % len(LINESTYLES)],
                label=comp)
        m = marked[(marked["comparison"] == comp) & np.isfinite(marked["mde"])]
        ax.scatter(m["budget_min"], m["mde"], s=9, color=color, zorder=3)
        for _, r in m.iterrows():
            ax.annotate(f"{int(r['seeds'])}×{int(r['repeats'])}", (r["budget_min"], r["mde"]), fontsize=4.5,
                        xytext=(2, 2), textcoords="offset points", color=color)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")                            # MDEs span two orders of magnitude on the demo
    ticks = sorted(marked["budget_min"].unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel(f"wall-time budget (min; {int(fine['slots'].iloc[0])} points at a time)" if len(fine) else
                  "wall-time budget (min)")
    ax.set_ylabel("MDE ΔAUROC(a) (80% power)")
    ax.set_title("seeds × classifier repeats at each budget", fontsize=7)
    ax.legend(fontsize=5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # beside: lines fill the plot
    if figures_dir is not None:
        style.save(fig, name, figures_dir)
    return fig
