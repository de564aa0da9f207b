"""A record's upstream stage folders, and what the figures show from them: stage 03's gating logs and a
few images per label of stage 04's synthetic sets beside real test images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import config, paths, stages
from .matrix import record_classes


def upstream_dir(row: pd.Series, stage: str) -> Path:
    """A record's upstream stage folder (runs root = three levels above the stage-05 folder)."""
    cfg = config.from_dict(row["params"])
    return stages.stage_dir(cfg, stage, Path(row["results_dir"]).parents[2])


def gating_logs(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Stage 03's gating_log.csv (step, score, threshold, skipped, seconds) of every seed of each gated run and
    random-skip control, keyed "<method>[ <setting>] seed <seed>" in seed order; the equal-updates control skips
    nothing, so it has no trace to show (its updates stand beside the gating comparisons, training_cost)."""
    out = {}
    runs = df[(df["gating"].astype(bool)) | (df["control"] == "random-skip")]
    for _, r in runs.sort_values("seed", kind="stable").iterrows():
        name = r["method"] + (f" {r['setting']}" if r["setting"] and df["setting"].nunique() > 2 else "")
        name += f" seed {int(r['seed'])}"
        f = upstream_dir(r, "03_dreambooth") / "gating_log.csv"
        if name not in out and f.exists():
            out[name] = pd.read_csv(f)
    return out


def training_cost(group: pd.DataFrame) -> dict:
    """Stage 03 of a group's runs, means over its seeds: wall seconds, the gate's seconds within them, and the
    updates trained (the gate's cost and its fewer updates, reported beside a gating comparison); {} without
    stage-03 summaries (references, controls without training)."""
    rows = []
    for _, r in group.iterrows():
        f = upstream_dir(r, "03_dreambooth") / "train_summary.json"
        if f.exists():
            s = json.loads(f.read_text())
            rows.append((s.get("wall_seconds", np.nan), s.get("gating_seconds") or 0.0, s.get("trained", np.nan)))
    if not rows:
        return {}
    wall, gate, trained = np.asarray(rows, float).mean(axis=0)
    return {"stage03_seconds": wall, "gate_seconds": gate, "updates": trained}


def _manifest(stage4: Path) -> pd.DataFrame | None:
    """The synthetic manifest of a generation stage: the CSV with a label and a file/path column."""
    for f in sorted(stage4.glob("*.csv"), key=lambda f: f.name != "manifest.csv"):
        m = pd.read_csv(f, nrows=100000)
        col = next((c for c in ("path", "file", "image_path") if c in m.columns), None)
        if col and "label" in m.columns:
            # absolute, relative to the stage folder, or relative to the project root
            m["_path"] = [p if Path(p).is_absolute() else str(stage4 / p) if (stage4 / p).exists()
                          else str(paths.resolve(p)) for p in m[col].astype(str)]
            return m
    return None


REAL_ROW = "real images"


def sample_paths(df: pd.DataFrame, per_label: int = 4, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """A few image paths per label for each method (first seed), from stage 04's manifest, and under
    REAL_ROW as many real test images (the first record's real test sample) to compare them with."""
    out = {}
    for _, r in df.iterrows():
        real = Path(r["results_dir"]) / "test_a.csv"
        t = pd.read_csv(real) if REAL_ROW not in out and real.exists() else None
        if t is not None and {"path", "label"} <= set(t.columns):
            picks = _per_label(t, "path", record_classes(r["results_dir"], t["label"]), per_label, seed)
            out[REAL_ROW] = {lab: [str(paths.resolve(p)) for p in v] for lab, v in picks.items()}
        if r["method"] in out:
            continue
        m = _manifest(upstream_dir(r, "04_generation"))
        if m is None:
            continue
        out[r["method"]] = _per_label(m, "_path", record_classes(r["results_dir"], m["label"]), per_label, seed)
    return out


def _per_label(t: pd.DataFrame, col: str, classes: list[str], n: int, seed: int) -> dict[str, list[str]]:
    """Up to n values of ``col`` of each class, drawn reproducibly."""
    labels = t["label"].astype(str)          # a class named "1" reads back as a number
    return {lab: t[labels == lab][col].sample(min(n, int((labels == lab).sum())), random_state=seed).tolist()
            for lab in classes}
