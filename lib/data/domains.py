"""Image domains other than chest X-rays: the classes of a run, and images read from an ImageFolder or a CSV.

A run's classes come from its data source. ``phantom`` and ``nih`` have the thesis's two
(lib.data.nih.LABELS); ``folder`` (one sub-folder per class), ``csv`` (path, label and an optional group id)
and the procedural ``shapes`` domain (lib/data/shapes.py) have whatever classes their data hold, in the
order of ``data.classes`` or, when that is null, sorted by name. That order is the classifier's label
index and the order of the per-class output columns ``p[<class>]``, so every stage reads it from here.

The group id plays the part of the NIH patient: images of one group never land in two pools. An image
held twice under two groups (re-saved, resized) is caught after the split: ``check_pools`` refuses a
near-copy of a test image in another pool (lib.data.leakage). A folder laid out in splits (train/<class>,
test/<class>) is refused with a hint instead of becoming the classes "train" and "test".
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from . import nih
from ..core import paths
from .images import IMAGE_SUFFIXES, is_image
from .nih import DataError

GENERIC_SOURCES = ("folder", "csv", "shapes")     # sources whose classes come from the data
TABLE_COLUMNS = ("path", "label")                 # a csv source's required columns; "group" is optional
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "dev", "holdout"}


def order(labels, declared: list[str] | None = None) -> list[str]:
    """The class order: ``declared`` (data.classes) when given, the thesis's two when the labels are theirs,
    else the distinct labels sorted by name."""
    if declared:
        return list(declared)
    found = sorted({str(x) for x in labels})
    return list(nih.LABELS) if set(found) <= set(nih.LABELS) else found


def classes(cfg) -> list[str]:
    """The classes of a run in label-index order (see the module docstring)."""
    d = cfg.data
    if d.source in ("phantom", "nih"):
        return list(nih.LABELS)
    if d.classes:
        return list(d.classes)
    if d.source == "shapes":
        from . import shapes

        return list(shapes.SHAPES)
    where = paths.resolve(d.folder if d.source == "folder" else d.csv)
    return list(_discovered(d.source, str(where), where.stat().st_mtime_ns if where.exists() else 0, cfg))


_found: dict[tuple, tuple[str, ...]] = {}


def _discovered(source: str, where: str, mtime: int, cfg) -> tuple[str, ...]:
    """The sorted classes a folder or csv source holds, read once per folder/CSV state (every stage asks)."""
    key = (source, where, mtime)
    if key not in _found:
        _found[key] = tuple(order(read_source(cfg)["label"]))
    return _found[key]


def read_folder(root: str | Path) -> pd.DataFrame:
    """An ImageFolder (``root/<class>/<image>``) as rows of path, label and group (the image's own name:
    an ImageFolder records no group, so every image is its own)."""
    root = paths.resolve(root)
    how = ("data.folder needs one sub-folder per class, named after the class, each holding that class's "
           f"images ({', '.join(IMAGE_SUFFIXES)}).")
    if not root.is_dir():
        raise DataError(f"data.folder {root} does not exist or is not a folder. {how}")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise DataError(f"data.folder {root} has no class sub-folder. {how}")
    _refuse_split_layout(root, subs)
    rows = []
    for sub in subs:
        files = sorted(p for p in sub.rglob("*") if is_image(p))
        if not files:
            raise DataError(f"class folder {sub} holds no image ({', '.join(IMAGE_SUFFIXES)}); add images or "
                            "remove the folder.")
        rows += [{"path": str(f), "label": sub.name, "group": f"{sub.name}/{f.relative_to(sub)}"} for f in files]
    return pd.DataFrame(rows)


def _refuse_split_layout(root: Path, subs: list[Path]) -> None:
    """train/<class>, test/<class>: the sub-folders are splits, not classes (else "train" and "test" would
    silently become the classes)."""
    splits = [s for s in subs if s.name.lower() in SPLIT_NAMES
              and any(c.is_dir() and any(is_image(f) for f in c.rglob("*")) for c in s.iterdir())]
    if not splits:
        return
    inner = sorted({c.name for s in splits for c in s.iterdir() if c.is_dir() and not c.name.startswith(".")})
    names = ", ".join(f"'{s.name}'" for s in splits)
    raise DataError(
        f"data.folder {root} is laid out in splits ({names}, each with class sub-folders {inner[:6]}), not one "
        f"sub-folder per class: read as it is, {names} would be the classes. The suite draws its own "
        f"group-disjoint pools (tuning, train, test). Point data.folder at one split (e.g. {splits[0]}), merge the "
        "splits into one folder per class, or list every image in a CSV (data.source: csv, data.csv with columns "
        "path, label and group, the group keeping related images in one pool).")


def read_table(csv: str | Path) -> pd.DataFrame:
    """A CSV of path, label and an optional group id; relative paths are read from the CSV's folder."""
    csv = paths.resolve(csv)
    if not csv.is_file():
        raise DataError(f"data.csv {csv} not found; a csv source needs a CSV with columns path, label "
                        "and optionally group (the patient-like id that keeps an image's relatives in one pool).")
    df = pd.read_csv(csv, dtype=str)
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv.name} lacks column(s) {missing}; a csv source needs path, label and optionally "
                        f"group (found: {list(df.columns)[:8]}).")
    if df.empty:
        raise DataError(f"{csv} lists no image.")
    bad = df[df["path"].isna() | df["label"].isna()]
    if len(bad):
        raise DataError(f"{csv.name}: {len(bad)} row(s) without a path or a label, e.g. row(s) {bad.index[:3].tolist()}.")
    df["path"] = [str(p if Path(p).is_absolute() else csv.parent / p) for p in df["path"]]
    if "group" not in df or df["group"].isna().all():
        df["group"] = df["path"]        # no group id: each image is its own group
    elif df["group"].isna().any():
        raise DataError(f"{csv.name}: {int(df['group'].isna().sum())} row(s) have no group id; fill them or drop "
                        "the column (then each image is its own group).")
    return df[["path", "label", "group"]]


