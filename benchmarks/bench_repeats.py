"""Classifier repeats (classifier.repeats, issue 22): average the R classifiers' *predictions* per test image (an
ensemble's AUROC), or their *estimates* (the mean of R single-classifier AUROCs)? And the demo's variance components.

On finished demo stage-05 folders (a finished cold demo, read only: its training and test manifests), each
seed's synthetic training sample (direction a) and real training sample (its real baseline's) train K classifiers
with the seeds and validation splits stage 05 gives repeats 0..K-1 (lib.evaluate.classifier.repeat_seed; the real
side's validation split by patient), each predicting the seed's real test sample. Saved per repeat:
``<out>_predictions.csv``. Then, per seed, over every subset of R of the K repeats:
  - estimates: mean of the R AUROC(a) (TR from the mean AUROCs);
  - predictions: AUROC of the mean output per test image;
the s.d. across subsets (the between-repeat spread of the per-seed estimate; both share the finite-population
factor (K-R)/(K-1)) and the mean shift of the ensemble above the single-classifier mean. Last, the variance components
of AUROC(a) and TR (lib.analyze.variance.from_predictions: seeds x repeats x test bootstrap) and what they mean for a
plan (lib.analyze.variance.plan). Measured (benchmarks/results/bench_repeats.txt, demo spectral-clip, seeds 0-1, K = 6):
at R = 3 the per-seed AUROC(a) spreads by s.d. 0.016 averaged as estimates and 0.031 as an ensemble (TR 0.044 against
0.080), and the ensemble sits +0.016 above the single-classifier mean: stage 05 averages estimates.

    .venv/bin/python benchmarks/bench_repeats.py --root /tmp/democlone --method spectral-clip --repeats 6
"""
import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core import atomic, compute
from lib.core.config import ClassifierConfig
from lib.evaluate import classifier, metrics

ap = argparse.ArgumentParser()
ap.add_argument("--root", default="/tmp/democlone", help="project folder of a finished demo (read only)")
ap.add_argument("--experiment", default="demo")
ap.add_argument("--method", default="spectral-clip")
ap.add_argument("--repeats", type=int, default=6, help="K classifiers per seed and side")
ap.add_argument("--max-r", type=int, default=4)
ap.add_argument("--bootstrap", type=int, default=200)
ap.add_argument("--out", default="benchmarks/results/bench_repeats")
args = ap.parse_args()
ROOT = Path(args.root)
OUT = Path(args.out)


def records() -> list[dict]:
    rows = []
    for f in sorted((ROOT / "runs" / args.experiment / "stages").glob("05_classifier-*/results.json")):
        r = json.loads(f.read_text())
        if r["method"] == args.method:
            rows.append({**r, "dir": f.parent})
    if not rows:
        raise SystemExit(f"no finished stage 05 of method {args.method!r} under {ROOT}")
    return sorted(rows, key=lambda r: r["seed"])


def manifest(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"patient": str})
    return df.assign(path=[str(ROOT / p) for p in df["path"]])


def train_side(cfg: ClassifierConfig, train: pd.DataFrame, test: pd.DataFrame, seed: int, r: int) -> np.ndarray:
    dev = compute.device()
    data = classifier.TensorSet.from_manifest(train, cfg.input_size, dev)     # validation split by patient
    fit = classifier.train(data, cfg, classifier.repeat_seed(seed, r), progress=False)
    return classifier.predict_outputs(fit.model, classifier.TensorSet.from_manifest(test, cfg.input_size, dev))


def collect() -> pd.DataFrame:
    """Per-repeat outputs on the real test sample (cell a: synthetic-trained; trtr: real-trained)."""
    path = Path(f"{OUT}_predictions.csv")
    if path.exists():
        return pd.read_csv(path)
    parts = []
    for rec in records():
        cfg = ClassifierConfig(**{f: rec[f"param.classifier.{f}"] for f in ClassifierConfig.__dataclass_fields__
                                  if f"param.classifier.{f}" in rec})     # a field at its default is not recorded
        real = ROOT / rec["real_baseline"]
        test = manifest(rec["dir"] / "test_a.csv")
        sides = {"a": (manifest(rec["dir"] / "train_a.csv"), rec["seed"]),
                 "trtr": (manifest(real / "train_real.csv"), rec["seed"] + 1)}     # stage 05's seeds per side
        for cell, (train, seed) in sides.items():
            for r in range(args.repeats):
                t0 = time.perf_counter()
                with compute.cpu_threads(cfg.cpu_threads):
                    out = train_side(cfg, train, test, seed, r)
                print(f"seed {rec['seed']} {cell} repeat {r}: {time.perf_counter() - t0:.1f} s", flush=True)
                parts.append(pd.DataFrame({"seed": rec["seed"], "repeat": r, "cell": cell,
                                           "image_id": test["image_id"], "y": classifier.labels_of(test),
                                           "p0": out[:, 0], "p1": out[:, 1]}))
    atomic.write_csv(path, pd.concat(parts, ignore_index=True).round({"p0": 6, "p1": 6}))
    return pd.read_csv(path)


def auroc(g: pd.DataFrame) -> float:
    return metrics.auroc(g["y"].to_numpy(), metrics.score_of(g[["p0", "p1"]].to_numpy()))


def tr(a: float, t: float) -> float:
    return (a - 0.5) / (t - 0.5)


