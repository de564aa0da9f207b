"""Leakage checks on the files themselves, not on what a manifest says about them.

``check_content`` hashes the bytes of every real test image and every file of each training source
(the real training pool, the whole synthetic set, the generator's tuning set) and refuses a shared
file, image id or patient. Hashes are cached by path, size and times, so a repeated check reads only
new or changed files. ``near_duplicates`` finds test images that a source holds in a slightly altered
form (a perceptual difference hash), for the warning and montage on imported folders.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, provenance
from .paths import DATA, resolve
from .curation import LeakageError
from .nih import DataError

log = logging.getLogger(__name__)
CACHE = DATA / "cache" / "file_hashes.json"
RACY_SECONDS = 2.0          # a file modified this recently may change again within the same mtime tick
SHOW = 5                    # how many examples an error names


# ---------------------------------------------------------------------------------- content hashes
def _stamp(st: os.stat_result) -> list[int]:
    # ctime too: a copy that keeps the mtime (cp -p) still changes it
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, new: dict) -> None:
    """Merge new entries into the cache under a lock (another process may be adding its own);
    entries of files that no longer exist are dropped, so the cache stays the size of the data."""
    with atomic.exclusive(path.with_name(path.name + ".lock")):
        merged = {k: v for k, v in {**_read_cache(path), **new}.items() if k in new or os.path.exists(k)}
        atomic.write_text(path, json.dumps(merged, separators=(",", ":")))


def file_hashes(paths: list[str | Path], cache_path: Path | None = None) -> list[str]:
    """Content hash of each file (images.content_hash's format: sha256, first 16 hex digits), in order.

    Relative paths are taken from the project root. A missing file is a DataError naming it.
    """
    cache_path = Path(cache_path) if cache_path is not None else CACHE
    cache, new, out, now = _read_cache(cache_path), {}, [], time.time_ns()
    for p in paths:
        f = resolve(p).resolve()
        try:
            stamp = _stamp(f.stat())
        except OSError:
            raise DataError(f"{p} is listed but not on disk ({f}); cannot check it for leakage.") from None
        hit = cache.get(str(f))
        if hit is not None and hit[:3] == stamp:
            out.append(hit[3])
            continue
        h = provenance.file_hash(f)
        out.append(h)
        if now - stamp[1] > RACY_SECONDS * 1e9:
            new[str(f)] = [*stamp, h]
    if new:
        _write_cache(cache_path, new)
    return out


# ---------------------------------------------------------------------------------- the check
def _shared_column(test: pd.DataFrame, src: pd.DataFrame, name: str) -> None:
    for col in ("image_id", "patient"):
        if col not in test or col not in src:
            continue
        shared = set(test[col].dropna().astype(str)) & set(src[col].dropna().astype(str))
        if shared:
            raise LeakageError(
                f"refusing to evaluate: the real test pool and {name} share {len(shared)} {col} value(s), "
                f"e.g. {sorted(shared)[:SHOW]}. The test pool must be disjoint from every training source "
                "and the generator's tuning set; rebuild the pools (notebook 01) or fix that manifest.")


def check_content(test: pd.DataFrame, sources: dict[str, pd.DataFrame], cache_path: Path | None = None) -> None:
    """Refuse when a real test image's file has the same bytes as a file of any source, or when a test
    image id or patient appears in one. The files are read; a manifest's ``hash`` column is not trusted."""
    test_hashes = file_hashes(test["path"].tolist(), cache_path)
    by_hash: dict[str, str] = {}
    for path, h in zip(test["path"], test_hashes):
        by_hash.setdefault(h, str(path))
    for name, src in sources.items():
        _shared_column(test, src, name)
        pairs = [(by_hash[h], str(p)) for p, h in zip(src["path"], file_hashes(src["path"].tolist(), cache_path))
                 if h in by_hash]
        if pairs:
            shown = "; ".join(f"{t} = {s}" for t, s in pairs[:SHOW])
            raise LeakageError(
                f"refusing to evaluate: {len(pairs)} file(s) of {name} have the same content as real test "
                f"images (test image = {name} file): {shown}. The files on disk were compared, whatever the "
                "manifests say; remove those files from that set (or rebuild it) so no test image is trained on.")


# ---------------------------------------------------------------------------------- near duplicates
def dhash_bits(path: str | Path, size: int = 8) -> np.ndarray:
    """Difference hash: size x size bits, each whether a pixel is brighter than its right neighbour."""
    from PIL import Image

    with Image.open(resolve(path)) as im:
        arr = np.asarray(im.convert("L").resize((size + 1, size), Image.LANCZOS), dtype=np.int16)
    return (arr[:, 1:] > arr[:, :-1]).ravel()


def near_duplicates(test_paths: list, source_paths: list, size: int = 8,
                    max_distance: int | None = None) -> pd.DataFrame:
    """Pairs (test_path, source_path, distance) whose difference hashes differ in at most max_distance
    bits (default: a tenth of the size*size bits), closest first."""
    columns = ["test_path", "source_path", "distance"]
    if not len(test_paths) or not len(source_paths):
        return pd.DataFrame(columns=columns)
    limit = max(1, size * size // 10) if max_distance is None else max_distance
    a = np.stack([dhash_bits(p, size) for p in test_paths]).astype(np.float32)
    b = np.stack([dhash_bits(p, size) for p in source_paths]).astype(np.float32)
    rows, step = [], max(1, 4_000_000 // len(b))
    for start in range(0, len(a), step):          # Hamming distances, a block of test rows at a time
        blk = a[start:start + step]
        dist = blk @ (1 - b).T + (1 - blk) @ b.T
        for i, j in zip(*np.nonzero(dist <= limit)):
            rows.append((str(test_paths[start + i]), str(source_paths[j]), int(round(dist[i, j]))))
    return pd.DataFrame(rows, columns=columns).sort_values("distance", kind="stable").reset_index(drop=True)


def montage(pairs: pd.DataFrame, out_path: str | Path, max_pairs: int = 12) -> Path | None:
    """A PNG of near-duplicate pairs, test image left, source image right; None when there is none."""
    from matplotlib.figure import Figure

    from .images import load_gray

    pairs = pairs.head(max_pairs)
    if pairs.empty:
        return None
    fig = Figure(figsize=(4, 2 * len(pairs)))
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for (ax_t, ax_s), row in zip(axes, pairs.itertuples()):
        for ax, path, who in ((ax_t, row.test_path, "test"), (ax_s, row.source_path, f"source, d={row.distance}")):
            ax.imshow(load_gray(path), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{who}\n{Path(path).name}", fontsize=6)
            ax.set_axis_off()
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic.atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_path


def warn_near_duplicates(test: pd.DataFrame, source: pd.DataFrame, name: str, montage_path: str | Path,
                         **kwargs) -> pd.DataFrame:
    """Log a warning (and save a montage) when ``source`` holds near-duplicates of real test images."""
    pairs = near_duplicates(test["path"].tolist(), source["path"].tolist(), **kwargs)
    if not pairs.empty:
        saved = montage(pairs, montage_path)
        log.warning("%d near-duplicate pair(s) of real test images in %s (perceptual hash), e.g. %s; see %s",
                    len(pairs), name, list(zip(pairs["test_path"], pairs["source_path"]))[:3], saved)
    return pairs
