"""Where the reference generators' images come from (lib.generate.references): stage 01's held-out tuning pool,
or a folder of images with one sub-folder per class, checked against the real test pool before it is used.

Every kind that draws from the pool takes the same rows (chosen per class at random, seeded by the run seed
and SALT), so the references are paired with each other.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import paths, stages
from ..core.config import Config
from ..data import curation, domains, images, leakage
from ..data.images import IMAGE_SUFFIXES, is_image
from ..data.nih import DataError
from ..finetune.prompts import slug

log = logging.getLogger(__name__)
SALT = 0x5EF  # keeps the references' random streams apart from the pipeline's other uses of the run seed


def holdout(cfg: Config, runs_root="runs", need: int | None = None,
            what: str = "generation.n_per_label") -> pd.DataFrame:
    """``need`` (default n_per_label) held-out tuning-pool rows per class, chosen at random (seeded by the
    run seed) and the same rows for every kind; a clear error when a class has fewer."""
    need = cfg.generation.n_per_label if need is None else need
    pool = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["tuning"]
    parts = []
    for li, label in enumerate(domains.classes(cfg)):
        rows = pool[pool["label"] == label].sort_values("image_id").reset_index(drop=True)
        if len(rows) < need:
            raise DataError(
                f"generation.kind = {cfg.generation.kind!r} needs {need} held-out '{label}' images per class "
                f"({what} = {need}), but stage 01's tuning pool holds only {len(rows)}; lower {what} "
                f"or raise pools.tuning (now {cfg.pools.tuning}).")
        order = np.random.default_rng([cfg.seed, li, SALT]).permutation(len(rows))[:need]
        parts.append(rows.iloc[order].assign(source_label=label, index=range(need)))
    out = pd.concat(parts, ignore_index=True)
    out["source_path"] = [str(paths.resolve(p)) for p in out["path"]]
    return out


def view_balanced(cfg: Config, runs_root="runs") -> pd.DataFrame:
    """n_per_label held-out tuning-pool rows per class with the same number of AP images in every class (and so of
    PA ones), so the view tells nothing of the label: in the phantom pools AP is more common among the sick (the
    view alone gives AUROC about 0.59), and a set that keeps the view but not the findings would still carry that
    signal. The AP count is the pool's AP share of n_per_label, within what every class holds. Each class takes
    its rows in holdout's random order (the first AP and the first PA ones), so the set shares most rows with it."""
    need = cfg.generation.n_per_label
    pool = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["tuning"]
    classes = domains.classes(cfg)
    pool = pool[pool["label"].isin(classes)]
    ordered = {}
    for li, label in enumerate(classes):
        rows = pool[pool["label"] == label].sort_values("image_id").reset_index(drop=True)
        ordered[label] = rows.iloc[np.random.default_rng([cfg.seed, li, SALT]).permutation(len(rows))]
    ap = {label: int((rows["view"] == "AP").sum()) for label, rows in ordered.items()}
    lo = max(need - (len(rows) - ap[label]) for label, rows in ordered.items())
    hi = min(need, *ap.values())
    if lo > hi:
        sizes = {label: len(rows) for label, rows in ordered.items()}
        raise DataError(
            f"generation.kind = {cfg.generation.kind!r} needs {need} held-out images per class with as many AP images "
            f"in every class, but stage 01's tuning pool cannot give that (AP images per class: {ap}, class sizes: "
            f"{sizes}); lower generation.n_per_label or raise pools.tuning (now {cfg.pools.tuning}).")
    k = int(np.clip(round(need * float((pool["view"] == "AP").mean())), lo, hi))
    parts = []
    for label, rows in ordered.items():
        is_ap = (rows["view"] == "AP").to_numpy()
        take = rows[is_ap].head(k).index.union(rows[~is_ap].head(need - k).index)
        picked = rows[rows.index.isin(take)]             # in the random order
        parts.append(picked.assign(source_label=label, index=range(need)))
    out = pd.concat(parts, ignore_index=True)
    out["source_path"] = [str(paths.resolve(p)) for p in out["path"]]
    return out


