"""The near-duplicate check (lib/data/leakage.py) on a clean folder and on one with 5 planted re-encoded copies.

For each domain (the demo's phantoms, params/demo.yaml; the shapes domain, params/shapes_demo.yaml) it runs
stage 01 in a scratch runs root, then builds
- a clean folder: 300 real tuning-pool images per class (never in the test pool, other patients), and
- a planted folder: the same plus 5 real test images re-encoded (JPEG quality 85, resized by +3 or -3 px),
and prints, for the folder path (generation.kind folder: lib.generate.references.check_folder, what stage 04 runs)
and the external path (selection.external_dir: the same call lib.tuningset.external.candidates makes on the folder's
images, read unlabelled by external.scan), the flagged pairs, how many planted copies are flagged, and each side's margin:
the closest clean pair and the farthest planted copy in units of the threshold. The old 8x8 dHash check
(at most 6 differing bits) is counted beside it on the clean folder. For the data source's own split (a
csv source: lib.data.domains.check_pools in stage 01) the shapes domain is read as a csv source with 30 re-encoded
copies listed under new groups (those the split puts across the test pool and another pool are leaks). Usage:
    .venv/bin/python benchmarks/bench_near_duplicates.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lib.core import config, paths, stages
from lib.data import curation, leakage
from lib.tuningset import external
from lib.generate import generation, references
from lib.data.leakage import LeakageError

PER_CLASS, PLANTED, QUALITY, SHIFT = 300, 5, 85, 3
CSV_COPIES = 30             # the csv case: listed before the split, only some copies land across test and another pool


def reencode(src: Path, dst: Path, shift: int) -> None:
    """A copy with other bytes: resized by ``shift`` px a side, saved as JPEG at QUALITY."""
    with Image.open(src) as im:
        im = im.convert("RGB" if im.mode == "RGB" else "L")
        im = im.resize((im.width + shift, im.height + shift), Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, "JPEG", quality=QUALITY)


def folders(pools: dict, root: Path, seed: int = 0) -> tuple[Path, Path, dict[str, str]]:
    """(clean folder, planted folder, planted file name -> its test twin's path); one sub-folder per class."""
    clean, planted = root / "clean", root / "planted"
    for label, rows in pools["tuning"].groupby("label", sort=True):
        for p in rows.sort_values("image_id")["path"].head(PER_CLASS):
            for folder in (clean, planted):
                dst = folder / generation.slug(label) / Path(p).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(paths.resolve(p), dst)
    test = pools["test"]
    twins = {}
    for k, i in enumerate(np.random.default_rng(seed).choice(len(test), PLANTED, replace=False)):
        row = test.iloc[i]
        name = f"copy{k}.jpg"
        reencode(paths.resolve(row["path"]), planted / generation.slug(row["label"]) / name, SHIFT if k % 2 else -SHIFT)
        twins[name] = str(row["path"])
    return clean, planted, twins


def old_dhash_pairs(test_paths: list, source_paths: list, size: int = 8, limit: int = 6) -> int:
    """The check this one replaced: 8x8 difference hashes within 6 bits."""
    def bits(p):
        with Image.open(paths.resolve(p)) as im:
            a = np.asarray(im.convert("L").resize((size + 1, size), Image.LANCZOS), dtype=np.int16)
        return (a[:, 1:] > a[:, :-1]).ravel().astype(np.float32)
    a, b = np.stack([bits(p) for p in test_paths]), np.stack([bits(p) for p in source_paths])
    return int(((a @ (1 - b).T + (1 - a) @ b.T) <= limit).sum())


def report(what: str, pairs: pd.DataFrame, twins: dict[str, str], clean_paths: list | None, test) -> str:
    """One line: flags, planted copies found, floors, and the margin on the side that matters (the closest clean
    pair, the farthest planted copy), both in units of the threshold (a pair is flagged below 1)."""
    floors, limits = pairs.attrs["floors"], pairs.attrs["thresholds"]
    hits = {Path(s).name for s, t in zip(pairs["source_path"], pairs["test_path"]) if twins.get(Path(s).name) == t}
    line = (f"  {what:32s} flagged pairs {len(pairs):4d}  "
            + (f"planted flagged {len(hits)}/{len(twins)}" if twins else "clean") +
            f"  (floors: cosine {floors[0]:.3g}, L2 {floors[1]:.3g}")
    if clean_paths is not None:
        line += f"; closest clean pair at {min_ratio(test, clean_paths, limits):.2f} of the threshold"
    if hits:
        worst = pairs.loc[[Path(s).name in hits for s in pairs["source_path"]], "ratio"].max()
        line += f"; farthest planted copy at {worst:.3f} of the threshold"
    return line + ")"


def min_ratio(test: pd.DataFrame, source_paths: list, limits) -> float:
    """The closest pair of test and source images in units of the threshold (the larger of its two ratios)."""
    a, b = leakage.descriptors(test["path"].tolist()), leakage.descriptors(source_paths)
    return float(min(np.maximum(cos / limits[0], l2 / limits[1]).min() for _, cos, l2 in leakage._blocks(a, b)))


def folder_path(cfg, runs_root, folder: Path, out: Path, twins, clean_paths, test) -> str:
    warn = config.from_dict(config.apply_overrides(cfg.to_dict(), {"generation.kind": "folder",
                                                                  "generation.folder": str(folder),
                                                                  "generation.n_per_label": PER_CLASS + PLANTED,
                                                                  "data.near_duplicates": "warn"}))
    df, _ = references.plan(warn, runs_root, progress=False)
    pairs = references.check_folder(warn, df, out, runs_root)
    refuse = config.from_dict(config.apply_overrides(warn.to_dict(), {"data.near_duplicates": "refuse"}))
    try:
        references.build(refuse, out / "stage04", runs_root, progress=False)
        verdict = "stage 04 built"
    except LeakageError:
        verdict = "stage 04 refused"
    return report(f"folder path ({verdict})", pairs, twins, clean_paths, test)


def external_path(pools, folder: Path, out: Path, twins, clean_paths) -> str:
    flat = out / "external"
    for f in folder.rglob("*"):
        if f.is_file():
            (flat / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, flat / f.parent.name / f.name)
    ext = external.scan(str(flat))
    pairs = leakage.check_near_duplicates(pools["test"], ext, "the external folder", out / "ext_near.png", "warn",
                                          reference=pools["train"])
    return report("external path", pairs, twins, clean_paths, pools["test"])


def domain(params: str, scratch: Path) -> list[str]:
    cfg = config.load(params)
    runs_root = scratch / "runs"
    t0 = time.perf_counter()
    stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False)
    pools = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))
    clean, planted, twins = folders(pools, scratch / cfg.experiment)
    clean_files = [str(p) for p in sorted(clean.rglob("*.png"))]
    lines = [f"{params} ({cfg.data.source}, {cfg.data.image_size} px): test pool {len(pools['test'])}, "
             f"reference (training pool) {len(pools['train'])}, clean folder {len(clean_files)} images; "
             f"old 8x8 dHash check on the clean folder: {old_dhash_pairs(pools['test']['path'], clean_files)} pairs"]
    for name, folder, tw in (("clean", clean, {}), ("planted", planted, twins)):
        out = scratch / cfg.experiment / f"out-{name}"
        out.mkdir(parents=True, exist_ok=True)
        lines.append(f" {name} folder ({sum(1 for _ in folder.rglob('*.*'))} images):")
        mine = clean_files if name == "clean" else None
        lines.append(folder_path(cfg, runs_root, folder, out, tw, mine, pools["test"]))
        lines.append(external_path(pools, folder, out, tw, mine))
    lines.append(f" ({time.perf_counter() - t0:.0f} s)")
    return lines


