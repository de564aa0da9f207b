"""Notebook 05's views: metrics of both directions, ROC curves, confusion matrices, training curves."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..data import domains, nih
from ..evaluate import results
from ..core import style


def _classes(row: dict) -> list[str]:
    """A record's classes in label-index order: its per-class TSTR keys (a_support[<class>]; the record's keys
    are sorted) in the order of param.data.classes when it names one."""
    found = [k[len("a_support["):-1] for k in row if k.startswith("a_support[") and k.endswith("]")]
    declared = json.loads(row.get("param.data.classes") or "null")
    return domains.order(found, declared if declared and set(declared) == set(found) else None)


def _short(classes: list[str]) -> list[str]:
    """Axis labels: the thesis's NF and U, else the names (cut to 6 characters)."""
    return ["NF", "U"] if classes == list(nih.LABELS) else [c[:6] for c in classes]


NAMES = {"a": "(a) train synthetic, test real", "b": "(b) train real, test synthetic",
         "trtr": "TRTR train real, test real", "tsts": "TSTS train synthetic, test held-out synthetic"}


def headline(row: dict) -> None:
    """The trainability matrix with intervals, the three ratios, detection AUROC, any collapsed classifier."""
    for k in NAMES:
        print(f"{NAMES[k]:<48} AUROC {row[f'{k}_auroc']:.3f} [{row[f'{k}_auroc_ci_low']:.3f}, "
              f"{row[f'{k}_auroc_ci_high']:.3f}], accuracy {row[f'{k}_accuracy']:.3f}, n_test {row[f'{k}_n']}")
    for r, name in (("fter", "FTER = a / b"), ("cc_fter", "chance-corrected FTER"), ("tr", "TR = (a-.5)/(TRTR-.5)")):
        text = (f"{row[r]:.3f} [{row[f'{r}_ci_low']:.3f}, {row[f'{r}_ci_high']:.3f}]" if row[f"{r}_defined"]
                else f"undefined ({row[f'{r}_note']})")
        print(f"{name:<26} {text}")
    per_class = ", ".join(f"{c} {row[f'det_auroc[{c}]']:.3f} [{row[f'det_auroc[{c}]_ci_low']:.3f}, "
                          f"{row[f'det_auroc[{c}]_ci_high']:.3f}]" for c in _classes(row))
    print(f"detection AUROC (real vs synthetic; 0.5 = indistinguishable) {row['det_auroc']:.3f} "
          f"[{row['det_auroc_ci_low']:.3f}, {row['det_auroc_ci_high']:.3f}]; within class: {per_class}")
    print(f"method {row['method']}, seed {row['seed']}")
    for k in NAMES:
        if row[f"{k}_collapsed"]:
            print(f"WARNING: classifier {NAMES[k]} is COLLAPSED: it puts every test image in one class; "
                  "its accuracy and per-class metrics mean little.")


def metric_table(row: dict) -> pd.DataFrame:
    t = results.metric_table(row)
    bookkeeping = ("n_train", "n_val", "epochs_run", "best_epoch", "stopped_early", "train_seconds", "classifier_hash")
    keep = [i for i in t.index if not i.startswith(("cm[", "predicted[")) and i not in bookkeeping]
    return t.loc[keep]


def _roc(y, s):
    order = np.argsort(-s, kind="mergesort")
    y = y[order]
    tpr = np.concatenate([[0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(1 - y) / max((1 - y).sum(), 1)])
    return fpr, tpr


def _confusion(ax, row: dict, k: str) -> None:
    """Direction k's confusion matrix, each count in the ink its cell's shade needs to be read."""
    classes = _classes(row)
    cm = np.array([[row[f"{k}_cm[{t}->{q}]"] for q in classes] for t in classes])
    im = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7 if len(classes) < 5 else 5,
                color=style.ink(im.cmap(im.norm(v))))
    short = _short(classes)
    ax.set_xticks(range(len(classes)), short); ax.set_yticks(range(len(classes)), short)
    if len(classes) > 2:
        ax.tick_params(labelsize=6)
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("predicted")
    ax.set_title(f"({k})" + (" collapsed" if row[f"{k}_collapsed"] else ""), fontsize=8)


