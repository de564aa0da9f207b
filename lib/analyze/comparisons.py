"""Paired comparisons of methods that share seeds and test sets, with multiplicity control.

Runs of one experiment with the same seed share the real test set (stage 05's real baseline), so a
method and its baseline answer the same images. Each comparison reports:
  - the paired difference of AUROC(a) and of TR over the shared seeds, with a two-level bootstrap CI
    (seeds, then the same test rows for both) and the t-interval over seeds beside it;
  - DeLong's test of the AUROC(a) difference within each seed, on the shared real test set (two classes; with
    k > 2 the AUROC is the macro one-vs-rest average, the bootstrap compares it and DeLong is left out);
  - Holm-adjusted p-values across every comparison of the table.
A method is called better only when its Holm-adjusted p is below alpha, the CI excludes 0, and at least
MIN_SEEDS seeds are shared (fewer: "not called", whatever the interval says).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core import stats
from ..evaluate.metrics import auroc as binary_auroc
from ..evaluate.metrics import macro_auroc
from .matrix import read_predictions

GATED, CONTROL = "active-gating", "random-skip"
REFERENCES = ("real-holdout", "label-shuffled", "collapsed", "findings-erased", "exaggerated", "vae-roundtrip",
              "folder")


def auroc(y, s) -> float:
    """AUROC of binary scores (1-D), or the macro one-vs-rest AUROC of N x k outputs."""
    return binary_auroc(y, s) if np.ndim(s) == 1 else macro_auroc(y, s)


def tr(y, s, s_real) -> float:
    """TR of one seed: (AUROC(a) - .5) / (AUROC(TRTR) - .5), both on the same real test rows."""
    den = auroc(y, s_real) - 0.5
    return (auroc(y, s) - 0.5) / den if den > 0 else np.nan


def pairs(methods: list[str], baseline: str = "random") -> list[tuple[str, str]]:
    """Each generator method against the baseline, and active gating against its random-skip control."""
    out = [(m, baseline) for m in methods if m != baseline and m not in REFERENCES and baseline in methods]
    if GATED in methods and CONTROL in methods:
        out.append((GATED, CONTROL))
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


def _one(x: str, b: str, gx, gb, n_boot: int, seed: int) -> dict:
    xs, bs, seeds, note = _paired_groups(gx, gb)
    row = {"comparison": f"{x} − {b}", "seeds": ",".join(map(str, seeds)), "note": note}
    if not seeds:
        return row
    d_a = stats.paired_difference([g[:2] for g in xs], [g[:2] for g in bs], auroc, n_boot, seed, shared_rows=True)
    d_tr = stats.paired_difference(xs, bs, tr, n_boot, seed + 1, shared_rows=True)
    binary = np.ndim(xs[0][1]) == 1        # DeLong's variance is for one score; k > 2: the bootstrap alone
    delong = [stats.delong(gx_[0], gx_[1], gb_[1]) if binary else {"z": np.nan, "p": np.nan}
              for gx_, gb_ in zip(xs, bs)]
    row.update({"d_auroc_a": d_a["diff"], "d_auroc_a_ci_low": d_a["ci_low"], "d_auroc_a_ci_high": d_a["ci_high"],
                "d_auroc_a_t_low": d_a["t_low"], "d_auroc_a_t_high": d_a["t_high"], "p_boot": d_a["p_boot"],
                "delong_z": ";".join(f"{d['z']:.2f}" for d in delong),
                "delong_p": min(1.0, min(d["p"] for d in delong) * len(delong)) if binary else np.nan,  # Bonferroni
                "d_tr": d_tr["diff"], "d_tr_ci_low": d_tr["ci_low"], "d_tr_ci_high": d_tr["ci_high"]})
    return row


def compare(df: pd.DataFrame, baseline: str = "random", n_boot: int = 1000, seed: int = 0,
            alpha: float = 0.05) -> pd.DataFrame:
    """The comparison table of a collected results frame (lib.analyze.collection.collect), per tuning size."""
    rows = []
    for size, part in df.groupby("tuning_size", sort=True):
        key = part["method"] + np.where(part["setting"] != "", " " + part["setting"], "")
        groups = {m: part[key == m] for m in dict.fromkeys(key)}
        plain = {k.split(" ")[0]: k for k in groups}       # method -> its (first) group
        for x, b in pairs(list(plain), baseline):
            rows.append({"tuning size": size, **_one(plain[x], plain[b], groups[plain[x]], groups[plain[b]],
                                                     n_boot, seed)})
    out = pd.DataFrame(rows)
    if out.empty or "p_boot" not in out:
        return out
    out["p_boot_holm"] = stats.holm(out["p_boot"].to_numpy(float))
    out["delong_p_holm"] = stats.holm(out["delong_p"].to_numpy(float))
    out["verdict"] = [_verdict(r, alpha) for _, r in out.iterrows()]
    return out


MIN_SEEDS = 3     # a bootstrap over two seeds sees half their variance: eight label-shuffled permutations of
                  # the shapes demo spread AUROC(a) with s.d. 0.06, twice a one-run image bootstrap's 0.03


def _verdict(r: pd.Series, alpha: float) -> str:
    if pd.isna(r.get("p_boot_holm")):
        return r.get("note") or "not compared"
    separated = r["p_boot_holm"] < alpha and (r["d_auroc_a_ci_low"] > 0 or r["d_auroc_a_ci_high"] < 0)
    if not separated:
        return "not separated"
    n = len(str(r["seeds"]).split(","))
    if n < MIN_SEEDS:
        return f"not called: {n} seed(s), {MIN_SEEDS} needed"
    x, b = r["comparison"].split(" − ")
    return f"{x} {'>' if r['d_auroc_a'] > 0 else '<'} {b}"


def table(c: pd.DataFrame) -> pd.DataFrame:
    """The printed form: differences with their CIs and the Holm-adjusted p-values."""
    if c.empty or "d_auroc_a" not in c:
        return c
    f = lambda r, k: f"{r[k]:+.3f} [{r[k + '_ci_low']:+.2f}, {r[k + '_ci_high']:+.2f}]"  # noqa: E731
    return pd.DataFrame({
        "comparison": c["comparison"], "size": c["tuning size"], "seeds": c["seeds"],
        "ΔAUROC(a) [2-level CI]": [f(r, "d_auroc_a") for _, r in c.iterrows()],
        "p (Holm)": [f"{p:.3f}" for p in c["p_boot_holm"]],
        "DeLong p (Holm)": [f"{p:.3f}" for p in c["delong_p_holm"]],
        "ΔTR [2-level CI]": [f(r, "d_tr") for _, r in c.iterrows()],
        "verdict": c["verdict"]}).reset_index(drop=True)