def source_path(scratch: Path) -> list[str]:
    """The shapes domain read as a csv source, with PLANTED re-encoded copies under groups of their own."""
    cfg = config.load("params/shapes_demo.yaml")
    root = Path(curation.domains.read_source(cfg)["path"].iloc[0]).parent.parent
    table = pd.read_csv(root / "labels.csv")
    table["path"] = [str(root / p) for p in table["path"]]
    picks = table.sample(n=CSV_COPIES, random_state=0)
    copies = []
    for k, (_, row) in enumerate(picks.iterrows()):
        dst = scratch / "csv" / f"copy{k}.jpg"
        reencode(Path(row["path"]), dst, SHIFT if k % 2 else -SHIFT)
        copies.append({"path": str(dst), "label": row["label"], "group": f"copy-{k}"})
    csv = scratch / "csv" / "labels.csv"
    pd.concat([table, pd.DataFrame(copies)], ignore_index=True).to_csv(csv, index=False)
    lines = [f"params/shapes_demo.yaml as data.source csv ({len(table)} images + {CSV_COPIES} re-encoded copies "
             "under new groups):"]
    for policy in ("warn", "refuse"):
        out = scratch / f"csv-{policy}"
        try:
            pools = _stage01(out, {"data.source": "csv", "data.csv": str(csv), "data.near_duplicates": policy})
        except LeakageError:
            lines.append("  refuse: stage 01 refused")
            continue
        pool_of = {str(paths.resolve(p)): name for name, df in pools.items() for p in df["path"]}
        across = {frozenset((o, c["path"])) for c, o in zip(copies, picks["path"])
                  if o in pool_of and c["path"] in pool_of and "test" in {pool_of[o], pool_of[c["path"]]}
                  and pool_of[o] != pool_of[c["path"]]}
        found = _pairs(out)
        hits = sum(1 for t, s_ in found if frozenset((t, s_)) in across)
        lines.append(f"  {policy}: {len(across)} planted pair(s) across the test pool and another pool; "
                     f"{len(found)} flagged pair(s), {hits} of them planted")
    _stage01(scratch / "own", {"data.near_duplicates": "warn"})
    own = len(_pairs(scratch / "own"))
    lines.append(f"  the shapes source's own split (data.source shapes): {own} flagged pair(s)")
    return lines


def _stage01(out: Path, overrides: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return curation.run(config.load("params/shapes_demo.yaml", overrides), out, progress=False)["pools"]


def _pairs(out: Path) -> list[tuple[str, str]]:
    """The (test, other) paths stage 01 flagged, from near_duplicates.csv (absent: none)."""
    listing = out / "near_duplicates.csv"
    if not listing.exists():
        return []
    df = pd.read_csv(listing)
    return [(str(paths.resolve(t)), str(paths.resolve(s))) for t, s in zip(df["test_path"], df["source_path"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="scratch folder to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="bench-near-dup-"))
    print(f"descriptor: {leakage.DESCRIPTION}. A pair is flagged when its cosine distance is below "
          f"{leakage.CALIBRATION_FACTOR} x the cosine floor and its L2 distance below {leakage.INTENSITY_FACTOR} x the "
          f"L2 floor; a floor is the {leakage.CALIBRATION_QUANTILE:g} quantile (at least {leakage.MEDIAN_GUARD} x the "
          "median) of each test image's distance to its nearest real image of another patient (test and training "
          "pools; for a data source, every pool)")
    try:
        for params in ("params/demo.yaml", "params/shapes_demo.yaml"):
            print("\n".join(domain(params, scratch)))
        print("\n".join(source_path(scratch)))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
