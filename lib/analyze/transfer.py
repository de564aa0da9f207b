"""The source x target matrix (seed 002, Tables 5.8-5.14): train on one data set, test on another.

Every set named in ``transfer.sets`` (and every finished run handed in) is both a source and a target:
  - ``real``: the real pools of stage 01; its training split comes from the real training pool, its test
    split from the real test pool (patient-disjoint by construction: lib.data.curation);
  - a reference kind (``real-holdout``, ``label-shuffled`` ...): that reference's stage-04 set, built here
    when missing (cheap: it copies or redraws pool images);
  - ``synthetic``: the parameter file's own stage-04 set (run notebook 04 first).
Each set is split once into a training split (``transfer.n_train_per_class`` per class) and a held-out test
split (up to ``transfer.n_test``), by patient where the set records one (lib.evaluate.evaluation.split_synthetic), so
the diagonal (train and test on the same set) never shares a file or a patient: it is the within-set upper
bound the off-diagonal cells are read against. One classifier per source (``classifier.arch``, seed run
seed + 1 as every other classifier), tested on every target's test split; each pair is checked for shared
files, image ids and patients first (lib.data.leakage), and a target's test images that the source's generator
was fine-tuned on (a real-holdout target draws from the same tuning pool) are left out of that cell
(``n_excluded``).

Stage folders (``08_transfer_real-<key>`` for the real pools, ``08_transfer-<key>`` for a stage-04 set, keyed by
that set's parameters, the classifier and the transfer sizes) hold ``train.csv``, ``test.csv``, the
classifier and its record; predictions on a target go to ``targets/<target stage folder>.csv`` beside it
(written once, then reused: the source's classifier and the target's split are both fixed by their keys).
Metrics: AUROC and balanced accuracy with percentile bootstrap CIs over the target's test images
(lib.core.stats), and whether the classifier collapsed (every test image put in one class).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core import atomic, compute, config, paths, stages, stats
from ..evaluate import classifier, evaluation, metrics, results
from ..data import curation, domains, leakage
from ..generate import generation, references
from ..generate.manifest import read_synthetic
from ..core.config import Config
from ..data.nih import DataError

log = logging.getLogger(__name__)
REAL = "real"
SYNTHETIC = "synthetic"
TABLE_COLUMNS = ["source", "target", "diagonal", "n_train", "n_test", "n_excluded", "auroc", "auroc_ci_low", "auroc_ci_high",
                 "balanced_accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "accuracy",
                 "collapsed", "predicted_class", "predictions"]


@dataclasses.dataclass
class DataSet:
    """One source/target: its display name, its configuration and its stage (real pools or a stage-04 set)."""
    name: str
    cfg: Config
    stage: str

    @property
    def real(self) -> bool:
        return self.stage == "08_transfer_real"


# ------------------------------------------------------------------------------------------ the sets
def _with_kind(cfg: Config, kind: str) -> Config:
    n = cfg.transfer.reference_n_per_label      # None: keep generation.n_per_label (a null override would set it)
    raw = config.apply_overrides(cfg.to_dict(), {"generation.kind": kind,
                                                 **({"generation.n_per_label": n} if n is not None else {})})
    if kind != "folder":
        raw["generation"]["folder"] = None
    return config.from_dict(raw)


def data_sets(cfg: Config, runs: list[Config] | None = None) -> list[DataSet]:
    """The sets of ``transfer.sets`` (plus one per finished run handed in), names distinct."""
    out = []
    for name in cfg.transfer.sets:
        if name == REAL:
            out.append(DataSet(REAL, cfg, "08_transfer_real"))
        elif name == SYNTHETIC:
            out.append(DataSet(results.method_name(cfg), cfg, "08_transfer"))
        else:
            out.append(DataSet(name, _with_kind(cfg, name), "08_transfer"))
    for r in runs or []:
        out.append(DataSet(results.method_name(r), r, "08_transfer"))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"the source x target matrix names {dup} twice (transfer.sets = {cfg.transfer.sets} and the "
                        "runs handed in); drop one.")
    return out


def sizes(cfg: Config) -> tuple[int, int]:
    t = cfg.transfer
    return t.n_train_per_class or cfg.classifier.n_train_per_class, t.n_test or cfg.classifier.n_test


def _stage04(ds: DataSet, runs_root, progress: bool) -> Path:
    """The set's stage-04 folder; a reference is built when it has not run (a diffusion set must have)."""
    if references.is_reference(ds.cfg) and not (stages.stage_dir(ds.cfg, "04_generation", runs_root) /
                                                "DONE.json").exists():
        return stages.run_stage(ds.cfg, "04_generation", generation.run, runs_root, progress=progress)
    return stages.require(ds.cfg, "04_generation", runs_root)


