"""External tuning sets (the thesis's Experiment 5): any folder of unlabelled images, pseudo-labelled.

The thesis fine-tuned on real textbook images labelled by a CheXNet trained on 90% of NIH. Selection method
``external`` does the same with ``selection.external_dir``: every image of the folder (and its sub-folders)
is labelled by a classifier of ``classifier.arch`` trained in stage 02 on the whole real training pool (the
share of the data that trains classifiers; never the test pool, nor the tuning pool the references draw
from). It is trained here rather than reusing stage 05's real baseline on purpose: that baseline later
judges the synthetic images (TRTS, direction b), and a generator tuned on images *it* labelled would be
scored by the very classifier that defined its labels. This labeller has a seed of its own (run seed + 2)
and the whole training pool, not the baseline's sample, so it is another classifier, though of the same
family and data (its pseudo-labels and the baseline's judgements are not independent; say so when
comparing direction b across methods).

Each image's pseudo-label is the class of the largest normalised output (the run's classes,
lib.data.domains.classes), its confidence that output: for the thesis's two classes
p(Unhealthy) / (p(No Finding) + p(Unhealthy)) or one minus it, in [0.5, 1]; with k classes in [1/k, 1], so
a threshold of 0.5 already drops the least certain images. Images below ``selection.pseudo_label_threshold``
are dropped; a class left empty is an error. Then ``selection.per_label``
images per class are drawn as for ``random`` (duplicates where a class is short), so every method tunes on
the same number of images. Before the labeller trains, every external file is compared with the real test
pool (lib.data.leakage): by its bytes, and by its look, so that a re-encoded or resized copy of a test image is
refused too (``near_duplicates.png``/``.csv`` name the pairs; ``data.near_duplicates: warn`` only warns); stage 05
checks the tuning set's bytes again like any other.

Stage-02 artefacts: ``labeller.pt`` / ``labeller.json`` / ``labeller_history.csv``, ``external_labels.csv`` (every
image: pseudo-label, confidence, kept) and ``tuning_external.csv`` (with each row's ``confidence``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core import atomic, compute, fingerprints, paths, stages
from ..evaluate import classifier, metrics
from ..data import curation, domains, images, leakage
from ..core.config import Config
from ..data.images import IMAGE_SUFFIXES, is_image
from ..data.nih import DataError

log = logging.getLogger(__name__)
LABELLER_SEED_OFFSET = 2             # the real baseline trains with seed + 1: another classifier
SHOW = 5


# -------------------------------------------------------------------------------------- the folder
def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def folder_fingerprint(folder: str | None) -> str:
    """Names, sizes and mtimes of the folder's images (cheap: no file is read), for stage 02's key."""
    root = paths.resolve(folder) if folder else None
    if root is None or not root.is_dir():
        return "missing"
    h = hashlib.sha256()
    for p in _files(root):
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def key_fingerprint(cfg: Config) -> str:
    return folder_fingerprint(cfg.selection.external_dir)


# Stage 02's key holds the folder's fingerprint, and the classifier section: the pseudo-labeller trains there.
fingerprints.register_selection("external", key_fingerprint, ("classifier",))


def scan(folder: str | None) -> pd.DataFrame:
    """Every image of the folder as a manifest (image_id, path, hash), each one decoded once; a missing
    folder, one with no image or corrupt images are errors that say what to fix."""
    if not folder:
        raise DataError("selection method 'external' needs selection.external_dir: a folder of unlabelled images.")
    root = paths.resolve(folder)
    if not root.is_dir():
        raise DataError(f"selection.external_dir {root} does not exist or is not a folder; give the folder of "
                        f"unlabelled images (e.g. textbook cases) to pseudo-label.")
    files = _files(root)
    if not files:
        raise DataError(f"selection.external_dir {root} holds no image ({', '.join(IMAGE_SUFFIXES)}, sub-folders "
                        "included); put the images there.")
    hashes = [images.check_and_hash(p) for p in files]
    bad = [str(p) for p, h in zip(files, hashes) if h is None]
    if bad:
        raise DataError(f"selection.external_dir {root}: {len(bad)} of {len(files)} file(s) cannot be read as "
                        f"images, e.g. {bad[:SHOW]}; remove or replace them.")
    return pd.DataFrame({"image_id": [f"external/{p.relative_to(root).as_posix()}" for p in files],
                         "path": [str(p.resolve()) for p in files], "hash": hashes,
                         "patient": pd.Series([None] * len(files), dtype=object)})


# ------------------------------------------------------------------------------------- the labeller
def labeller(cfg: Config, out_dir: Path, train_pool: pd.DataFrame, progress: bool = True):
    """The pseudo-labeller: classifier.arch trained on the whole real training pool (once; then loaded), one
    output per class of the run."""
    c, dev, classes = cfg.classifier, compute.device(), domains.classes(cfg)
    weights, info = out_dir / "labeller.pt", out_dir / "labeller.json"
    if weights.exists() and info.exists():
        model = classifier.build(c, len(classes)).to(dev)
        model.load_state_dict(torch.load(weights, map_location=dev))
        return model
    with compute.cpu_threads(c.cpu_threads):
        data = classifier.TensorSet.from_manifest(train_pool, c.input_size, dev, classes)
        fit = classifier.train(data, c, cfg.seed + LABELLER_SEED_OFFSET, progress, desc="pseudo-labeller",
                               n_classes=len(classes), history_path=out_dir / "labeller_history.csv")
    atomic.save_torch(weights, fit.model.state_dict())
    atomic.write_json(info, {"trained_on": "the real training pool (stage 01 train.csv)", "n_train": fit.n_train,
                             "n_val": fit.n_val, "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
                             "seed": cfg.seed + LABELLER_SEED_OFFSET, "arch": c.arch,
                             "classifier_hash": classifier.model_hash(fit.model)})
    return fit.model


def pseudo_labels(outputs: np.ndarray, threshold: float, classes: list[str] | None = None) -> pd.DataFrame:
    """label (the largest normalised output), confidence (that output), score and kept. Two classes: the
    score is P(class 1) and the confidence max(score, 1 - score), in [0.5, 1]; more: the score is the
    confidence, in [1/k, 1] (as in a predictions file, lib.evaluate.results)."""
    names = metrics.class_names(np.shape(outputs)[1], classes)
    if len(names) == 2:
        s = metrics.score_of(outputs)
        label, conf = np.where(s >= 0.5, names[1], names[0]), np.maximum(s, 1 - s)
    else:
        p = metrics.probabilities(outputs)
        label, conf = np.asarray(names)[p.argmax(1)], p.max(1)
        s = conf
    return pd.DataFrame({"label": label, "confidence": conf, "score": s, "kept": conf >= threshold})


def _classes(labelled: pd.DataFrame, classes: list[str] | None) -> list[str]:
    """The run's classes when given, else the order the labels give (lib.data.domains.order)."""
    return list(classes) if classes is not None else domains.order(labelled["label"])


