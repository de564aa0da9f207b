"""Every results record under a runs root in one table, columns normalised, with its grouping keys.

Column names are normalised to ``auroc_a``, ``acc_b_Unhealthy``, ``auroc_det_Unhealthy`` ... whichever
spelling the record uses (``a_auroc``, ``b_accuracy[Unhealthy]``), for the classes of any domain
(``auroc_a_circle``); the cells and ratios are lib.analyze.matrix's. Runs are grouped by method, tuning size
and gating setting (GROUP), methods in the thesis's order (METHOD_ORDER).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import paths
from .matrix import RATIOS

GROUP = ["method", "tuning_size", "setting"]
METHOD_ORDER = ["no-fine-tune", "random", "spectral-pixel", "spectral-clip", "textbook", "active-gating",
                "random-skip", "equal-updates", "real-holdout", "vae-roundtrip", "exaggerated", "findings-erased", "collapsed",
                "label-shuffled", "folder"]


def find_results(root: str | Path, runs: list | None = None) -> list[Path]:
    """Stage-05 folders holding results.csv: every one under ``root``, or those of the given run folders."""
    if runs:
        out = []
        for r in runs:
            rec = json.loads((paths.resolve(r) / "run.json").read_text())
            d = rec.get("stages", {}).get("05_classifier", {}).get("stage_dir")
            if d and (Path(d) / "results.csv").exists():
                out.append(Path(d))
        return sorted(set(out))
    root = paths.resolve(root)
    return sorted({p.parent.resolve() for p in root.rglob("results.csv")}) if root.exists() else []


def _canonical(col: str) -> str:
    """'a_auroc' -> 'auroc_a'; 'b_accuracy[Unhealthy]' -> 'acc_b_Unhealthy';
    'det_auroc[Unhealthy]_ci_low' -> 'auroc_det_Unhealthy_ci_low'; others unchanged."""
    m = re.fullmatch(r"(a|b|trtr|tsts)_(auroc|accuracy|collapsed)(_ci_low|_ci_high)?(?:\[(.+)\])?", col)
    if m:
        d, metric, ci, cls = m.groups()
        metric = {"accuracy": "acc"}.get(metric, metric)
        return f"{metric}_{d}{ci or ''}" + (f"_{cls}" if cls else "")
    m = re.fullmatch(r"det_auroc(?:\[(.+)\])?(_ci_low|_ci_high)?", col)
    if m:
        cls, ci = m.groups()
        return "auroc_det" + (f"_{cls}" if cls else "") + (ci or "")
    return col


def params_of(row: pd.Series) -> dict:
    """The run's full parameters, from params_json or from flattened ``param.*`` columns."""
    if isinstance(row.get("params_json"), str):
        return json.loads(row["params_json"])
    out: dict = {}
    for k, v in row.items():
        if not str(k).startswith("param.") or (isinstance(v, float) and np.isnan(v)):
            continue
        node = out
        *parents, leaf = k[len("param."):].split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(v, str) and v[:1] in "[{":
            v = json.loads(v)
        v = v.item() if hasattr(v, "item") else v
        # a column that is null in some records reads as float: 12 comes back 12.0, which an int field
        # refuses (a float field takes an int back as float, so integral values go back to int)
        node[leaf] = int(v) if isinstance(v, float) and v.is_integer() else v
    return out


def _setting(row) -> str:
    """What distinguishes runs of one method: the imported folder's name for a folder set (each folder its own
    row), the threshold rule for gated runs, empty otherwise."""
    p = row["params"]
    gen = p.get("generation", {})
    if gen.get("kind") == "folder" and gen.get("folder"):
        return Path(str(gen["folder"]).rstrip("/")).name
    if gen.get("shuffled_fraction") is not None:   # the partly-shuffled series: one row per label-free share
        return f"shuffled{float(gen['shuffled_fraction']):g}"
    g = p.get("gating", {})
    if not g.get("enabled"):
        return ""
    return f"q{g.get('skip_fraction'):g}" if g.get("mode") == "quantile" else f"thr{float(g.get('threshold')):g}"


def collect(root: str | Path = "runs", runs: list | None = None) -> pd.DataFrame:
    """One row per results record, columns normalised, plus results_dir, params and the grouping keys."""
    frames = []
    for d in find_results(root, runs):
        frames.append(pd.read_csv(d / "results.csv").copy().assign(results_dir=str(d)))
    if not frames:
        return pd.DataFrame(columns=["method", "tuning_size", "seed", "setting", "threshold", "gating", "control",
                                     "results_dir", "params", "auroc_a", "auroc_b", "fter"])
    df = pd.concat(frames, ignore_index=True).rename(columns=_canonical).copy()   # one block, not fragments
    df["params"] = [params_of(r) for _, r in df.iterrows()]
    if "tuning_per_label" in df:  # the record's tuning_size there counts all images; tables use per label
        df = df.rename(columns={"tuning_size": "tuning_images"}).rename(columns={"tuning_per_label": "tuning_size"})
    p = df["params"]
    df["tuning_size"] = df.get("tuning_size", p.map(lambda q: q["selection"]["per_label"]))
    df["threshold"] = p.map(lambda q: q["gating"]["threshold"])
    df["gating"] = p.map(lambda q: bool(q["gating"]["enabled"]))
    df["control"] = p.map(lambda q: q["finetune"]["control"])
    df["decision_threshold"] = p.map(lambda q: q.get("classifier", {}).get("threshold", 0.5))
    df["setting"] = [_setting(r) for _, r in df.iterrows()]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    df["_o"] = df["method"].map(lambda m: order.get(m, len(order)))
    return df.sort_values(["_o", "tuning_size", "setting", "seed"]).drop(columns="_o").reset_index(drop=True)


_METRIC = re.compile(r"(auroc|acc)_(a|b|trtr|tsts|det)(?:_(.+))?$")
_INTERVAL = re.compile(r"(?:^|_)ci_(?:low|high)$")


def is_metric(col: str) -> bool:
    """A per-run metric: a cell's or the detector's AUROC or accuracy, overall or of any class (the class
    name is whatever follows the cell, ``auroc_a_circle``), or a ratio; not the record's intervals."""
    if col in RATIOS:
        return True
    m = _METRIC.match(col)
    return bool(m) and not (m.group(3) and _INTERVAL.search(m.group(3)))


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if is_metric(c)]


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Long form: one row per run x direction x metric x class (class 'overall' for the whole test set)."""
    rows = []
    for _, r in df.iterrows():
        for c in metric_columns(df):
            m = re.match(r"(auroc|acc)_(a|b|trtr|tsts|det)(?:_(.+))?$", c)
            metric, d, cls = (m.groups() if m else (c, {"tr": "a/trtr"}.get(c, "a/b"), None))
            rows.append({**{k: r[k] for k in ["method", "tuning_size", "setting", "seed"]},
                         "direction": d, "metric": metric, "class": cls or "overall", "value": r[c]})
    return pd.DataFrame(rows)


def development_seed_warning(df: pd.DataFrame, development_seeds=()) -> str | None:
    """A warning when a reported seed is one the parameters were tuned on (``development_seeds`` of the parameter
    file, and of any record that carries it): results at such a seed are not evidence for those parameters."""
    dev = set(int(s) for s in development_seeds)
    for p in df.get("params", []):
        dev |= set(int(s) for s in (p.get("development_seeds") or []))
    hit = sorted(dev & set(int(s) for s in df.get("seed", [])))
    if not hit:
        return None
    return (f"warning: seed(s) {hit} are among the development seeds {sorted(dev)} these parameters were tuned on; "
            "results at them are not evidence for the parameters. Report seeds they were not chosen on.")
