"""Curation: binary labels, a patient-level split into pools, a leakage check, manifests.

Pools: ``tuning`` (the generator's fine-tuning candidates), ``train`` (real training data for the
classifier) and ``test`` (the real test set). No patient is in two pools, checked in code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, fingerprints, paths
from . import domains, images, nih, phantoms
from .leakage import LeakageError
from ..core.config import Config
from .nih import DataError
from ..core.progress import tqdm

log = logging.getLogger(__name__)
POOLS = ["tuning", "train", "test"]
MANIFEST_COLUMNS = ["image_id", "path", "label", "patient", "view", "findings", "hash"]


def _columns(df: pd.DataFrame) -> list[str]:
    """The manifest's columns: the phantom mode world's images also carry their acquisition ``mode``."""
    return MANIFEST_COLUMNS + (["mode"] if "mode" in df.columns else [])


@dataclass
class Curated:
    """The usable images with their binary labels, and what was excluded on the way."""

    table: pd.DataFrame
    root: Path
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"{len(self.table)} usable images from {self.table['patient'].nunique()} patients in {self.root}"]
        if self.missing:
            lines.append(f"{len(self.missing)} images named in the CSV are missing on disk, e.g. {self.missing[:5]}")
        if self.corrupt:
            lines.append(f"{len(self.corrupt)} unreadable or corrupt images excluded, e.g. {self.corrupt[:5]}")
        return "\n".join(lines)


def data_root(cfg: Config, progress: bool = True) -> tuple[Path, Path | None]:
    """(image root, metadata CSV) for the configured source; builds the phantom set when needed."""
    d = cfg.data
    if d.source == "phantom":
        root = phantoms.generate(d.phantom_n, d.image_size, d.phantom_seed, d.phantom_textbook,
                                 csv=d.csv, progress=progress, modes=d.phantom_modes,
                                 conspicuity=d.mode_conspicuity)
        return root, root / "Data_Entry_2017.csv"
    if not d.nih_root:
        raise DataError("data.source is 'nih' but data.nih_root is not set; point it at the folder with "
                        "images/ (or images_001/images/ ...).")
    return paths.resolve(d.nih_root), (paths.resolve(d.csv) if d.csv else None)


def data_fingerprint(cfg: Config) -> str | None:
    """For data.source nih, folder and csv, a fingerprint of the images and metadata curation reads (stage
    keys hold it); None for phantoms and shapes, which their parameters and generator version fix."""
    d = cfg.data
    if d.source in ("folder", "csv"):
        return domains.fingerprint(cfg)
    if d.source != "nih":
        return None
    if not d.nih_root:
        return "no-root"            # curation itself reports the missing setting
    root = paths.resolve(d.nih_root)
    return nih.fingerprint(root, metadata_file(root, paths.resolve(d.csv) if d.csv else None))


fingerprints.register_data(data_fingerprint)         # every stage key holds it (lib.core.stages)


def metadata_file(root: Path, csv: Path | None) -> Path | None:
    """The CSV curation reads: data.csv, else a Data_Entry_2017*.csv next to the images, else torchxrayvision's."""
    if csv is None and root.is_dir() and any(root.glob("Data_Entry_2017*.csv*")):
        csv = root
    if csv is not None and csv.is_dir():
        found = sorted(csv.glob("Data_Entry_2017*.csv*"))
        return found[0] if found else None
    if csv is None:
        try:
            return nih.bundled_csv()
        except DataError:
            return None
    return csv


def check_missing(missing: list[str], total: int, root: Path, max_fraction: float) -> None:
    """Stop when more than max_fraction of the images the CSV names are absent; below it, warn."""
    if not missing:
        return
    share = len(missing) / max(total, 1)
    if share > max_fraction:
        raise DataError(f"{len(missing)} of {total} images named in the metadata CSV ({share:.1%}) are missing "
                        f"under {root}, more than data.max_missing_fraction = {max_fraction:g}; e.g. {missing[:5]}. "
                        "Point data.nih_root at the complete image folders, or raise data.max_missing_fraction "
                        "to go on with the images present.")
    log.warning("%d of %d images named in the CSV are missing on disk (within data.max_missing_fraction = %g), "
                "e.g. %s", len(missing), total, max_fraction, missing[:5])


