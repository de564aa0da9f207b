"""Leakage checks on the files themselves, not on what a manifest says about them.

``check_content`` hashes the bytes of every real test image and every file of each training source
(the real training pool, the whole synthetic set, the generator's tuning set) and refuses a shared
file, image id or patient. Hashes are cached by path, size and times, so a repeated check reads only
new or changed files.

``check_near_duplicates`` finds real test images that a source holds in an altered form (re-encoded,
resized) wherever outside images enter: an imported folder (generation.kind folder: stage 04, again in
stage 05), an external tuning folder (stage 02, before the labeller trains) and the other pools of a
folder, csv or shapes data source (stage 01). It refuses by default (LeakageError naming each file and its
test twin, ``near_duplicates.csv`` with every pair and ``near_duplicates.png``, a montage), or warns when
``data.near_duplicates: warn``. An image is described by the 8 x 8 lowest DCT frequencies of its grayscale
at 64 px, without the DC term; a pair is a near-copy when it is closer than real images of different
patients are, in both distances: cosine (the layout, whatever the contrast) below 0.2 x its floor and L2
(the layout with its contrast) below 0.5 x its floor. A floor is the 1% quantile of each test image's
distance to its nearest real image of another patient (the test pool and a reference: the training pool,
or every pool of a data source), at least 0.15 x their median (so a data set full of copies cannot drag
the floor down to its copies' distance).

Measured (benchmarks/bench_near_duplicates.py, results/bench_near_duplicates.txt): on the demo's phantoms a
folder of 300 real tuning-pool images per class gave 0 flags (the old 8x8 dHash: 46,704 pairs), its closest
pair at 4.5x the threshold; 5 planted copies (JPEG quality 85, resized by +-3 px) all flagged, the farthest
at 0.11 of the threshold; the shapes domain: 0 flags (closest at 3.1x), 5 of 5 (farthest 0.14); the same
numbers through the external path; the shapes domain as a csv source, 9 of 9 copies split across pools
flagged and nothing else. Chosen over a normalised 16 px grayscale vector, 32/64 px DCT pHashes (64 px
16 x 16 bits: a planted copy at 0.24 of the closest different-patient pair) and 16 x 16 DCT frequencies (a
copy at up to 0.35 of the threshold at smoke size); the L2 half keeps two shapes of one layout but other
colours apart (a circle and a paler circle at the same place: 0.35-0.44 of the cosine floor, 0.7-1.1 of the L2).
A flat image has no layout: only byte equality finds its copies.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, fingerprints, provenance
from ..core.paths import DATA, resolve
from .nih import DataError

log = logging.getLogger(__name__)
CACHE = DATA / "cache" / "file_hashes"     # a folder: one JSON shard per image folder hashed
RACY_SECONDS = 2.0          # a file modified this recently may change again within the same mtime tick
SHOW = 5                    # how many examples an error names
NAME_PAIRS = 20              # how many near-duplicate pairs a message names (all of them: the CSV beside the montage)
DESCRIPTOR_SIZE = 64        # near duplicates: grayscale side, and
DESCRIPTOR_FREQS = 8        # the lowest DCT frequencies kept per axis (DC dropped: 63 numbers)
CALIBRATION_QUANTILE = 0.01  # the floor: this quantile of test images' nearest different-patient distances
CALIBRATION_FACTOR = 0.2    # a pair is a near-copy below this x the cosine floor, and
INTENSITY_FACTOR = 0.5      # below this x the L2 floor (the two circles of two families differ in intensity)
MEDIAN_GUARD = 0.15         # the floor is at least this x the median nearest different-patient distance
DESCRIPTION = (f"cosine and L2 distances of the {DESCRIPTOR_FREQS}x{DESCRIPTOR_FREQS} lowest DCT frequencies "
               f"of the grayscale at {DESCRIPTOR_SIZE} px")


class LeakageError(RuntimeError):
    """The same patient, image or (near-)copy of an image sits in two sets that must be disjoint."""


# ---------------------------------------------------------------------------------- content hashes
def _stamp(st: os.stat_result) -> list[int]:
    # ctime too: a copy that keeps the mtime (cp -p) still changes it
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _shard(cache: Path, f: Path) -> Path:
    # One small file per image folder: a call reads the folders it asks about, not every file ever hashed
    # (one JSON of all of them took 0.3 s to parse at 72,000 entries, on every call).
    return cache / (hashlib.sha256(str(f.parent).encode()).hexdigest()[:16] + ".json")


def _read_cache(path: Path) -> dict:
    """A shard's entries; given the cache folder, every shard's, merged."""
    if path.is_dir():
        return {k: v for shard in sorted(path.glob("*.json")) for k, v in _read_cache(shard).items()}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, new: dict) -> None:
    """Merge new entries into a shard under a lock (another process may be adding its own);
    entries of files that no longer exist are dropped, so the shard stays the size of its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.exclusive(path.with_name(path.name + ".lock")):
        merged = {k: v for k, v in {**_read_cache(path), **new}.items() if k in new or os.path.exists(k)}
        atomic.write_text(path, json.dumps(merged, separators=(",", ":")))


