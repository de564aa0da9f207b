"""FTER analysis: every results record under a runs root in one table, thesis-layout tables, checks.

Records are stage 05's ``results.csv`` (one row) beside ``predictions_a.csv`` / ``predictions_b.csv``
(image_id, label, score). Direction a trains on synthetic and tests on real, b trains on real and
tests on synthetic; FTER = AUROC(a) / AUROC(b). Column names are normalised to ``auroc_a``,
``acc_b_Unhealthy``, ... whichever spelling the record uses (``a_auroc``, ``b_accuracy[Unhealthy]``).
Every number can be recomputed from the raw predictions (``check``), with scikit-learn, independently
of the code that wrote the record.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from . import config, paths, stages

LABELS = ["No Finding", "Unhealthy"]      # label 1 = Unhealthy; a score is P(Unhealthy)
DIRECTIONS = {"a": "train synthetic, test real", "b": "train real, test synthetic"}
GROUP = ["method", "tuning_size", "setting"]
METHOD_ORDER = ["no-fine-tune", "random", "spectral-pixel", "spectral-clip", "textbook", "active-gating",
                "random-skip"]


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
    """'a_auroc' -> 'auroc_a'; 'b_accuracy[Unhealthy]' -> 'acc_b_Unhealthy'; others unchanged."""
    m = re.fullmatch(r"([ab])_(auroc|accuracy|collapsed)(_ci_low|_ci_high)?(?:\[(.+)\])?", col)
    if not m:
        return col
    d, metric, ci, cls = m.groups()
    metric = {"accuracy": "acc"}.get(metric, metric)
    return f"{metric}_{d}{ci or ''}" + (f"_{cls}" if cls else "")


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
        node[leaf] = v.item() if hasattr(v, "item") else v
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
        frames.append(pd.read_csv(d / "results.csv").assign(results_dir=str(d)))
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


def metric_columns(df: pd.DataFrame) -> list[str]:
    pat = re.compile(r"(auroc|acc)_[ab](_(No Finding|Unhealthy))?$|fter$")
    return [c for c in df.columns if pat.match(c)]


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Long form: one row per run x direction x metric x class (class 'overall' for the whole test set)."""
    rows = []
    for _, r in df.iterrows():
        for c in metric_columns(df):
            m = re.match(r"(auroc|acc)_([ab])(?:_(.+))?$", c)
            metric, d, cls = (m.groups() if m else ("fter", "a/b", None))
            rows.append({**{k: r[k] for k in ["method", "tuning_size", "setting", "seed"]},
                         "direction": d, "metric": metric, "class": cls or "overall", "value": r[c]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------- recompute
def read_predictions(results_dir, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 labels with 1 = Unhealthy, scores) of one direction's raw predictions."""
    pred = pd.read_csv(Path(results_dir) / f"predictions_{direction}.csv")
    unknown = set(pred["label"]) - set(LABELS)
    if unknown:
        raise ValueError(f"{results_dir}/predictions_{direction}.csv has labels {sorted(unknown)}; "
                         f"expected {LABELS}.")
    return (pred["label"] == LABELS[1]).to_numpy().astype(int), pred["score"].to_numpy(dtype=float)


def recompute(df: pd.DataFrame) -> pd.DataFrame:
    """Every metric of each record again, with scikit-learn, from its saved predictions only."""
    from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

    rows = []
    for _, r in df.iterrows():
        out = {}
        for d in "ab":
            y, s = read_predictions(r["results_dir"], d)
            pred = (s >= r["decision_threshold"]).astype(int)
            out[f"auroc_{d}"] = roc_auc_score(y, s)
            out[f"acc_{d}"] = accuracy_score(y, pred)
            for c, name in enumerate(LABELS):
                out[f"auroc_{d}_{name}"] = roc_auc_score(y == c, s if c == 1 else 1 - s)
                out[f"acc_{d}_{name}"] = recall_score(y, pred, pos_label=c, zero_division=0)
        out["fter"] = out["auroc_a"] / out["auroc_b"]
        rows.append(out)
    return pd.DataFrame(rows, index=df.index)


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
        report.append({"metric": c, "checked": int(diff.notna().sum()), "max_abs_diff": float(diff.max())})
        bad = diff > atol
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


def bootstrap_ci(results_dirs: list, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile CI of the seed-mean AUROC(a), AUROC(b) and FTER: each replicate resamples every run's
    two test sets, so the interval covers test-set sampling of all seeds together."""
    rng = np.random.default_rng(seed)
    data = [[read_predictions(d, k) for k in "ab"] for d in results_dirs]
    reps = np.full((n_boot, 3), np.nan)
    for b in range(n_boot):
        vals = []
        for (ya, sa), (yb, sb) in data:
            ia, ib = rng.integers(0, len(ya), len(ya)), rng.integers(0, len(yb), len(yb))
            a, bb = _auroc(ya[ia], sa[ia]), _auroc(yb[ib], sb[ib])
            vals.append((a, bb, a / bb))
        reps[b] = np.nanmean(np.array(vals, dtype=float), axis=0)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for j, name in enumerate(["auroc_a", "auroc_b", "fter"]):
        v = reps[:, j][np.isfinite(reps[:, j])]
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (np.percentile(v, [lo, hi]) if len(v) else (np.nan, np.nan))
    return out


def summary(df: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per method, tuning size and gating setting: seeds, mean and std of every metric, bootstrap CIs."""
    cols = metric_columns(df)
    if df.empty:
        return pd.DataFrame(columns=GROUP + ["n_seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")])
    rows = []
    for key, g in df.groupby(GROUP, sort=False):
        row = dict(zip(GROUP, key), n_seeds=len(g), seeds=",".join(map(str, sorted(g["seed"]))))
        for c in cols:
            row[f"{c}_mean"] = g[c].mean()
            row[f"{c}_std"] = g[c].std(ddof=1) if len(g) > 1 else np.nan
        row.update(bootstrap_ci(list(g["results_dir"]), n_boot, seed))
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean, std, pct=False) -> str:
    if pd.isna(mean):
        return "–"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f(mean) + ("" if pd.isna(std) else f" ± {f(std)}".replace("%", "") + ("%" if pct else ""))


def _label(r) -> str:
    return f"{r['tuning_size']:,}" + (f" ({r['setting']})" if r["setting"] else "")


THESIS_TABLES = {"random": "4.4", "spectral-pixel": "4.6", "spectral-clip": "4.8", "textbook": "4.10",
                 "active-gating": "4.12"}


def direction_table(s: pd.DataFrame, direction: str, with_fter: bool = False) -> pd.DataFrame:
    """Thesis layout: rows = tuning size; Accuracy and AUROC, overall and per class, mean ± std over seeds,
    and the bootstrap 95% CI of the overall AUROC's seed mean."""
    cols, out = pd.MultiIndex.from_product([["Accuracy", "AUROC"], ["Overall", "Unhealthy", "No Finding"]]), []
    for _, r in s.iterrows():
        vals = []
        for metric, pct in (("acc", True), ("auroc", False)):
            for cls in ("", "_Unhealthy", "_No Finding"):
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


def fter_table(s: pd.DataFrame) -> pd.DataFrame:
    """The short table `make demo` prints: AUROC both ways and FTER with its CI, per method and size."""
    if s.empty:
        return pd.DataFrame(columns=["method", "tuning size", "setting", "seeds", "AUROC a (syn→real)",
                                     "AUROC b (real→syn)", "FTER", "FTER 95% CI"])
    return pd.DataFrame({
        "method": s["method"], "tuning size": s["tuning_size"], "setting": s["setting"], "seeds": s["n_seeds"],
        "AUROC a (syn→real)": [_pm(m, d) for m, d in zip(s["auroc_a_mean"], s["auroc_a_std"])],
        "AUROC b (real→syn)": [_pm(m, d) for m, d in zip(s["auroc_b_mean"], s["auroc_b_std"])],
        "FTER": [_pm(m, d) for m, d in zip(s["fter_mean"], s["fter_std"])],
        "FTER 95% CI": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(s["fter_ci_low"], s["fter_ci_high"])],
    }).reset_index(drop=True)


