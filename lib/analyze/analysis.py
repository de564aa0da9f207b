"""FTER analysis: every results record under a runs root in one table, seed statistics, tables, checks.

Records are stage 05's ``results.csv`` (one row) beside one predictions file per cell of the
trainability matrix (``predictions_{a,b,trtr,tsts}.csv``: image_id, label, score, p[<class>]) and the
detector's ``predictions_det.csv``. Cell a trains on synthetic and tests on real (TSTR), b trains on
real and tests on synthetic (TRTS), trtr and tsts stay on one side. FTER = AUROC(a) / AUROC(b); the
chance-corrected FTER and TR = (AUROC(a) - .5) / (AUROC(trtr) - .5) know where chance is. Column names
are normalised to ``auroc_a``, ``acc_b_Unhealthy``, ``auroc_det_Unhealthy`` ... whichever spelling the
record uses (``a_auroc``, ``b_accuracy[Unhealthy]``), for the classes of any domain (``auroc_a_circle``).
A record's classes, in label-index order, are the ``p[<class>]`` columns of its predictions files; with
more than two the overall AUROC is the macro one-vs-rest AUROC and a decision the largest output
(lib.evaluate.metrics). Every number can be recomputed from the raw predictions (``check``), with scikit-learn,
independently of the code that wrote the record.

A record also carries the synthetic set's fidelity, diversity and memorization (``fidelity.fid``,
``memorization.copy_fraction``, ... each with its image-bootstrap CI; stage 05, lib.evaluate.fidelity). ``summary``
averages them over seeds like the matrix's metrics (``fidelity_summary``), ``fidelity_table`` lays them out
per method, and ``fidelity_trainability`` / ``fidelity_agreement`` say whether the methods' FID and their
trainability (TR, FTER) rank them alike.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata, spearmanr

from ..core import config, paths, stages
from ..data import domains
from ..evaluate import metrics, results

DIRECTIONS = {"a": "train synthetic, test real", "b": "train real, test synthetic", "trtr": "train real, test real",
              "tsts": "train synthetic, test synthetic"}
CELLS = list(DIRECTIONS)
RATIOS = {"fter": ("a", "b", 0.0), "cc_fter": ("a", "b", 0.5), "tr": ("a", "trtr", 0.5)}  # num, den, chance
GROUP = ["method", "tuning_size", "setting"]
METHOD_ORDER = ["no-fine-tune", "random", "spectral-pixel", "spectral-clip", "textbook", "active-gating",
                "random-skip", "real-holdout", "vae-roundtrip", "exaggerated", "findings-erased", "collapsed",
                "label-shuffled", "folder"]


class AnalysisMismatch(AssertionError):
    """A reported number differs from the one recomputed from the raw predictions."""


# ------------------------------------------------------------------------------------ collect
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
    """What distinguishes gated runs of one method: the threshold rule (empty for ungated runs)."""
    p = row["params"]
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


# --------------------------------------------------------------------------------- recompute
def read_predictions(results_dir, direction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class indices, scores, N x k per-class outputs) of one cell's predictions, classes in the order of
    its p[...] columns (binary: 1 = the thesis's Unhealthy, the score P(class 1))."""
    pred = pd.read_csv(Path(results_dir) / f"predictions_{direction}.csv")
    classes = results.classes_of(pred)
    unknown = set(pred["label"].astype(str)) - set(classes)
    if unknown:
        raise ValueError(f"{results_dir}/predictions_{direction}.csv has labels {sorted(unknown)}; "
                         f"expected {classes}.")
    s = pred["score"].to_numpy(dtype=float)
    cols = results.output_columns(classes)
    outputs = pred[cols].to_numpy(float) if all(c in pred for c in cols) else np.stack([1 - s, s], 1)
    y = pred["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy().astype(int)
    return y, s, outputs


def cells_of(results_dir) -> list[str]:
    return [d for d in CELLS if (Path(results_dir) / f"predictions_{d}.csv").exists()]


def record_classes(results_dir, labels=None) -> list[str]:
    """A record's classes in label-index order: its first predictions file's p[...] columns, else (no
    predictions) the order ``labels`` give (lib.data.domains.order)."""
    cells = cells_of(results_dir)
    if cells:
        return results.classes_of(pd.read_csv(Path(results_dir) / f"predictions_{cells[0]}.csv", nrows=1))
    return domains.order([] if labels is None else labels)


def _sk_auroc(y, s) -> float:
    """scikit-learn's AUROC, NaN where one class is absent (as lib.evaluate.metrics has it)."""
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, s) if len(np.unique(y)) == 2 else np.nan


