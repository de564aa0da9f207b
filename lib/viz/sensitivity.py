"""Notebook 06's dose-response figure: TR against the label-free share of the partly-shuffled reference series
(lib.analyze.sensitivity), each seed, the seed means with their t-intervals, the fitted line and the ideal 1 -> 0."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analyze import sensitivity
from ..core import style


def figure(points: pd.DataFrame, t: pd.DataFrame, fitted: dict, figures_dir=None, name: str = "06_sensitivity"):
    fig, ax = style.figure(0.55, 0.8)
    color = style.color("label-shuffled")     # the series ends at label-shuffled
    ax.plot([0, 1], [1, 0], color="0.5", lw=0.8, ls="--", label="ideal: 1 - share")
    ax.scatter(points["fraction"], points["tr"], s=6, color="0.6", lw=0, label="one seed", zorder=2)
    has_ci = np.isfinite(t["tr_ci_low"])
    err = np.where(has_ci, [t["tr"] - t["tr_ci_low"], t["tr_ci_high"] - t["tr"]], 0.0)
    ax.errorbar(t["fraction"], t["tr"], yerr=err, fmt="o", ms=3.5, lw=0.9, capsize=2, color=color, zorder=3,
                label="seed mean, 95% t-interval" if has_ci.any() else "seed mean (n<3: no interval)")
    if np.isfinite(fitted["slope_mean"]):
        x = np.linspace(0, 1, 50)
        ax.plot(x, fitted["intercept_mean"] + fitted["slope_mean"] * x, color=color, lw=0.8,
                label=f"fit: slope {fitted['slope_mean']:.2f}, R$^2$ {fitted['r2_mean']:.2f}")
    ax.axhline(0, color="0.8", lw=0.6)
    ax.set_xlabel("label-free share of each class (partly-shuffled)")
    ax.set_ylabel("TR = (AUROC(a) - .5) / (TRTR - .5)")
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"])
    ax.legend(fontsize=5.5, frameon=False)
    if figures_dir is not None:
        style.save(fig, name, figures_dir)
    return fig


def report(records: pd.DataFrame, figures_dir=None) -> pd.DataFrame | None:
    """Notebook 06's one call: when the records hold the partly-shuffled series, its table and fit saved
    (06_sensitivity.csv, 06_sensitivity_fit.csv), the figure drawn and the paragraph printed; else None."""
    points = sensitivity.series(records)
    if points.empty:
        return None
    fitted = sensitivity.fit(points)
    t = sensitivity.table(points, fitted)
    if figures_dir is not None:
        sensitivity.save(t, fitted, figures_dir)
    figure(points, t, fitted, figures_dir)
    print(sensitivity.describe(t, fitted))
    return t