def shuffled(df: pd.DataFrame, fraction: float, cfg: Config) -> pd.DataFrame:
    """Held-out rows (lib.generate.references.from_pool) with the labels of a share of each class permuted among
    themselves: the rows of index < round(fraction x n) per class (holdout's order is random, so a random share,
    nested across fractions); every other row keeps its own label. Each class keeps n rows; fraction 1 permutes
    every label exactly as label-shuffled does, fraction 0 none (real-holdout's rows). Rows are re-indexed per
    new label, in the run's class order."""
    classes = domains.classes(cfg)
    k = int(round(fraction * df.groupby("source_label").size().min()))
    free = (df["index"] < k).to_numpy()
    labels = df["source_label"].to_numpy().copy()
    labels[free] = np.random.default_rng([cfg.seed, len(classes), SALT]).permutation(labels[free])
    df = df.assign(label=labels)
    df["index"] = df.groupby("label", sort=False).cumcount()
    return df.sort_values(["label", "index"], key=lambda s: s.map(classes.index) if s.name == "label" else s,
                          ignore_index=True)


def scan_folder(cfg: Config) -> dict[str, list[Path]]:
    """label -> the image files of its sub-folder of generation.folder (sorted), one sub-folder for each of the
    run's classes; every mistake is an error that says what to put where."""
    g = cfg.generation
    classes = domains.classes(cfg)
    names = _listed([repr(x) for x in classes])
    slugs = _listed([repr(slug(x)) for x in classes])
    how = (f"generation.folder needs one sub-folder per class, named after the class ({names}, case-insensitive, "
           f"or {slugs}), each holding that class's images ({', '.join(IMAGE_SUFFIXES)}).")
    if not g.folder:
        raise DataError(f"generation.kind = 'folder' but generation.folder is not set. {how}")
    root = paths.resolve(g.folder)
    if not root.is_dir():
        raise DataError(f"generation.folder {root} does not exist or is not a folder. {how}")
    by_slug = {slug(label): label for label in classes}
    found: dict[str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = by_slug.get(slug(sub.name))
        if label is None:
            raise DataError(f"generation.folder {root}: sub-folder '{sub.name}' names no class. {how}")
        if label in found:
            raise DataError(f"generation.folder {root}: sub-folders '{found[label].name}' and '{sub.name}' both "
                            f"name class '{label}'; keep one. {how}")
        found[label] = sub
    if not found:
        raise DataError(f"generation.folder {root} has no class sub-folder (it is empty, or its images are not "
                        f"sorted by class). {how}")
    missing = [label for label in classes if label not in found]
    if missing:
        raise DataError(f"generation.folder {root} has no sub-folder for class(es) {missing}; every class of the "
                        f"run ({names}) is needed. {how}")
    files = {}
    for label, sub in found.items():
        files[label] = sorted(p for p in sub.iterdir() if is_image(p))
        if not files[label]:
            raise DataError(f"generation.folder {root}: sub-folder '{sub.name}' (class '{label}') holds no image. "
                            f"{how}")
    return files


def _listed(items: list[str]) -> str:
    """'a and b', 'a, b and c'."""
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


def from_folder(cfg: Config) -> pd.DataFrame:
    """min(n_per_label, available) images per class of generation.folder, seeded, hashed by content."""
    rows = []
    for li, (label, files) in enumerate(scan_folder(cfg).items()):
        take = min(cfg.generation.n_per_label, len(files))
        if take < cfg.generation.n_per_label:
            log.warning("generation.folder: class '%s' has %d images, fewer than generation.n_per_label = %d; "
                        "using all of them.", label, len(files), cfg.generation.n_per_label)
        order = np.random.default_rng([cfg.seed, li, SALT]).permutation(len(files))[:take]
        for i, j in enumerate(order):
            p = files[j].resolve()
            h = images.check_and_hash(p)
            if h is None:
                raise DataError(f"generation.folder: {p} cannot be read as an image; remove or replace it.")
            rows.append({"label": label, "index": i, "source_image_id": f"{p.parent.name}/{p.name}",
                         "source_path": str(p), "source_hash": h, "file": str(p)})
    return pd.DataFrame(rows)


def check_folder(cfg: Config, df: pd.DataFrame, out_dir: Path, runs_root="runs") -> pd.DataFrame:
    """The imported images against the real test pool, by look (lib.data.leakage): a re-encoded or resized copy of a
    test image is refused (data.near_duplicates: warn only warns), naming each file and its test twin in
    near_duplicates.csv and .png, the only files a refused import leaves in its folder."""
    pools = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))
    return leakage.check_near_duplicates(pools["test"], df.assign(path=df["file"]),
                                         f"generation.folder ({paths.resolve(cfg.generation.folder)})",
                                         Path(out_dir) / "near_duplicates.png", cfg.data.near_duplicates,
                                         reference=pools["train"])
