"""Named pairs as rows of the paired-comparison table (lib.analyze.comparisons).

A sweep file may name comparisons (``pairs:``, lib/runs/sweep_pairs.py); lib.runs.sweeps.named_pairs hands them to
the analysis as ``{"name", "a", "b", "a_runs", "b_runs"}``: the row's label, each side's selector as text, and the
run folders of each side's finished points. Each becomes one row with the automatic rows' columns, seeds paired by
value, labelled by its name; ``pair`` holds the name (the verdict then says ``a > b``), ``a`` and ``b`` the
selectors, ``results_x`` and ``results_b`` the stage-05 folders each side read (the planner costs them).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import paths


def records(df: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """The collected records of these run folders, matched by the name of their stage-05 folder (its key), so a
    runs root moved after it ran still matches (run.json keeps the old absolute path)."""
    wanted = set()
    for r in runs:
        rec = json.loads((paths.resolve(r) / "run.json").read_text())
        d = rec.get("stages", {}).get("05_classifier", {}).get("stage_dir")
        wanted |= {Path(d).name} if d else set()
    return df[[Path(d).name in wanted for d in df["results_dir"]]]


def _label(g: pd.DataFrame) -> str:
    """The group label comparisons uses (method and setting): it tells _one whether a side is a gated run."""
    if g.empty:
        return "none"
    r = g.iloc[0]
    return r["method"] + (f" {r['setting']}" if r.get("setting") else "")


def _size(gx: pd.DataFrame, gb: pd.DataFrame):
    sizes = [sorted(g["tuning_size"].dropna().unique()) for g in (gx, gb)]
    if sizes[0] == sizes[1]:
        return sizes[0][0] if len(sizes[0]) == 1 else ""
    return " vs ".join("/".join(map(str, s)) for s in sizes)


def rows(df: pd.DataFrame, named: list[dict] | None, one) -> list[dict]:
    """One comparison row per named pair; ``one`` is comparisons._one (x label, b label, x records, b records)."""
    out = []
    for p in named or []:
        gx, gb = records(df, p.get("a_runs", [])), records(df, p.get("b_runs", []))
        empty = [s for s, g in (("a", gx), ("b", gb)) if g.empty]
        row = ({"comparison": p["name"], "seeds": "", "n_seeds": 0,
                "note": f"{' and '.join(empty)}: no finished run"} if empty
               else one(_label(gx), _label(gb), gx, gb))
        row.update({"comparison": p["name"], "pair": p["name"], "a": p.get("a", ""), "b": p.get("b", ""),
                    "results_x": ";".join(gx["results_dir"]), "results_b": ";".join(gb["results_dir"])})
        out.append({"tuning size": _size(gx, gb) if not empty else np.nan, **row})
    return out
