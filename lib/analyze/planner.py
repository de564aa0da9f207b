"""How many seeds a comparison needs, planned from finished pilot runs.

For each paired comparison of a study (lib.analyze.comparisons), the s.d. of its per-seed differences and the
wall time its runs took give: the minimum detectable effect now, the seeds (and classifier repeats, when the
records carry a classifier-repeat variance component) a target difference needs at 80% power, and what that
costs in the pilot's own wall time per seed. With two pilot seeds the s.d. itself is uncertain (its 95% interval
spans about 0.45x-32x): a plan from a pilot that small is a first guess, to be re-planned as seeds come in.

The trade-off (lib.analyze.tradeoff): for each comparison, the smallest ΔAUROC(a) detectable at 80% power as a
function of the wall-time budget (the best seeds x repeats that fit, points run ``--slots`` at a time), as
06_planner_tradeoff.csv and a figure in ``--figures``; ``--budget-min`` prints the best design for one budget.

CLI: ``python -m lib.analyze.planner --root runs/demo --delta 0.05 [--figures DIR] [--budgets 30 60 120 240]
[--budget-min 60] [--slots 2] [--sd-classifier SD]``.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import pandas as pd

from ..core import paths
from . import collection, comparisons, power, tradeoff, variance


def sides(df: pd.DataFrame, c: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two record groups of a comparison row: a named pair's by the stage-05 folders it read, else by label."""
    if isinstance(c.get("results_x"), str):
        return tuple(df[df["results_dir"].isin(c[k].split(";"))] for k in ("results_x", "results_b"))
    x, b = c["comparison"].split(" − ")
    return _group(df, x), _group(df, b)


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
    records = tradeoff.stage_records(root) if root else {}
    rows = []
    for _, c in compared.iterrows():
        sd = c.get("sd_d_auroc_a", math.nan)
        gx, gb = sides(df, c)
        cost = tradeoff.costs(gx, gb, records) if len(gx) and len(gb) else None
        per_seed = cost.point_x + cost.point_b if cost else math.nan     # from scratch, shared folders once
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


def classifier_sd(df: pd.DataFrame, n_boot: int = 200):
    """(gx, gb) -> the classifier-repeat part of a per-seed difference's s.d. (one classifier on each side), from
    the records' variance components (lib.analyze.variance); None when no record carries classifier repeats."""
    comp = variance.from_records(df, n_boot=n_boot)
    if comp.empty:
        return None
    comp = comp[comp["metric"] == variance.METRICS["auroc_a"]]

    def sd(gx: pd.DataFrame, gb: pd.DataFrame) -> float:
        parts = []
        for g in (gx, gb):
            r = g.iloc[0]
            hit = comp[(comp["method"] == r["method"]) & (comp["tuning_size"] == r["tuning_size"])
                       & (comp["setting"] == r["setting"])]
            parts.append(float(hit["sd_repeat"].iloc[0]) ** 2 if len(hit) else 0.0)   # no repeats: not known
        return math.sqrt(sum(parts))
    return sd


def tradeoff_table(df: pd.DataFrame, compared: pd.DataFrame, root, budgets_min=tradeoff.BUDGETS_MIN,
                   slots: int = tradeoff.SLOTS, sd_classifier=None) -> pd.DataFrame:
    """The trade-off curve (lib.analyze.tradeoff.curve) of every comparison; ``sd_classifier`` None: from the
    records' classifier repeats when they carry them, else 0."""
    sd_c = sd_classifier if sd_classifier is not None else (classifier_sd(df) or 0.0)
    return tradeoff.curve(df, compared, sides, tradeoff.stage_records(root), budgets_min, slots, sd_c)


def _designs(t: pd.DataFrame) -> pd.DataFrame:
    """Comparison x budget: 'MDE (seeds×repeats)'."""
    cell = [f"{r['mde']:.3f} ({int(r['seeds'])}×{int(r['repeats'])})" if np.isfinite(r["mde"]) else "–"
            for _, r in t.iterrows()]
    out = t.assign(cell=cell).pivot_table(index="comparison", columns="budget_min", values="cell", aggfunc="first",
                                          sort=False)
    return out.rename(columns=lambda b: f"{b:g} min").rename_axis(columns=None).reset_index()


def best_designs(t: pd.DataFrame, budget_min: float) -> pd.DataFrame:
    """The best design of each comparison for one budget (a row of the curve at that budget)."""
    cols = ["comparison", "size", "seeds", "repeats", "wall_min", "mde", "mde_now", "sd_per_seed", "point_x_s",
            "point_b_s"]
    return t[t["budget_min"] == budget_min][cols].reset_index(drop=True)


def write_tradeoff(df: pd.DataFrame, compared: pd.DataFrame, root, figures, t: pd.DataFrame, slots: int,
                   sd_classifier=None) -> list:
    """06_planner_tradeoff.csv (the curve at the given budgets) and its figure (the curve as steps on a fine grid
    of budgets, the given ones marked) in ``figures``."""
    from ..viz import tradeoff as viz_tradeoff

    lo, hi = t["budget_min"].min(), t["budget_min"].max()
    fine = tradeoff_table(df, compared, root, np.unique(np.round(np.geomspace(lo / 2, hi * 1.25, 64))), slots,
                          sd_classifier)
    viz_tradeoff.figure(fine, t, figures)
    return [tradeoff.save(t, figures), *[paths.resolve(figures) / f"06_planner_tradeoff.{e}" for e in ("pdf", "png")]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.analyze.planner", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="runs/demo", help="an experiment's folder of finished runs (the pilot)")
    ap.add_argument("--delta", type=float, default=0.05, help="the ΔAUROC(a) to detect")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(tradeoff.BUDGETS_MIN),
                    help="wall-time budgets in minutes for the trade-off curve")
    ap.add_argument("--budget-min", type=float, help="print the best design of each comparison for this budget")
    ap.add_argument("--slots", type=int, default=tradeoff.SLOTS, help="points run at a time (the demo: 2)")
    ap.add_argument("--sd-classifier", type=float, default=None,
                    help="s.d. of a per-seed difference from classifier training alone (default: from records with "
                         "classifier repeats, else 0: repeats are then never worth their cost)")
    ap.add_argument("--figures", help="write 06_planner_tradeoff.csv and its figure (PDF, PNG) here")
    args = ap.parse_args(argv)
    df = collection.collect(args.root)
    if df.empty:
        print(f"no results records under {args.root}: run the pilot first (e.g. make demo)", file=sys.stderr)
        return 1
    compared = comparisons.compare(df)
    table = plan_table(df, compared, args.delta, args.root)
    budgets = sorted(set(args.budgets) | ({args.budget_min} if args.budget_min else set()))
    t = tradeoff_table(df, compared, args.root, budgets, args.slots, args.sd_classifier)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"Seeds needed to detect ΔAUROC(a) = {args.delta} at 80% power (paired t-test over seeds, α 0.05), "
              f"planned from {len(df)} finished runs under {args.root}:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"\nTrade-off: the smallest ΔAUROC(a) found with 80% power (MDE, with its seeds × classifier repeats) "
              f"for a wall-time budget, {args.slots} points at a time, at the pilot's own wall times:")
        print(_designs(t).to_string(index=False))
        if args.budget_min:
            print(f"\nBest design for {args.budget_min:g} min ({args.slots} points at a time):")
            print(best_designs(t, args.budget_min).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.figures:
        print("\nwritten: " + ", ".join(str(p) for p in write_tradeoff(df, compared, args.root, args.figures, t,
                                                                      args.slots, args.sd_classifier)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
