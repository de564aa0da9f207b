"""Figures and views of notebook 03: loss, similarity trace, skip rate, validation images, threshold slider."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import style
from ..core.montage import grid


def read_logs(out_dir) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    out = Path(out_dir)
    return (pd.read_csv(out / "loss_log.csv"), pd.read_csv(out / "gating_log.csv"),
            json.loads((out / "train_summary.json").read_text()))


def summary_table(out_dir) -> pd.DataFrame:
    """The run in one table: steps, skipped, skip rate, wall and gating seconds, control, tuning set."""
    s = read_logs(out_dir)[2]
    keys = ["control", "method", "gating", "mode", "threshold", "aggregation", "steps", "trained", "skipped",
            "skip_rate", "wall_seconds", "gating_seconds", "n_tuning", "tuning_set", "base", "device"]
    return pd.DataFrame({"value": [s.get(k) for k in keys]}, index=keys)


def skip_warning(out_dir) -> str | None:
    """A warning when the skip rate is degenerate (0% or 100%): the threshold then decides nothing."""
    s = read_logs(out_dir)[2]
    if not s.get("gating") or s.get("steps", 0) == 0:
        return None
    if s["skipped"] == 0:
        return ("WARNING: gating skipped 0% of the batches: the threshold is above every score, so this run is "
                "plain DreamBooth. Lower gating.threshold or use gating.mode: quantile.")
    if s["skipped"] == s["steps"]:
        return ("WARNING: gating skipped 100% of the batches: the model never trained (scores are all above the "
                "threshold; CLIP cosines between X-rays are usually far above 0.3). Raise gating.threshold or "
                "use gating.mode: quantile.")
    return None


def read_trace(out_dir) -> pd.DataFrame:
    """The KID trace of the validation saves (validation_log.csv; for a run still training, the step files)."""
    from ..evaluate.fidelity import trace_log

    out = Path(out_dir)
    f = out / "validation_log.csv"
    return pd.read_csv(f) if f.exists() else trace_log(out / "validation")


def loss_curve(out_dir, figures_dir, name: str = "03_loss"):
    """The denoising loss and, beside it, the KID of each validation save against the tuning images."""
    loss, trace = read_logs(out_dir)[0], read_trace(out_dir).dropna(subset=["kid"])
    fig, axes = style.figure(1.0 if len(trace) else 0.6, aspect=0.31 if len(trace) else 0.62,
                             ncols=2 if len(trace) else 1, squeeze=False)
    ax = axes[0, 0]
    for model, part in loss.groupby("model"):
        ax.plot(part["step"], part["loss"], ".", ms=2, alpha=0.35, color=style.color("spectral-clip"))
        roll = part["loss"].rolling(10, min_periods=1).mean()
        ax.plot(part["step"], roll, lw=1.2, label=f"{model} (10-batch mean)")
        if part["loss_prior"].gt(0).any():
            ax.plot(part["step"], part["loss_prior"].rolling(10, min_periods=1).mean(), lw=1, ls="--",
                    label=f"{model} prior loss")
    ax.set_xlabel("batch (step)"); ax.set_ylabel("denoising MSE"); ax.legend(fontsize=6, frameon=False)
    if len(trace):
        _trace_panel(axes[0, 1], trace)
    style.save(fig, name, figures_dir)
    return fig


def _trace_panel(ax, trace: pd.DataFrame) -> None:
    """KID (unbiased, full sets: lib.evaluate.fidelity.validation_trace) per label and pooled, at each validation save."""
    for (model, group), part in trace.groupby(["model", "group"], sort=True):
        pooled = group == "all"
        ax.plot(part["step"], part["kid"], "o-" if not pooled else "s--", ms=3, lw=1,
                color="k" if pooled else style.label_color(group),
                label=f"{group}" + ("" if model == "model" else f" ({model})"))
    ax.axhline(0, color="0.6", lw=0.6)
    kind = str(trace["features"].iloc[0]).split("-")[0]
    ax.set_xlabel("batch (step)"); ax.set_ylabel("KID vs tuning images")
    ax.set_title(f"validation images, {kind} features", fontsize=7)
    ax.legend(fontsize=6, frameon=False)
    ax.figure.subplots_adjust(wspace=0.4)


def similarity_trace(out_dir, figures_dir, name: str = "03_similarity"):
    """Gating score per batch against the threshold used; skipped batches marked."""
    log = read_logs(out_dir)[1]
    fig, ax = style.figure(0.6)
    if log["score"].notna().any():
        ax.plot(log["step"], log["score"], lw=0.8, color=style.color("active-gating"), label="similarity")
        sk = log[log["skipped"].astype(bool)]
        ax.plot(sk["step"], sk["score"], "x", ms=3, color="k", label="skipped")
        ax.plot(log["step"], log["threshold"], lw=1, ls="--", color="0.4", label="threshold")
    else:
        ax.text(0.5, 0.5, "no gating scores in this run\n(gating off or a control)", ha="center",
                va="center", transform=ax.transAxes, fontsize=7)
    ax.set_xlabel("batch (step)"); ax.set_ylabel("CLIP cosine (generated vs batch)")
    ax.legend(fontsize=6, frameon=False)
    style.save(fig, name, figures_dir)
    return fig


def skip_rate_figure(out_dir, figures_dir, name: str = "03_skip_rate"):
    log = read_logs(out_dir)[1]
    fig, ax = style.figure(0.6)
    if len(log):
        cum = log["skipped"].astype(float).expanding().mean()
        ax.plot(log["step"], cum * 100, color=style.color("active-gating"))
    ax.set_xlabel("batch (step)"); ax.set_ylabel("cumulative skip rate (%)"); ax.set_ylim(-2, 102)
    style.save(fig, name, figures_dir)
    warn = skip_warning(out_dir)
    if warn:
        print(warn)
    return fig


def validation_steps(out_dir, model: str = "model") -> list[tuple[int, np.ndarray, list]]:
    """(step, labels x n x H x W uint8 array, labels) of every validation save of one model, in step order."""
    out = []
    for meta in sorted((Path(out_dir) / "validation").glob("step_*.json")):
        m = json.loads(meta.read_text())
        if m["model"] == model:
            out.append((m["step"], np.load(meta.with_suffix(".npy")), m["labels"]))
    return out


def validation_figure(out_dir, figures_dir, name: str = "03_validation", model: str = "model"):
    """Validation images over training: one row per save, labels side by side."""
    saves = validation_steps(out_dir, model)
    if not saves:
        print("no validation images were saved (finetune.validation_images = 0 or a no-fine-tune control)")
        return None
    fig, axes = style.figure(1.0, aspect=0.14 * len(saves) + 0.05, nrows=len(saves), squeeze=False)
    for ax, (step, arr, labels) in zip(axes[:, 0], saves):
        strip = np.concatenate([grid(a / 255.0, len(a)) for a in arr], axis=1)
        ax.imshow(strip, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]); ax.set_yticks([])
        ax.set_ylabel(f"step {step}", rotation=0, ha="right", va="center", fontsize=7)
    axes[0, 0].set_title("   |   ".join(saves[0][2]), fontsize=7)
    style.save(fig, name, figures_dir)
    return fig


def base_vs_finetuned(out_dir, tuning: pd.DataFrame, size: int, figures_dir,
                      name: str = "03_base_vs_finetuned", n: int = 6, model: str = "model"):
    """Real tuning images, the base model and the fine-tuned model for the same prompts and seeds."""
    from ..data import images

    saves = validation_steps(out_dir, model)
    if len(saves) < 2:
        print("need validation images at step 0 and at the end; run with finetune.validation_images > 0")
        return None
    (s0, base, labels), (s1, tuned, _) = saves[0], saves[-1]
    rows = {}
    for i, label in enumerate(labels):
        paths = tuning.loc[tuning["label"] == label, "path"].head(n).tolist()
        rows[f"real\n{label}"] = images.load_stack(paths, size)
        rows[f"base (step {s0})\n{label}"] = base[i][:n] / 255.0
        rows[f"fine-tuned (step {s1})\n{label}"] = tuned[i][:n] / 255.0
    fig, axes = style.figure(0.8, aspect=0.13 * len(rows) + 0.05, nrows=len(rows), squeeze=False)
    from ..core.montage import show_rows

    show_rows(axes[:, 0], rows, n)
    style.save(fig, name, figures_dir)
    return fig


def would_skip(log: pd.DataFrame, threshold: float) -> pd.Series:
    """Which logged batches an absolute threshold would have skipped (score > threshold)."""
    return log["score"] > threshold


def threshold_explorer(out_dir):
    """A slider over the logged similarities: which batches a threshold would skip. Never blocks: under
    papermill/nbval (no widget front end) it shows its first state, and without ipywidgets it prints."""
    log = read_logs(out_dir)[1]
    scores = log["score"].dropna()
    if scores.empty:
        print("no gating scores logged in this run: nothing to explore.")
        return None
    lo, hi = float(scores.min()), float(scores.max())
    start = float(np.clip(json.loads((Path(out_dir) / "train_summary.json").read_text()).get("threshold", lo), lo, hi))

    def describe(threshold: float) -> str:
        s = would_skip(log.dropna(subset=["score"]), threshold)
        steps = log.loc[s[s].index, "step"].tolist()
        return (f"threshold {threshold:.4f}: would skip {int(s.sum())} of {len(s)} batches "
                f"({100 * s.mean():.0f}%); steps {steps[:20]}{' ...' if len(steps) > 20 else ''}")

    try:
        import ipywidgets as w
        from IPython import get_ipython
        from IPython.display import Pretty, display
    except ImportError:
        print(describe(start))
        return None
    if os.environ.get("SUITE_BATCH") or get_ipython() is None:   # a batch run (lib.runs.runner) or a script
        print(describe(start))
        return None
    slider = w.FloatSlider(value=start, min=lo, max=hi, step=max((hi - lo) / 200, 1e-6), readout_format=".4f",
                           description="threshold", continuous_update=False)
    display(slider)
    # The line is plain text under a display id, updated in place: it follows the slider, and a saved or
    # executed notebook (no widget front end) still shows it. Returning nothing: no second copy as Out[].
    line = display(Pretty(describe(start)), display_id=True)
    slider.observe(lambda change: line.update(Pretty(describe(change["new"]))), names="value")
