"""The trainability matrix (thesis 4.4.1, steps 4-6, extended) and stage 05.

Two classifiers, each tested on two sets, on the same samples:
  - trained on real (n per class from the real training pool), tested on the real test pool (TRTR) and
    on held-out synthetic images (TRTS, the thesis's direction b);
  - trained on synthetic (n per class), tested on the real test pool (TSTR, direction a) and on the
    same held-out synthetic images (TSTS).
The real-trained classifier does not depend on the generator: it lives in a stage of its own
(``05_real_baseline``, keyed by data, pools, seed and classifier) and every method reuses it. A third
classifier of the same family learns real from synthetic (detection AUROC). FTER = AUROC(a) / AUROC(b)
as in the thesis; lib.evaluate.metrics adds the chance-aware ratios. Before anything trains, the real test pool
is checked against every training source, the whole synthetic set and the tuning set, on file content.

Stage 05 also measures the synthetic set's fidelity, diversity and memorization (lib.evaluate.fidelity,
lib.evaluate.memorization; ``fidelity`` section) before any classifier trains, so a set too small for a metric
stops the run early. The sets (``fidelity_sets``): the whole synthetic set against the real training
sample (balanced per class like the synthetic set, so the overall metrics do not mix class proportions);
memorization compares each synthetic image's nearest *seen* image with its nearest unseen real image (the
real test sample). Seen is the generator's tuning set where it has one, the no-fine-tune control included
(its base model never saw it: the same comparison as the fine-tuned methods, expected to find nothing);
a reference generator has none, and is compared with the real training sample instead, never the tuning
pool it is drawn from. The features come from ``fidelity.extractor`` (``classifier``: the real baseline's
classifier_real.pt). The flat metrics with their bootstrap CIs join the results record
(``fidelity.<metric>[.<class>]``, ``memorization.<metric>[.<class>]``, each with _ci_low/_ci_high); the
folder keeps fidelity.csv, memorization.csv/.json, the saved features, the pair scores and the montage
05_memorization.png, so every number recomputes (lib.evaluate.fidelity.recompute).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core import atomic, compute, paths, provenance, stages
from . import classifier, estimable, metrics, repeats, results
from ..data import curation, domains, leakage
from ..core.config import Config
from ..data.nih import DataError
from ..generate import manifest

log = logging.getLogger(__name__)
DIRECTIONS = {"a": "train synthetic, test real", "b": "train real, test synthetic", "trtr": "train real, test real",
              "tsts": "train synthetic, test held-out synthetic", "det": "tell real from synthetic",
              "real": "train real (TRTR, TRTS)"}
REAL_STAGE = "05_real_baseline"
SOURCES = ["real", "synthetic"]             # the detector's two classes


# ------------------------------------------------------------------------------------------ inputs
def per_class(df: pd.DataFrame, n: int, seed: int, what: str, classes: list[str] | None = None) -> pd.DataFrame:
    """Exactly n random images of each class from df (an error when a class has fewer)."""
    parts = []
    for i, label in enumerate(classes or domains.order(df["label"])):
        rows = df[df["label"] == label]
        if len(rows) < n:
            raise DataError(f"{what} has {len(rows)} '{label}' image(s) but classifier.n_train_per_class = {n}; "
                            "lower it or enlarge the source (generation.n_per_label / pools.train).")
        parts.append(rows.sample(n=n, random_state=seed + i))
    return pd.concat(parts).reset_index(drop=True)


def test_sample(df: pd.DataFrame, n: int, seed: int, what: str) -> pd.DataFrame:
    """n random images (all of them when the source is smaller, logged)."""
    if len(df) < n:
        log.warning("%s holds %d images, fewer than classifier.n_test = %d; testing on all of them.", what, len(df), n)
        return df.reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def split_synthetic(synthetic: pd.DataFrame, n: int, n_test: int, seed: int, classes: list[str] | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The synthetic training sample (n per class) and up to n_test held-out images (TRTS and TSTS test
    on them). A set that records the patient each image came from (a reference built from real images)
    is split by patient, or a classifier could recognise patients instead of classes; a set whose
    patients cannot be split (collapsed) falls back to an image split, with a warning. Copies (the same file
    content) are one group (lib.evaluate.estimable): no held-out image is a copy of a training image, each is tested
    once, and a set whose copies leave too few unique held-out images splits anyway, its held-out cells then
    recorded as not estimable."""
    if "patient" in synthetic and synthetic["patient"].notna().all():
        try:
            train = per_class_by_group(synthetic, n, seed, "patient", classes)
            return train, held_out(synthetic, train, n_test, seed + 1, "patient", classes)
        except DataError as exc:
            log.warning("the synthetic set cannot be split by patient (%s); splitting by image instead.", exc)
    if estimable.has_copies(synthetic):     # by content: the copies of one image are one group
        keyed = synthetic.assign(_content=estimable.content(synthetic))
        train = per_class_by_group(keyed, n, seed, "_content", classes)
        test = held_out(keyed, train, n_test, seed + 1, "_content", classes, strict=False)
        return train.drop(columns="_content"), test.drop(columns="_content")
    train = per_class(synthetic, n, seed, "the synthetic set", classes)
    return train, held_out(synthetic, train, n_test, seed + 1, classes=classes)


