"""How many seeds a comparison needs, planned from finished pilot runs.

For each paired comparison of a study (lib.analyze.comparisons), the s.d. of its per-seed differences and the
wall time its runs took give: the minimum detectable effect now, the seeds (and classifier repeats, when the
records carry a classifier-repeat variance component) a target difference needs at 80% power, and what that
costs in the pilot's own wall time per seed. With two pilot seeds the s.d. itself is uncertain (its 95% interval
spans about 0.45x-32x): a plan from a pilot that small is a first guess, to be re-planned as seeds come in.

CLI: ``python -m lib.analyze.planner --root runs/demo --delta 0.05 [--sweep-runs DIR ...]``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import collection, comparisons, power


def run_seconds(root: str | Path) -> dict[str, float]:
    """Stage-05 folder name -> the seconds its run spent executing stages (run.json of every run under root)."""
    out = {}
    for rec in Path(root).rglob("run.json"):
        try:
            st = json.loads(rec.read_text()).get("stages", {})
        except (OSError, ValueError):
            continue
        d = st.get("05_classifier", {}).get("stage_dir")
        if d:
            out[Path(d).name] = float(sum(v.get("seconds") or 0 for v in st.values()))   # by folder name: a moved
                                                                                           # runs root still matches
    return out


def seconds_per_seed(group: pd.DataFrame, seconds: dict[str, float]) -> float:
    """Mean wall time of one run of a group (NaN when no run.json recorded it)."""
    v = [seconds.get(Path(d).name) for d in group["results_dir"]]
    v = [x for x in v if x]
    return float(np.mean(v)) if v else math.nan


def _group(df: pd.DataFrame, label: str) -> pd.DataFrame:
    key = df["method"] + np.where(df["setting"] != "", " " + df["setting"], "")
    if label in set(key):
        return df[key == label]
    name, _, size = label.rpartition(" n")            # cross-size labels: "<method> n<size>"
    return df[(key == name) & (df["tuning_size"].astype(str) == size)]


def plan_table(df: pd.DataFrame, compared: pd.DataFrame, delta: float, root=None,
               sd_classifier: float = 0.0) -> pd.DataFrame:
    """Per comparison: seeds run, s.d. of the per-seed ΔAUROC(a), MDE now, and the cheapest design for ``delta``
    (seeds x classifier repeats, via power.plan) with its cost in the pilot's wall time."""
    seconds = run_seconds(root) if root else {}
    rows = []
    for _, c in compared.iterrows():
        sd = c.get("sd_d_auroc_a", math.nan)
        x, b = c["comparison"].split(" − ")
        per_seed = sum(seconds_per_seed(_group(df, g), seconds) for g in (x, b))
        row = {"comparison": c["comparison"], "size": c.get("tuning size"), "seeds run": c.get("n_seeds", 0),
               "sd of per-seed Δ": sd, "MDE now": c.get("mde_auroc_a", math.nan), "target Δ": delta}
        if np.isfinite(sd):
            sd_g = math.sqrt(max(sd ** 2 - sd_classifier ** 2, 0.0))
            design = power.plan(delta, sd_g, sd_classifier, per_seed if np.isfinite(per_seed) else 0.0, 0.0,
                                max_repeats=1 if sd_classifier == 0 else 8).iloc[0]
            row.update({"seeds needed": int(design["seeds"]), "repeats": int(design["repeats"]),
                        "power": design["power"],
                        "hours": design["seconds"] / 3600 if np.isfinite(per_seed) else math.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.analyze.planner", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="runs/demo", help="an experiment's folder of finished runs (the pilot)")
    ap.add_argument("--delta", type=float, default=0.05, help="the ΔAUROC(a) to detect")
    args = ap.parse_args(argv)
    df = collection.collect(args.root)
    if df.empty:
        print(f"no results records under {args.root}: run the pilot first (e.g. make demo)", file=sys.stderr)
        return 1
    table = plan_table(df, comparisons.compare(df), args.delta, args.root)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"Seeds needed to detect ΔAUROC(a) = {args.delta} at 80% power (paired t-test over seeds, α 0.05), "
              f"planned from {len(df)} finished runs under {args.root}:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