def save_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path, prefix: str = "06_table") -> list[Path]:
    """Each table as CSV and as a LaTeX tabular (booktabs) next to the figures."""
    from . import atomic

    out_dir, written = paths.resolve(out_dir), []
    for i, (title, t) in enumerate(tables.items()):
        stem = out_dir / f"{prefix}_{i:02d}_{re.sub(r'[^a-z0-9]+', '-', title.split(':')[1].lower()).strip('-')}"
        atomic.write_csv(stem.with_suffix(".csv"), t.reset_index())
        atomic.write_text(stem.with_suffix(".tex"), to_latex(t, title))
        written += [stem.with_suffix(".csv"), stem.with_suffix(".tex")]
    return written


def to_latex(t: pd.DataFrame, caption: str) -> str:
    esc = lambda v: str(v).replace("%", r"\%").replace("±", r"$\pm$").replace("&", r"\&")  # noqa: E731
    head1 = [t.index.name or ""] + [esc(c[0]) for c in t.columns]
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


def sample_paths(df: pd.DataFrame, per_label: int = 4, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """A few synthetic image paths per label for each method (first seed), from stage 04's manifest."""
    out = {}
    for _, r in df.iterrows():
        if r["method"] in out:
            continue
        m = _manifest(upstream_dir(r, "04_generation"))
        if m is None:
            continue
        out[r["method"]] = {lab: m[m["label"] == lab]["_path"].sample(
            min(per_label, int((m["label"] == lab).sum())), random_state=seed).tolist() for lab in LABELS}
    return out


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.analysis", description="Print the FTER table.")
    ap.add_argument("--root", default="runs", help="runs root (or one experiment's folder) to collect from")
    ap.add_argument("--sweep", help="only the runs of this sweep file")
    ap.add_argument("--runs-root", default="runs", help="with --sweep: the runs root it ran in")
    ap.add_argument("--figures", default=None, help="list the figures in this folder")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --sweep: the overrides it ran with")
    args = ap.parse_args(argv)
    runs, figures = None, args.figures
    if args.sweep:
        from . import runner, sweeps
        sw = sweeps.load(args.sweep, runner.parse_sets(args.set))
        runs = [r.directory for r in (runner.prepare(sw.base, p, args.runs_root, create=False) for p in sw.points)
                if runner.done_through(r, "05_classifier")]
        figures = figures or sw.figures_dir
    df = collect(args.root, runs)
    if df.empty:
        print(f"no results records found under {paths.resolve(args.root)}", file=sys.stderr)
        return 1
    print(f"\nFTER table ({len(df)} runs; a = train synthetic, test real; b = train real, test synthetic)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(fter_table(summary(df)).to_string(index=False))
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