def check_classes(labelled: pd.DataFrame, threshold: float, folder, classes: list[str] | None = None
                  ) -> pd.DataFrame:
    """The confident images; an error naming the counts when one of the run's classes has none."""
    kept, classes = labelled[labelled["kept"]], _classes(labelled, classes)
    empty = [lab for lab in classes if not (kept["label"] == lab).any()]
    if empty:
        counts = {lab: int((labelled["label"] == lab).sum()) for lab in classes}
        top = {lab: float(labelled.loc[labelled["label"] == lab, "confidence"].max())
               if counts[lab] else None for lab in classes}
        raise DataError(f"selection.external_dir {folder}: after dropping pseudo-labels below "
                        f"selection.pseudo_label_threshold = {threshold}, class(es) {empty} hold no image (labelled "
                        f"before the threshold: {counts}; highest confidence per class: {top}). Lower the threshold "
                        "or add images of that class; a tuning set needs every class.")
    return kept.reset_index(drop=True)


def candidates(cfg: Config, out_dir, runs_root, progress: bool = True) -> pd.DataFrame:
    """The confident external images, pseudo-labelled (stage 02 draws the tuning set from them, lib.tuningset.selection);
    writes external_labels.csv."""
    out_dir, s, classes = Path(out_dir), cfg.selection, domains.classes(cfg)
    ext = scan(s.external_dir)
    pools = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))
    leakage.check_content(pools["test"], {f"the external tuning folder ({s.external_dir})": ext})
    # re-encoded or resized copies of test images have other bytes: compared by look too (lib.data.leakage)
    leakage.check_near_duplicates(pools["test"], ext, f"the external tuning folder ({s.external_dir})",
                                  out_dir / "near_duplicates.png", cfg.data.near_duplicates, reference=pools["train"])
    model = labeller(cfg, out_dir, pools["train"], progress)
    data = classifier.TensorSet.from_manifest(ext.assign(label=classes[0]), cfg.classifier.input_size,  # unlabelled
                                              compute.device(), classes)
    labelled = pd.concat([ext, pseudo_labels(classifier.predict_outputs(model, data), s.pseudo_label_threshold,
                                             classes)], axis=1)
    atomic.write_csv(out_dir / "external_labels.csv", labelled)
    kept = check_classes(labelled, s.pseudo_label_threshold, s.external_dir, classes)
    log.info("external set: %d of %d images kept at confidence >= %.2f (%s)", len(kept), len(labelled),
             s.pseudo_label_threshold, kept["label"].value_counts().to_dict())
    return kept


def read_labels(out_dir) -> pd.DataFrame:
    """external_labels.csv of a stage-02 folder: every external image, its pseudo-label, confidence and kept."""
    path = Path(out_dir) / "external_labels.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; stage 02 writes it when selection.methods lists 'external'.")
    return pd.read_csv(path, dtype={"patient": str})


def label_table(out_dir, classes: list[str] | None = None) -> pd.DataFrame:
    """Per pseudo-label (the run's classes; default: the order the labels give): images labelled, kept at the
    threshold, dropped, and the confidence quartiles."""
    df = read_labels(out_dir)
    g = df.groupby("label")
    out = pd.DataFrame({"labelled": g.size(), "kept": g["kept"].sum(), "dropped": g.size() - g["kept"].sum(),
                        "confidence q25": g["confidence"].quantile(0.25), "median": g["confidence"].median(),
                        "q75": g["confidence"].quantile(0.75)})
    return out.reindex(_classes(df, classes)).fillna(0)


def describe(out_dir) -> str:
    info = json.loads((Path(out_dir) / "labeller.json").read_text())
    return (f"pseudo-labeller: {info['arch']} trained on {info['n_train']} images (+{info['n_val']} for validation) "
            f"of {info['trained_on']}, seed {info['seed']}, {info['epochs_run']} epochs")
