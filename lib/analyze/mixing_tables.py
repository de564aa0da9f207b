"""Tables over the mixing experiments' stage folders (lib.analyze.mixing.measure): one row per folder and arm
(``collect``), each arm against the real-only baseline or another arm, paired on the shared seeds and test
images with two-level bootstrap CIs and Holm's correction (``compare``, ``compare_arms``,
``versus_oversampling``), and Schaudt et al.'s tables: brackets (Tables 7-8), per class (Table 9) and ratios.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, paths, stats
from ..data.nih import DataError
from ..evaluate import metrics, results
from .mixing_arms import BASELINE, OVERSAMPLING, TABLE

METRICS = ["accuracy", "balanced_accuracy", "auroc"]


def collect(measured: list[dict]) -> pd.DataFrame:
    """One row per stage folder and arm: generator, seed, experiment, arm, counts, metrics, the folder.
    The shared oversampling folders appear once, under the generator name 'oversampling'; with several
    backbones (classifier.arch) each generator name carries its backbone ('random · resnet50')."""
    frames, seen = [], set()
    for rec in measured:
        for exp in ("brackets", "oversampling", "ratios"):
            d = rec.get(exp)
            if d is None or (exp == "oversampling" and str(d) in seen):
                continue
            seen.add(str(d))
            df = pd.read_csv(Path(d) / TABLE)
            frames.append(df.assign(generator=OVERSAMPLING if exp == "oversampling" else rec["generator"],
                                    experiment=exp, stage_dir=str(d)))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    if out["arch"].nunique() > 1:         # several backbones: each generator once per backbone
        out["generator"] = out["generator"] + " · " + out["arch"]
    return out


def _scores(d, pred_file: str) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and what the paired statistics take: the binary score, or N x k probabilities."""
    y, o = results.arrays(pd.read_csv(Path(d) / pred_file))
    p = metrics.probabilities(o)
    return y, metrics.score_of(o) if p.shape[1] == 2 else p


def _decide(s: np.ndarray, threshold: float) -> np.ndarray:
    """The binary score against the threshold, or the largest of k probabilities (lib.evaluate.metrics.decide)."""
    return (s >= threshold).astype(int) if s.ndim == 1 else np.argmax(s, axis=1)


def _stat(metric: str, threshold: float):
    if metric == "auroc":
        return lambda y, s: metrics.auroc(y, s) if s.ndim == 1 else metrics.macro_auroc(y, s)
    if metric == "accuracy":
        return lambda y, s: float(np.mean(_decide(s, threshold) == y))
    if metric == "balanced_accuracy":
        def bal(y, s):
            p, k = _decide(s, threshold), 2 if s.ndim == 1 else s.shape[1]
            return float(np.mean([np.mean(p[y == c] == c) for c in range(k) if (y == c).any()]))
        return bal
    raise ValueError(f"no paired statistic for {metric!r}")


BRACKETS = ("brackets", "oversampling")    # the experiments a bracket table holds


def _part(records: pd.DataFrame, experiments) -> pd.DataFrame:
    experiments = [experiments] if isinstance(experiments, str) else list(experiments)
    return records[records["experiment"].isin(experiments)] if len(records) else records