def file_hashes(paths: list[str | Path], cache_path: Path | None = None) -> list[str]:
    """Content hash of each file (images.content_hash's format: sha256, first 16 hex digits), in order.

    Relative paths are taken from the project root. A missing file is a DataError naming it. Hashes are cached
    under ``cache_path`` (a folder, CACHE by default) by path, size and times.
    """
    cache_path = Path(cache_path) if cache_path is not None else CACHE
    shards, new, out, now = {}, {}, [], time.time_ns()
    for p in paths:
        f = resolve(p).resolve()
        try:
            stamp = _stamp(f.stat())
        except OSError:
            raise DataError(f"{p} is listed but not on disk ({f}); cannot check it for leakage.") from None
        shard = _shard(cache_path, f)
        if shard not in shards:
            shards[shard] = _read_cache(shard)
        hit = shards[shard].get(str(f))
        if hit is not None and hit[:3] == stamp:
            out.append(hit[3])
            continue
        h = provenance.file_hash(f)
        out.append(h)
        if now - stamp[1] > RACY_SECONDS * 1e9:
            new.setdefault(shard, {})[str(f)] = [*stamp, h]
    for shard, entries in new.items():
        _write_cache(shard, entries)
    return out


fingerprints.register_listed_hashes(file_hashes)     # how a sealed stage checks the files its manifest lists


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
def descriptors(paths_: list) -> np.ndarray:
    """One row per image: the DESCRIPTOR_FREQS x DESCRIPTOR_FREQS lowest DCT frequencies of its grayscale at
    DESCRIPTOR_SIZE px, without the DC term (so brightness does not count)."""
    from scipy.fft import dctn

    from .images import load_gray

    out = np.zeros((len(paths_), DESCRIPTOR_FREQS ** 2 - 1), dtype=np.float32)
    for i, p in enumerate(paths_):
        coef = dctn(load_gray(p, DESCRIPTOR_SIZE).astype(np.float64), norm="ortho")
        out[i] = coef[:DESCRIPTOR_FREQS, :DESCRIPTOR_FREQS].ravel()[1:]
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a flat image's zero row stays zero (cosine distance 1 to everything)."""
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 1e-9)