def per_class_by_group(df: pd.DataFrame, n: int, seed: int, group: str, classes: list[str] | None = None
                       ) -> pd.DataFrame:
    """n images per class drawn from whole groups taken in random order (the rest of the last groups is
    dropped, never tested on)."""
    order = pd.Series(np.random.default_rng(seed).permutation(df[group].astype(str).unique()))
    classes = classes or domains.order(df["label"])
    counts = pd.crosstab(df[group].astype(str), df["label"]).reindex(order).cumsum()
    enough = (counts.reindex(columns=classes, fill_value=0) >= n).all(axis=1)
    if not enough.any():
        raise DataError(f"the synthetic set's {group}s cannot give {n} images of every class.")
    used = set(order.iloc[: int(np.argmax(enough.to_numpy())) + 1])
    return per_class(df[df[group].astype(str).isin(used)], n, seed, "the synthetic set", classes)


def held_out(synthetic: pd.DataFrame, train: pd.DataFrame, n: int, seed: int, group: str = "image_id",
             classes: list[str] | None = None, strict: bool = True) -> pd.DataFrame:
    """Up to n synthetic images the synthetic-trained classifier never saw, nor any image of their group, nor a copy
    of one, each content once. ``strict``: a class with fewer than 2 is an error; else they are returned all the
    same (lib.evaluate.estimable.note says why their cells cannot be estimated)."""
    seen = set(synthetic.loc[synthetic["image_id"].isin(train["image_id"]), group].astype(str))
    rest = estimable.unique_unseen(synthetic[~synthetic[group].astype(str).isin(seen)], train)
    short = [lab for lab in classes or domains.order(synthetic["label"]) if (rest["label"] == lab).sum() < 2]
    if short and strict:
        raise DataError(f"after the {len(train)} synthetic training images, class(es) {short} keep fewer than 2 "
                        "held-out images to test on; generation.n_per_label must exceed classifier.n_train_per_class.")
    return test_sample(rest, n, seed, "the held-out synthetic set")


def tuning_set(cfg: Config, runs_root) -> tuple[pd.DataFrame | None, str]:
    """The generator's tuning-set manifest (stage 02), or None for the no-fine-tune control and references."""
    from ..generate import references

    if references.is_reference(cfg):
        return None, f"none (reference generator {cfg.generation.kind!r})"
    try:
        d02 = stages.require(cfg, "02_clustering", runs_root)
    except FileNotFoundError:
        if cfg.finetune.control == "no-fine-tune":
            return None, "none (no-fine-tune control)"
        raise
    path = d02 / f"tuning_{cfg.finetune.method}.csv"
    if not path.exists():
        if cfg.finetune.control == "no-fine-tune":
            return None, "none (no-fine-tune control)"
        raise FileNotFoundError(f"tuning set {path} not found; stage 02 writes tuning_<method>.csv for each "
                                f"selection method, and finetune.method = {cfg.finetune.method!r}.")
    return pd.read_csv(path, dtype={"patient": str}), str(stages.paths_rel(path))


