"""NIH ChestX-ray14: metadata, image discovery in the NIH folder layouts, binary labels.

The same functions read the real data set and the phantom set, which is written in the same layout.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from ..core import paths

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
LABELS = ["No Finding", "Unhealthy"]  # label 0 and label 1 of the binary task


class DataError(ValueError):
    """Input data that cannot be used as it is; the message says what to fix."""


def bundled_csv() -> Path:
    """The Data_Entry_2017 CSV that torchxrayvision ships (112,120 rows); found without importing torch."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.csv is null but torchxrayvision (which ships the NIH CSV) is not installed; "
                        "set data.csv to the NIH Data_Entry_2017 CSV.")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Data_Entry_2017_v2020.csv.gz"


def read_metadata(csv: str | Path | None = None) -> pd.DataFrame:
    """Read Data_Entry_2017*.csv (or torchxrayvision's copy when ``csv`` is None) and check its columns."""
    path = paths.resolve(csv) if csv else bundled_csv()
    if path.is_dir():
        found = sorted(path.glob("Data_Entry_2017*.csv*"))
        if not found:
            raise DataError(f"no Data_Entry_2017*.csv in {path}; pass the CSV's path as data.csv.")
        path = found[0]
    if not path.exists():
        raise DataError(f"metadata CSV {path} not found; set data.csv to the NIH Data_Entry_2017 CSV "
                        "or leave it null to use the copy torchxrayvision ships.")
    df = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path.name} lacks column(s) {missing}; an NIH Data_Entry CSV has "
                        f"{REQUIRED_COLUMNS} (found: {list(df.columns)[:8]}).")
    df["Patient ID"] = df["Patient ID"].astype(str)
    return df


def binary_label(finding_labels: pd.Series) -> pd.Series:
    """"No Finding" stays; any finding becomes "Unhealthy"."""
    return finding_labels.where(finding_labels == "No Finding", "Unhealthy")


def filter_views(df: pd.DataFrame, views: list[str]) -> pd.DataFrame:
    bad = sorted(set(views) - {"PA", "AP"})
    if bad or not views:
        raise DataError(f"data.views = {views}: allowed views are PA and AP (one or both).")
    return df[df["View Position"].isin(views)]


def find_images(root: str | Path) -> dict[str, Path]:
    """Map file name -> path for the NIH layouts: ``images/`` and ``images_0XX/images/``."""
    root = paths.resolve(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set data.nih_root to the folder that holds "
                        "images/ or images_001/images/ ... images_012/images/.")
    found: dict[str, Path] = {}
    for folder in image_folders(root):
        for p in folder.glob("*.png"):
            found.setdefault(p.name, p)
    return found


def image_folders(root: Path) -> list[Path]:
    """The folders the NIH layouts keep images in, in lookup order."""
    candidates = [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    return [f for f in candidates if f.is_dir()]


def fingerprint(root: str | Path, csv: Path | None) -> str:
    """A fast fingerprint of the data: the metadata CSV's and split lists' content, and every image's
    name, size and modification time. Changing, adding or repairing an image or the CSV changes it."""
    import hashlib

    from ..core.provenance import file_hash

    root = paths.resolve(root)
    h = hashlib.sha256()
    for f in (csv, root / "train_val_list.txt", root / "test_list.txt"):
        h.update(f"{f.name}:{file_hash(f)}\n".encode() if f is not None and f.is_file() else b"-\n")
    if not root.is_dir():
        return "no-images:" + h.hexdigest()[:16]
    rows = []
    for folder in image_folders(root):
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.endswith(".png") and e.is_file():
                    st = e.stat()
                    rows.append(f"{folder.relative_to(root)}/{e.name}:{st.st_size}:{st.st_mtime_ns}")
    for row in sorted(rows):
        h.update(row.encode() + b"\n")
    return h.hexdigest()[:16]


def attach_paths(df: pd.DataFrame, root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Add a ``path`` column; return the rows whose image exists and the names the disk lacks."""
    found = find_images(root)
    df = df.assign(path=df["Image Index"].map(lambda n: str(found[n]) if n in found else None))
    missing = df.loc[df["path"].isna(), "Image Index"].tolist()   # curation.check_missing judges them
    return df[df["path"].notna()].reset_index(drop=True), missing


def official_split(root: str | Path | None) -> dict[str, set[str]] | None:
    """The official train_val_list.txt / test_list.txt, when the user has them next to the images."""
    if root is None:
        return None
    root = paths.resolve(root)
    tv, te = root / "train_val_list.txt", root / "test_list.txt"
    if not (tv.exists() and te.exists()):
        return None
    return {"train_val": set(tv.read_text().split()), "test": set(te.read_text().split())}