def _recompute_cell(d: str, y, s, o, threshold: float, classes: list[str]) -> dict:
    """One cell's metrics with scikit-learn. Binary: the score against the threshold; more classes: the
    macro one-vs-rest AUROC of the row-normalised outputs and the largest output as the decision."""
    from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

    if len(classes) == 2:
        pred, overall = (s >= threshold).astype(int), roc_auc_score(y, s)
    else:
        p = o / o.sum(1, keepdims=True)
        pred = p.argmax(1)
        present = len(np.unique(y)) == len(classes)     # sklearn refuses an absent class; it is NaN here
        overall = roc_auc_score(y, p, multi_class="ovr", average="macro") if present else np.nan
    out = {f"auroc_{d}": overall, f"acc_{d}": accuracy_score(y, pred)}
    for c, name in enumerate(classes):
        out[f"auroc_{d}_{name}"] = _sk_auroc(y == c, o[:, c])
        out[f"acc_{d}_{name}"] = recall_score(y, pred, labels=[c], average=None, zero_division=0)[0]
    return out


def _recompute_one(r: pd.Series) -> dict:
    """One record's metrics with scikit-learn: per-class AUROC from each class's own output."""
    from sklearn.metrics import roc_auc_score

    out, det = {}, Path(r["results_dir"]) / "predictions_det.csv"
    p = pd.read_csv(det) if det.exists() else None
    classes = record_classes(r["results_dir"], None if p is None else p["label"])
    for d in cells_of(r["results_dir"]):
        out.update(_recompute_cell(d, *read_predictions(r["results_dir"], d), r["decision_threshold"], classes))
    if p is not None:
        out["auroc_det"] = roc_auc_score(p["source"] == "synthetic", p["score"])
        for name in classes:
            q = p[p["label"].astype(str) == name]
            out[f"auroc_det_{name}"] = _sk_auroc(q["source"] == "synthetic", q["score"])
    for name, (num, den, chance) in RATIOS.items():
        if f"auroc_{num}" in out and f"auroc_{den}" in out:
            defined = r.get(f"{name}_defined", True) in (True, "True")
            den_above = out[f"auroc_{den}"] - chance
            out[name] = (out[f"auroc_{num}"] - chance) / den_above if defined and den_above else np.nan
    return out


def recompute(df: pd.DataFrame) -> pd.DataFrame:
    """Every metric of each record again, with scikit-learn, from its saved predictions only."""
    return pd.DataFrame([_recompute_one(r) for _, r in df.iterrows()], index=df.index)


def check(df: pd.DataFrame, atol: float = 1e-9) -> pd.DataFrame:
    """Compare every reported metric with its recomputation; raises AnalysisMismatch on any difference."""
    if df.empty:
        return pd.DataFrame(columns=["metric", "checked", "max_abs_diff"])
    again = recompute(df)
    report = []
    for c in again.columns:
        if c not in df.columns:
            continue
        diff = (df[c].astype(float) - again[c]).abs()
        diff[df[c].isna() & again[c].isna()] = 0.0        # undefined both ways is agreement
        report.append({"metric": c, "checked": int(diff.notna().sum()), "max_abs_diff": float(diff.max())})
        bad = diff.isna() | (diff > atol)
        if bad.any():
            i = bad.idxmax()
            raise AnalysisMismatch(f"{c} of {df.at[i, 'results_dir']} is {df.at[i, c]} in results.csv but "
                                   f"{again.at[i, c]} recomputed from the predictions.")
    return pd.DataFrame(report)


# ---------------------------------------------------------------------------------- summarise
def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    n1 = y.sum(); n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        return np.nan
    return (rankdata(s)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1)


SIDE = {"a": "real", "trtr": "real", "b": "synthetic", "tsts": "synthetic"}   # which test set a cell uses


def _cell_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """The fast binary AUROC of a score, or the macro one-vs-rest AUROC of N x k probabilities."""
    return _auroc(y, s) if s.ndim == 1 else metrics.macro_auroc(y, s)


def _scores(y, s, o) -> tuple[np.ndarray, np.ndarray]:
    """What a cell's AUROC is taken of: the binary score, or the normalised outputs of more classes."""
    return (y, s) if o.shape[1] == 2 else (y, metrics.probabilities(o))