def compare(df: pd.DataFrame) -> pd.DataFrame:
    """Per R: s.d. across R-subsets of the per-seed estimate (pooled over seeds), both ways, and the ensemble's shift."""
    rows = []
    for seed, g in df.groupby("seed"):
        single = {(c, r): auroc(h) for (c, r), h in g.groupby(["cell", "repeat"])}
        out = {c: {r: h.sort_values("image_id")[["p0", "p1"]].to_numpy() for r, h in g[g.cell == c].groupby("repeat")}
               for c in ("a", "trtr")}
        y = g[(g.cell == "a") & (g["repeat"] == 0)].sort_values("image_id")["y"].to_numpy()
        reps = sorted(out["a"])
        for R in range(1, args.max_r + 1):
            for sub in itertools.islice(itertools.combinations(reps, R), 200):
                est = {c: np.mean([single[(c, r)] for r in sub]) for c in ("a", "trtr")}
                ens = {c: metrics.auroc(y, metrics.score_of(np.mean([out[c][r] for r in sub], 0))) for c in ("a", "trtr")}
                rows.append({"seed": seed, "R": R, "est_a": est["a"], "ens_a": ens["a"],
                             "est_tr": tr(est["a"], est["trtr"]), "ens_tr": tr(ens["a"], ens["trtr"])})
    sub = pd.DataFrame(rows)
    sd = sub.groupby(["R", "seed"]).std(ddof=1).groupby("R").apply(lambda t: np.sqrt((t ** 2).mean()))
    shift = (sub.assign(d_a=sub.ens_a - sub.est_a, d_tr=sub.ens_tr - sub.est_tr)
             .groupby("R")[["d_a", "d_tr"]].mean())
    table = pd.DataFrame({"sd_estimates_a": sd["est_a"], "sd_predictions_a": sd["ens_a"],
                          "sd_estimates_tr": sd["est_tr"], "sd_predictions_tr": sd["ens_tr"],
                          "ensemble_shift_a": shift["d_a"], "ensemble_shift_tr": shift["d_tr"],
                          "n_subsets": sub.groupby("R").size() / sub.seed.nunique()})
    return table.round(4)


def decision(table: pd.DataFrame) -> str:
    """Which average stage 05 uses (lib.evaluate.repeats), from the table: the smaller spread, and no shift."""
    r = table.index.max()
    est, ens = table.loc[r, "sd_estimates_a"], table.loc[r, "sd_predictions_a"]
    pick = "estimates" if est <= ens else "predictions"
    return (f"decision: average {pick} (at R = {r}: s.d. {est:.4f} as estimates, {ens:.4f} as predictions; the "
            f"ensemble shifts AUROC(a) by {table.loc[r, 'ensemble_shift_a']:+.4f}, a shift that grows with R, while "
            "the mean of single AUROCs estimates one classifier's AUROC at every R)")


def costs() -> tuple[float, float]:
    """Seconds per generator seed (stages 03-04 as the demo's run.json timed them, and stage 05 less its classifier)
    and per classifier repeat (one synthetic- and one real-trained classifier, the records' training seconds)."""
    gen, cls = [], []
    runs = [json.loads(f.read_text()) for f in (ROOT / "runs" / args.experiment).glob("*/run.json")]
    for rec in records():
        st = next((r["stages"] for r in runs if Path(r["stages"].get("05_classifier", {}).get("stage_dir", "")).name
                   == rec["dir"].name), {})
        one = rec["a_train_seconds"] + rec["b_train_seconds"]
        gen.append(sum(st.get(k, {}).get("seconds", 0.0) for k in ("03_dreambooth", "04_generation", "05_classifier"))
                   - rec["a_train_seconds"])
        cls.append(one)
    return float(np.mean(gen)), float(np.mean(cls))


def plans(comp: dict) -> list[str]:
    """The planner fed with the measured components: a paired difference of two methods, delta 0.05 and 0.03."""
    from lib.analyze import variance

    g, c = costs()
    out = [f"cost: {g:.0f} s per generator seed, {c:.1f} s per classifier repeat (demo timings)"]
    for metric, delta in (("auroc_a", 0.05), ("auroc_a", 0.03), ("tr", 0.10)):
        sd_g, sd_c = variance.plan_inputs(comp[metric])
        best = variance.plan(comp[metric], delta, g, c).head(3)
        out += ["", f"plan for a paired difference of {variance.METRICS[metric]} = {delta} at 80% power "
                f"(sd_generator {sd_g:.4f}, sd_classifier {sd_c:.4f} per difference), cheapest three:",
                best.round(3).to_string(index=False)]
    return out


def main() -> None:
    from lib.analyze import variance

    df = collect()
    table = compare(df)
    single = df.groupby(["seed", "cell", "repeat"]).apply(auroc).unstack("cell")
    comp = variance.from_predictions(df, n_boot=args.bootstrap, seed=0)
    lines = [f"classifier repeats on the demo ({args.method}, seeds {sorted(int(x) for x in df.seed.unique())}, K = {args.repeats} "
             f"repeats per seed and side, {df[(df.cell == 'a') & (df['repeat'] == 0)].groupby('seed').size().iloc[0]} "
             "real test images per seed)", "",
             "single-classifier AUROC per seed and repeat:", single.round(3).to_string(), "",
             "per-seed estimate from R repeats: s.d. across subsets of R repeats (pooled over seeds), and the mean",
             "shift of the ensemble (mean output per image) above the mean of the R single AUROCs:",
             table.to_string(), "", decision(table), "", "variance components (lib.analyze.variance.from_predictions):",
             variance.table(comp).to_string(), "", *plans(comp)]
    text = "\n".join(lines) + "\n"
    atomic.write_text(Path(f"{OUT}.txt"), text)
    print(text)


if __name__ == "__main__":
    main()
