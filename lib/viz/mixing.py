"""Notebook 07's figures: the change in accuracy against the augmentation bracket (one line per generator,
random oversampling beside them) and the metrics against the synthetic share of a fixed-size training set.

Diffusion methods are solid lines with filled markers; reference generators (lib.generate.references) are
their own group, dotted with hollow markers and '[ref.]' in the legend; each figure's footnote says what its
bars are (a 95% CI and over what, or ± s.d. over seeds) and names the group missing when the runs handed in
hold only references or only methods."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analyze import mixing_arms
from ..core import style


def _save(fig, name: str, figures_dir, empty: bool) -> None:
    """Save, except an empty placeholder over a figure already there: a brackets-only run (notebook 07 of
    brackets.yaml) must not blank out the ratios figure that ratios.yaml drew in the same folder, nor the reverse."""
    from ..core import paths

    if empty and (paths.resolve(figures_dir) / f"{name}.png").exists():
        return
    style.save(fig, name, figures_dir)


def _empty(ax, text="no mixing results yet: run notebooks 01-05 for a point first"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7, color="0.4")


def _color(gen: str):
    gen = gen.split(" · ")[0]                # 'random · resnet50': the generator's colour
    return (0.45, 0.45, 0.45) if gen == mixing_arms.OVERSAMPLING else style.color(gen)


def _is_ref(gen: str) -> bool:
    return gen.split(" · ")[0] in style.REFERENCES


def _order(gens) -> list[str]:
    """Diffusion methods, then references, then oversampling (the legend's groups in that order)."""
    gens = list(dict.fromkeys(gens))
    rest = [g for g in gens if g != mixing_arms.OVERSAMPLING]
    return style.method_order([g for g in rest if not _is_ref(g)]) + style.method_order([g for g in rest if _is_ref(g)]) \
        + ([mixing_arms.OVERSAMPLING] if mixing_arms.OVERSAMPLING in gens else [])


def _line(gen: str) -> dict:
    """Line style per group: methods solid and filled, references dotted and hollow, oversampling dashed."""
    if gen.startswith(mixing_arms.OVERSAMPLING):
        return dict(ls="--", color=_color(gen), label=gen.replace(mixing_arms.OVERSAMPLING, "random oversampling (real)", 1))
    if _is_ref(gen):
        return dict(ls=":", color=_color(gen), mfc="white", label=f"[ref.] {gen}")
    return dict(ls="-", color=_color(gen), label=gen)


def groups_note(gens) -> str:
    """Which generator groups the figure holds, naming one that is missing (a reader cannot see an absence)."""
    gens = [g for g in dict.fromkeys(gens) if g not in (mixing_arms.OVERSAMPLING, mixing_arms.BASELINE)]
    methods, refs = [g for g in gens if not _is_ref(g)], [g for g in gens if _is_ref(g)]
    if methods and refs:
        return f"{len(methods)} diffusion method(s), {len(refs)} reference generator(s) [ref.]"
    if refs:
        return "references only: no diffusion method among these runs (pass their run folders to notebook 07)"
    return "diffusion methods only: no reference generator among these runs" if methods else ""


def _seeds(n) -> str:
    lo, hi = int(min(n)), int(max(n))
    return f"{lo} seed{'s' * (lo != 1)}" if lo == hi else f"{lo}-{hi} seeds"


def _footnote(fig, text: str) -> None:
    """The text below everything drawn so far (tick labels and axis labels included), so it overlaps nothing."""
    renderer = fig.canvas.get_renderer()
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)
    y = fig.transFigure.inverted().transform((0, bottom))[1]
    fig.text(0.5, y - 0.02, text, ha="center", va="top", fontsize=5.5, color="0.3")


def brackets(diffs: pd.DataFrame, records: pd.DataFrame, figures_dir, name: str = "07_brackets",
             metric: str = "accuracy"):
    """Change from the real-only baseline (percentage points; seed mean, 95% two-level CI) against the
    synthetic images added per class; random oversampling of the real images to the same totals dashed,
    references dotted; the footnote names the interval and the groups shown."""
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
            ax.errorbar(x, g["diff_pp"], yerr=err, marker="o", ms=3, lw=1.0, capsize=1.5, **_line(gen))
        ticks = sorted(d["added"].unique())
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"+{t:,}" for t in ticks], fontsize=6)
        ax.minorticks_off()
        ax.legend(fontsize=5.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))   # clear of the lines
    ax.axhline(0.0, color="0.2", lw=0.8)
    ax.set_xlabel("images added per class")
    ax.set_ylabel(f"Δ {metric.replace('_', ' ')} from real only (pp)")
    if not d.empty:
        level = ("two-level bootstrap (seeds, then the same real test images)" if d["n_seeds"].max() > 1 else
                 "bootstrap over the same real test images (one seed: no seed level)")
        _footnote(fig, f"bars: 95% CI of the paired change, {level}; {_seeds(d['n_seeds'])}\n{groups_note(gens)}")
    _save(fig, name, figures_dir, empty=d.empty)
    return fig


def ratios(table: pd.DataFrame, figures_dir, name: str = "07_ratios", metrics=("accuracy", "auroc")):
    """Each metric (seed mean ± s.d., a spread, not a CI) against the synthetic share of a fixed-size training
    set, one line per generator (references dotted); the real-only baseline (the real baseline's own classifier)
    as a grey band of ± s.d. The footnote says so and names the groups shown."""
    fig, axes = style.figure(1.0, 0.36, ncols=len(metrics), gridspec_kw={"wspace": 0.35})
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
                        ms=3, lw=1.0, capsize=1.5, **_line(gen))
        ax.set_xticks([0, 30, 50, 70, 100])
        ax.set_xlabel("synthetic share (%)")
        ax.set_ylabel({"accuracy": "accuracy (%)", "balanced_accuracy": "balanced accuracy (%)",
                       "auroc": "AUROC"}.get(m, m))
    axes[0].legend(fontsize=5.5, frameon=False)
    if not table.empty:
        _footnote(fig, f"bars and grey band: ± 1 s.d. over {_seeds(table['n_seeds'])} (the spread of seeds, not a "
                       f"CI; the paired CIs are in 07_table_ratios)\n{groups_note(table['generator'])}")
    _save(fig, name, figures_dir, empty=table.empty)
    return fig