def _load(results_dir) -> tuple[dict, tuple | None]:
    """Per cell (labels, scores or N x k probabilities); the detector's (is_synthetic, score) when the
    record has one."""
    cells = {d: _scores(*read_predictions(results_dir, d)) for d in cells_of(results_dir)}
    det = Path(results_dir) / "predictions_det.csv"
    if det.exists():
        p = pd.read_csv(det)
        return cells, ((p["source"] == "synthetic").to_numpy().astype(int), p["score"].to_numpy(float))
    return cells, None


def _seed_aurocs(cells: dict, det, rng=None) -> dict:
    """AUROC of every cell (and the detector) of one seed; with ``rng``, on resampled test rows, the
    cells that share a test set sharing the same rows."""
    out, idx = {}, {}
    for d, (y, s) in cells.items():
        ix = idx.setdefault(SIDE[d], rng.integers(0, len(y), len(y)) if rng is not None else slice(None))
        out[d] = _cell_auroc(y[ix], s[ix])
    if det is not None:
        ix = rng.integers(0, len(det[0]), len(det[0])) if rng is not None else slice(None)
        out["det"] = _auroc(det[0][ix], det[1][ix])
    return out


def _pooled(means: dict) -> dict:
    """The ratios of seed-mean AUROCs."""
    out = {}
    for name, (num, den, chance) in RATIOS.items():
        if num in means and den in means:
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = float(np.float64(means[num] - chance) / np.float64(means[den] - chance))
    return out


def bootstrap_ci(results_dirs: list, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Two-level percentile CIs of the seed-mean AUROCs and of the ratios of those means: a replicate
    draws seeds with replacement, then test rows within each drawn seed, so the interval holds the
    spread between seeds (generator and classifier training) as well as test-set sampling. A ratio
    whose denominator's interval reaches chance is undefined (NaN, ``<ratio>_defined`` False)."""
    rng = np.random.default_rng(seed)
    data = [_load(d) for d in results_dirs]
    point = pd.DataFrame([_seed_aurocs(c, det) for c, det in data]).mean().to_dict()
    point.update(_pooled(point))
    reps = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(data), len(data))
        means = pd.DataFrame([_seed_aurocs(*data[i], rng=rng) for i in picks]).mean().to_dict()
        reps.append({**means, **_pooled(means)})
    reps = pd.DataFrame(reps)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for name in reps.columns:
        v = reps[name].to_numpy(float)
        v = v[np.isfinite(v)]
        key = f"auroc_{name}" if name in CELLS or name == "det" else name
        out[f"{key}_pooled"] = point.get(name, np.nan)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = np.percentile(v, [lo, hi]) if len(v) else (np.nan, np.nan)
    for name, (_, den, chance) in RATIOS.items():
        if f"auroc_{den}_ci_low" in out:
            ok = bool(out[f"auroc_{den}_ci_low"] > chance)
            out[f"{name}_defined"] = ok
            if not ok:
                out[f"{name}_pooled"] = out[f"{name}_ci_low"] = out[f"{name}_ci_high"] = np.nan
    return out


