"""Paired comparisons of methods that share seeds and test sets, judged over seeds.

Runs of one experiment with the same seed share the real test set (stage 05's real baseline), so a
method and its baseline answer the same images. The seed is the unit of replication: each shared seed gives
one difference of AUROC(a) and of TR, and each comparison reports, over those per-seed differences,
  - their mean, the t-interval (lib.analyze.power: none below MIN_SEEDS seeds), the paired t-test's p and the
    minimum detectable effect (the difference this many seeds would find with 80% power, at their s.d.);
  - Holm-adjusted p-values across every comparison of the table;
  - DeLong's test within each seed, labelled as such: it is conditional on that seed's trained models
    (test-image noise only), so it says whether some seed's two classifiers differ, not whether the methods do.
A method is called better only from the seed-level test: Holm-adjusted p below alpha with at least MIN_SEEDS
seeds ("not called" below that, whatever a within-seed test says). Pairs: each method against the baseline at
each tuning size, active gating against its random-skip control, against its equal-updates control (ungated
training for as many updates as the gate left: does the gate pick batches, or only train less?) and against ungated
training on its own tuning set (the gate alone: against random it also changes the tuning set), every two imported
folders (each folder its own row, named by the folder), and each method at a smaller tuning size against the same
method at its largest (e.g. random n5 against random n100).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core import stats
from . import named_pairs, power
from ..evaluate.metrics import auroc as binary_auroc
from ..evaluate.metrics import macro_auroc
from .matrix import read_predictions
from .upstream import training_cost

GATED, CONTROL, EQUAL = "active-gating", "random-skip", "equal-updates"
REFERENCES = ("real-holdout", "label-shuffled", "partly-shuffled", "collapsed", "findings-erased", "exaggerated",
              "vae-roundtrip", "folder")


def auroc(y, s) -> float:
    """AUROC of binary scores (1-D), or the macro one-vs-rest AUROC of N x k outputs."""
    return binary_auroc(y, s) if np.ndim(s) == 1 else macro_auroc(y, s)


def tr(y, s, s_real) -> float:
    """TR of one seed: (AUROC(a) - .5) / (AUROC(TRTR) - .5), both on the same real test rows."""
    den = auroc(y, s_real) - 0.5
    return (auroc(y, s) - 0.5) / den if den > 0 else np.nan


def pairs(methods: list[str], baseline: str = "random") -> list[tuple[str, str]]:
    """Each generator method against the baseline, and active gating against its random-skip and equal-updates
    controls."""
    out = [(m, baseline) for m in methods if m != baseline and m not in REFERENCES and baseline in methods]
    out += [(GATED, c) for c in (CONTROL, EQUAL) if GATED in methods and c in methods]
    return out


def ungated_twins(groups: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Each active-gating group -> the tuning method it trained on, whose ungated runs (same tuning set, same
    seeds) isolate the gate itself; against random, gating also differs in the tuning set (issue 23)."""
    out = {}
    for label, g in groups.items():
        if label.split(" ")[0] == GATED and "params" in g:
            tuned = {p.get("finetune", {}).get("method") for p in g["params"]}
            if len(tuned) == 1:
                out[label] = tuned.pop()
    return out


def _real_side(results_dir) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(test image ids, labels, [scores of a, TRTR scores]) of one record, aligned by image id; with k > 2
    classes the "scores" are the N x k outputs of each."""
    a = pd.read_csv(f"{results_dir}/predictions_a.csv").set_index("image_id")
    y, s, o = read_predictions(results_dir, "a")
    _, s_t, o_t = read_predictions(results_dir, "trtr")
    t_ids = pd.read_csv(f"{results_dir}/predictions_trtr.csv")["image_id"]
    at = pd.Series(np.arange(len(t_ids)), index=t_ids).reindex(a.index).to_numpy()
    if o.shape[1] > 2:
        return a.index.to_series(), y, [o, o_t[at]]
    return a.index.to_series(), y, [s, s_t[at]]


def _paired_groups(gx: pd.DataFrame, gb: pd.DataFrame) -> tuple[list, list, list[int], str]:
    """Per shared seed, (y, s_a, s_trtr) of both methods on identical test images, else a note why not."""
    xs, bs, seeds = [], [], []
    for seed in sorted(set(gx["seed"]) & set(gb["seed"])):
        ix, y, sx = _real_side(gx.loc[gx["seed"] == seed, "results_dir"].iloc[0])
        ib, yb, sb = _real_side(gb.loc[gb["seed"] == seed, "results_dir"].iloc[0])
        if list(ix) != list(ib):
            return [], [], [], f"seed {seed}: the two runs were tested on different real images"
        xs.append((y, sx[0], sx[1])); bs.append((y, sb[0], sb[1])); seeds.append(int(seed))
    return xs, bs, seeds, "" if seeds else "no shared seed"


def per_seed(xs: list, bs: list) -> tuple[np.ndarray, np.ndarray]:
    """Per shared seed, the AUROC(a) and TR differences of the two methods on that seed's test rows."""
    d_a = [auroc(x[0], x[1]) - auroc(b[0], b[1]) for x, b in zip(xs, bs)]
    d_tr = [tr(*x) - tr(*b) for x, b in zip(xs, bs)]
    return np.asarray(d_a, float), np.asarray(d_tr, float)


