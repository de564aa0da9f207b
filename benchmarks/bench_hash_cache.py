"""The leakage check's content-hash cache (lib.data.leakage.file_hashes): one JSON of every file ever hashed, against
one shard per image folder (issue 24).

Every stage that checks leakage or names a set by its bytes looks its files up in the cache. With one JSON for all
of them, each call parses every entry ever written (the NIH set alone is 112,120 images, and every synthetic set adds
its own), and each write re-checks that every entry's file still exists. Sharded per folder, a call reads only the
folders it asks about. Both layouts run the same code side by side here: the single file is the sharded code with
every file mapped to one shard, which is what the cache was before.

A warm cache of ``--folders`` x ``--per-folder`` old files; then, timed, lookups of one folder's files (all hits),
and hashing one new folder (misses, then the write), each repeated ``--calls`` times.

    .venv/bin/python benchmarks/bench_hash_cache.py --folders 40 --per-folder 1500
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from lib.data import leakage

OLD = 1_000_000_000     # a file time well outside the racy window, so every entry is cached


def _files(root: Path, folders: int, per_folder: int) -> list[list[Path]]:
    out = []
    for k in range(folders):
        d = root / f"set{k:03d}"
        d.mkdir(parents=True)
        group = []
        for i in range(per_folder):
            f = d / f"{i:05d}.png"
            f.write_bytes(f"{k}-{i}".encode())
            os.utime(f, (OLD, OLD))
            group.append(f)
        out.append(group)
    return out


def _timed(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def measure(layout: str, groups: list[list[Path]], fresh: list[list[Path]], cache: Path, lookup: int,
            calls: int) -> dict:
    real_shard = leakage._shard
    if layout == "one file":
        leakage._shard = lambda c, f: c / "all.json"
    try:
        for g in groups:                       # warm: every old file cached
            leakage.file_hashes(g, cache)
        hits = _timed(lambda: leakage.file_hashes(groups[0][:lookup], cache), calls)
        todo = iter(fresh)
        misses = _timed(lambda: leakage.file_hashes(next(todo), cache), calls)
    finally:
        leakage._shard = real_shard
    return {"hits": hits, "misses": misses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folders", type=int, default=40)
    ap.add_argument("--per-folder", type=int, default=1500)
    ap.add_argument("--lookup", type=int, default=300, help="files per timed call")
    ap.add_argument("--calls", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        groups = _files(root / "data", a.folders, a.per_folder)
        fresh = _files(root / "new", 2 * a.calls, a.lookup)
        res = {layout: measure(layout, groups, fresh[i * a.calls:(i + 1) * a.calls], root / f"cache{i}", a.lookup,
                               a.calls)
               for i, layout in enumerate(("one file", "per folder"))}
    n = a.folders * a.per_folder
    print(f"warm cache of {n} files in {a.folders} folders; a call asks for {a.lookup} files ({a.calls} calls each)")
    for what, label in (("hits", "all cached (a stage re-checking a set)"), ("misses", "a new folder (hash, then write)")):
        one, per = res["one file"][what], res["per folder"][what]
        print(f"  {label:40s} one file {one * 1e3:8.1f} ms | per folder {per * 1e3:8.1f} ms | ratio {per / one:.3f}")


if __name__ == "__main__":
    main()
