"""One interval procedure (issue 25, item 6): the console report (python -m lib.runs.report) prints the tables
notebook 06 computes, through lib.analyze.tables.all_tables, so the two never show different intervals or
p-values for the same records."""
import pandas as pd
import pytest
import standins

from lib.analyze import aggregate, collection, comparisons, tables, tuning_only
from lib.core import config, stages


@pytest.fixture
def df(runs_root):
    """Three seeds of random and gated spectral-CLIP (stand-in records): enough for t-intervals and Holm."""
    for seed in (0, 1, 2):
        for m in ({"finetune.method": "random"},
                  {"finetune.method": "spectral-clip", "gating.enabled": True, "gating.mode": "absolute"}):
            cfg = config.load("params/smoke.yaml", {**m, "seed": seed})
            out = stages.stage_dir(cfg, "05_classifier", runs_root)
            out.mkdir(parents=True)
            standins.write_fake_results(cfg, out)
    return collection.collect(runs_root)


def _notebook_06(df: pd.DataFrame, n_boot: int = 200) -> dict[str, pd.DataFrame]:
    """The calls of notebook 06's cells (summary with the tuning-only baseline; comparisons), as written there."""
    summary = aggregate.summary(df, n_boot)
    summary = tuning_only.add(summary, tuning_only.per_run(df))
    return {"matrix": tables.fter_table(summary), "comparisons": comparisons.table(comparisons.compare(df, pairs=None))}


def test_the_report_prints_the_numbers_notebook_06_computes(df, capsys):
    from lib.runs import report

    shown = report.print_tables(df, pairs=None)
    out = capsys.readouterr().out
    nb = _notebook_06(df)
    for name in ("matrix", "comparisons"):
        pd.testing.assert_frame_equal(shown[name], nb[name])
        with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 200):
            assert nb[name].to_string(index=False) in out          # printed exactly as the notebook shows it
    p = nb["comparisons"]["p (seeds, Holm)"].iloc[0]
    assert p != "–" and p in out                                   # the seed-level Holm p, not another test's


def test_the_report_takes_the_notebooks_bootstrap_size(df, runs_root, capsys):
    from lib.runs import report

    assert report.main(["--root", str(runs_root), "--n-boot", "50"]) == 0
    t = tables.all_tables(df, None, 50)
    assert len(t["summary"]) == 2 and {"matrix", "comparisons", "calibration_checks", "fidelity"} <= set(t)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 200):
        assert t["matrix"].to_string(index=False) in capsys.readouterr().out
