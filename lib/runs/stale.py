"""Committed tables are products of the code (issue 25, item 5): `python -m lib.runs.stale --figures figures`
lists the CSVs in a figures folder whose content differs from git HEAD's (or that HEAD lacks) and exits 1 if
any do. `make demo` runs it after the sweep has rewritten figures/: a table that moved means either the code
changed the result (commit the new table with the change that moved it) or the committed one was stale.
Only the folder's own CSVs are compared (not its subfolders: figures/study is another target's), and not their
timing columns (a header naming a cost, seconds or wall time: what a machine took, not what the code computed)."""
from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ..core import paths


def committed(rel: str, root: Path) -> bytes | None:
    """The file's bytes at git HEAD (``rel``: its path in the checkout, with slashes); None if HEAD lacks it."""
    out = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=root, capture_output=True)
    return out.stdout if out.returncode == 0 else None


def _first_difference(old: bytes, new: bytes) -> str:
    a, b = old.decode(errors="replace").splitlines(), new.decode(errors="replace").splitlines()
    for i, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return f"line {i}: committed {x[:100]!r}, now {y[:100]!r}"
    return f"committed {len(a)} lines, now {len(b)}"


TIMING = re.compile(r"cost|seconds|wall|(^|_)s$|_min$", re.IGNORECASE)


def without_timings(data: bytes) -> bytes:
    """The table with its timing columns left out (the bytes as they are when it is not a CSV pandas reads)."""
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError):
        return data
    return df[[c for c in df.columns if not TIMING.search(str(c))]].to_csv(index=False).encode()


def stale(figures_dir, root=None) -> list[tuple[str, str]]:
    """(path in the checkout, why) for each CSV of ``figures_dir`` that differs from git HEAD's."""
    root = Path(root or paths.ROOT).resolve()
    d = paths.resolve(figures_dir).resolve()
    if not d.is_dir():
        raise FileNotFoundError(f"figures folder {d} does not exist; pass the folder the sweep wrote (its figures_dir).")
    if not d.is_relative_to(root):
        raise ValueError(f"figures folder {d} is outside the checkout {root}; only committed tables can be compared.")
    out = []
    for f in sorted(d.glob("*.csv")):
        rel = f.relative_to(root).as_posix()
        head = committed(rel, root)
        if head is None:
            out.append((rel, "not in git HEAD (new table: commit it)"))
        elif without_timings(head) != without_timings(f.read_bytes()):
            out.append((rel, _first_difference(without_timings(head), without_timings(f.read_bytes()))))
    return out


def _is_checkout(root: Path) -> bool:
    return subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.runs.stale", description=__doc__.splitlines()[0])
    ap.add_argument("--figures", default="figures", help="the folder a sweep wrote its tables to (figures_dir)")
    ap.add_argument("--root", default=None, help="the git checkout (default: this project's)")
    args = ap.parse_args(argv)
    root = Path(args.root or paths.ROOT).resolve()
    if not _is_checkout(root):           # an exported copy has no HEAD to compare with: say so, fail nothing
        print(f"{root} is not a git checkout with a commit: committed tables not compared", file=sys.stderr)
        return 0
    found = stale(args.figures, root)
    n = len(list(paths.resolve(args.figures).glob("*.csv")))
    if not found:
        print(f"all {n} tables in {args.figures} equal git HEAD's")
        return 0
    print(f"{len(found)} of {n} tables in {args.figures} differ from git HEAD's: if the code moved them, commit them "
          "with that change (git add); else find what changed the result", file=sys.stderr)
    for rel, why in found:
        print(f"  {rel}: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
