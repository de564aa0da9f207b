"""The FTER report on the command line: `python -m lib.runs.report --root runs/demo [--sweep <sweep file>]`.

Prints the trainability matrix with FTER, the chance-corrected FTER and TR, why the plain FTER can mislead,
the paired comparisons, the calibration checks on reference generators, the fidelity table and its
agreement with trainability, the recomputation check of every reported number and the figures written.
With ``--sweep`` only that sweep's finished runs are read, and the points not finished are listed; it lives
in lib.runs because it asks the sweep machinery which runs those are (the analysis steps never do).
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from ..analyze import agreement, calibration, collection, recompute, tables
from ..core import config, overrides, paths, stages
from . import sweep_spec, sweeps


def sweep_runs(sweep_file, sets: list[str] | None, runs_root) -> tuple[list | None, str | None]:
    """(run folders of the sweep's finished points, its figures folder); (None, None) when none finished.
    The points not finished are listed on stderr: the tables leave them out."""
    sw = sweep_spec.load(sweep_file, overrides.parse_sets(sets))
    finished, missing = sweeps.finished_runs(sw, runs_root)
    if missing:
        print(f"{len(missing)} of {len(sw.points)} points of {sweep_file} have not finished; the tables leave "
              f"them out: {', '.join(missing)}", file=sys.stderr)
    if not finished:        # never fall back to every record under --root: they may be other parameters'
        print(f"no run of {sweep_file} has finished stage 05 under {paths.resolve(runs_root)}; run "
              f"python -m lib.runs.sweeps {sweep_file} first.", file=sys.stderr)
        return None, None
    return [r.directory for r in finished], sw.figures_dir


def print_tables(df: pd.DataFrame, pairs: list[dict] | None = None, n_boot: int = 200) -> dict[str, pd.DataFrame]:
    """The matrix, the ratios explained, the comparisons (with a sweep file's named ``pairs``), the calibration
    checks and the fidelity table, all from lib.analyze.tables.all_tables (the procedure notebook 06 uses, at its
    default ``n_boot``), so both print the same numbers. Returns the tables printed."""
    t = tables.all_tables(df, pairs, n_boot, calibration.permutation_null(df), calibration.view_floor(df))
    s = t["summary"]
    print(f"\nThe trainability matrix ({len(df)} runs; seed means with 95% t-intervals over seeds, none below 3 "
          "seeds; a = train synthetic, test real; b = train real, test synthetic; tuning-only: the same classifier "
          "trained on the run's own tuning set, generator gain = TR - TR tuning-only)")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 200):
        print(t["matrix"].to_string(index=False))
        print("\n" + tables.explain_ratios(s))
        print("\nPaired comparisons (per-seed differences on shared test sets; t-interval, minimum detectable "
              "effect at 80% power and paired t-test over seeds, Holm across the table; DeLong within seed):")
        print(t["comparisons"].to_string(index=False))
        checks = t["calibration_checks"]
        if not checks.empty:
            print("\nCalibration on reference generators (must hold by construction):")
            print(checks.drop(columns="why").to_string(index=False))
            for why in checks.loc[checks["holds"].isna(), "why"]:
                print(f"  {why}")
            print(t["calibration_orderings"].to_string(index=False))
        fid = t["fidelity"]
        if len(fid) and (fid.iloc[:, 4:] != "–").any().any():
            print("\nFidelity, diversity and memorization (seed means with two-level 95% CIs; stage 05, "
                  "lib/evaluate/fidelity.py):")
            print(fid.to_string(index=False))
            print("\n" + agreement.fidelity_agreement(s))
        if len(t["variance"]):
            print("\nVariance components of AUROC(a) and TR (records with classifier repeats; s.d. and share between "
                  "generator seeds, between repeats within a seed, test-image bootstrap within a repeat):")
            print(t["variance"].to_string(index=False))
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.runs.report", description="Print the FTER table.")
    ap.add_argument("--root", default="runs", help="runs root (or one experiment's folder) to collect from")
    ap.add_argument("--sweep", help="only the runs of this sweep file")
    ap.add_argument("--runs-root", default="runs", help="with --sweep: the runs root it ran in")
    ap.add_argument("--figures", default=None, help="list the figures in this folder")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --sweep: the overrides it ran with")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates of the seed-mean CIs (notebook 06's "
                    "n_boot; give the same value to print the same intervals)")
    args = ap.parse_args(argv)
    runs, figures = None, args.figures
    if args.sweep:
        runs, sweep_figures = sweep_runs(args.sweep, args.set, args.runs_root)
        if runs is None:
            return 1
        figures = figures or sweep_figures
    df = collection.collect(args.root, runs)
    if df.empty:
        print(f"no results records found under {paths.resolve(args.root)}", file=sys.stderr)
        return 1
    dev = config.load(sweep_spec.load(args.sweep, overrides.parse_sets(args.set)).base).development_seeds \
        if args.sweep else []
    warning = collection.development_seed_warning(df, dev)
    if warning:
        print(f"\n{warning}")
    pairs = sweeps.named_pairs(sweep_spec.load(args.sweep, overrides.parse_sets(args.set)), args.runs_root) \
        if args.sweep else []
    print_tables(df, pairs, args.n_boot)
    checked = recompute.check(df)
    print(f"\nall {int(checked['checked'].sum())} reported metric values match their recomputation "
          "from the saved predictions")
    if figures:
        print("\nfigures:")
        for f in sorted(paths.resolve(figures).glob("06_*.p*")):
            print(f"  {stages.paths_rel(f)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