# ------------------------------------------------------------------------------------ classifiers
def _targets(df: pd.DataFrame, classes: list[str] | None) -> pd.DataFrame:
    """The manifest a classifier learns from: the detector's classes are the image's source, not its label."""
    return df.assign(label=df["source"]) if classes == SOURCES else df


def _fit(key: str, train_df: pd.DataFrame, cfg: Config, out_dir: Path, seed: int, progress: bool,
         classes: list[str] | None = None, repeat: int = 0):
    """Train (or, on a resumed run, load) one classifier; its record is direction_<key>.json, its training
    history history_<key>.csv (rewritten after every epoch, so the curves can be read while it trains).
    ``repeat`` > 0: another of classifier.repeats, with its own seed, validation split and files (lib.evaluate.repeats)."""
    c, dev = cfg.classifier, compute.device()
    classes = classes or domains.classes(cfg)
    tag = repeats.name(key, repeat)
    weights, info_path = out_dir / f"classifier_{tag}.pt", out_dir / f"direction_{tag}.json"
    if weights.exists() and info_path.exists():
        model = classifier.build(c, len(classes)).to(dev)
        model.load_state_dict(torch.load(weights, map_location=dev))
        return model, json.loads(info_path.read_text())
    data = classifier.TensorSet.from_manifest(_targets(train_df, classes), c.input_size, dev, classes)
    fit = classifier.train(data, c, classifier.repeat_seed(seed, repeat), progress, desc=f"({tag}) {DIRECTIONS[key]}",
                           n_classes=len(classes),
                           history_path=out_dir / f"history_{tag}.csv")
    info = {"n_train": fit.n_train, "n_val": fit.n_val, "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
            "stopped_early": fit.stopped_early, "train_seconds": round(fit.seconds, 2),
            "classifier_hash": classifier.model_hash(fit.model), "history": fit.history.to_dict("list")}
    atomic.save_torch(weights, fit.model.state_dict())
    atomic.write_json(info_path, info)
    return fit.model, info


def _predict(model, test_df: pd.DataFrame, cfg: Config, path: Path, frame=results.predictions_frame,
             classes: list[str] | None = None) -> None:
    """Write a predictions file unless a resumed run already has it."""
    if path.exists():
        return
    classes = classes or domains.classes(cfg)
    if len(test_df) == 0:           # a held-out set its copies emptied (lib.evaluate.estimable): nothing to predict
        outputs = np.zeros((0, len(classes)))
    else:
        outputs = classifier.predict_outputs(model, classifier.TensorSet.from_manifest(
            _targets(test_df, classes), cfg.classifier.input_size, compute.device(), classes))
    atomic.write_csv(path, frame(test_df, outputs) if classes == SOURCES else frame(test_df, outputs, classes))


def _real_baseline(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> None:
    """The generator-independent half of the matrix: train on real, predict the real test pool (TRTR)."""
    out_dir, c = Path(out_dir), cfg.classifier
    pools = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))
    train = per_class(pools["train"], c.n_train_per_class, cfg.seed, "the real training pool", domains.classes(cfg))
    test = test_sample(pools["test"], c.n_test, cfg.seed, "the real test pool")
    leakage.check_content(test, {"the real training sample": train})
    atomic.write_csv(out_dir / "train_real.csv", train)
    atomic.write_csv(out_dir / "test_real.csv", test)
    n = repeats.count(cfg)
    with compute.cpu_threads(c.cpu_threads):
        for r in range(n):
            model, _ = _fit("real", train, cfg, out_dir, cfg.seed + 1, progress, repeat=r)
            _predict(model, test, cfg, repeats.predictions_path(out_dir, "trtr", r, n))
    if n > 1:
        _average_predictions(out_dir, "trtr", n, domains.classes(cfg))


def real_baseline(cfg: Config, runs_root="runs", progress: bool = True) -> Path:
    """The real-trained classifier's stage folder, built once per data, pools, seed and classifier."""
    lock = stages.stage_dir(cfg, REAL_STAGE, runs_root).with_suffix(".lock")
    # parallel sweep points share it: build it once
    with atomic.exclusive(lock, what="the real-baseline classifier another sweep point is training"):
        return stages.run_stage(cfg, REAL_STAGE, _real_baseline, runs_root, progress=progress)