def read_source(cfg) -> pd.DataFrame:
    """path, label, group of every listed image of a folder, csv or shapes source (not yet checked on disk)."""
    d = cfg.data
    if d.source == "folder":
        if not d.folder:
            raise DataError("data.source is 'folder' but data.folder is not set; point it at a folder with one "
                            "sub-folder of images per class.")
        return read_folder(d.folder)
    if d.source == "csv":
        if not d.csv:
            raise DataError("data.source is 'csv' but data.csv is not set; point it at a CSV with columns path, "
                            "label and optionally group.")
        return read_table(d.csv)
    if d.source == "shapes":
        from . import shapes

        root = shapes.generate(d.phantom_n, d.image_size, d.phantom_seed, shapes_of(cfg))
        return read_table(root / "labels.csv")
    raise ValueError(f"data.source {d.source!r} is not a generic source")


def shapes_of(cfg) -> list[str]:
    from . import shapes

    return list(cfg.data.classes or shapes.SHAPES)


def common_root(files) -> Path:
    """The deepest folder holding every file (image ids are paths relative to it)."""
    files = list(files)
    return Path(os.path.commonpath([str(Path(p).parent) for p in files])) if files else Path(".")


def label_table(df: pd.DataFrame, declared: list[str] | None, where: str) -> pd.DataFrame:
    """The source's rows as curation's table (image_id, label, patient = group, ...), restricted to the
    declared classes; an error names any declared class without an image."""
    names = order(df["label"], declared)
    absent = [c for c in names if not (df["label"] == c).any()]
    if absent:
        raise DataError(f"class(es) {absent} of data.classes have no image in {where}; the data hold "
                        f"{sorted(df['label'].unique())[:10]}.")
    df = df[df["label"].isin(names)]
    if len(names) < 2:
        raise DataError(f"{where} holds a single class {names}; at least two are needed.")
    root = common_root(df["path"])
    ids = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p) for p in df["path"]]
    return pd.DataFrame({"image_id": ids, "path": df["path"].to_numpy(), "label": df["label"].to_numpy(),
                         "patient": df["group"].astype(str).to_numpy(), "view": "", "findings": df["label"].to_numpy()})


def check_pools(cfg, pools: dict[str, pd.DataFrame], out_dir) -> pd.DataFrame:
    """A folder or csv source may hold one image twice under two groups (re-saved, resized, cropped by a few
    pixels): a near-copy of a test image in the tuning or training pool is refused like any leak (lib.data.leakage),
    calibrated on every real image of another group (a few copies leave the floor as it is; many meet its
    median guard)."""
    from . import leakage

    where = cfg.data.folder or cfg.data.csv or f"the {cfg.data.source} domain"
    others = pd.concat([pools["tuning"], pools["train"]], ignore_index=True)
    return leakage.check_near_duplicates(
        pools["test"], others, f"the tuning and training pools of {where}", Path(out_dir) / "near_duplicates.png",
        cfg.data.near_duplicates, reference=others,
        fix="give each such pair one group (data.source: csv with a group column) or remove one image of each pair")


def fingerprint(cfg) -> str:
    """Every listed image's path, size and modification time, and the CSV's bytes: a changed, added or
    repaired image changes the stage keys."""
    h = hashlib.sha256()
    if cfg.data.source == "csv" and cfg.data.csv and paths.resolve(cfg.data.csv).is_file():
        h.update(paths.resolve(cfg.data.csv).read_bytes())
    try:
        listed = read_source(cfg)
    except DataError as exc:        # curation reports it; the key just differs
        return "unreadable:" + hashlib.sha256(str(exc).encode()).hexdigest()[:12]
    for p, label in sorted(zip(listed["path"], listed["label"])):
        try:
            st = os.stat(p)
            h.update(f"{p}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}:{label}:missing\n".encode())
    return h.hexdigest()[:16]