def _one(x: str, b: str, gx, gb) -> dict:
    xs, bs, seeds, note = _paired_groups(gx, gb)
    row = {"comparison": f"{x} − {b}", "seeds": ",".join(map(str, seeds)), "n_seeds": len(seeds), "note": note}
    if not seeds:
        return row
    d_a, d_tr = per_seed(xs, bs)
    ta, tt = power.paired_test(d_a), power.paired_test(d_tr)
    binary = np.ndim(xs[0][1]) == 1        # DeLong's variance is for one score; k > 2: left out
    delong = [stats.delong(gx_[0], gx_[1], gb_[1]) if binary else {"z": np.nan, "p": np.nan}
              for gx_, gb_ in zip(xs, bs)]
    row.update({"d_auroc_a": ta["mean"], "d_auroc_a_t_low": ta["low"], "d_auroc_a_t_high": ta["high"],
                "sd_d_auroc_a": ta["sd"], "p_t": ta["p"], "mde_auroc_a": ta["mde"],
                "d_auroc_a_seeds": ";".join(f"{v:+.4f}" for v in d_a),
                "d_tr": tt["mean"], "d_tr_t_low": tt["low"], "d_tr_t_high": tt["high"], "mde_tr": tt["mde"],
                "delong_z_within_seed": ";".join(f"{d['z']:.2f}" for d in delong),
                # Bonferroni over seeds: whether some seed's two trained classifiers differ on its test images
                "delong_p_within_seed": min(1.0, min(d["p"] for d in delong) * len(delong)) if binary else np.nan})
    if x.split(" ")[0] == GATED:             # what the gate cost, and how many fewer updates it left
        cx, cb = training_cost(gx), training_cost(gb)
        row.update({f"{k}_x": v for k, v in cx.items()})
        row.update({f"{k}_b": v for k, v in cb.items()})
    return row


def _label(part: pd.DataFrame) -> pd.Series:
    return part["method"] + np.where(part["setting"] != "", " " + part["setting"], "")


def _rows(df: pd.DataFrame, baseline: str) -> list[dict]:
    rows = []
    for size, part in df.groupby("tuning_size", sort=True):
        key = _label(part)
        groups = {m: part[key == m] for m in dict.fromkeys(key)}
        plain = {k.split(" ")[0]: k for k in groups}       # method -> its (first) group
        named = [(plain[x], plain[b]) for x, b in pairs(list(plain), baseline)]
        named += [(g, plain[m]) for g, m in ungated_twins(groups).items() if m in plain]
        folders = [k for k in groups if k.startswith("folder ")]        # imported folders: each pair of them
        named += [(f, g) for i, f in enumerate(folders) for g in folders[i + 1:]]
        for x, b in named:
            rows.append({"tuning size": size, **_one(x, b, groups[x], groups[b]), **_sides(groups[x], groups[b])})
    key = _label(df)
    for m in dict.fromkeys(key):                           # one method, a smaller tuning set against its largest
        part = df[key == m]
        sizes = sorted(part["tuning_size"].unique())
        for size in sizes[:-1]:
            gx, gb = part[part["tuning_size"] == size], part[part["tuning_size"] == sizes[-1]]
            rows.append({"tuning size": f"{size} vs {sizes[-1]}",
                         **_one(f"{m} n{size}", f"{m} n{sizes[-1]}", gx, gb), **_sides(gx, gb)})
    return rows


def _sides(gx: pd.DataFrame, gb: pd.DataFrame) -> dict:
    """The stage-05 folders each side read (as named pairs record them; the planner costs them)."""
    return {"results_x": ";".join(gx["results_dir"]), "results_b": ";".join(gb["results_dir"])}


