"""Notebook 06's figures: the T-Gap plane, FTER by method and size, gating traces, synthetic samples."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analyze import agreement, tables, upstream
from ..data import images
from ..core import montage, style


def _empty(ax, text="no results yet: run notebooks 01-05 (or make demo) first"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7, color="0.4")


def _sizes(s: pd.DataFrame) -> dict:
    return {n: style.SIZE_MARKERS[i % len(style.SIZE_MARKERS)] for i, n in enumerate(sorted(s["tuning_size"].unique()))}


def is_reference(s: pd.DataFrame) -> pd.Series:
    """Rows of reference generators (no tuning set: their tuning size is 0, never a size to compare)."""
    return s["method"].isin(style.REFERENCES) | (s["tuning_size"] == 0)


def point_label(r: pd.Series, with_size: bool = True) -> str:
    """A summary row as a legend names it: method, setting, and the tuning size of a diffusion method only."""
    size = f" (n={r['tuning_size']} per label)" if with_size and r["tuning_size"] else ""
    return f"{r['method']}{' ' + r['setting'] if r['setting'] else ''}{size}"


def tgap_plane(s: pd.DataFrame, figures_dir=None, name: str = "06_tgap_plane", iso=(0.6, 0.7, 0.8, 0.9, 1.1)):
    """x = AUROC(train real -> test synthetic), y = AUROC(train synthetic -> test real); one point per method
    and tuning size with 95% two-level bootstrap CIs (seeds, then test images); FTER = y / x, so FTER = 1 is the
    diagonal. Diffusion methods are filled, one marker per tuning size; references are hollow diamonds."""
    fig, ax = style.figure(0.62, 1.0)
    lo = 0.4 if s.empty else max(0.0, min(0.4, np.nanmin(s[["auroc_a_ci_low", "auroc_b_ci_low"]].to_numpy()) - 0.05))
    x = np.array([lo, 1.0])
    ax.plot(x, x, color="0.2", lw=0.9, zorder=1)
    ax.text(0.985, 0.985, "FTER = 1", ha="right", va="top", fontsize=6, rotation=45, rotation_mode="anchor")
    for f in iso:
        ax.plot(x, f * x, color="0.75", lw=0.6, ls="--", zorder=0)
        xe = min(1.0, 1.0 / f)
        ax.text(xe, f * xe, f"{f:g}", fontsize=5.5, color="0.5", ha="left", va="bottom")
    ref = is_reference(s) if len(s) else pd.Series(dtype=bool)
    markers = _sizes(s[~ref]) if len(s) else {}
    several = len(markers) > 1
    for (_, r), is_ref in zip(s.iterrows(), ref):
        xerr = [[r["auroc_b_mean"] - r["auroc_b_ci_low"]], [r["auroc_b_ci_high"] - r["auroc_b_mean"]]]
        yerr = [[r["auroc_a_mean"] - r["auroc_a_ci_low"]], [r["auroc_a_ci_high"] - r["auroc_a_mean"]]]
        c = style.color(r["method"])
        ax.errorbar(r["auroc_b_mean"], r["auroc_a_mean"], xerr=xerr, yerr=yerr,
                    fmt="D" if is_ref else markers[r["tuning_size"]], color=c, ms=4, lw=0.8, capsize=1.5,
                    mfc="white" if is_ref else c, zorder=3, label=point_label(r, several) + (" [ref.]" if is_ref else ""))
    if s.empty:
        _empty(ax)
    ax.set(xlim=(lo, 1.0), ylim=(lo, 1.0), aspect="equal",
           xlabel="AUROC, train real → test synthetic (b)", ylabel="AUROC, train synthetic → test real (a)")
    if len(s):
        key = "filled: diffusion methods" + (" (marker = tuning size)" if several else
                                             "".join(f", n={n} per label" for n in markers)) + \
              "; hollow ◇: reference generators [ref.]\nbars: 95% CI, two-level bootstrap (seeds, then test images)"
        ax.legend(fontsize=5.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), title=key,
                  title_fontsize=5, alignment="left")
    if figures_dir is not None:       # the explorer redraws without writing files
        style.save(fig, name, figures_dir)
    return fig


def fter_bars(s: pd.DataFrame) -> pd.DataFrame:
    """One bar per summary row: diffusion methods first, by tuning size within a method, then a gap and the
    reference generators as their own group (they have no tuning size). Columns: group, label, x, and the row's
    fter_pooled / fter_ci_low / fter_ci_high / method."""
    if s.empty:
        return pd.DataFrame(columns=["group", "label", "x", "method", "fter_pooled", "fter_ci_low", "fter_ci_high"])
    ref = is_reference(s)
    rows = []
    for group, part in (("diffusion", s[~ref]), ("reference", s[ref])):
        for _, r in part.iterrows():
            label = f"{r['method']}{' ' + r['setting'] if r['setting'] else ''}"
            rows.append({"group": group, "label": label + (f", n={r['tuning_size']}" if group == "diffusion" else ""),
                         **{k: r[k] for k in ("method", "fter_pooled", "fter_ci_low", "fter_ci_high")}})
    out = pd.DataFrame(rows)
    gap = (out["group"] == "reference").cumsum().clip(upper=1)        # one empty slot before the references
    out["x"] = np.arange(len(out)) + gap * (out["group"] == "diffusion").any()
    return out


def fter_by_method(s: pd.DataFrame, figures_dir, name: str = "06_fter_by_method"):
    """FTER (pooled seed mean, 95% two-level bootstrap CI: seeds, then test images), one bar per method and tuning
    size, the references in their own group at the right; FTER = 1 marked."""
    fig, ax = style.figure(0.8, 0.55)
    bars = fter_bars(s)
    for _, r in bars.iterrows():
        ref = r["group"] == "reference"
        ax.bar(r["x"], r["fter_pooled"], 0.7, color="white" if ref else style.color(r["method"]),
               edgecolor=style.color(r["method"]), lw=1.0,
               yerr=[[r["fter_pooled"] - r["fter_ci_low"]], [r["fter_ci_high"] - r["fter_pooled"]]],
               error_kw={"lw": 0.8, "capsize": 1.5})
    ax.axhline(1.0, color="0.2", lw=0.8)
    ax.set_xticks(bars["x"], bars["label"], fontsize=6, rotation=35, ha="right", rotation_mode="anchor")
    for group, part in bars.groupby("group", sort=False):
        ax.text(part["x"].mean(), 1.01, "reference generators (no tuning set)" if group == "reference"
                else "diffusion methods", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=6)
    ax.set_ylabel("FTER = AUROC(a) / AUROC(b)")
    ax.set_title("bars: pooled seed mean; whiskers: 95% CI, two-level bootstrap (seeds, then test images)",
                 fontsize=6, loc="left", pad=12)
    if s.empty:
        _empty(ax)
    style.save(fig, name, figures_dir)
    return fig


def gating_traces(logs: dict[str, pd.DataFrame], figures_dir, name: str = "06_gating_traces"):
    """Left: gate similarity per step against the threshold (black dashes; quantile mode: it rolls). Right:
    cumulative skip rate, gated runs beside the random-skip control that skips at the same rate without looking.
    Every seed is drawn and named (``logs``: lib.analyze.upstream.gating_logs); no intervals, single runs."""
    fig, (ax1, ax2) = style.figure(1.0, 0.4, ncols=2)
    seen = {}
    thresholds = set()
    for label, log in logs.items():
        method = label.split()[0]
        k = seen[method] = seen.get(method, -1) + 1          # a method's seeds: solid, dashed, dotted, ...
        c, ls = style.color(method), ("-", "--", ":", "-.")[k % 4]
        if method != "random-skip" and "score" in log and log["score"].notna().any():
            ax1.plot(log["step"], log["score"], lw=0.6, color=c, ls=ls, alpha=0.8, label=label)
            if "threshold" in log and log["threshold"].notna().any():
                th = log["threshold"]
                if th.nunique() == 1:
                    thresholds.add(float(th.iloc[0]))
                else:
                    ax1.step(log["step"], th, where="post", color="black", lw=1.0, ls=(0, (4, 2)), zorder=4)
        skipped = log["skipped"].astype(float)
        ax2.plot(log["step"], skipped.cumsum() / np.arange(1, len(log) + 1), lw=0.9, color=c, ls=ls, label=label)
    for th in sorted(thresholds):
        ax1.axhline(th, color="black", lw=1.2, ls=(0, (4, 2)), zorder=4, label=f"threshold {th:g}")
    fig.subplots_adjust(wspace=0.35)
    ax1.set(xlabel="training step", ylabel="gate similarity (CLIP cosine)")
    ax2.set(xlabel="training step", ylabel="cumulative skip rate", ylim=(-0.02, 1.02))
    if logs:
        ax1.legend(fontsize=5, frameon=True, framealpha=0.85, edgecolor="none", loc="lower right")
        ax2.legend(fontsize=5, frameon=False, loc="upper right")
    else:
        _empty(ax1, "no gated run among the results")
    style.save(fig, name, figures_dir)
    return fig


def sample_montage(samples: dict[str, dict[str, list[str]]], size: int, figures_dir,
                   name: str = "06_samples_by_method"):
    """Real images first, then one row per method (the no-fine-tune control is the base model), with each
    class's images in a labelled column group (the thesis's: No Finding, then Unhealthy)."""
    order = ([upstream.REAL_ROW] if upstream.REAL_ROW in samples else []) + style.method_order(
        [m for m in samples if m != upstream.REAL_ROW])
    classes = list(dict.fromkeys(lab for s in samples.values() for lab in s))    # first-seen = label order
    rows, ncols = {}, max((len(v) for s in samples.values() for v in s.values()), default=0)
    width = len(classes) * (ncols + 1) - 1
    for m in order:
        parts = [images.load_stack(samples[m].get(lab, []), size) if samples[m].get(lab) else np.zeros((0, size, size))
                 for lab in classes]
        if sum(len(h) for h in parts):
            # each class padded to ncols, with one blank image between the groups
            padded = []
            for i, h in enumerate(parts):
                padded += ([np.ones((1, size, size))] if i else []) + [h, np.ones((ncols - len(h), size, size))]
            rows["base model (no fine-tune)" if m == "no-fine-tune" else m] = np.concatenate(padded)
    fig, axes = style.figure(0.8, 0.14 * max(1, len(rows)), nrows=max(1, len(rows)))
    if rows:
        montage.show_rows(axes, rows, width)
        top = np.atleast_1d(axes)[0]
        for i, lab in enumerate(classes):
            top.text((i * (ncols + 1) + ncols / 2) / width, 1.08, lab, transform=top.transAxes,
                     ha="center", va="bottom", fontsize=7)
    else:
        _empty(np.atleast_1d(axes)[0], "no synthetic manifests found")
    style.save(fig, name, figures_dir)
    return fig


def _pick(w, s: pd.DataFrame, col: str, desc: str, label):
    """A multiple choice over a column's values, all selected, each named for a reader: the references'
    tuning size 0 and an ungated run's empty setting would otherwise show as '0' and a blank line."""
    values = sorted(s[col].unique(), key=str)
    return w.SelectMultiple(options=[(label(v), v) for v in values], value=tuple(values), description=desc,
                            rows=min(6, len(values)))