def label_table(meta: pd.DataFrame, views: list[str]) -> pd.DataFrame:
    """Metadata -> one row per image with the binary label, after the view filter."""
    meta = nih.filter_views(meta, views)
    table = pd.DataFrame({
        "image_id": meta["Image Index"].to_numpy(),
        "label": nih.binary_label(meta["Finding Labels"]).to_numpy(),
        "patient": meta["Patient ID"].astype(str).to_numpy(),
        "view": meta["View Position"].to_numpy(),
        "findings": meta["Finding Labels"].to_numpy(),
    })
    if phantoms.MODE_COLUMN in meta.columns:
        table["mode"] = meta[phantoms.MODE_COLUMN].to_numpy()
    for label in nih.LABELS:
        if not (table["label"] == label).any():
            raise DataError(f"class '{label}' is empty after filtering (views={views}); "
                            "widen data.views or check the CSV's Finding Labels.")
    return table


def generic_table(cfg: Config) -> tuple[pd.DataFrame, Path, list[str]]:
    """A folder, csv or shapes source: (the rows whose file exists, the data's root, the missing paths)."""
    listed = domains.read_source(cfg)
    where = cfg.data.folder or cfg.data.csv or f"the {cfg.data.source} domain"
    table = domains.label_table(listed, cfg.data.classes, str(where))
    exists = np.array([Path(p).is_file() for p in table["path"]], dtype=bool)
    return (table[exists].reset_index(drop=True), domains.common_root(table["path"]),
            table.loc[~exists, "image_id"].tolist())


def nih_table(cfg: Config, progress: bool) -> tuple[pd.DataFrame, Path, list[str]]:
    """An NIH-layout source (real or phantom): metadata rows with their image files, and the missing ones."""
    root, csv = data_root(cfg, progress)
    meta = nih.read_metadata(csv if csv is not None else (root if any(root.glob("Data_Entry_2017*.csv*")) else None))
    table = label_table(meta, cfg.data.views)
    with_paths, missing = nih.attach_paths(table.rename(columns={"image_id": "Image Index"}), root)
    return with_paths.rename(columns={"Image Index": "image_id"}), root, missing


def curate(cfg: Config, progress: bool = True) -> Curated:
    """Find, label, check and hash every usable image of the configured source."""
    generic = cfg.data.source in domains.GENERIC_SOURCES
    table, root, missing = generic_table(cfg) if generic else nih_table(cfg, progress)
    check_missing(missing, len(table) + len(missing), root, cfg.data.max_missing_fraction)
    hashes = [images.check_and_hash(p) if cfg.data.check_images else None
              for p in tqdm(table["path"], desc="checking images", disable=not progress, mininterval=2)]
    if cfg.data.check_images:
        ok = np.array([h is not None for h in hashes], dtype=bool)
        corrupt = table.loc[~ok, "image_id"].tolist()
        if corrupt:
            log.warning("%d unreadable or corrupt images excluded, e.g. %s", len(corrupt), corrupt[:5])
        table = table.assign(hash=hashes)[ok].reset_index(drop=True)
    else:
        corrupt = []
        table = table.assign(hash=table["image_id"])
    table["path"] = table["path"].map(images.relpath)
    for label in domains.classes(cfg):
        if not (table["label"] == label).any():
            raise DataError(f"class '{label}' has no readable image on disk under {root}.")
    return Curated(table[_columns(table)], root, missing, corrupt)