def summary(df: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per method, tuning size and gating setting: seeds, mean and std of every metric over seeds, the
    t-interval over seeds, and two-level bootstrap CIs (seeds, then test images)."""
    from ..core import stats

    cols = metric_columns(df)
    if df.empty:
        return pd.DataFrame(columns=GROUP + ["n_seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")])
    rows = []
    for key, g in df.groupby(GROUP, sort=False):
        row = dict(zip(GROUP, key), n_seeds=len(g), seeds=",".join(map(str, sorted(g["seed"]))))
        for c in cols:
            t = stats.seed_summary(g[c].astype(float).to_numpy())
            row.update({f"{c}_mean": t["mean"], f"{c}_std": t["sd"], f"{c}_t_low": t["t_low"], f"{c}_t_high": t["t_high"]})
        row.update(bootstrap_ci(list(g["results_dir"]), n_boot, seed))
        row.update(fidelity_summary(g, n_boot, seed))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------- fidelity over seeds
# Record fields (overall values; each has _ci_low/_ci_high) -> (table header, column)
FIDELITY = {"fidelity.fid": ("Fidelity", "FID"), "fidelity.kid": ("Fidelity", "KID"),
            "fidelity.precision": ("Fidelity", "precision"), "fidelity.density": ("Fidelity", "density"),
            "fidelity.recall": ("Diversity", "recall"), "fidelity.coverage": ("Diversity", "coverage"),
            "fidelity.diversity_synthetic": ("Diversity", "(MS-)SSIM syn."),
            "fidelity.diversity_real": ("Diversity", "(MS-)SSIM real"),
            "memorization.copy_fraction": ("Memorization", "copies"),
            "memorization.ratio_median": ("Memorization", "d seen / d unseen")}
_FIDELITY_RANGE = {"fid": (0, np.inf), "density": (0, np.inf), "ratio_median": (0, np.inf),
                   "diversity_synthetic": (-1, 1), "diversity_real": (-1, 1), "kid": (-np.inf, np.inf)}
_FIDELITY_SALT = 0xF1D


def fidelity_summary(g: pd.DataFrame, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Each fidelity metric (FIDELITY) of one method's runs: mean, s.d. and t-interval over seeds, and
    ``_pooled`` (the seed mean) with a two-level percentile CI. A replicate draws seeds with replacement,
    then each drawn seed's value from its image-bootstrap distribution, approximated by the two-piece normal
    that matches the record's own 95% CI (sd (value - ci_low) / 1.96 below, (ci_high - value) / 1.96 above,
    clipped to the metric's range): stage 05 keeps the CI, not the replicates. With one seed the interval is
    about that seed's own. Records without the fields (older runs) give NaN."""
    from ..core import stats

    def column(name):
        return g[name].astype(float).to_numpy() if name in g else np.full(len(g), np.nan)

    rng = np.random.default_rng([seed, _FIDELITY_SALT])
    z = norm.ppf((1 + level) / 2)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    kinds = g["param.fidelity.extractor"].dropna().astype(str) if "param.fidelity.extractor" in g else []
    out = {"fidelity_extractor": ", ".join(sorted(set(kinds))) if "fidelity.fid" in g else ""}
    for key in FIDELITY:
        v, lo, hi = column(key), column(f"{key}_ci_low"), column(f"{key}_ci_high")
        t = stats.seed_summary(v, level)
        out.update({f"{key}_mean": t["mean"], f"{key}_std": t["sd"], f"{key}_t_low": t["t_low"],
                    f"{key}_t_high": t["t_high"]})
        ok = np.isfinite(v) & np.isfinite(lo) & np.isfinite(hi)
        v, lo, hi = v[ok], lo[ok], hi[ok]
        if not len(v):
            out[f"{key}_pooled"] = out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = np.nan
            continue
        below, above = np.maximum(v - lo, 0) / z, np.maximum(hi - v, 0) / z
        picks = rng.integers(0, len(v), (n_boot, len(v)))
        e = rng.standard_normal((n_boot, len(v)))
        draws = np.clip(v[picks] + np.where(e < 0, e * below[picks], e * above[picks]),
                        *_FIDELITY_RANGE.get(key.split(".", 1)[1], (0, 1)))
        out[f"{key}_pooled"] = float(v.mean())
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = (float(x) for x in np.percentile(draws.mean(1), q))
    return out


def _pm(mean, std, pct=False) -> str:
    if pd.isna(mean):
        return "–"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f(mean) + ("" if pd.isna(std) else f" ± {f(std)}".replace("%", "") + ("%" if pct else ""))


def _label(r) -> str:
    return f"{r['tuning_size']:,}" + (f" ({r['setting']})" if r["setting"] else "")


THESIS_TABLES = {"random": "4.4", "spectral-pixel": "4.6", "spectral-clip": "4.8", "textbook": "4.10",
                 "active-gating": "4.12"}


def table_classes(s: pd.DataFrame, direction: str) -> list[str]:
    """The classes of a summary's per-class columns of one direction, as the thesis's tables order them:
    two classes with class 1 first (Unhealthy, No Finding), more in label-index order."""
    pat = re.compile(rf"(?:acc|auroc)_{re.escape(direction)}_(.+)_mean$")
    found = list(dict.fromkeys(m.group(1) for c in s.columns if (m := pat.match(c))))
    return found[::-1] if len(found) == 2 else found


def direction_table(s: pd.DataFrame, direction: str, with_fter: bool = False) -> pd.DataFrame:
    """Thesis layout: rows = tuning size; Accuracy and AUROC, overall and per class, mean ± std over seeds,
    and the bootstrap 95% CI of the overall AUROC's seed mean."""
    classes = table_classes(s, direction)
    cols, out = pd.MultiIndex.from_product([["Accuracy", "AUROC"], ["Overall", *classes]]), []
    for _, r in s.iterrows():
        vals = []
        for metric, pct in (("acc", True), ("auroc", False)):
            for cls in ["", *(f"_{c}" for c in classes)]:
                c = f"{metric}_{direction}{cls}"
                vals.append(_pm(r.get(f"{c}_mean"), r.get(f"{c}_std"), pct))
        out.append(vals)
    t = pd.DataFrame(out, columns=cols, index=pd.Index([_label(r) for _, r in s.iterrows()],
                                                       name="Fine-tune images per label"))
    t[("AUROC", "95% CI")] = [f"[{r[f'auroc_{direction}_ci_low']:.3f}, {r[f'auroc_{direction}_ci_high']:.3f}]"
                              for _, r in s.iterrows()]
    if with_fter:
        t[("FTER", "mean ± std")] = [_pm(r["fter_mean"], r["fter_std"]) for _, r in s.iterrows()]
        t[("FTER", "95% CI")] = [f"[{r['fter_ci_low']:.3f}, {r['fter_ci_high']:.3f}]" for _, r in s.iterrows()]
        t[("", "seeds")] = list(s["n_seeds"])
    return t


def thesis_tables(s: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables 4.4-4.13: per method, (a) trained on synthetic, (b) trained on real and tested on synthetic
    with FTER. The no-fine-tune control is the first row of the random table, as in Table 4.4."""
    out = {}
    nft = s[s["method"] == "no-fine-tune"]
    methods = [m for m in METHOD_ORDER if m in set(s["method"]) and m != "no-fine-tune"] + \
        sorted(set(s["method"]) - set(METHOD_ORDER))
    for m in methods or (["no-fine-tune"] if len(nft) else []):
        part = s[s["method"] == m]
        if m == "random" and len(nft):
            part = pd.concat([nft.assign(setting="no fine-tune"), part])
        num = THESIS_TABLES.get(m)
        ta = f"Table {num}" if num else "Table"
        tb = f"Table {num.split('.')[0]}.{int(num.split('.')[1]) + 1}" if num else "Table"
        out[f"{ta}: {m}, classifier trained on synthetic, tested on real"] = direction_table(part, "a")
        out[f"{tb}: {m}, classifier trained on real, tested on synthetic"] = direction_table(part, "b", True)
    return out


MATRIX_COLUMNS = {"auroc_trtr": "TRTR", "auroc_a": "TSTR (a)", "auroc_b": "TRTS (b)", "auroc_tsts": "TSTS",
                  "fter": "FTER", "cc_fter": "FTER (chance-corr.)", "tr": "TR", "auroc_det": "detection"}


def _with_ci(r, key: str) -> str:
    v, lo, hi = r.get(f"{key}_pooled"), r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    if r.get(f"{key}_defined") is False or (key in RATIOS and pd.isna(v)):
        return "undefined"
    if v is None or pd.isna(v):
        return "–"
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


def fter_table(s: pd.DataFrame) -> pd.DataFrame:
    """The table `make demo` prints: every cell of the trainability matrix, FTER, the chance-corrected
    FTER, TR and detection AUROC, each the seed mean with its two-level 95% CI ("undefined" when a
    ratio's denominator is indistinguishable from chance)."""
    head = ["method", "tuning size", "setting", "seeds"]
    if s.empty:
        return pd.DataFrame(columns=head + list(MATRIX_COLUMNS.values()))
    out = pd.DataFrame({"method": s["method"], "tuning size": s["tuning_size"].map(lambda n: n or "–"),
                        "setting": s["setting"],
                        "seeds": s["n_seeds"]})
    for key, name in MATRIX_COLUMNS.items():
        out[name] = [_with_ci(r, key) for _, r in s.iterrows()]
    return out.reset_index(drop=True)


def explain_ratios(s: pd.DataFrame) -> str:
    """Why the plain FTER can mislead, in sentences built from this study's own numbers."""
    rows = [r for _, r in s.iterrows() if pd.notna(r.get("fter_pooled"))]
    if not rows:
        return "No results yet."
    out = []
    near_one = min(rows, key=lambda r: abs(r["fter_pooled"] - 1))
    out.append(f"The plain FTER closest to the thesis's ideal of 1 is {near_one['method']}'s "
               f"({near_one['fter_pooled']:.3f}), with AUROC(a) = {near_one['auroc_a_pooled']:.3f} and AUROC(b) = "
               f"{near_one['auroc_b_pooled']:.3f}: FTER is 1 whenever both directions are equally good, and also "
               "when both are at chance (0.5 / 0.5).")
    worse_b = sorted(rows, key=lambda r: r["auroc_b_pooled"])
    if len(worse_b) > 1 and worse_b[0]["fter_pooled"] > worse_b[-1]["fter_pooled"]:
        lo, hi = worse_b[0], worse_b[-1]
        out.append(f"FTER rises when the generator gets worse in direction (b): {lo['method']} has the lowest "
                   f"AUROC(b) ({lo['auroc_b_pooled']:.3f}) and an FTER of {lo['fter_pooled']:.3f}, above "
                   f"{hi['method']}'s {hi['fter_pooled']:.3f} with AUROC(b) {hi['auroc_b_pooled']:.3f}.")
    trs = [r for r in rows if r.get("tr_defined") is True or str(r.get("tr_defined")) == "True"]
    if trs:
        best = max(trs, key=lambda r: r["tr_pooled"])
        out.append(f"TR compares AUROC(a) with the real-data ceiling (TRTR {best['auroc_trtr_pooled']:.3f}), above "
                   f"chance: {best['method']} carries {100 * best['tr_pooled']:.0f}% "
                   f"[{100 * best['tr_ci_low']:.0f}%, {100 * best['tr_ci_high']:.0f}%] of real data's signal. "
                   "The chance-corrected FTER and TR are undefined when their denominator is indistinguishable "
                   "from chance, instead of growing without bound.")
    return "\n".join(out)


def _g3(v) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _fidelity_cell(r, key: str) -> str:
    v, lo, hi = r.get(f"{key}_pooled"), r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    if v is None or pd.isna(v):
        return "–"
    return f"{_g3(v)} [{_g3(lo)}, {_g3(hi)}]"


def fidelity_table(s: pd.DataFrame) -> pd.DataFrame:
    """Per method, tuning size and setting: every fidelity, diversity and memorization metric of FIDELITY as
    the seed mean with its two-level 95% CI (see fidelity_summary), columns named '<header>: <column>'.
    FID and KID: lower is closer to the real training sample; precision and density: synthetic images inside
    the real manifold; recall and coverage: the real manifold reached; (MS-)SSIM: mean similarity of random
    pairs within a class (higher is less diverse); copies: the fraction flagged as copies of a seen image;
    d seen / d unseen: the median ratio of the distances to the nearest seen and nearest unseen real image."""
    head = ["method", "tuning size", "setting", "seeds"]
    cols = [f"{h}: {c}" for h, c in FIDELITY.values()]
    if s.empty:
        return pd.DataFrame(columns=head + cols)
    out = pd.DataFrame({"method": s["method"], "tuning size": s["tuning_size"].map(lambda n: n or "–"),
                        "setting": s["setting"], "seeds": s["n_seeds"]})
    for key, col in zip(FIDELITY, cols):
        out[col] = [_fidelity_cell(r, key) for _, r in s.iterrows()]
    return out.reset_index(drop=True)


def save_fidelity_table(t: pd.DataFrame, out_dir: str | Path, name: str = "06_fidelity") -> list[Path]:
    """The fidelity table as <name>.csv and as a LaTeX tabular with grouped headers (<name>.tex)."""
    from ..core import atomic

    out_dir = paths.resolve(out_dir)
    latex = t.assign(row=[f"{m} {st}".strip() + (f" (n={n})" if n != "–" else "")
                          for m, st, n in zip(t["method"], t["setting"], t["tuning size"])]).set_index("row")
    latex = latex.drop(columns=["method", "tuning size", "setting"])
    latex.columns = pd.MultiIndex.from_tuples([("", c) if ": " not in c else tuple(c.split(": ", 1))
                                               for c in latex.columns])
    latex.index.name = "Method"
    caption = ("Fidelity, diversity and memorization of each synthetic set: seed means with two-level 95% CIs "
               "(seeds, then images)")
    return [atomic.write_csv(out_dir / f"{name}.csv", t),
            atomic.write_text(out_dir / f"{name}.tex", to_latex(latex, caption))]


def fidelity_trainability(s: pd.DataFrame, fidelity: str = "fidelity.fid") -> pd.DataFrame:
    """Spearman rank correlation across methods (summary rows) between a fidelity metric's seed mean and TR
    and FTER (pooled), over every method and over the generators alone (reference generators left out: some
    are built to keep fidelity and lose the labels). Columns: methods, trainability, n, rho, p."""
    from ..core.style import REFERENCES

    rows = []
    for subset, part in (("all", s), ("generators", s[~s["method"].isin(REFERENCES)] if len(s) else s)):
        for target in ("tr", "fter"):
            x = part.get(f"{fidelity}_pooled", pd.Series(dtype=float)).astype(float).to_numpy()
            y = part.get(f"{target}_pooled", pd.Series(dtype=float)).astype(float).to_numpy()
            ok = np.isfinite(x) & np.isfinite(y)
            rho = p = np.nan
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                rho, p = (float(v) for v in spearmanr(x[ok], y[ok]))
            rows.append({"methods": subset, "fidelity": fidelity, "trainability": target, "n": int(ok.sum()),
                         "rho": rho, "p": p})
    return pd.DataFrame(rows)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _verdict(r) -> str:
    if not np.isfinite(r["rho"]):
        return f"cannot be compared ({r['n']} methods with both numbers; at least 3 are needed)"
    stat = f"Spearman ρ(FID, TR) = {r['rho']:+.2f}, {_p(r['p'])}, over {r['n']} methods"
    if r["rho"] < 0 and r["p"] < 0.05:
        return f"agree: methods with a lower FID carry more of real data's signal ({stat})"
    if r["rho"] < 0:
        return f"do not clearly agree: the rank correlation has the expected sign but is not significant ({stat})"
    return f"do not agree: a lower FID does not go with a higher TR ({stat})"


def fidelity_agreement(s: pd.DataFrame) -> str:
    """Whether fidelity (FID) and trainability (TR) rank the methods alike, in sentences with the numbers:
    agreement is a significantly negative Spearman correlation between FID and TR (p < 0.05)."""
    c = fidelity_trainability(s).set_index(["methods", "trainability"])
    gen, every = c.loc[("generators", "tr")], c.loc[("all", "tr")]
    out = [f"Among the generators (diffusion methods and controls), fidelity and trainability {_verdict(gen)}."]
    if every["n"] > gen["n"]:
        out.append(f"With the reference generators, fidelity and trainability {_verdict(every)}.")
    fter = c.loc[("all", "fter")]
    if np.isfinite(fter["rho"]):
        out.append(f"FID against the plain FTER: ρ = {fter['rho']:+.2f} ({_p(fter['p'])}, {fter['n']} methods); "
                   "FTER also rises when direction (b) gets worse, so it is no monotone measure of quality.")
    return " ".join(out)


def save_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path, prefix: str = "06_table") -> list[Path]:
    """Each table as CSV and as a LaTeX tabular (booktabs) next to the figures."""
    from ..core import atomic

    out_dir, written = paths.resolve(out_dir), []
    for i, (title, t) in enumerate(tables.items()):
        stem = out_dir / f"{prefix}_{i:02d}_{re.sub(r'[^a-z0-9]+', '-', title.split(':')[1].lower()).strip('-')}"
        atomic.write_csv(stem.with_suffix(".csv"), t.reset_index())
        atomic.write_text(stem.with_suffix(".tex"), to_latex(t, title))
        written += [stem.with_suffix(".csv"), stem.with_suffix(".tex")]
    return written


def save_csvs(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Named tables (the matrix, the comparisons, the calibration) as figures/06_<name>.csv."""
    from ..core import atomic

    return [atomic.write_csv(paths.resolve(out_dir) / f"06_{name}.csv", t) for name, t in tables.items()]


def _spans(names: list[str]) -> list[str]:
    """Runs of equal top-level headers as one \\multicolumn each (never "Accuracy & Accuracy & Accuracy")."""
    out, i = [], 0
    while i < len(names):
        j = i
        while j + 1 < len(names) and names[j + 1] == names[i]:
            j += 1
        n = j - i + 1
        out.append(names[i] if n == 1 else rf"\multicolumn{{{n}}}{{c}}{{{names[i]}}}")
        i = j + 1
    return out


def to_latex(t: pd.DataFrame, caption: str) -> str:
    esc = lambda v: str(v).replace("%", r"\%").replace("±", r"$\pm$").replace("&", r"\&")  # noqa: E731
    head1 = [t.index.name or ""] + _spans([esc(c[0]) for c in t.columns])
    head2 = [""] + [esc(c[1]) for c in t.columns]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * len(t.columns) + "}",
             r"\toprule", " & ".join(head1) + r" \\", " & ".join(head2) + r" \\", r"\midrule"]
    lines += [" & ".join([esc(i)] + [esc(v) for v in row]) + r" \\" for i, row in zip(t.index, t.to_numpy())]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------- upstream artefacts
def upstream_dir(row: pd.Series, stage: str) -> Path:
    """A record's upstream stage folder (runs root = three levels above the stage-05 folder)."""
    cfg = config.from_dict(row["params"])
    return stages.stage_dir(cfg, stage, Path(row["results_dir"]).parents[2])


def gating_logs(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Stage 03's gating_log.csv (step, score, threshold, skipped, seconds) of the first seed of each
    gated run and random-skip control, keyed by method (and setting)."""
    out = {}
    for _, r in df[(df["gating"].astype(bool)) | (df["control"] == "random-skip")].iterrows():
        name = r["method"] + (f" {r['setting']}" if r["setting"] and df["setting"].nunique() > 2 else "")
        f = upstream_dir(r, "03_dreambooth") / "gating_log.csv"
        if name not in out and f.exists():
            out[name] = pd.read_csv(f)
    return out


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


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.analyze.analysis", description="Print the FTER table.")
    ap.add_argument("--root", default="runs", help="runs root (or one experiment's folder) to collect from")
    ap.add_argument("--sweep", help="only the runs of this sweep file")
    ap.add_argument("--runs-root", default="runs", help="with --sweep: the runs root it ran in")
    ap.add_argument("--figures", default=None, help="list the figures in this folder")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --sweep: the overrides it ran with")
    args = ap.parse_args(argv)
    runs, figures = None, args.figures
    if args.sweep:
        from ..core import overrides
        from ..runs import sweeps
        sw = sweeps.load(args.sweep, overrides.parse_sets(args.set))
        finished, missing = sweeps.finished_runs(sw, args.runs_root)
        runs = [r.directory for r in finished]
        if missing:
            print(f"{len(missing)} of {len(sw.points)} points of {args.sweep} have not finished; the tables leave "
                  f"them out: {', '.join(missing)}", file=sys.stderr)
        if not runs:            # never fall back to every record under --root: they may be other parameters'
            print(f"no run of {args.sweep} has finished stage 05 under {paths.resolve(args.runs_root)}; run "
                  f"python -m lib.runs.sweeps {args.sweep} first.", file=sys.stderr)
            return 1
        figures = figures or sw.figures_dir
    df = collect(args.root, runs)
    if df.empty:
        print(f"no results records found under {paths.resolve(args.root)}", file=sys.stderr)
        return 1
    from . import calibration, comparisons

    s = summary(df)
    print(f"\nThe trainability matrix ({len(df)} runs; seed means with two-level 95% CIs over seeds and test "
          "images; a = train synthetic, test real; b = train real, test synthetic)")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 200):
        print(fter_table(s).to_string(index=False))
        print("\n" + explain_ratios(s))
        print("\nPaired comparisons (shared seeds and test sets; Holm across the table):")
        print(comparisons.table(comparisons.compare(df)).to_string(index=False))
        checks = calibration.checks(s)
        if not checks.empty:
            print("\nCalibration on reference generators (must hold by construction):")
            print(checks.drop(columns="why").to_string(index=False))
            print(calibration.orderings(s).to_string(index=False))
        fid = fidelity_table(s)
        if len(fid) and (fid.iloc[:, 4:] != "–").any().any():
            print("\nFidelity, diversity and memorization (seed means with two-level 95% CIs; stage 05, "
                  "lib/evaluate/fidelity.py):")
            print(fid.to_string(index=False))
            print("\n" + fidelity_agreement(s))
    checked = check(df)
    print(f"\nall {int(checked['checked'].sum())} reported metric values match their recomputation "
          "from the saved predictions")
    if figures:
        print("\nfigures:")
        for f in sorted(paths.resolve(figures).glob("06_*.p*")):
            print(f"  {stages.paths_rel(f)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