def explorer(s: pd.DataFrame, enabled: bool = True):
    """Pick methods, tuning sizes and gating settings; the FTER table and the T-Gap plane follow.

    Guarded for batch runs: it only builds widgets in a live IPython kernel with ipywidgets, never
    waits for input, and draws once straight away, so papermill and nbval run through it.
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
        from IPython.display import Image, display
        import ipywidgets as w
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not enabled or get_ipython() is None or getattr(get_ipython(), "kernel", None) is None or s.empty:
        print("explorer off (no live kernel, disabled, or no results)")
        return None
    methods = _pick(w, s, "method", "methods", str)
    sizes = _pick(w, s, "tuning_size", "sizes", lambda n: "reference (none)" if n == 0 else f"{n} per label")
    settings = _pick(w, s, "setting", "settings", lambda st: st or "ungated")
    out = w.Output()

    def redraw(*_):
        keep = s["method"].isin(methods.value) & s["tuning_size"].isin(sizes.value) & s["setting"].isin(settings.value)
        # Everything drawn and rendered to PNG before the output is cleared, then shown in one message: the front
        # end never shows a half-replaced output, and no live figure is left for the inline backend to show again.
        table, fig = tables.fter_table(s[keep]), tgap_plane(s[keep])
        png = Image(print_figure(fig, "png", bbox_inches="tight"))
        plt.close(fig)
        with out:
            out.clear_output(wait=True)
            display(table, png)

    for widget in (methods, sizes, settings):
        widget.observe(redraw, names="value")
    box = w.VBox([w.HBox([methods, sizes, settings]), out])
    display(box)
    redraw()
    return box


def calibration(s: pd.DataFrame, figures_dir, name: str = "06_calibration", null: dict | None = None,
                floor: dict | None = None):
    """Reference generators (known answers) on the T-Gap plane, and on FTER, the chance-corrected FTER,
    TR and detection AUROC, each with its two-level 95% CI; an undefined ratio is marked, not drawn. Below, the
    two checks as judged (lib.viz.calibration_checks): label-shuffled against its permutation null (``null``:
    lib.analyze.calibration.permutation_null), real-holdout's TR through its t-interval over seeds. ``floor``
    (lib.analyze.calibration.view_floor): the AUROC the view alone gives, a line on both AUROC(a) axes."""
    from ..analyze import calibration as cal
    from . import calibration_checks

    ref = cal.references(s)
    fig = style.figure(1.0, 0.62)[0]
    fig.clf()
    outer = fig.add_gridspec(2, 2, width_ratios=[1, 2.9], height_ratios=[1, 0.7], wspace=0.55, hspace=0.55)
    forest = outer[0, 1].subgridspec(1, 4, wspace=0.12)
    plane = fig.add_subplot(outer[0, 0])
    plane.plot([0.3, 1], [0.3, 1], color="0.2", lw=0.8)
    for _, r in ref.iterrows():
        xerr = [[r["auroc_b_pooled"] - r["auroc_b_ci_low"]], [r["auroc_b_ci_high"] - r["auroc_b_pooled"]]]
        yerr = [[r["auroc_a_pooled"] - r["auroc_a_ci_low"]], [r["auroc_a_ci_high"] - r["auroc_a_pooled"]]]
        plane.errorbar(r["auroc_b_pooled"], r["auroc_a_pooled"], xerr=xerr, yerr=yerr, fmt="o", ms=3, lw=0.7,
                       capsize=1.2, color=style.color(r["method"]), label=r["method"])
    plane.axhline(0.5, color="0.6", lw=0.6, ls=":")
    if floor is not None:
        plane.axhline(floor["value"], color=calibration_checks.FLOOR_COLOR, lw=0.8, ls="-.",
                      label=f"view-only floor {floor['value']:.2f}")
    plane.set(xlim=(0.3, 1), ylim=(0.3, 1), aspect="equal")
    if len(ref):     # the references by colour, and the floor line (its full wording is in the panel below)
        plane.legend(fontsize=3.8, loc="upper left", frameon=False, handlelength=0.8, handletextpad=0.3,
                     markerscale=0.6, borderpad=0.1, labelspacing=0.15, borderaxespad=0.2)
    plane.set_xlabel("AUROC (b): train real, test syn.", fontsize=6)
    plane.set_ylabel("AUROC (a): train syn., test real", fontsize=6)
    plane.tick_params(labelsize=5.5)
    ys = np.arange(len(ref))[::-1]
    for j, (metric, ref_line) in enumerate((("fter", 1.0), ("cc_fter", 1.0), ("tr", 1.0), ("auroc_det", 0.5))):
        ax = fig.add_subplot(forest[j])
        for y, (_, r) in zip(ys, ref.iterrows()):
            v, lo, hi = cal.value(r, metric)
            if np.isfinite(v):
                ax.errorbar(v, y, xerr=[[v - lo], [hi - v]], fmt="o", ms=3, lw=0.7, capsize=1.2,
                            color=style.color(r["method"]))
            else:     # inside the row, clear of the axis line and the ticks
                ax.annotate("undefined", (0.03, y), xycoords=("axes fraction", "data"), fontsize=5, ha="left",
                            va="center", color="0.4", style="italic")
        ax.axvline(ref_line, color="0.4", lw=0.6, ls="--")
        ax.set_ylim(-0.7, len(ref) - 0.3)
        ax.set_yticks(ys, list(ref["method"]) if j == 0 else [""] * len(ys), fontsize=5.5)
        ax.set_title(cal.METRICS[metric], fontsize=7)
        ax.tick_params(labelsize=5.5)
    if ref.empty:
        _empty(plane, "no reference generators among the results")
    calibration_checks.draw(fig, outer[1, :], s, null, floor)
    fig.text(0.01, 0.995, "top: pooled seed means with 95% CIs, two-level bootstrap (seeds, then test images); "
             "bottom: the checks as judged (permutation null; t-interval over seeds)", fontsize=5.5, va="top")
    style.save(fig, name, figures_dir)
    return fig


def fid_scale(values) -> str:
    """"log" when the positive FIDs span more than 10x (a linear axis piles the close ones up), else "linear"."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return "log" if len(v) > 1 and v.max() / v.min() > 10 else "linear"