def compare(records: pd.DataFrame, experiments, metric: str = "accuracy", reference: str | None = None,
            n_boot: int = 1000, seed: int = 0, threshold: float = 0.5) -> pd.DataFrame:
    """Each arm against a reference arm of the same folder (the real-only baseline, or e.g. 'ratio 100:0'),
    paired on the shared seeds and test images: the difference in percentage points as mean ± s.d. over
    seeds with the t-interval, a two-level bootstrap CI (seeds, then the same test rows) and its p-value,
    Holm-adjusted across the table."""
    reference = reference or BASELINE
    part = _part(records, experiments)
    rows = []
    stat = _stat(metric, threshold)
    for (gen, arm), g in (part.groupby(["generator", "arm"], sort=False) if len(part) else []):
        if arm == reference:
            continue
        a, b, diffs = [], [], []
        for _, r in g.sort_values("seed").iterrows():
            ref = part[(part["stage_dir"] == r["stage_dir"]) & (part["arm"] == reference)]
            if ref.empty:
                continue
            ya, sa = _scores(r["stage_dir"], r["predictions"])
            yb, sb = _scores(r["stage_dir"], ref["predictions"].iloc[0])
            a.append((ya, sa)); b.append((yb, sb))
            diffs.append(100 * (r[metric] - ref[metric].iloc[0]))
        if not a:
            continue
        d = stats.paired_difference(a, b, stat, n_boot, seed, shared_rows=True)
        t = stats.seed_summary(diffs)
        rows.append({"generator": gen, "arm": arm, "reference": reference, "metric": metric, "n_seeds": len(a),
                     "diff_pp": t["mean"], "sd_pp": t["sd"], "t_low_pp": t["t_low"], "t_high_pp": t["t_high"],
                     "ci_low_pp": 100 * d["ci_low"], "ci_high_pp": 100 * d["ci_high"], "p_boot": d["p_boot"]})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = stats.holm(out["p_boot"].to_numpy(float))
    return out


def compare_arms(records: pd.DataFrame, a_gen: str, b_gen: str, arm_pairs: list[tuple[str, str]],
                 metric: str = "accuracy", n_boot: int = 1000, seed: int = 0, threshold: float = 0.5) -> pd.DataFrame:
    """Arms of two generators on the same seeds (e.g. synthetic+N against oversampled+N): paired on the test
    images (the same real test sample per seed), difference in percentage points, Holm across the table."""
    stat, rows = _stat(metric, threshold), []
    for arm_a, arm_b in arm_pairs:
        ga = records[(records["generator"] == a_gen) & (records["arm"] == arm_a)].set_index("seed")
        gb = records[(records["generator"] == b_gen) & (records["arm"] == arm_b)].set_index("seed")
        shared = sorted(set(ga.index) & set(gb.index))
        if not shared:
            continue
        A = [_scores(ga.loc[s, "stage_dir"], ga.loc[s, "predictions"]) for s in shared]
        B = [_scores(gb.loc[s, "stage_dir"], gb.loc[s, "predictions"]) for s in shared]
        for (ya, _), (yb, _) in zip(A, B):
            if not np.array_equal(ya, yb):
                raise DataError(f"{a_gen} {arm_a} and {b_gen} {arm_b} were tested on different real images.")
        d = stats.paired_difference(A, B, stat, n_boot, seed, shared_rows=True)
        t = stats.seed_summary([100 * (ga.loc[s, metric] - gb.loc[s, metric]) for s in shared])
        rows.append({"comparison": f"{a_gen} {arm_a} − {b_gen} {arm_b}", "metric": metric, "n_seeds": len(shared),
                     "diff_pp": t["mean"], "sd_pp": t["sd"], "ci_low_pp": 100 * d["ci_low"],
                     "ci_high_pp": 100 * d["ci_high"], "p_boot": d["p_boot"]})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = stats.holm(out["p_boot"].to_numpy(float))
    return out


def versus_oversampling(records: pd.DataFrame, metric: str = "accuracy", n_boot: int = 1000, seed: int = 0,
                        threshold: float = 0.5) -> pd.DataFrame:
    """Each generator's bracket against random oversampling to the same totals (Schaudt et al.'s question:
    do synthetic images beat duplicating real ones?), paired, Holm across the table."""
    part = _part(records, "brackets")
    if part.empty or not (records["generator"] == OVERSAMPLING).any():
        return pd.DataFrame()
    frames = []
    for gen in dict.fromkeys(part["generator"]):
        arms = [a for a in dict.fromkeys(part.loc[part["generator"] == gen, "arm"]) if a != BASELINE]
        frames.append(compare_arms(records, gen, OVERSAMPLING,
                                   [(a, a.replace("synthetic+", "oversampled+")) for a in arms],
                                   metric, n_boot, seed, threshold).drop(columns="p_holm", errors="ignore"))
    out = pd.concat(frames, ignore_index=True)
    if not out.empty:
        out["p_holm"] = stats.holm(out["p_boot"].to_numpy(float))
    return out