def split(ds: DataSet, runs_root="runs", progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training split, test split) of a set: disjoint, by patient where the set records one."""
    cfg = ds.cfg
    n, n_test = sizes(cfg)
    if ds.real:
        pools = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))
        return (evaluation.per_class(pools["train"], n, cfg.seed, "the real training pool"),
                evaluation.test_sample(pools["test"], n_test, cfg.seed, "the real test pool"))
    manifest = _stage04(ds, runs_root, progress) / "manifest.csv"
    read_synthetic(manifest)                                          # checked: columns, both classes
    synthetic = pd.read_csv(manifest, dtype={"patient": str})         # patient ids stay text (leading zeros)
    try:
        return evaluation.split_synthetic(synthetic, n, n_test, cfg.seed)
    except DataError as exc:
        raise DataError(f"set {ds.name!r}: {exc} (the matrix's split takes transfer.n_train_per_class = {n} per "
                        "class; lower it or generate more).") from None


# ---------------------------------------------------------------------------------------- one source
def _source(cfg: Config, out_dir, runs_root="runs", progress: bool = True, ds: DataSet | None = None) -> None:
    """Stage 08_transfer(_real): the set's split and the classifier trained on its training split."""
    out_dir = Path(out_dir)
    train, test = split(ds, runs_root, progress)
    leakage.check_content(test, {f"the training split of {ds.name}": train})
    atomic.write_csv(out_dir / "train.csv", train)
    atomic.write_csv(out_dir / "test.csv", test)
    if (out_dir / "classifier.pt").exists() and (out_dir / "source.json").exists():
        return
    c = cfg.classifier
    with compute.cpu_threads(c.cpu_threads):
        data = classifier.TensorSet.from_manifest(train, c.input_size, compute.device())
        fit = classifier.train(data, c, cfg.seed + 1, progress, desc=f"(source) {ds.name}",
                               history_path=out_dir / "history.csv")
    atomic.save_torch(out_dir / "classifier.pt", fit.model.state_dict())
    atomic.write_json(out_dir / "source.json", {
        "name": ds.name, "n_train": fit.n_train, "n_val": fit.n_val, "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch, "train_seconds": round(fit.seconds, 2),
        "classifier_hash": classifier.model_hash(fit.model)})


def source_stage(ds: DataSet, runs_root="runs", progress: bool = True) -> Path:
    """A set's stage folder: keyed, resumable, reused when finished, never overwritten."""
    lock = stages.stage_dir(ds.cfg, ds.stage, runs_root).with_suffix(".lock")
    with atomic.exclusive(lock, what=f"stage {ds.stage} of {ds.name}, which another process is computing"):
        return stages.run_stage(ds.cfg, ds.stage, _source, runs_root, progress=progress, ds=ds)


def _load(d: Path, cfg: Config):
    dev = compute.device()
    model = classifier.build(cfg.classifier).to(dev)
    model.load_state_dict(torch.load(d / "classifier.pt", map_location=dev))
    return model


def _seen_by_generator(src: DataSet, runs_root) -> pd.DataFrame | None:
    """The tuning set the source's generator was fine-tuned on (None for the real pools and references)."""
    if src.real or references.is_reference(src.cfg):
        return None
    return evaluation.tuning_set(src.cfg, runs_root)[0]