def roc_and_confusion(pred_a: pd.DataFrame, pred_b: pd.DataFrame, row: dict, figures_dir,
                      name: str = "05_roc_confusion"):
    fig, axes = style.figure(1.0, 0.32, ncols=3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    for k, pred, ls in (("a", pred_a, "-"), ("b", pred_b, "--")):
        y, o = results.arrays(pred)
        if np.ndim(o) == 1 or o.shape[1] == 2:
            fpr, tpr = _roc(y, pred["score"].to_numpy(float))
            axes[0].plot(fpr, tpr, ls, color=style.color(row["method"]), label=f"{k}: AUROC {row[f'{k}_auroc']:.2f}")
            continue
        # k > 2: each class one-vs-rest, on its normalised output (their mean AUROC is the macro AUROC)
        p = o / np.clip(o.sum(1, keepdims=True), 1e-12, None)
        for c, cls in enumerate(results.classes_of(pred)):
            fpr, tpr = _roc((y == c).astype(int), p[:, c])
            axes[0].plot(fpr, tpr, ls, color=style.label_color(cls, c), lw=0.9,
                         label=f"{k} {cls}: {row.get(f'{k}_auroc[{cls}]', np.nan):.2f}")
    axes[0].plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    axes[0].set_xlabel("false positive rate"); axes[0].set_ylabel("true positive rate")
    axes[0].legend(frameon=False, fontsize=6)
    for ax, k in zip(axes[1:], "ab"):
        _confusion(ax, row, k)
    axes[1].set_ylabel("true")
    axes[2].set_yticks(axes[1].get_yticks(), [])    # (b) has (a)'s classes: its own labels would overlap (a)
    style.save(fig, name, figures_dir)
    return fig


def training_curves(info_a: dict, info_b: dict, figures_dir, name: str = "05_training_curves"):
    fig, axes = style.figure(1.0, 0.3, ncols=2, sharey=True)
    for ax, k, info in zip(axes, "ab", (info_a, info_b)):
        h = pd.DataFrame(info["history"])
        ax.plot(h["epoch"], h["train_loss"], label="train"); ax.plot(h["epoch"], h["val_loss"], label="validation")
        ax.axvline(info["best_epoch"], ls=":", color="grey")
        ax.set_title(NAMES[k], fontsize=8); ax.set_xlabel("epoch")
    axes[0].set_ylabel("BCE loss"); axes[0].legend(frameon=False)
    style.save(fig, name, figures_dir)
    return fig


def fidelity(stage_dir, figures_dir, name: str = "05_memorization") -> pd.DataFrame:
    """The synthetic set's fidelity, diversity and memorization (stage 05's fidelity.csv and
    memorization.json): one row per metric, one column per class and overall, each value with its 95%
    bootstrap CI. The montage of the synthetic images nearest a seen image, drawn by the stage, is copied
    to figures_dir and shown."""
    import json
    import shutil
    from pathlib import Path

    from ..evaluate import fidelity_metrics as fid
    from ..core import paths

    d = Path(stage_dir)
    table = pd.read_csv(d / "fidelity.csv", keep_default_na=False)
    mem = json.loads((d / "memorization.json").read_text()) if (d / "memorization.json").exists() else None
    if mem is not None:
        table = pd.concat([table, pd.DataFrame(mem["summary"]).assign(metric=lambda t: "memorization: " + t["metric"])])
    row = results.read(d)
    print(f"features: {row.get('fidelity.extractor')}; synthetic {int(table['n_fake'].max())} images against "
          f"{int(table['n_real'].max())} real training images")
    notes = table.drop_duplicates("metric").set_index("metric")["note"]
    print("; ".join(f"{m}: {notes[m]}" for m in ("fid", "diversity_synthetic") if m in notes))
    if mem is not None:
        print(f"memorization: nearest {row.get('memorization.seen')} image against nearest unseen real image "
              f"({mem['n_tuning']} seen, {mem['n_holdout']} unseen); copy = distance < {mem['copy_threshold']:g} x "
              f"the median real-to-real nearest-neighbour distance ({mem['scale']:.3g})")
        png = d / f"{name}.png"
        if png.exists():
            out = paths.resolve(figures_dir)
            out.mkdir(parents=True, exist_ok=True)
            for ext in ("pdf", "png"):
                shutil.copyfile(d / f"{name}.{ext}", out / f"{name}.{ext}")
            try:
                from IPython.display import Image, display
                display(Image(filename=str(out / f"{name}.png")))
            except ImportError:
                pass
    cell = [f"{v:.3g} [{lo:.3g}, {hi:.3g}]" for v, lo, hi in zip(table["value"], table["ci_low"], table["ci_high"])]
    wide = table.assign(cell=cell).pivot(index="metric", columns="group", values="cell")
    groups = [g for g in wide.columns if g != fid.ALL] + [fid.ALL]
    return wide.reindex(index=list(dict.fromkeys(table["metric"])), columns=groups)
