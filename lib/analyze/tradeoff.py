"""The planner's trade-off: the smallest ΔAUROC(a) a comparison can detect for a wall-time budget.

A design for a comparison x − b (lib.analyze.comparisons) is S generator seeds x R classifier repeats: 2S points,
S of each side, run ``slots`` at a time (the demo: 2 points, each on one of 2 cores). Its cost comes from the pilot's
own run.json records (lib.analyze.planner):
  - a point of a side costs what its pilot runs took from scratch: every stage folder it needs (01-05), at the
    seconds of the run that executed it, the two sides of a seed sharing their common folders (curation,
    clustering, the gated run's tuning set) once; the real baseline's training is in the stage-05 seconds of the
    point of its seed that ran first;
  - each classifier repeat beyond the pilot's adds direction a's training seconds per repeat (the record's
    ``a_train_seconds`` / repeats) to its point, and the real baseline's (``b_train_seconds`` / repeats) once per seed;
  - the wall time is that of a list schedule over ``slots``: every x point, then every b point, each on the first
    slot free; a random-skip or equal-updates control starts no earlier than its seed's gated point ends.
Its power is lib.analyze.power's: per-seed differences of s.d. sqrt(sd_generator² + sd_classifier² / R) (the pilot's
s.d. of per-seed differences, less the classifier part it held at the pilot's repeats), and the MDE at S seeds is
power.mde_paired. For each budget the design with the smallest MDE among those that fit (at least MIN_SEEDS seeds,
a seed-level verdict needs them) is the best; a larger budget admits every design a smaller one does, so the
curve never rises. With sd_classifier unknown (no record with classifier repeats, no --sd-classifier) it is 0:
repeats only cost, and every best design has the pilot's.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, paths
from . import power

BUDGETS_MIN = (30, 60, 120, 240)
SLOTS = 2
CONTROLS = ("random-skip", "equal-updates")     # they copy a value of their seed's gated run, so start after it


# ------------------------------------------------------------------------------------------ pilot wall times
def stage_records(root) -> dict[str, dict]:
    """Stage-05 folder name -> {stage: (folder name or a key of its own, seconds)} for every run under root; a
    reused stage gets the seconds of the run that executed that folder (folders matched by name: a moved runs root
    still matches)."""
    runs, executed = {}, {}
    for rec in Path(paths.resolve(root)).rglob("run.json"):
        try:
            st = json.loads(rec.read_text()).get("stages", {})
        except (OSError, ValueError):
            continue
        d05 = st.get("05_classifier", {}).get("stage_dir")
        if not d05:
            continue
        own = {}
        for stage, v in st.items():
            name = Path(v["stage_dir"]).name if v.get("stage_dir") else f"{rec.parent.name}/{stage}"
            own[stage] = name
            if v.get("status", "executed") == "executed" and v.get("seconds"):
                executed[name] = float(v["seconds"])
        runs[Path(d05).name] = own
    return {k: {s: (n, executed.get(n, 0.0)) for s, n in own.items()} for k, own in runs.items()}


@dataclass
class Costs:
    """Seconds a design is built from: a point of each side (from scratch, shared folders counted on x), one
    classifier repeat of each side's direction a and of the real baseline, the pilot's repeats."""
    point_x: float
    point_b: float
    repeat_x: float
    repeat_b: float
    repeat_real: float
    pilot_repeats: int
    waits: bool            # b is a control that starts after its seed's gated point

    def durations(self, repeats: int) -> tuple[float, float]:
        extra = repeats - self.pilot_repeats
        if not extra:               # the pilot's own design: no repeat seconds needed (records may lack them)
            return self.point_x, self.point_b
        return (self.point_x + extra * (self.repeat_x + self.repeat_real), self.point_b + extra * self.repeat_b)

    @property
    def repeats_known(self) -> bool:
        return all(np.isfinite([self.repeat_x, self.repeat_b, self.repeat_real]))


def _repeats(g: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(g["repeats"], errors="coerce").fillna(1) if "repeats" in g else pd.Series(1.0, g.index)


def _per_repeat(g: pd.DataFrame, col: str) -> float:
    v = pd.to_numeric(g[col], errors="coerce") / _repeats(g) if col in g else pd.Series(dtype=float)
    return float(v.mean()) if v.notna().any() else math.nan


def costs(gx: pd.DataFrame, gb: pd.DataFrame, records: dict[str, dict]) -> Costs:
    """A comparison's costs from its two sides' pilot records (seed by seed: the folders both need are counted once,
    on x) and their run.json stage records (``stage_records``); NaN where no run.json recorded a side."""
    px, pb = [], []
    for seed in sorted(set(gx["seed"]) & set(gb["seed"])):
        sx, sb = (records.get(Path(g.loc[g["seed"] == seed, "results_dir"].iloc[0]).name) for g in (gx, gb))
        if sx is None or sb is None:
            continue
        px.append(sum(s for _, s in sx.values()))
        mine = {n for n, _ in sx.values()}
        pb.append(sum(s for n, s in sb.values() if n not in mine))
    waits = str(gb["method"].iloc[0]) in CONTROLS and str(gx["method"].iloc[0]) == "active-gating"
    pilot = int(round(float(pd.concat([_repeats(gx), _repeats(gb)]).mean())))
    return Costs(float(np.mean(px)) if px else math.nan, float(np.mean(pb)) if pb else math.nan,
                 _per_repeat(gx, "a_train_seconds"), _per_repeat(gb, "a_train_seconds"),
                 _per_repeat(pd.concat([gx, gb]), "b_train_seconds"), pilot, waits)


# -------------------------------------------------------------------------------------------- the schedule
def wall_seconds(c: Costs, seeds: int, repeats: int, slots: int = SLOTS) -> float:
    """Wall time of 2 x ``seeds`` points on ``slots``: every x point, then every b point, each on the slot free
    first; a control waits for its seed's gated point."""
    dx, db = c.durations(repeats)
    free, ends = [0.0] * slots, []
    for d in [dx] * seeds:
        i = int(np.argmin(free))
        free[i] += d
        ends.append(free[i])
    for s in range(seeds):
        i = int(np.argmin(free))
        free[i] = max(free[i], ends[s] if c.waits else 0.0) + db
    return max(free)