def pair_test(src: DataSet, d_src: Path, d_tgt: Path, runs_root="runs") -> tuple[pd.DataFrame, int]:
    """The target's test split as this source may be tested on it, and how many images were left out.

    Refused when it shares a file, id or patient with the source's training split. Images the source's
    generator was fine-tuned on (a real-holdout target draws from the same tuning pool) are left out of
    this cell only: a generator can pass them on to the images it makes."""
    test = pd.read_csv(d_tgt / "test.csv", dtype={"patient": str})
    leakage.check_content(test, {f"the training split of {src.name}": pd.read_csv(d_src / "train.csv",
                                                                                   dtype={"patient": str})})
    seen = _seen_by_generator(src, runs_root)
    if seen is None:
        return test, 0
    tuned = set(leakage.file_hashes(seen["path"].tolist()))
    keep = np.array([h not in tuned for h in leakage.file_hashes(test["path"].tolist())])
    if keep.sum() < 2 or len(set(test.loc[keep, "label"])) < 2:
        raise DataError(f"the test split of {d_tgt.name} holds almost nothing but images the generator of "
                        f"{src.name} was fine-tuned on; enlarge the target (transfer.n_test) or the tuning pool.")
    return test[keep].reset_index(drop=True), int((~keep).sum())


def predict_pair(src: DataSet, d_src: Path, tgt: DataSet, d_tgt: Path, runs_root="runs") -> tuple[Path, int]:
    """The source's classifier on the target's test split (targets/<target folder>.csv, written once) and the
    number of test images left out of the cell (pair_test)."""
    out = d_src / "targets" / f"{d_tgt.name}.csv"
    test, excluded = pair_test(src, d_src, d_tgt, runs_root)
    if out.exists():
        return out, excluded
    c = src.cfg.classifier
    with compute.cpu_threads(c.cpu_threads):
        data = classifier.TensorSet.from_manifest(test, c.input_size, compute.device())
        outputs = classifier.predict_outputs(_load(d_src, src.cfg), data)
    atomic.write_csv(out, results.predictions_frame(test, outputs, domains.classes(src.cfg)))
    return out, excluded


def check(cfg: Config, sets: list[DataSet]) -> None:
    """What can be checked before anything trains: one classifier and one seed for every set, and each set's
    classes."""
    classes = domains.classes(cfg)
    for ds in sets:
        if ds.cfg.classifier != cfg.classifier or ds.cfg.seed != cfg.seed or sizes(ds.cfg) != sizes(cfg):
            raise DataError(f"set {ds.name!r} uses another classifier, seed or transfer size than the parameter "
                            "file; every cell of the matrix must train the same classifier on the same sizes.")
        if ds.cfg is not cfg and domains.classes(ds.cfg) != classes:
            raise DataError(f"set {ds.name!r} has the classes {domains.classes(ds.cfg)}, the parameter file "
                            f"{classes}; a source's classifier can only be tested on a target of its own classes.")


def measure(cfg: Config, runs_root="runs", runs: list[Config] | None = None, progress: bool = False,
            n_boot: int | None = None) -> pd.DataFrame:
    """Every source's stage (trained or reused), every pair's predictions, and the matrix's table."""
    sets = data_sets(cfg, runs)
    check(cfg, sets)
    for ds in sets:                    # every input first: a missing stage 04 stops before anything trains
        stages.require(ds.cfg, "01_data_curation", runs_root)
        if not ds.real and not references.is_reference(ds.cfg):
            stages.require(ds.cfg, "04_generation", runs_root)
    for ds in sets:                    # then the references (cheap), so each source stage records its stage 04
        if not ds.real:
            _stage04(ds, runs_root, progress)
    dirs = {ds.name: source_stage(ds, runs_root, progress) for ds in sets}
    rows = []
    for src in sets:
        for tgt in sets:
            pred, excluded = predict_pair(src, dirs[src.name], tgt, dirs[tgt.name], runs_root)
            rows.append({**pair_row(src.name, tgt.name, pred, dirs[src.name], cfg.classifier.threshold,
                                    n_boot or cfg.classifier.bootstrap, cfg.seed), "n_excluded": excluded})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


# ------------------------------------------------------------------------------------------ metrics
def _scores(outputs) -> np.ndarray:
    """What a cell's statistics take: the binary score P(class 1), or the N x k normalised outputs."""
    p = metrics.probabilities(outputs)
    return metrics.score_of(outputs) if p.shape[1] == 2 else p