def seed_table(records: pd.DataFrame, experiments, cols: list[str] | None = None) -> pd.DataFrame:
    """Mean and s.d. over seeds of each metric, per generator and arm. The real-only baseline of one seed is
    the same classifier in every folder of that seed, so it is one row (generator 'real'), counted once."""
    cols = cols or METRICS
    part = _part(records, experiments)
    if part.empty:
        return pd.DataFrame()
    base = part[part["arm"] == BASELINE].drop_duplicates("seed").assign(generator=BASELINE)
    part = pd.concat([base, part[part["arm"] != BASELINE]])
    rows = []
    for (gen, arm), g in part.groupby(["generator", "arm"], sort=False):
        row = {"generator": gen, "arm": arm, "n_synthetic": g["n_synthetic"].iloc[0], "n_copies": g["n_copies"].iloc[0],
               "total_per_class": g["total_per_class"].iloc[0], "synthetic_share": g["synthetic_share"].iloc[0],
               "n_seeds": len(g), "seeds": ",".join(map(str, sorted(g["seed"])))}
        for c in cols:
            s = stats.seed_summary(g[c].astype(float).to_numpy())
            row.update({f"{c}_mean": s["mean"], f"{c}_sd": s["sd"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean, sd, pct: bool = True, signed: bool = False) -> str:
    if pd.isna(mean):
        return "–"
    k = 100 if pct else 1
    f = "+.2f" if signed else ".2f"
    return f"{k * mean:{f}}" + ("" if pd.isna(sd) else f" ± {k * sd:.2f}")


def _diff_cells(d: pd.Series | None, label: str) -> dict:
    if d is None:
        return {label: "0 (baseline)", f"{label} CI": "", f"{label} p (Holm)": ""}
    return {label: f"{d['diff_pp']:+.2f}" + ("" if pd.isna(d["sd_pp"]) else f" ± {d['sd_pp']:.2f}"),
            f"{label} CI": f"[{d['ci_low_pp']:+.1f}, {d['ci_high_pp']:+.1f}]", f"{label} p (Holm)": f"{d['p_holm']:.3f}"}


def _order_rows(out: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    order = {g: i for i, g in enumerate([BASELINE, OVERSAMPLING])}
    out = out.assign(_o=out["generator"].map(lambda g: order.get(g, 2)))
    return out.sort_values(["_o", *by], kind="stable").drop(columns="_o").reset_index(drop=True)


def bracket_table(records: pd.DataFrame, n_boot: int = 1000, seed: int = 0, threshold: float = 0.5) -> pd.DataFrame:
    """Schaudt et al.'s Tables 7-8 in one: accuracy and balanced accuracy (%) and AUROC per generator and
    bracket as mean ± s.d. over seeds, the change from the real-only baseline in percentage points (mean ±
    s.d. over seeds) with its paired two-level 95% CI and Holm-adjusted p, and random oversampling to the same
    totals as a generator of its own."""
    means = seed_table(records, BRACKETS)
    if means.empty:
        return means
    diffs = {m: compare(records, BRACKETS, m, n_boot=n_boot, seed=seed, threshold=threshold) for m in
             ("accuracy", "balanced_accuracy")}
    diffs = {m: d.set_index(["generator", "arm"]) if len(d) else d for m, d in diffs.items()}
    rows = []
    for _, r in means.iterrows():
        row = {"generator": r["generator"], "added per class": int(r["n_synthetic"] + r["n_copies"]),
               "per class": int(r["total_per_class"]), "seeds": r["n_seeds"],
               "accuracy (%)": _pm(r["accuracy_mean"], r["accuracy_sd"]),
               "balanced acc. (%)": _pm(r["balanced_accuracy_mean"], r["balanced_accuracy_sd"]),
               "AUROC": _pm(r["auroc_mean"], r["auroc_sd"], pct=False)}
        for m, label in (("accuracy", "Δ acc. (pp)"), ("balanced_accuracy", "Δ bal. acc. (pp)")):
            k = (r["generator"], r["arm"])
            row.update(_diff_cells(diffs[m].loc[k] if len(diffs[m]) and k in diffs[m].index else None, label))
        rows.append(row)
    return _order_rows(pd.DataFrame(rows), ["generator", "added per class"])


def per_class_table(records: pd.DataFrame) -> pd.DataFrame:
    """Schaudt et al.'s Table 9: precision, recall and F1 per class (mean ± s.d. over seeds) of the real-only
    baseline, random oversampling and each generator, each at its best bracket (highest mean accuracy)."""
    classes = list(dict.fromkeys(c[len("precision["):-1] for c in records.columns
                                 if c.startswith("precision[") and c.endswith("]")))   # label-index order
    cols = [f"{m}[{c}]" for c in classes for m in ("precision", "recall", "f1")]
    t = seed_table(records, BRACKETS, METRICS + cols)
    if t.empty:
        return t
    best = t.loc[t.groupby("generator", sort=False)["accuracy_mean"].idxmax()]
    rows = []
    for _, r in best.iterrows():
        row = {"generator": r["generator"], "best bracket": "–" if r["generator"] == BASELINE else
               f"+{int(r['n_synthetic'] + r['n_copies'])}"}
        for c in cols:
            row[c] = _pm(r[f"{c}_mean"], r[f"{c}_sd"], pct=False)
        rows.append(row)
    return _order_rows(pd.DataFrame(rows), ["generator"])


def ratio_table(records: pd.DataFrame, n_boot: int = 1000, seed: int = 0, threshold: float = 0.5) -> pd.DataFrame:
    """Per generator and real:synthetic ratio (fixed size per class): accuracy, balanced accuracy (%) and AUROC
    as mean ± s.d. over seeds, and the change in accuracy from the all-real arm of the same size (100:0, else
    the real-only baseline) in percentage points, paired, with its two-level CI and Holm-adjusted p."""
    means = seed_table(records, "ratios")
    if means.empty:
        return means
    arms = set(_part(records, "ratios")["arm"])
    reference = "ratio 100:0" if "ratio 100:0" in arms else BASELINE
    diff = compare(records, "ratios", "accuracy", reference, n_boot, seed, threshold)
    diff = diff.set_index(["generator", "arm"]) if len(diff) else diff
    rows = []
    for _, r in means.iterrows():
        k = (r["generator"], r["arm"])
        row = {"generator": r["generator"], "real:synthetic": "real only (baseline)" if r["arm"] == BASELINE else
               r["arm"].removeprefix("ratio "), "synthetic share": round(r["synthetic_share"], 3), "per class": int(r["total_per_class"]),
               "seeds": r["n_seeds"], "accuracy (%)": _pm(r["accuracy_mean"], r["accuracy_sd"]),
               "balanced acc. (%)": _pm(r["balanced_accuracy_mean"], r["balanced_accuracy_sd"]),
               "AUROC": _pm(r["auroc_mean"], r["auroc_sd"], pct=False)}
        d = diff.loc[k] if len(diff) and k in diff.index else None
        label = f"Δ acc. vs {reference.removeprefix('ratio ')} (pp)"
        row.update(_diff_cells(d, label) if d is not None or r["arm"] == reference else
                   {label: "–", f"{label} CI": "", f"{label} p (Holm)": ""})
        rows.append(row)
    return _order_rows(pd.DataFrame(rows), ["generator", "synthetic share"])


def save_tables(tables: dict[str, pd.DataFrame], figures_dir) -> list[Path]:
    """Each table as 07_table_<name>.csv beside the figures; an empty one never replaces a table already there
    (a brackets-only run leaves the ratios table that ratios.yaml wrote, and the reverse)."""
    out = []
    for name, t in tables.items():
        f = paths.resolve(figures_dir) / f"07_table_{name}.csv"
        if t.empty and f.exists():
            continue
        out.append(atomic.write_csv(f, t))
    return out
