"""Training sets that mix real and synthetic images, tested on real: augmentation brackets with random
oversampling (Schaudt et al. 2023, seed 001, Tables 7-9) and fixed-size mixing ratios (seed 003).

For one generator point (a finished stage 04) and its seed's real baseline (stage ``05_real_baseline``):
  - ``07_brackets``: the real training sample (``classifier.n_train_per_class`` per class) plus N synthetic
    images per class for each N in ``mixing.brackets``. The brackets are nested (+50 holds +25's images).
  - ``07_oversampling``: the same real sample plus N copies per class drawn at random, with replacement,
    from it: exactly the bracket's totals, with real images only. It does not depend on the generator, so
    every generator of one data, seed and classifier shares it.
  - ``07_ratios``: ``mixing.total_per_class`` images per class (default ``classifier.n_train_per_class``),
    the real share drawn from the real training pool (the baseline's sample first, so 100:0 at the default
    size is the baseline's sample) and the rest synthetic, for each [real, synthetic] pair of ``mixing.ratios``.
Every arm trains the classifier of ``classifier.arch`` with the real baseline's seed (run seed + 1), so arms
differ only in their data, and is tested on the real baseline's test sample; each folder also carries the
real-only baseline itself (the real baseline's TRTR predictions, arm ``real``), so every difference is
paired on the same test images. The validation split is carved from each arm's training set; an
oversampled image and all its copies fall on the same side of it.

Everything that can be checked is checked for every point before the first classifier trains (stage 04
missing, labels that differ between the real and the synthetic set, a bracket or a ratio that needs more
images than the synthetic set or the real pool holds). Stage folders hold, per arm, ``train_<arm>.csv``,
``predictions_<arm>.csv``, ``arm_<arm>.json`` and ``classifier_<arm>.pt`` (a resumed stage skips arms
already written), and ``mixing.csv``, one row of metrics per arm (not ``results.csv``: lib.analyze.analysis reads
every results.csv as a stage-05 record).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core import atomic, compute, stages, stats
from ..evaluate import classifier, evaluation, metrics, results
from ..data import curation, domains, leakage
from ..core.config import Config
from ..data.nih import DataError
from ..generate.manifest import read_synthetic

log = logging.getLogger(__name__)
EXPERIMENTS = {"brackets": "07_brackets", "oversampling": "07_oversampling", "ratios": "07_ratios"}
TABLE = "mixing.csv"
OVERSAMPLING = "oversampling"          # the generator name of the oversampled arms in tables and figures
BASELINE = "real"
_SALT = 0x313                          # keeps the synthetic draw apart from the pipeline's other uses of the seed
METRICS = ["accuracy", "balanced_accuracy", "auroc"]


# ------------------------------------------------------------------------------------------- arms
def arm_name(kind: str, n: int | None = None, ratio: tuple[float, float] | None = None) -> str:
    """'real', 'synthetic+100', 'oversampled+100', 'ratio 70:30'."""
    if kind == BASELINE:
        return BASELINE
    if kind == "ratio":
        return f"ratio {round(100 * ratio[0])}:{round(100 * ratio[1])}"
    return f"{kind}+{n}"


def _file_key(arm: str) -> str:
    return arm.replace("synthetic+", "syn").replace("oversampled+", "over").replace("ratio ", "r").replace(":", "-")


def _classes(df: pd.DataFrame, classes: list[str] | None) -> list[str]:
    """The run's classes when given (lib.data.domains.classes), else the order the data's labels give."""
    return list(classes) if classes is not None else domains.order(df["label"])


def ordered_synthetic(synthetic: pd.DataFrame, seed: int, classes: list[str] | None = None) -> pd.DataFrame:
    """The synthetic set in a seeded random order within each class (brackets and ratios take prefixes)."""
    parts = []
    for i, label in enumerate(_classes(synthetic, classes)):
        rows = synthetic[synthetic["label"] == label].sort_values("image_id")
        parts.append(rows.iloc[np.random.default_rng([seed, i, _SALT]).permutation(len(rows))])
    return pd.concat(parts, ignore_index=True)


def ordered_real(train_real: pd.DataFrame, pool: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The real training pool with the baseline's sample first (in its order), then the rest in a seeded order."""
    rest = pool[~pool["image_id"].isin(train_real["image_id"])].sort_values("image_id")
    rest = rest.iloc[np.random.default_rng([seed, 7, _SALT]).permutation(len(rest))]
    return pd.concat([train_real, rest], ignore_index=True)