def fidelity_vs_trainability(s: pd.DataFrame, figures_dir=None, name: str = "06_fidelity_vs_trainability"):
    """FID (seed mean, two-level 95% CI) against TR (left) and FTER (right), one point per method and
    tuning size with CI bars on both axes; reference generators hollow. Each panel names Spearman's rho
    over the methods (and over the generators alone); an undefined ratio is listed, not drawn."""
    from ..core.style import REFERENCES

    fig, axes = style.figure(1.0, 0.4, ncols=2)
    corr = agreement.fidelity_trainability(s).set_index(["methods", "trainability"])
    markers = _sizes(s) if len(s) else {}
    for ax, (key, label, line) in zip(axes, (("tr", "TR = (a − .5) / (TRTR − .5)", 1.0),
                                             ("fter", "FTER = AUROC(a) / AUROC(b)", 1.0))):
        undefined = []
        for _, r in s.iterrows():
            x, y = r.get("fidelity.fid_pooled", np.nan), r.get(f"{key}_pooled", np.nan)
            what = f"{r['method']}{' ' + r['setting'] if r['setting'] else ''}"
            if not np.isfinite(x):
                continue
            if not np.isfinite(y):
                undefined.append(what)
                continue
            ref = r["method"] in REFERENCES
            ax.errorbar(x, y, xerr=[[x - r["fidelity.fid_ci_low"]], [r["fidelity.fid_ci_high"] - x]],
                        yerr=[[y - r[f"{key}_ci_low"]], [r[f"{key}_ci_high"] - y]], fmt=markers[r["tuning_size"]],
                        color=style.color(r["method"]), mfc="white" if ref else style.color(r["method"]), ms=3.5,
                        lw=0.7, capsize=1.2, zorder=3,
                        label=what + ("" if ref else f" (n={r['tuning_size']})") if key == "tr" else None)
        ax.axhline(line, color="0.4", lw=0.6, ls="--", zorder=0)
        if key == "tr":
            ax.axhline(0.0, color="0.6", lw=0.6, ls=":", zorder=0)
        rho = [f"{m} {corr.loc[(m, key), 'rho']:+.2f}".replace("-", "−") for m in ("generators", "all")
               if np.isfinite(corr.loc[(m, key), "rho"])]
        if rho:
            ax.set_title("Spearman ρ: " + ", ".join(rho), fontsize=6.5)
        if undefined:
            ax.text(0.02, 0.02, "undefined: " + ", ".join(undefined), transform=ax.transAxes, fontsize=5,
                    color="0.4", va="bottom", wrap=True)
        kinds = sorted(set(s["fidelity_extractor"]) - {""}) if "fidelity_extractor" in s else []
        scale = fid_scale(s["fidelity.fid_pooled"]) if "fidelity.fid_pooled" in s else "linear"
        ax.set_xscale(scale)
        ax.set_xlabel("FID" + (f" ({', '.join(kinds)} features)" if kinds else "") +
                      (", log scale" if scale == "log" else ""), fontsize=7)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.subplots_adjust(wspace=0.32)
    fig.text(0.01, 0.995, "pooled seed means; bars: 95% CIs, two-level bootstrap (seeds, then test images)",
             fontsize=5.5, va="top")
    if s.empty or "fidelity.fid_pooled" not in s or not np.isfinite(s["fidelity.fid_pooled"].astype(float)).any():
        _empty(axes[0], "no fidelity metrics among the results")
    else:
        axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=5.5, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.03, 1.0))
    if figures_dir is not None:
        style.save(fig, name, figures_dir)
    return fig
