"""The tuning-set-only baseline (issue 23, item 5): does the generator add anything to the images it was tuned on?

For each diffusion run, direction a's classifier as stage 05 trains it (lib.evaluate.evaluation._fit: the run's
classifier section, its seed, classifier.repeats with their repeat seeds and validation splits) is trained on the run's
own tuning set, the real images stage 02 selected and the generator was fine-tuned on (for the no-fine-tune control,
the set it would have been tuned on), and tested on the run's real test sample (``test_a.csv``: the rows of AUROC(a) and
TRTR). Per run: AUROC(tuning-only) (with R > 1 the mean of the repeats' AUROCs, as the record averages AUROC(a)), on
TR's scale TR(tuning-only) = (AUROC_tun - .5) / (AUROC_TRTR - .5) with the record's TRTR, and the **generator gain**
TR - TR(tuning-only): above 0 when the synthetic set trains better than the images it was made from. Reference
generators have no tuning set: NaN. Seed means with t-intervals over seeds (lib.analyze.power, none below 3 seeds).

Computed at analysis time and cached like the permutation null (lib.analyze.permutation), never in a stage-05 folder:
``stages/06_tuning_only-<key>/`` beside the run's stage folders, the key a hash of what the classifiers read (the tuning
file's and the test sample's bytes, the classifier section, the seed, the classes), so the runs that share a tuning set
and a test sample (a method, its gated run and its controls at one seed) share one cache. The classifiers are written
as stage 05 writes them (a resumed computation trains only what is missing); ``result.json`` comes last and is never
overwritten. The tuning set is found through the stage-05 folder's record of what it read (DONE.json ``inputs``: the
stage-02 folder and the hash of its ``tuning_<method>.csv``), so the rows are those stage 05 saw; a file changed since
is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, compute, config, provenance, stages
from ..data import curation, domains, leakage
from ..data.nih import DataError
from ..evaluate import evaluation, repeats, results
from . import power
from .collection import GROUP
from .permutation import run_config

STAGE = "06_tuning_only"
# Duplicates of the selection are dropped: they add no image the generator did not see once (they only weight its
# fine-tuning batches), the baseline asks what the distinct real images alone train, and a split by image (classifier
# version 1) could put one image on both sides of the validation split. Named in the cache key: another rule, other
# folders.
ROWS = "stage-02 selection, one row per image_id"
METRICS = ("auroc_tun", "tr_tun", "generator_gain")      # per run; tables.TUNING_ONLY_COLUMNS names them


# ------------------------------------------------------------------------------------------ inputs
def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient": str, "image_id": str})


def recorded_inputs(results_dir) -> dict:
    """What a sealed stage-05 folder recorded it read (upstream stage folders and their files' hashes); {} unsealed."""
    done = Path(results_dir) / "DONE.json"
    return json.loads(done.read_text()).get("inputs", {}) if done.exists() else {}


def tuning_rows(results_dir, cfg) -> tuple[pd.DataFrame | None, Path | str]:
    """(the rows the tuning-only classifier trains on, the file they come from), or (None, why there are none)."""
    if cfg.generation.kind != "diffusion":
        return None, f"reference generator {cfg.generation.kind!r}: no tuning set"
    d02 = recorded_inputs(results_dir).get("02_clustering")
    if not d02:
        return None, f"{Path(results_dir).name} recorded no stage-02 folder (unsealed, or no selection)"
    name = f"tuning_{cfg.finetune.method}.csv"
    path, recorded = Path(results_dir).parent / d02["dir"] / name, d02.get("files", {}).get(name)
    if recorded is None or not path.exists():
        return None, f"no {name} in {d02['dir']}"
    if provenance.file_hash(path) != recorded:
        raise stages.StageChanged(f"{path} changed after {Path(results_dir).name} was evaluated on it; restore it, "
                                  "or rerun stages 02-05 for this run.")
    return _read(path).drop_duplicates("image_id").reset_index(drop=True), path


def test_pool(results_dir) -> pd.DataFrame:
    """The real test pool (stage 01's test.csv) stage 05 read."""
    d01 = recorded_inputs(results_dir).get("01_data_curation")
    if not d01 or not (Path(results_dir).parent / d01["dir"] / "test.csv").exists():
        raise DataError(f"{Path(results_dir).name}/DONE.json names no stage-01 folder with a test.csv; the tuning-only "
                        "classifier is checked against the real test pool before it trains.")
    return curation.read_manifest(Path(results_dir).parent / d01["dir"] / "test.csv")


def assert_disjoint(train: pd.DataFrame, pool: pd.DataFrame, test: pd.DataFrame, what: str) -> None:
    """Refuse unless the training rows share no patient and no image id with the real test pool (the rows tested on
    included), and no file bytes with the rows tested on."""
    for col in ("patient", "image_id"):
        if col not in train:
            raise DataError(f"{what} has no '{col}' column; the tuning-only baseline checks it against the test pool.")
        seen = set(pool.get(col, pd.Series(dtype=str)).dropna().astype(str)) | \
            set(test.get(col, pd.Series(dtype=str)).dropna().astype(str))
        shared = sorted(set(train[col].dropna().astype(str)) & seen)
        if shared:
            raise leakage.LeakageError(f"refusing to train the tuning-only baseline: {what} shares {len(shared)} "
                                       f"{col} value(s) with the real test pool, e.g. {shared[:5]}.")
    leakage.check_content(test, {what: train})


def classifier_version() -> int:
    return getattr(stages, "SECTION_VERSIONS", {}).get("classifier", 1)


def cache_key(tuning_file, test_file, cfg, classes: list[str]) -> str:
    """What the classifiers read: the files' bytes, the classifier section (and its code version where the stage keys
    have one above 1: the same classifier trained another way is another result), the seed, the classes."""
    inputs = {"tuning": provenance.file_hash(tuning_file), "test": provenance.file_hash(test_file),
              "classifier": cfg.to_dict()["classifier"], "seed": cfg.seed, "classes": classes, "rows": ROWS}
    version = classifier_version()
    if version != 1:
        inputs["classifier_version"] = version
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------- training
def compute_run(results_dir, cache_dir=None, progress: bool = False, cfg=None) -> dict:
    """The tuning-only result of one stage-05 folder (trained once, then read back); {"why": ...} without a tuning
    set. ``cache_dir``: the folder holding the 06_tuning_only-* folders (default: the run's own stages folder);
    ``cfg``: the run's configuration (default: its results record's)."""
    d = Path(results_dir)
    cfg = cfg or run_config(d)
    train, path = tuning_rows(d, cfg)
    if train is None:
        return {"why": path}
    classes, test, source = domains.classes(cfg), _read(d / "test_a.csv"), stages.paths_rel(path)
    out = Path(cache_dir or d.parent) / f"{STAGE}-{cache_key(path, d / 'test_a.csv', cfg, classes)}"
    done = out / "result.json"
    if not done.exists():
        assert_disjoint(train, test_pool(d), test, f"the tuning set ({source})")
        with atomic.exclusive(out.with_suffix(".lock"), what="the tuning-only classifier another process trains"):
            if not done.exists():
                _train(cfg, train, test, out, source, progress)
    return json.loads(done.read_text())


def _train(cfg, train: pd.DataFrame, test: pd.DataFrame, out: Path, source: str, progress: bool) -> dict:
    """classifier.repeats classifiers as stage 05 trains direction a, each predicting the test rows; result.json
    last."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.clean_stale(out)
    if not (out / "train_tun.csv").exists():
        atomic.write_csv(out / "train_tun.csv", train)
    n, infos, aurocs = repeats.count(cfg), [], []
    with compute.cpu_threads(cfg.classifier.cpu_threads):
        for r in range(n):
            model, info = evaluation._fit("a", train, cfg, out, cfg.seed, progress, repeat=r)
            infos.append(info)
            path = repeats.predictions_path(out, "tun", r, n)
            evaluation._predict(model, test, cfg, path)
            aurocs.append(auroc_of_predictions(path))
    rec = {"auroc_tun": float(np.mean(aurocs)), "auroc_tun_repeats": aurocs, "n_train": int(len(train)),
           "n_per_class": train["label"].value_counts().to_dict(), "tuning_file": source,
           "train_ids": provenance.hash_strings(train["image_id"]),
           "test_ids": provenance.hash_strings(test["image_id"]),
           "seed": cfg.seed, "repeats": n, "rows": ROWS,
           "classifier_version": classifier_version(), "epochs_run": [i["epochs_run"] for i in infos],
           "train_seconds": round(sum(i["train_seconds"] for i in infos), 2), "code_version": provenance.code_version()}
    atomic.write_json(out / "result.json", rec, overwrite=False)
    return rec


def auroc_of_predictions(path) -> float:
    """The overall AUROC of a predictions file, as the record computes AUROC(a) (lib.evaluate.repeats.auroc_of)."""
    pred = pd.read_csv(path)
    classes = results.classes_of(pred)
    y = pred["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    return float(repeats.auroc_of(y, pred[results.output_columns(classes)].to_numpy(np.float64)))


# ----------------------------------------------------------------------------------------- analysis
def per_run(records: pd.DataFrame, cache_dir=None, progress: bool = False) -> pd.DataFrame:
    """One row per record: AUROC(tuning-only), TR(tuning-only) and the generator gain (NaN where the run has no tuning
    set, ``why`` saying so, or where the record's TR is undefined); trains what is not cached."""
    rows = []
    for _, r in records.iterrows():
        res = compute_run(r["results_dir"], cache_dir, progress, config.from_dict(r["params"]))
        a, trtr, tr = res.get("auroc_tun", math.nan), float(r.get("auroc_trtr", math.nan)), float(r.get("tr", math.nan))
        tr_tun = (a - 0.5) / (trtr - 0.5) if np.isfinite(tr) and np.isfinite(a) else math.nan   # TR's own rule
        rows.append({**{k: r[k] for k in GROUP}, "seed": r["seed"], "results_dir": r["results_dir"], "auroc_tun": a,
                     "tr_tun": tr_tun, "tr": tr, "generator_gain": tr - tr_tun, "n_tuning": res.get("n_train"),
                     "why": res.get("why", "")})
    return pd.DataFrame(rows, columns=GROUP + ["seed", "results_dir", *METRICS, "tr", "n_tuning", "why"])


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method, tuning size and setting: each of METRICS as the seed mean, s.d. and t-interval over seeds (the
    summary's column names: ``<metric>_mean``, ``_std``, ``_t_low``, ``_t_high``, ``_n``)."""
    rows = []
    for key, g in runs.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key))
        for m in METRICS:
            t = power.seed_interval(g[m].astype(float).to_numpy())
            row.update({f"{m}_mean": t["mean"], f"{m}_std": t["sd"], f"{m}_t_low": t["low"], f"{m}_t_high": t["high"],
                        f"{m}_n": t["n"]})
        rows.append(row)
    return pd.DataFrame(rows, columns=GROUP + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "t_low", "t_high",
                                                                                       "n")])


def add(s: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The seed summary (lib.analyze.aggregate.summary) with the tuning-only columns beside it, same rows in order;
    lib.analyze.tables.fter_table shows them next to TR."""
    if s.empty:
        return s
    extra = summary(runs)
    return s.drop(columns=[c for c in extra.columns if c not in GROUP and c in s]).merge(extra, on=GROUP, how="left")