def _first(df: pd.DataFrame, n: int, classes: list[str] | None = None) -> pd.DataFrame:
    """The first n rows of each class, classes in label-index order."""
    return pd.concat([df[df["label"] == label].iloc[:n] for label in _classes(df, classes)], ignore_index=True)


def bracket_sets(train_real: pd.DataFrame, syn_order: pd.DataFrame, brackets: list[int],
                 classes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Real sample + the first N synthetic images of each class, per bracket N."""
    return {arm_name("synthetic", n): pd.concat([train_real.assign(source="real"),
                                                 _first(syn_order, n, classes).assign(source="synthetic")],
                                                ignore_index=True)
            for n in sorted(brackets)}


def oversampled_sets(train_real: pd.DataFrame, brackets: list[int], seed: int,
                     classes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Real sample + N copies per class drawn at random with replacement from that class's real images:
    exactly n_real + N images per class, the bracket's totals. ``group`` names each copy's source image."""
    out = {}
    for n in sorted(brackets):
        parts = [train_real.assign(source="real")]
        for i, label in enumerate(_classes(train_real, classes)):
            rows = train_real[train_real["label"] == label]
            pick = np.random.default_rng([seed, n, i, _SALT]).integers(0, len(rows), n)
            parts.append(rows.iloc[pick].assign(source="real copy"))
        df = pd.concat(parts, ignore_index=True)
        df["group"] = df["image_id"]
        out[arm_name("oversampled", n)] = df
    return out


def ratio_counts(ratio, total: int) -> tuple[int, int]:
    """(real, synthetic) images per class of a [real, synthetic] share pair at ``total`` per class."""
    n_real = int(round(ratio[0] * total))
    return n_real, total - n_real


def ratio_sets(real_order: pd.DataFrame, syn_order: pd.DataFrame, ratios, total: int,
               classes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    out = {}
    for r in ratios:
        n_real, n_syn = ratio_counts(r, total)
        out[arm_name("ratio", ratio=tuple(r))] = pd.concat(
            [_first(real_order, n_real, classes).assign(source="real"),
             _first(syn_order, n_syn, classes).assign(source="synthetic")], ignore_index=True)
    return out


# ----------------------------------------------------------------------------------------- inputs
def _counts(df: pd.DataFrame, classes: list[str] | None = None) -> dict[str, int]:
    """Images per class (0 for a class the frame lacks, so a missing class is the smallest)."""
    return {label: int((df["label"] == label).sum()) for label in _classes(df, classes)}


def check_labels(real: pd.DataFrame, synthetic: pd.DataFrame, where: str) -> None:
    """The real and the synthetic set must hold the same classes."""
    r, s = sorted(set(real["label"])), sorted(set(synthetic["label"]))
    if r != s:
        raise DataError(f"the real and the synthetic set of {where} hold different labels: real {r}, synthetic {s} "
                        f"(only in real: {sorted(set(r) - set(s))}, only in synthetic: {sorted(set(s) - set(r))}); "
                        "a mixed training set needs the same classes on both sides.")


def inputs(cfg: Config, runs_root="runs", experiments=("brackets", "ratios"), build: bool = False,
           progress: bool = False) -> dict:
    """What the experiments read, checked: the real training pool, the synthetic set (stage 04), that both
    hold the same labels and that every bracket and ratio fits what they hold. Nothing trains unless
    ``build``, which then adds the real baseline (its sample, test sample and TRTR predictions), trained
    first if this data, seed and classifier have none yet (stage 05_real_baseline, shared with stage 05)."""
    m, c, classes = cfg.mixing, cfg.classifier, domains.classes(cfg)
    where = f"{results.method_name(cfg)} (seed {cfg.seed})"
    out = {"pool": curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["train"]}
    if set(experiments) - {"oversampling"}:
        d04 = stages.require(cfg, "04_generation", runs_root)
        if (d04 / "manifest.csv").exists():      # labels first: read_synthetic names only a missing class
            raw = pd.read_csv(d04 / "manifest.csv")
            if "label" in raw:
                check_labels(out["pool"], raw, where)
        synthetic = read_synthetic(d04 / "manifest.csv")
        have, need_b = min(_counts(synthetic, classes).values()), max(m.brackets) if "brackets" in experiments else 0
        if need_b > have:
            raise DataError(f"mixing.brackets = {m.brackets}: the largest bracket adds {need_b} synthetic images per "
                            f"class, but the synthetic set of {where} holds only {have} of its smallest class "
                            f"({_counts(synthetic, classes)}); drop the brackets above {have} or generate more "
                            "(generation.n_per_label).")
        if "ratios" in experiments:
            total = m.total_per_class or c.n_train_per_class
            real_have = min(_counts(out["pool"], classes).values())
            for r in m.ratios:
                n_real, n_syn = ratio_counts(r, total)
                if n_syn > have or n_real > real_have:
                    side, n, h = ("synthetic set", n_syn, have) if n_syn > have else ("real training pool", n_real,
                                                                                     real_have)
                    raise DataError(f"mixing.ratios {r} at {total} images per class needs {n} images per class of "
                                    f"the {side} of {where}, which holds {h}; lower mixing.total_per_class.")
        out.update(d04=d04, synthetic=synthetic)
    if build:
        dr = _real_baseline(cfg, runs_root, progress)
        out.update(real_dir=dr, train_real=pd.read_csv(dr / "train_real.csv", dtype={"patient": str}),
                   test_real=pd.read_csv(dr / "test_real.csv", dtype={"patient": str}))
    return out


def _real_baseline(cfg: Config, runs_root, progress: bool) -> Path:
    """The real baseline's folder, trained (stage 05's way) only if this data, seed and classifier have none."""
    d = stages.stage_dir(cfg, evaluation.REAL_STAGE, runs_root)
    if (d / "DONE.json").exists():
        return stages.require(cfg, evaluation.REAL_STAGE, runs_root)
    return evaluation.real_baseline(cfg, runs_root, progress)


# ---------------------------------------------------------------------------------------- training
def _train_arm(cfg: Config, out_dir: Path, arm: str, train_df: pd.DataFrame, test_df: pd.DataFrame,
               progress: bool, classes: list[str]) -> None:
    """Train one arm and predict the real test sample, unless a resumed stage already holds both."""
    key, c = _file_key(arm), cfg.classifier
    pred, info = out_dir / f"predictions_{key}.csv", out_dir / f"arm_{key}.json"
    if pred.exists() and info.exists():
        return
    dev = compute.device()
    atomic.write_csv(out_dir / f"train_{key}.csv", train_df)
    data = classifier.TensorSet.from_manifest(train_df, c.input_size, dev)
    groups = train_df["group"].to_numpy() if "group" in train_df else None
    fit = classifier.train(data, c, cfg.seed + 1, progress, desc=f"({arm})", groups=groups,
                           history_path=out_dir / f"history_{key}.csv")
    test = classifier.TensorSet.from_manifest(test_df, c.input_size, dev)
    atomic.save_torch(out_dir / f"classifier_{key}.pt", fit.model.state_dict())
    atomic.write_csv(pred, results.predictions_frame(test_df, classifier.predict_outputs(fit.model, test), classes))
    counts = train_df.groupby(["label", "source"]).size()
    atomic.write_json(info, {"arm": arm, "n_train": fit.n_train, "n_val": fit.n_val, "epochs_run": len(fit.history),
                             "best_epoch": fit.best_epoch, "train_seconds": round(fit.seconds, 2),
                             "per_class": {f"{lab}|{src}": int(v) for (lab, src), v in counts.items()},
                             "classifier_hash": classifier.model_hash(fit.model)})
    del fit, data, test
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _baseline(out_dir: Path, real_dir: Path) -> None:
    """The real-only baseline: the real baseline's own classifier on the same test sample (TRTR)."""
    if not (out_dir / f"predictions_{BASELINE}.csv").exists():
        shutil.copyfile(real_dir / "predictions_trtr.csv", out_dir / f"predictions_{BASELINE}.csv")
    info = json.loads((real_dir / "direction_real.json").read_text())
    atomic.write_json(out_dir / f"arm_{BASELINE}.json", {"arm": BASELINE, **{k: info[k] for k in (
        "n_train", "n_val", "epochs_run", "best_epoch", "train_seconds", "classifier_hash")}})


def _run(cfg: Config, out_dir: Path, sets: dict[str, pd.DataFrame], meta: dict[str, dict], ins: dict,
         progress: bool) -> None:
    out_dir = Path(out_dir)
    atomic.write_csv(out_dir / "test_real.csv", ins["test_real"])
    _baseline(out_dir, ins["real_dir"])
    classes = domains.classes(cfg)       # once: a folder or csv source is read to find them
    with compute.cpu_threads(cfg.classifier.cpu_threads):
        for arm, df in sets.items():
            _train_arm(cfg, out_dir, arm, df, ins["test_real"], progress, classes)
    rows = [_row(out_dir, BASELINE, {"n_real": cfg.classifier.n_train_per_class, "n_synthetic": 0, "n_copies": 0},
                 cfg, classes)]
    rows += [_row(out_dir, arm, meta[arm], cfg, classes) for arm in sets]
    atomic.write_csv(out_dir / TABLE, pd.DataFrame(rows))


def _row(out_dir: Path, arm: str, meta: dict, cfg: Config, classes: list[str]) -> dict:
    """One arm's metrics on the real test sample (lib.evaluate.metrics.summary) and its bookkeeping."""
    key = _file_key(arm)
    pred = pd.read_csv(out_dir / f"predictions_{key}.csv")
    y, o = results.arrays(pred)
    info = json.loads((out_dir / f"arm_{key}.json").read_text())
    total = meta["n_real"] + meta["n_synthetic"] + meta["n_copies"]
    return {"arm": arm, **meta, "total_per_class": total,
            "synthetic_share": meta["n_synthetic"] / total if total else float("nan"),
            "seed": cfg.seed, "arch": cfg.classifier.arch, "predictions": f"predictions_{key}.csv",
            **{k: info.get(k) for k in ("n_train", "n_val", "epochs_run", "train_seconds", "classifier_hash")},
            **metrics.summary(y, o, cfg.classifier.threshold, classes)}


def run_brackets(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> None:
    """Stage 07_brackets: the real sample plus N synthetic images per class, per bracket."""
    ins = inputs(cfg, runs_root, ("brackets",), build=True, progress=progress)
    leakage.check_content(ins["test_real"], {"the synthetic set": ins["synthetic"],
                                             "the real training sample": ins["train_real"]})
    classes = domains.classes(cfg)
    syn = ordered_synthetic(ins["synthetic"], cfg.seed, classes)
    sets = bracket_sets(ins["train_real"], syn, cfg.mixing.brackets, classes)
    n = cfg.classifier.n_train_per_class
    meta = {arm_name("synthetic", b): {"n_real": n, "n_synthetic": b, "n_copies": 0} for b in cfg.mixing.brackets}
    _run(cfg, Path(out_dir), sets, meta, ins, progress)


def run_oversampling(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> None:
    """Stage 07_oversampling: the real sample plus N random copies of its images per class, per bracket."""
    ins = inputs(cfg, runs_root, ("oversampling",), build=True, progress=progress)
    sets = oversampled_sets(ins["train_real"], cfg.mixing.brackets, cfg.seed, domains.classes(cfg))
    n = cfg.classifier.n_train_per_class
    meta = {arm_name("oversampled", b): {"n_real": n, "n_synthetic": 0, "n_copies": b} for b in cfg.mixing.brackets}
    _run(cfg, Path(out_dir), sets, meta, ins, progress)


def run_ratios(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> None:
    """Stage 07_ratios: a fixed number of images per class at each real:synthetic ratio."""
    ins = inputs(cfg, runs_root, ("ratios",), build=True, progress=progress)
    total = cfg.mixing.total_per_class or cfg.classifier.n_train_per_class
    classes = domains.classes(cfg)
    real = ordered_real(ins["train_real"], ins["pool"], cfg.seed)
    leakage.check_content(ins["test_real"], {"the synthetic set": ins["synthetic"],
                                             "the real training pool": _first(real, total, classes)})
    sets = ratio_sets(real, ordered_synthetic(ins["synthetic"], cfg.seed, classes), cfg.mixing.ratios, total,
                      classes)
    meta = {}
    for r in cfg.mixing.ratios:
        n_real, n_syn = ratio_counts(r, total)
        meta[arm_name("ratio", ratio=tuple(r))] = {"n_real": n_real, "n_synthetic": n_syn, "n_copies": 0}
    _run(cfg, Path(out_dir), sets, meta, ins, progress)


RUNNERS = {"brackets": run_brackets, "oversampling": run_oversampling, "ratios": run_ratios}


def stage(cfg: Config, experiment: str, runs_root="runs", progress: bool = True) -> Path:
    """One experiment's stage folder for one point: keyed, resumable, reused when finished, never overwritten."""
    name = EXPERIMENTS[experiment]
    lock = stages.stage_dir(cfg, name, runs_root).with_suffix(".lock")
    with atomic.exclusive(lock, what=f"stage {name}, which another process is computing"):
        return stages.run_stage(cfg, name, RUNNERS[experiment], runs_root, progress=progress)


def experiments_of(which: str | list[str], cfg: Config) -> list[str]:
    """'brackets' (with oversampling when mixing.oversample), 'ratios' or 'both' -> the stages to run."""
    names = ["brackets", "ratios"] if which == "both" else [which] if isinstance(which, str) else list(which)
    bad = sorted(set(names) - set(EXPERIMENTS))
    if bad:
        raise ValueError(f"unknown mixing experiment(s) {bad}; use 'brackets', 'ratios' or 'both'.")
    if "brackets" in names and cfg.mixing.oversample and "oversampling" not in names:
        names.insert(names.index("brackets") + 1, "oversampling")
    return names


def measure(cfgs: list[Config], which: str | list[str] = "both", runs_root="runs", progress: bool = False
            ) -> list[dict]:
    """Every point's experiments: all inputs checked first (a bad bracket stops before anything trains),
    then each stage run or reused. Returns [{"cfg", "generator", "seed", "<experiment>": stage folder}]."""
    plans = [(cfg, experiments_of(which, cfg)) for cfg in cfgs]
    for cfg, names in plans:
        inputs(cfg, runs_root, names)
    for cfg, _ in plans:            # the real baselines first, so each 07 stage records it as an input
        _real_baseline(cfg, runs_root, progress)
    out = []
    for cfg, names in plans:
        rec = {"cfg": cfg, "generator": results.method_name(cfg), "seed": cfg.seed}
        for name in names:
            rec[name] = stage(cfg, name, runs_root, progress)
        out.append(rec)
    return out


def point_configs(params_file, runs: list | None = None, overrides: dict | None = None) -> list[Config]:
    """The configs of finished run folders (their params.yaml) with the mixing overrides on top, or the
    parameter file's own point when ``runs`` is None."""
    from ..core import config, paths

    if not runs:
        return [config.load(params_file, overrides)]
    return [config.load(paths.resolve(r) / "params.yaml", overrides) for r in runs]


# ------------------------------------------------------------------------------------------ tables
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
    """Each table as 07_table_<name>.csv beside the figures."""
    from ..core import paths

    out = []
    for name, t in tables.items():
        out.append(atomic.write_csv(paths.resolve(figures_dir) / f"07_table_{name}.csv", t))
    return out