def _blocks(a: np.ndarray, b: np.ndarray):
    """(start row, cosine distances, L2 distances) of blocks of a's rows to every row of b, a few million at a time."""
    ua, ub, nb = _unit(a), _unit(b), (b.astype(np.float64) ** 2).sum(1)
    step = max(1, 4_000_000 // max(len(b), 1))
    for start in range(0, len(a), step):
        blk = a[start:start + step].astype(np.float64)
        cos = np.clip(1.0 - ua[start:start + step] @ ub.T, 0.0, None)
        l2 = np.sqrt(np.maximum((blk ** 2).sum(1)[:, None] + nb[None, :] - 2 * blk @ b.T.astype(np.float64), 0.0))
        yield start, cos, l2


def _patients(df: pd.DataFrame, tag: str) -> np.ndarray:
    """The patient (group) of each row; a row without one is its own (``tag`` keeps two tables' rows apart)."""
    given = df["patient"] if "patient" in df else pd.Series([None] * len(df))
    return np.array([f"p:{x}" if pd.notna(x) else f"{tag}:{i}" for i, x in enumerate(given)], dtype=object)


def different_patient_floor(test: pd.DataFrame, test_vecs: np.ndarray, reference: pd.DataFrame | None = None,
                            ref_vecs: np.ndarray | None = None) -> tuple[float, float]:
    """How close real images of different patients get, in (cosine, L2) distance: each test image's distance to
    its nearest real image of another patient (the other test images and the reference's), at
    CALIBRATION_QUANTILE over the test images, but at least MEDIAN_GUARD x their median."""
    names = [_patients(test, "t")]
    if reference is not None and len(reference):
        names.append(_patients(reference, "r"))
    codes = pd.factorize(np.concatenate(names))[0]          # integers: a fast same-patient mask
    pats = codes[:len(test)]
    nearest = np.full((len(test), 2), np.inf)
    others = [(pats, test_vecs)] + ([(codes[len(test):], ref_vecs)] if len(names) > 1 else [])
    for o_pats, o_vecs in others:
        for start, cos, l2 in _blocks(test_vecs, o_vecs):
            rows = slice(start, start + len(cos))
            same = pats[rows][:, None] == o_pats[None, :]            # the same patient (or image)
            for k, d in enumerate((cos, l2)):
                d[same] = np.inf
                nearest[rows, k] = np.minimum(nearest[rows, k], d.min(1))
    nearest = nearest[np.isfinite(nearest).all(1)]
    if not len(nearest):
        return float("nan"), float("nan")
    # the median guard: when over a hundredth of the test images have a near-copy among the reference (a data
    # set full of duplicates), the low quantile is a copy's distance and would let every copy through
    low, mid = np.quantile(nearest, CALIBRATION_QUANTILE, axis=0), np.median(nearest, axis=0)
    return tuple(float(x) for x in np.maximum(low, MEDIAN_GUARD * mid))


def near_duplicates(test: pd.DataFrame, source_paths: list, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pairs (test_path, source_path, cosine, l2, ratio) of a real test image and a source file that are closer
    than real images of different patients are, closest first: the cosine distance below CALIBRATION_FACTOR x
    its floor and the L2 distance below INTENSITY_FACTOR x its floor (``ratio``: the larger of the two
    distances in units of its threshold, below 1 for every pair returned).

    ``test`` needs path and patient; ``reference`` (path, patient: real images of other patients, e.g. the
    training pool) sharpens the floors. The floors and thresholds are in ``.attrs``."""
    columns = ["test_path", "source_path", "cosine", "l2", "ratio"]
    test_paths = test["path"].tolist()
    if not len(test_paths) or not len(source_paths):
        return pd.DataFrame(columns=columns)
    a, b = descriptors(test_paths), descriptors(list(source_paths))
    ref_vecs = None
    if reference is not None and len(reference):      # the source itself may be the reference (a data source)
        ref_paths = reference["path"].tolist()
        ref_vecs = b if ref_paths == list(source_paths) else descriptors(ref_paths)
    floors = different_patient_floor(test, a, reference, ref_vecs)
    limits = np.array([CALIBRATION_FACTOR * floors[0], INTENSITY_FACTOR * floors[1]])
    if not (limits > 0).all():
        log.warning("near-duplicate check: real images of different patients are identical in %s (floors %s), so "
                    "no near-copy can be told apart; only byte-equal files are refused.", DESCRIPTION, floors)
        limits = np.zeros(2)
    rows = []
    for start, cos, l2 in _blocks(a, b):
        ratio = np.maximum(cos / max(limits[0], 1e-30), l2 / max(limits[1], 1e-30))
        for i, j in zip(*np.nonzero(ratio < 1)):
            rows.append((str(test_paths[start + i]), str(source_paths[j]), float(cos[i, j]), float(l2[i, j]),
                         float(ratio[i, j])))
    pairs = pd.DataFrame(rows, columns=columns).sort_values("ratio", kind="stable").reset_index(drop=True)
    pairs.attrs.update(floors=floors, thresholds=tuple(float(x) for x in limits))
    return pairs


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
        near = f"source, {row.ratio:.3f} of the threshold"
        for ax, path, who in ((ax_t, row.test_path, "real test"), (ax_s, row.source_path, near)):
            ax.imshow(load_gray(path), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{who}\n{Path(path).name}", fontsize=6)
            ax.set_axis_off()
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic.atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_path


def check_near_duplicates(test: pd.DataFrame, source: pd.DataFrame, name: str, montage_path: str | Path,
                          policy: str = "refuse", reference: pd.DataFrame | None = None,
                          fix: str = "remove those files from it") -> pd.DataFrame:
    """Refuse (LeakageError; policy "warn": log a warning) when ``source`` holds near-copies of real test
    images, naming each file and its test twin and drawing the montage; returns the pairs."""
    pairs = near_duplicates(test, source["path"].tolist(), reference)
    montage_path = Path(montage_path)
    if pairs.empty:     # a fixed folder's rerun: no stale montage or list of an earlier refusal stays behind
        for stale in (montage_path, montage_path.with_suffix(".csv")):
            stale.unlink(missing_ok=True)
        return pairs
    saved = montage(pairs, montage_path)
    listing = atomic.write_csv(montage_path.with_suffix(".csv"), pairs)
    files = pairs["source_path"].nunique()
    named = [f"{s} ~ test {t} ({r:.3f})" for s, t, r in
             zip(pairs["source_path"], pairs["test_path"], pairs["ratio"])]
    shown = "; ".join(named[:NAME_PAIRS]) + (f"; and {len(named) - NAME_PAIRS} more" if len(named) > NAME_PAIRS else "")
    what = (f"{files} file(s) of {name} are near-copies of real test images ({len(pairs)} pair(s), each closer than "
            f"real images of different patients are, in the {DESCRIPTION}; in brackets: the distance in units of the "
            f"threshold): {shown}. "
            f"Every pair: {listing}; montage: {saved}")
    if policy == "warn":
        log.warning("%s. Going on because data.near_duplicates = 'warn'.", what)
        return pairs
    raise LeakageError(f"refusing: {what}. A test image trained on inflates every score; {fix}, or set "
                       "data.near_duplicates: warn to go on with a warning.")