def _decide(s, threshold: float) -> np.ndarray:
    """The binary score against the threshold, or the largest of k probabilities (lib.evaluate.metrics.decide)."""
    s = np.asarray(s)
    return (s >= threshold).astype(int) if s.ndim == 1 else np.argmax(s, axis=1)


def auroc(y, s) -> float:
    """The binary AUROC of a score, or the macro one-vs-rest AUROC of N x k probabilities."""
    return metrics.auroc(y, s) if np.ndim(s) == 1 else metrics.macro_auroc(y, s)


def balanced_accuracy(y, s, threshold: float = 0.5) -> float:
    """Mean recall over the classes present (scikit-learn's balanced_accuracy_score); ``s`` is the binary
    score or N x k probabilities (_scores)."""
    y, p = np.asarray(y), _decide(s, threshold)
    k = 2 if np.ndim(s) == 1 else np.shape(s)[1]
    return float(np.mean([np.mean(p[y == c] == c) for c in range(k) if (y == c).any()]))


def pair_row(source: str, target: str, pred_path: Path, d_src: Path, threshold: float, n_boot: int, seed: int
             ) -> dict:
    """One cell: AUROC and balanced accuracy with percentile bootstrap CIs, and the collapse flag."""
    pred = pd.read_csv(pred_path)
    classes = results.classes_of(pred)
    y, o = results.arrays(pred)
    s = _scores(o)
    m = metrics.summary(y, o, threshold, classes)
    out = {"source": source, "target": target, "diagonal": source == target,
           "n_train": json.loads((d_src / "source.json").read_text())["n_train"], "n_test": len(y),
           "accuracy": m["accuracy"], "collapsed": m["collapsed"],
           "predicted_class": classes[int(metrics.decide(o, threshold)[0])] if m["collapsed"] else "",
           "predictions": stages.paths_rel(pred_path)}
    for name, stat in (("auroc", auroc), ("balanced_accuracy",
                                          lambda yy, ss: balanced_accuracy(yy, ss, threshold))):
        b = stats.two_level_bootstrap([(y, s)], stat, n_boot, seed)
        out.update({name: b["value"], f"{name}_ci_low": b["ci_low"], f"{name}_ci_high": b["ci_high"]})
    return out


def recompute(table: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """AUROC, balanced accuracy and the collapse flag of every cell again from its predictions file alone."""
    rows = []
    for _, r in table.iterrows():
        y, o = results.arrays(pd.read_csv(paths.resolve(r["predictions"])))
        s = _scores(o)
        rows.append({"source": r["source"], "target": r["target"], "auroc": auroc(y, s),
                     "balanced_accuracy": balanced_accuracy(y, s, threshold),
                     "collapsed": metrics.collapsed(_decide(s, threshold))})
    return pd.DataFrame(rows)


def matrix(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Sources as rows, targets as columns, in the sets' order."""
    order = list(dict.fromkeys(table["source"]))
    return table.pivot(index="source", columns="target", values=metric).reindex(index=order, columns=order)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as read in a report: value [CI] per metric, the diagonal and collapsed cells named."""
    def cell(r, m, k=1.0, f=".3f"):
        return f"{k * r[m]:{f}} [{k * r[m + '_ci_low']:{f}}, {k * r[m + '_ci_high']:{f}}]"

    return pd.DataFrame({"source (train)": table["source"], "target (test)": table["target"],
                         "within set": np.where(table["diagonal"], "yes (own set; not a bound)", ""),
                         "n train": table["n_train"], "n test": table["n_test"],
                         "left out (tuned on)": table["n_excluded"] if "n_excluded" in table else 0,
                         "AUROC [95% CI]": [cell(r, "auroc") for _, r in table.iterrows()],
                         "balanced acc. (%) [95% CI]": [cell(r, "balanced_accuracy", 100, ".1f")
                                                        for _, r in table.iterrows()],
                         "collapsed": [f"yes (all '{r['predicted_class']}')" if r["collapsed"] else ""
                                       for _, r in table.iterrows()]})


def save_table(table: pd.DataFrame, figures_dir) -> Path:
    """The matrix's table (every number and its predictions file) as 08_source_target.csv beside the figures."""
    return atomic.write_csv(paths.resolve(figures_dir) / "08_source_target.csv", table)