def detection_sets(train_real, train_syn, test_real, test_syn, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Balanced real-vs-synthetic sets: half of each training sample per class (so the detector trains on
    as many images as the other classifiers), and as many real as synthetic test images."""
    def half(df):
        return pd.concat([g.iloc[: max(1, len(g) // 2)] for _, g in df.groupby("label", sort=True)])

    m = min(len(test_real), len(test_syn))
    train = pd.concat([half(train_real).assign(source="real"), half(train_syn).assign(source="synthetic")])
    test = pd.concat([test_real.sample(n=m, random_state=seed).assign(source="real"),
                      test_syn.sample(n=m, random_state=seed).assign(source="synthetic")])
    cols = ["image_id", "path", "label", "source"]
    patients = ["patient"] if "patient" in train else []     # the detector's validation split keeps patients whole
    return train[cols + patients].reset_index(drop=True), test[cols].reset_index(drop=True)


def _generator_record(d04: Path) -> dict:
    p = d04 / "generation_summary.json"
    return json.loads(p.read_text()) if p.exists() else {}


# ------------------------------------------------------------------------------------------ stage 05
def _samples(cfg: Config, runs_root, progress: bool) -> dict:
    """Every sample the matrix uses, after the leakage check on file content."""
    c = cfg.classifier
    d01, d04 = stages.require(cfg, "01_data_curation", runs_root), stages.require(cfg, "04_generation", runs_root)
    pools = curation.load_pools(d01)
    classes = domains.classes(cfg)
    synthetic = manifest.read_synthetic(d04 / "manifest.csv", classes)
    tuning, tuning_src = tuning_set(cfg, runs_root)
    dr = real_baseline(cfg, runs_root, progress)
    s = {"train_b": pd.read_csv(dr / "train_real.csv", dtype={"patient": str}),
         "test_a": pd.read_csv(dr / "test_real.csv", dtype={"patient": str})}
    s["train_a"], s["test_b"] = split_synthetic(synthetic, c.n_train_per_class, c.n_test, cfg.seed, classes)
    sources = {"the real training pool": pools["train"], "the synthetic set": synthetic}
    if tuning is not None:
        sources[f"the generator's tuning set ({tuning_src})"] = tuning
    # every real test file against every training source, by image id, patient and file bytes
    leakage.check_content(pools["test"], {**sources, "the real training sample": s["train_b"]})
    if cfg.generation.kind == "folder":     # an imported set may hold near-copies of real test images
        leakage.check_near_duplicates(pools["test"], synthetic, "the imported folder",
                                      stages.stage_dir(cfg, "05_classifier", runs_root) / "near_duplicates.png",
                                      cfg.data.near_duplicates, reference=pools["train"])
    s["train_det"], s["test_det"] = detection_sets(s["train_b"], s["train_a"], s["test_a"], s["test_b"], cfg.seed)
    s.update(synthetic=synthetic, tuning=tuning, d04=d04, real_dir=dr)
    return s


def run(cfg: Config, out_dir: str | Path, runs_root: str | Path = "runs", progress: bool = True) -> dict:
    """Stage 05: leakage check, the trainability matrix, detection, ratios, the results record."""
    out_dir, c = Path(out_dir), cfg.classifier
    s = _samples(cfg, runs_root, progress)
    for name in ("train_a", "test_a", "train_b", "test_b", "train_det", "test_det"):
        atomic.write_csv(out_dir / f"{name}.csv", s[name])
    fid = fidelity_record(cfg, s, out_dir, progress)
    with compute.cpu_threads(c.cpu_threads):
        info_a, info_b = _matrix_classifiers(cfg, s, out_dir, progress)
        det, info_det = _fit("det", s["train_det"], cfg, out_dir, cfg.seed + 2, progress, SOURCES)
        _predict(det, s["test_det"], cfg, out_dir / "predictions_det.csv", results.detection_frame, SOURCES)
    row = _record(cfg, s, {"a": info_a, "b": info_b, "det": info_det})
    n, classes = repeats.count(cfg), domains.classes(cfg)
    if n == 1:
        row.update(metrics.matrix(results.cells_from(out_dir), c.threshold, c.bootstrap, row["bootstrap_seed"],
                                  detection=results.detection_from(out_dir), classes=classes))
    else:       # the mean of the repeats' estimates (lib.evaluate.repeats)
        row.update(repeats.matrix([results.cells_from(out_dir, repeats.suffix(r, n)) for r in range(n)], c.threshold,
                                  c.bootstrap, row["bootstrap_seed"], results.detection_from(out_dir), classes))
    row.update(fid)
    if (why := estimable.note(s["test_b"], classes)) is not None:      # too few unique held-out images
        row = estimable.mask(row, why)
    return _write_checked(out_dir, row)


def _matrix_classifiers(cfg: Config, s: dict, out_dir: Path, progress: bool) -> tuple[dict, dict]:
    """Direction a's classifier (TSTR, TSTS) and the real baseline's (TRTS; its TRTR copied), each of the
    classifier.repeats repeats predicting its own files, averaged per image when there are several."""
    n, info_a, info_b = repeats.count(cfg), [], []
    for r in range(n):
        model_a, info = _fit("a", s["train_a"], cfg, out_dir, cfg.seed, progress, repeat=r)
        info_a.append(info)
        _predict(model_a, s["test_a"], cfg, repeats.predictions_path(out_dir, "a", r, n))
        _predict(model_a, s["test_b"], cfg, repeats.predictions_path(out_dir, "tsts", r, n))
        model_b, info = _fit("real", None, cfg, s["real_dir"], cfg.seed + 1, progress, repeat=r)
        info_b.append(info)
        _predict(model_b, s["test_b"], cfg, repeats.predictions_path(out_dir, "b", r, n))
        trtr = repeats.predictions_path(s["real_dir"], "trtr", r, n)
        shutil.copyfile(trtr, out_dir / trtr.name)
    if n > 1:
        shutil.copyfile(s["real_dir"] / "predictions_trtr.csv", out_dir / "predictions_trtr.csv")
        for cell in ("a", "tsts", "b"):
            _average_predictions(out_dir, cell, n, domains.classes(cfg))
    return repeats.infos(info_a), repeats.infos(info_b)


def _average_predictions(out_dir: Path, cell: str, n: int, classes: list[str]) -> Path:
    """predictions_<cell>.csv with R > 1: the mean output per test image over the repeats' files, for readers that
    need one set of predictions (the record averages the repeats' estimates instead: lib.evaluate.repeats)."""
    path = Path(out_dir) / f"predictions_{cell}.csv"
    if path.exists():
        return path
    frames = [pd.read_csv(repeats.predictions_path(out_dir, cell, r, n)) for r in range(n)]
    if any(not f["image_id"].equals(frames[0]["image_id"]) for f in frames[1:]):
        raise DataError(f"the repeats' predictions_{cell}_r*.csv in {out_dir} answer different test images; delete "
                        "the stage folder and run it again.")
    cols = results.output_columns(classes)
    mean = np.mean([f[cols].to_numpy(np.float64) for f in frames], axis=0)
    return atomic.write_csv(path, results.predictions_frame(frames[0], mean, classes))


FIDELITY_RECORD = "fidelity_record.json"


def fidelity_sets(s: dict) -> tuple[dict[str, pd.DataFrame], str]:
    """What the fidelity metrics compare (see the module's docstring): synthetic, real, seen, holdout; and
    what the seen set is."""
    if s["tuning"] is not None:
        seen, what = s["tuning"], "tuning set"
    else:
        seen, what = s["train_b"], "real training sample (no tuning set)"
    return {"synthetic": s["synthetic"], "real": s["train_b"], "seen": seen, "holdout": s["test_a"]}, what


def fidelity_record(cfg: Config, s: dict, out_dir: Path, progress: bool = False) -> dict:
    """Fidelity, diversity and memorization of the synthetic set (lib.evaluate.fidelity.run) as flat record fields;
    written once to fidelity_record.json (a resumed run reuses it), with the seconds it took beside it."""
    from threadpoolctl import threadpool_limits

    from . import fidelity

    path = Path(out_dir) / FIDELITY_RECORD
    if path.exists():
        return json.loads(path.read_text())["record"]
    sets, seen = fidelity_sets(s)
    start = time.perf_counter()
    with compute.cpu_threads(cfg.classifier.cpu_threads), threadpool_limits(cfg.classifier.cpu_threads):
        record = fidelity.run(cfg, out_dir, sets["synthetic"], sets["real"], sets["seen"], sets["holdout"],
                              classifier_weights=s["real_dir"] / "classifier_real.pt", figure_name="05_memorization",
                              progress=progress)
    record["memorization.seen"] = seen
    seconds = round(time.perf_counter() - start, 2)
    log.info("fidelity, diversity and memorization: %.1f s", seconds)
    atomic.write_json(path, {"record": record, "seconds": seconds})
    return record


def _record(cfg: Config, s: dict, infos: dict) -> dict:
    """The bookkeeping half of the row: what ran, on which data, with which code and generator."""
    row = {"experiment": cfg.experiment, "method": results.method_name(cfg), "tuning_method": cfg.finetune.method,
           "generator_kind": cfg.generation.kind,
           "tuning_per_label": 0 if cfg.generation.kind != "diffusion" else cfg.selection.per_label,  # references: none
           "tuning_size": None if s["tuning"] is None else len(s["tuning"]), "seed": cfg.seed,
           "bootstrap_seed": cfg.seed, "real_baseline": stages.paths_rel(s["real_dir"])}
    for k, v in infos.items():
        row.update({f"{k}_{f}": v[f] for f in ("n_train", "n_val", "epochs_run", "best_epoch", "stopped_early",
                                               "train_seconds", "classifier_hash")})
    gen = _generator_record(s["d04"])
    row.update({f"data_hash_{k}": data_hash(s[k]) for k in ("train_a", "test_a", "train_b", "test_b")})
    row.update({"data_hash_synthetic": data_hash(s["synthetic"]), "generator_model": gen.get("model"),
                "generator_hash": gen.get("model_hash"), "code_version": provenance.code_version()})
    row.update(flatten_params(cfg))
    return row


def data_hash(df: pd.DataFrame) -> str:
    """A set's identity: the bytes of its files (lib.data.leakage.file_hashes, cached), never a manifest's ``hash``
    column, which says what the files were when it was written. Equal to the hash of that column while the
    files still match it."""
    return provenance.hash_strings(leakage.file_hashes(df["path"].tolist()))


def _write_checked(out_dir: Path, row: dict) -> dict:
    """Write the record; a record left by an earlier attempt is kept only if it is this one."""
    old = out_dir / "results.json"
    if old.exists():
        before = results.read(out_dir)
        differ = [k for k, v in row.items() if k not in ("code_version",) and not _same(before.get(k), v)]
        if differ:
            raise atomic.ResultExistsError(
                f"{old} differs from the record recomputed now ({differ[:5]}); it was not sealed (no DONE.json). "
                "Delete the folder to recompute it, or restore the inputs it was made from.")
        return before
    results.write(out_dir, row)
    return row


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (np.isnan(a) and np.isnan(b)) or a == b
    return a == b or str(a) == str(b)


def flatten_params(cfg: Config) -> dict:
    row = results.flatten(cfg.to_dict(), "param.")
    if row["param.classifier.repeats"] == 1:      # one classifier: the record as before the field existed
        row.pop("param.classifier.repeats")
    return row


def load(stage_dir: str | Path) -> dict:
    """What notebook 05 shows: the row, the predictions and the training histories."""
    stage_dir = Path(stage_dir)
    out = {"row": results.read(stage_dir)}
    for k in ("a", "b", "trtr", "tsts", "det"):
        out[f"pred_{k}"] = pd.read_csv(stage_dir / f"predictions_{k}.csv")
    for k in ("a", "det"):
        out[f"info_{k}"] = json.loads((stage_dir / f"direction_{k}.json").read_text())
    out["info_b"] = json.loads((paths.resolve(out["row"]["real_baseline"]) / "direction_real.json").read_text())
    return out
