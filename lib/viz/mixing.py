"""Notebook 07's figures: the change in accuracy against the augmentation bracket (one line per generator,
random oversampling beside them) and the metrics against the synthetic share of a fixed-size training set."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analyze import mixing_arms
from ..core import style


def _empty(ax, text="no mixing results yet: run notebooks 01-05 for a point first"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7, color="0.4")


def _color(gen: str):
    gen = gen.split(" · ")[0]                # 'random · resnet50': the generator's colour
    return (0.45, 0.45, 0.45) if gen == mixing_arms.OVERSAMPLING else style.color(gen)


def _order(gens) -> list[str]:
    gens = list(dict.fromkeys(gens))
    return style.method_order([g for g in gens if g != mixing_arms.OVERSAMPLING]) + \
        ([mixing_arms.OVERSAMPLING] if mixing_arms.OVERSAMPLING in gens else [])


def brackets(diffs: pd.DataFrame, records: pd.DataFrame, figures_dir, name: str = "07_brackets",
             metric: str = "accuracy"):
    """Change from the real-only baseline (percentage points; seed mean, 95% two-level CI) against the
    synthetic images added per class; random oversampling of the real images to the same totals dashed."""
    fig, ax = style.figure(0.62, 0.72)
    d = diffs[diffs["metric"] == metric] if not diffs.empty else diffs
    if d.empty:
        _empty(ax)
    else:
        added = records.drop_duplicates(["generator", "arm"]).set_index(["generator", "arm"])
        d = d.assign(added=[int(added.loc[(g, a), "n_synthetic"] + added.loc[(g, a), "n_copies"])
                            for g, a in zip(d["generator"], d["arm"])])
        gens = _order(d["generator"])
        offsets = dict(zip(gens, np.linspace(-0.04, 0.04, len(gens)) if len(gens) > 1 else [0.0]))
        for gen in gens:
            g = d[d["generator"] == gen].sort_values("added")
            x = g["added"].to_numpy(float) * 10 ** offsets[gen]          # a small dodge on the log axis
            err = [g["diff_pp"] - g["ci_low_pp"], g["ci_high_pp"] - g["diff_pp"]]
            ax.errorbar(x, g["diff_pp"], yerr=err, marker="o", ms=3, lw=1.0, capsize=1.5, color=_color(gen),
                        ls="--" if gen.startswith(mixing_arms.OVERSAMPLING) else "-",
                        label=gen.replace(mixing_arms.OVERSAMPLING, "random oversampling (real)", 1))
        ticks = sorted(d["added"].unique())
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"+{t:,}" for t in ticks], fontsize=6)
        ax.minorticks_off()
        ax.legend(fontsize=5.5, frameon=False)
    ax.axhline(0.0, color="0.2", lw=0.8)
    ax.set_xlabel("images added per class")
    ax.set_ylabel(f"Δ {metric.replace('_', ' ')} from real only (pp)")
    style.save(fig, name, figures_dir)
    return fig


def ratios(table: pd.DataFrame, figures_dir, name: str = "07_ratios", metrics=("accuracy", "auroc")):
    """Each metric (seed mean ± s.d.) against the synthetic share of a fixed-size training set, one line per
    generator; the real-only baseline (the real baseline's own classifier) as a grey band."""
    fig, axes = style.figure(1.0, 0.36, ncols=len(metrics))
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, metrics):
        if table.empty:
            _empty(ax)
            continue
        k = 100 if m != "auroc" else 1
        base = table[table["generator"] == mixing_arms.BASELINE]
        if not base.empty:
            b = base.iloc[0]
            ax.axhspan(k * (b[f"{m}_mean"] - np.nan_to_num(b[f"{m}_sd"])), k * (b[f"{m}_mean"] +
                       np.nan_to_num(b[f"{m}_sd"])), color="0.85", lw=0, zorder=0)
            ax.axhline(k * b[f"{m}_mean"], color="0.5", lw=0.8, label="real only (baseline)")
        rest = table[table["generator"] != mixing_arms.BASELINE]
        for gen in _order(rest["generator"]):
            g = rest[rest["generator"] == gen].sort_values("synthetic_share")
            ax.errorbar(100 * g["synthetic_share"], k * g[f"{m}_mean"], yerr=k * g[f"{m}_sd"].fillna(0), marker="o",
                        ms=3, lw=1.0, capsize=1.5, color=_color(gen), label=gen)
        ax.set_xticks([0, 30, 50, 70, 100])
        ax.set_xlabel("synthetic share (%)")
        ax.set_ylabel({"accuracy": "accuracy (%)", "balanced_accuracy": "balanced accuracy (%)",
                       "auroc": "AUROC"}.get(m, m))
    axes[0].legend(fontsize=5.5, frameon=False)
    style.save(fig, name, figures_dir)
    return fig