def _folders(row: dict) -> tuple:
    return tuple(frozenset(Path(d).name for d in str(row.get(k, "")).split(";") if d)
                 for k in ("results_x", "results_b"))


def _unnamed(auto: list[dict], named: list[dict]) -> list[dict]:
    """The automatic rows that no named pair repeats: a sweep that names a pair the table forms by itself (e.g.
    'gate alone') gets one row under its name, so Holm does not count the same test twice."""
    taken = {_folders(r) for r in named}
    return [r for r in auto if _folders(r) not in taken]


def compare(df: pd.DataFrame, baseline: str = "random", alpha: float = 0.05, pairs: list[dict] | None = None
            ) -> pd.DataFrame:
    """The comparison table of a collected results frame (lib.analyze.collection.collect); ``pairs``: the named
    pairs of a sweep file (lib.analyze.named_pairs), rows of the same table, Holm across all of them."""
    named = named_pairs.rows(df, pairs, _one)
    out = pd.DataFrame(_unnamed(_rows(df, baseline), named) + named)
    if out.empty or "p_t" not in out:
        return out
    out["p_t_holm"] = stats.holm(out["p_t"].to_numpy(float))
    out["verdict"] = [_verdict(r, alpha) for _, r in out.iterrows()]
    return out


MIN_SEEDS = power.MIN_SEEDS     # a t-interval over two seeds is too wide to mean anything, and a bootstrap over
                                # them sees half their variance (two-level intervals covered 82% at 2 seeds)


def _verdict(r: pd.Series, alpha: float) -> str:
    n = int(r.get("n_seeds") or 0)
    if n == 0:
        return r.get("note") or "not compared"
    if n < MIN_SEEDS:
        return f"not called: {n} seed(s), {MIN_SEEDS} needed"
    if not r["p_t_holm"] < alpha:
        return f"not separated (MDE {r['mde_auroc_a']:.3f})"
    x, b = ("a", "b") if isinstance(r.get("pair"), str) else r["comparison"].split(" − ")   # a named pair: its a, b
    return f"{x} {'>' if r['d_auroc_a'] > 0 else '<'} {b}"


def _interval(r, k: str) -> str:
    if not np.isfinite(r.get(k, np.nan)):
        return "–"
    lo, hi = r.get(f"{k}_t_low", np.nan), r.get(f"{k}_t_high", np.nan)
    return f"{r[k]:+.3f} [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else f"{r[k]:+.3f} (n<{MIN_SEEDS}: no interval)"


def table(c: pd.DataFrame) -> pd.DataFrame:
    """The printed form (and 06_comparisons.csv): seed-level differences with their t-intervals, the minimum
    detectable effect, the Holm-adjusted seed-level p, DeLong within seed, the verdict."""
    if c.empty or "d_auroc_a" not in c:
        return c
    num = lambda v, f: "–" if not np.isfinite(v) else format(v, f)   # noqa: E731
    return pd.DataFrame({
        "comparison": c["comparison"], "size": c["tuning size"], "seeds": c["seeds"],
        "ΔAUROC(a) [t-CI over seeds]": [_interval(r, "d_auroc_a") for _, r in c.iterrows()],
        "MDE ΔAUROC(a)": [num(v, ".3f") for v in c["mde_auroc_a"]],
        "p (seeds, Holm)": [num(v, ".3f") for v in c["p_t_holm"]],
        "DeLong p (within seed)": [num(v, ".3f") for v in c["delong_p_within_seed"]],
        "ΔTR [t-CI over seeds]": [_interval(r, "d_tr") for _, r in c.iterrows()],
        "MDE ΔTR": [num(v, ".3f") for v in c["mde_tr"]],
        "gate cost (stage 03)": [_cost(r) for _, r in c.iterrows()],
        "verdict": c["verdict"]}).reset_index(drop=True)


def _cost(r) -> str:
    """'<gate s> of <stage-03 s> s; <updates> vs <updates> updates' for a gating comparison, else '–'."""
    if not np.isfinite(r.get("stage03_seconds_x", np.nan)):
        return "–"
    other = r.get("updates_b", np.nan)
    vs = f" vs {other:.0f}" if np.isfinite(other) else ""
    return f"{r['gate_seconds_x']:.0f} of {r['stage03_seconds_x']:.0f} s; {r['updates_x']:.0f}{vs} updates"
