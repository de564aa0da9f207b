"""The calibration figure's lower row (lib.viz.analysis.calibration): the two checks of lib.analyze.calibration as
they are judged. Left, label-shuffled's AUROC(a) seed mean against its permutation null of the seed mean (the 95%
range shaded), and the view-only floor (lib.analyze.view_floor) where there is one; right, real-holdout's TR with its
t-interval over seeds against 1."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analyze import calibration as cal
from ..analyze import permutation
from ..core import style


def _verdict(holds) -> str:
    return "not judged" if holds is None else ("holds" if holds else "FAILS")


FLOOR_COLOR = "0.25"
FAIL_COLOR = "#c0392b"


def flag(ax, holds) -> None:
    """A check that fails is flagged in its panel: the title says FAILS and the frame turns red."""
    if holds is False:
        ax.set_title(ax.get_title() + ": FAILS", fontsize=7, color=FAIL_COLOR, fontweight="bold")
        for spine in ax.spines.values():
            spine.set(visible=True, color=FAIL_COLOR, lw=1.2)


def floor_label(floor: dict) -> str:
    return f"view-only floor {floor['value']:.3f} (AP/PA alone, real pools, {floor['seeds']} seed(s))"


def null_panel(ax, null: dict | None, floor: dict | None = None) -> None:
    ax.set_title("label-shuffled AUROC(a): permutation null", fontsize=7)
    ax.tick_params(labelsize=5.5)
    if floor is not None:
        ax.axvline(floor["value"], color=FLOOR_COLOR, lw=0.9, ls="-.", label=floor_label(floor))
    if null is None:
        ax.text(0.5, 0.5, "no label-shuffled runs (or no null computed)", fontsize=5.5, ha="center",
                transform=ax.transAxes, color="0.4")
        if floor is not None:
            ax.legend(fontsize=5, frameon=False, loc="upper left")
        return
    means = permutation.null_of_mean(null["null"])
    ax.hist(means, bins=40, color="0.75", density=True)
    ax.axvspan(null["null_low"], null["null_high"], color="0.6", alpha=0.25, lw=0,
               label=f"null of the seed mean, 95% ({null['draws']} draws)")
    ax.axvline(null["value"], color=style.color("label-shuffled"), lw=1.2,
               label=f"observed seed mean {null['value']:.3f} ({null['seeds']} seeds): {_verdict(null['holds'])}")
    ax.set_xlabel("AUROC (a)", fontsize=6)
    ax.set_yticks([])
    ax.legend(fontsize=5, frameon=False, loc="upper left")
    flag(ax, null["holds"])


def holdout_panel(ax, s: pd.DataFrame) -> None:
    ax.set_title("real-holdout TR: t-interval over seeds", fontsize=7)
    ax.tick_params(labelsize=5.5)
    ax.axvline(1.0, color="0.4", lw=0.6, ls="--")
    rows = s[s["method"] == "real-holdout"]
    if rows.empty:
        ax.text(0.5, 0.5, "no real-holdout runs", fontsize=5.5, ha="center", transform=ax.transAxes, color="0.4")
    for y, (_, r) in enumerate(rows.iterrows()):
        v, lo, hi, n = cal.seed_value(r, "tr")
        judged = np.isfinite(lo) and np.isfinite(hi)
        if judged:
            ax.errorbar(v, y, xerr=[[v - lo], [hi - v]], fmt="o", ms=3, lw=0.8, capsize=1.5,
                        color=style.color("real-holdout"))
        elif np.isfinite(v):
            ax.plot(v, y, "o", ms=3, color=style.color("real-holdout"))
        text = f"{v:.2f} [{lo:.2f}, {hi:.2f}], {n} seeds: {_verdict(bool(lo <= 1 <= hi))}" if judged else \
            f"{v:.2f}, {n} seed(s): not judged (3 needed)"
        ax.annotate(text, (0.02, y), xycoords=("axes fraction", "data"), xytext=(0, 6), textcoords="offset points",
                    fontsize=5, color=FAIL_COLOR if judged and not lo <= 1 <= hi else "black")
        if judged:
            flag(ax, bool(lo <= 1 <= hi))
    ax.set_yticks([])
    ax.set_ylim(-0.8, max(len(rows), 1) - 0.2)
    ax.set_xlabel("TR (must contain 1)", fontsize=6)


def draw(fig, spec, s: pd.DataFrame, null: dict | None, floor: dict | None = None) -> None:
    """Both panels in the gridspec cell ``spec``."""
    row = spec.subgridspec(1, 2, wspace=0.25)
    null_panel(fig.add_subplot(row[0]), null, floor)
    holdout_panel(fig.add_subplot(row[1]), s)