def _take_patients(table: pd.DataFrame, patients: np.ndarray, n: int, pool: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Take whole patients in the given order until n images; return the pool and the unused patients."""
    counts = table.groupby("patient").size().reindex(patients).fillna(0).to_numpy()
    if counts.sum() < n:
        raise DataError(f"pools.{pool} = {n} images, but only {int(counts.sum())} are left for it "
                        "(pools are patient-disjoint); lower the pool sizes or add data.")
    cut = int(np.searchsorted(np.cumsum(counts), n) + 1)
    chosen = set(patients[:cut])
    pool_df = table[table["patient"].isin(chosen)]
    # Whole patients overshoot a little; trim to n without handing the trimmed images to another pool.
    pool_df = pool_df.sample(frac=1.0, random_state=len(chosen)).head(n).sort_values("image_id")
    return pool_df.reset_index(drop=True), patients[cut:]


def split_pools(table: pd.DataFrame, sizes: dict[str, int], seed: int,
                official: dict[str, set[str]] | None = None, classes: list[str] | None = None
                ) -> dict[str, pd.DataFrame]:
    """Patient-level split into tuning/train/test pools of the given image counts.

    With the official NIH lists, the test pool comes from test_list.txt and the others from
    train_val_list.txt (those lists are already patient-disjoint).
    """
    total = sum(sizes.values())
    if total > len(table):
        raise DataError(f"pool sizes {sizes} add up to {total} images, more than the {len(table)} available.")
    rng = np.random.default_rng(seed)
    if official is not None:
        test_src = table[table["image_id"].isin(official["test"])]
        rest_src = table[table["image_id"].isin(official["train_val"])]
    else:
        test_src = rest_src = table
    pools: dict[str, pd.DataFrame] = {}
    test_patients = rng.permutation(np.sort(test_src["patient"].unique()))
    pools["test"], _ = _take_patients(test_src, test_patients, sizes["test"], "test")
    used = set(pools["test"]["patient"])
    remaining = rng.permutation(np.sort(rest_src.loc[~rest_src["patient"].isin(used), "patient"].unique()))
    pools["tuning"], remaining = _take_patients(rest_src, remaining, sizes["tuning"], "tuning")
    pools["train"], _ = _take_patients(rest_src, remaining, sizes["train"], "train")
    check_leakage(pools)
    for name, df in pools.items():
        for label in classes or domains.order(table["label"]):
            if not (df["label"] == label).any():
                raise DataError(f"pool '{name}' has no '{label}' image; enlarge pools.{name}.")
    return {name: pools[name] for name in POOLS}


def check_leakage(pools: dict[str, pd.DataFrame]) -> None:
    """Raise when any patient, image or content hash appears in two pools."""
    names = list(pools)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for col in ("patient", "image_id", "hash"):
                if col not in pools[a] or col not in pools[b]:
                    continue
                shared = set(pools[a][col]) & set(pools[b][col])
                if shared:
                    raise LeakageError(f"{len(shared)} {col} value(s) shared by pools '{a}' and '{b}', "
                                       f"e.g. {sorted(shared)[:5]}")


def write_manifests(pools: dict[str, pd.DataFrame], out_dir: str | Path) -> dict[str, Path]:
    """One CSV per pool (image path, label, patient, content hash ...), each written atomically."""
    out_dir = Path(out_dir)
    return {name: atomic.write_csv(out_dir / f"{name}.csv", df[_columns(df)]) for name, df in pools.items()}


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} not found; run the stage that writes it first.")
    df = pd.read_csv(path, dtype={"patient": str})
    if df.empty:
        raise DataError(f"manifest {path} is empty.")
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise DataError(f"manifest {path} lacks column(s) {missing}.")
    return df


def run(cfg: Config, out_dir: str | Path, runs_root=None, progress: bool = True) -> dict:
    """Stage 01: curate, split, check, write manifests. (It reads no upstream stage: runs_root is unused.)"""
    curated = curate(cfg, progress)
    nih_layout = cfg.data.source in ("phantom", "nih")
    official = nih.official_split(curated.root) if cfg.data.official_split and nih_layout else None
    sizes = {"tuning": cfg.pools.tuning, "train": cfg.pools.train, "test": cfg.pools.test}
    pools = split_pools(curated.table, sizes, cfg.seed, official, domains.classes(cfg))
    if cfg.data.source in domains.GENERIC_SOURCES:     # one image under two groups (lib.data.domains.check_pools)
        domains.check_pools(cfg, pools, out_dir)
    files = write_manifests(pools, out_dir)
    atomic.write_csv(Path(out_dir) / "all.csv", curated.table)
    atomic.write_csv(Path(out_dir) / "excluded.csv", pd.DataFrame(
        {"image_id": curated.missing + curated.corrupt,
         "reason": ["missing"] * len(curated.missing) + ["corrupt"] * len(curated.corrupt)}))
    return {"curated": curated, "pools": pools, "files": files}


def pool_summary(pools: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images, patients and label counts per pool."""
    rows = []
    for name, df in pools.items():
        row = {"pool": name, "images": len(df), "patients": df["patient"].nunique()}
        row.update(df["label"].value_counts().reindex(domains.order(df["label"]), fill_value=0).to_dict())
        rows.append(row)
    return pd.DataFrame(rows)


def finding_counts(table: pd.DataFrame) -> pd.Series:
    """How often each NIH finding occurs (an image with several counts for each)."""
    return table["findings"].str.split("|").explode().value_counts()


def load_pools(out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The pool manifests a finished stage 01 wrote."""
    return {name: read_manifest(Path(out_dir) / f"{name}.csv") for name in POOLS}