def most_seeds(c: Costs, repeats: int, budget_s: float, slots: int = SLOTS) -> int:
    """The most seeds whose design fits the budget (0 when MIN_SEEDS do not): a bisection, the wall time growing
    with the seeds; none can fit more than budget x slots / (one seed's points)."""
    per_seed = sum(c.durations(repeats))
    if not per_seed > 0:
        return 0
    lo, hi = 0, int(budget_s * slots / per_seed) + 1          # wall(lo) fits, wall(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if wall_seconds(c, mid, repeats, slots) <= budget_s else (lo, mid)
    return lo if lo >= power.MIN_SEEDS else 0


def best(c: Costs, sd_generator: float, sd_classifier: float, budget_s: float, slots: int = SLOTS,
         max_repeats: int = 8) -> dict:
    """The design with the smallest MDE that fits the budget: seeds, repeats, its wall time and MDE (NaN when
    MIN_SEEDS seeds do not fit at any number of repeats)."""
    options = range(1, max_repeats + 1) if c.repeats_known else [c.pilot_repeats]
    out = {"seeds": math.nan, "repeats": math.nan, "wall_min": math.nan, "mde": math.nan, "sd_per_seed": math.nan}
    for r in options:
        n = most_seeds(c, r, budget_s, slots)
        if not n:
            continue
        sd = math.sqrt(sd_generator ** 2 + sd_classifier ** 2 / r)
        m = power.mde_paired(sd, n)
        if not m >= out["mde"]:       # strictly smaller (NaN: the first that fits); ties keep fewer repeats
            out = {"seeds": n, "repeats": r, "wall_min": wall_seconds(c, n, r, slots) / 60, "mde": m,
                   "sd_per_seed": sd}
    return out


# ------------------------------------------------------------------------------------------------ the curve
def curve(df: pd.DataFrame, compared: pd.DataFrame, sides, records: dict[str, dict],
          budgets_min=BUDGETS_MIN, slots: int = SLOTS, sd_classifier=0.0, max_repeats: int = 8) -> pd.DataFrame:
    """One row per comparison and budget: the best design and its MDE on AUROC(a). ``sides(df, row)`` gives a
    comparison's two record groups (lib.analyze.planner); ``sd_classifier`` a number, or a function of the two
    groups (the records' classifier-repeat component of a per-seed difference)."""
    rows = []
    for _, row in compared.iterrows():
        sd = row.get("sd_d_auroc_a", math.nan)
        gx, gb = sides(df, row)
        if not np.isfinite(sd) or gx.empty or gb.empty:
            continue
        c = costs(gx, gb, records)
        sd_c = sd_classifier(gx, gb) if callable(sd_classifier) else float(sd_classifier)
        sd_g = math.sqrt(max(sd ** 2 - sd_c ** 2 / c.pilot_repeats, 0.0))
        for b in budgets_min:
            design = best(c, sd_g, sd_c, 60 * b, slots, max_repeats) if np.isfinite(c.point_x + c.point_b) \
                else {"seeds": math.nan, "repeats": math.nan, "wall_min": math.nan, "mde": math.nan}
            rows.append({"comparison": row["comparison"], "size": row.get("tuning size"), "budget_min": b,
                         **design, "mde_now": row.get("mde_auroc_a", math.nan), "seeds_run": row.get("n_seeds"),
                         "sd_generator": sd_g, "sd_classifier": sd_c, "point_x_s": c.point_x, "point_b_s": c.point_b,
                         "repeat_x_s": c.repeat_x, "repeat_b_s": c.repeat_b, "repeat_real_s": c.repeat_real,
                         "slots": slots})
    return pd.DataFrame(rows)


def save(t: pd.DataFrame, figures_dir, name: str = "06_planner_tradeoff") -> Path:
    """The curve as CSV beside the figure."""
    out = paths.resolve(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    return atomic.write_csv(out / f"{name}.csv", t)
