"""FTER analysis: collection, recomputation from raw predictions, seed summaries and thesis tables."""
import numpy as np
import pandas as pd
import pytest
import standins

from lib import analysis, atomic, config, stages


def _record(runs_root, method_overrides, seed, writer=standins.write_fake_results):
    cfg = config.load("params/smoke.yaml", {**method_overrides, "seed": seed})
    out = stages.stage_dir(cfg, "05_classifier", runs_root)
    out.mkdir(parents=True)
    writer(cfg, out)
    return cfg, out


@pytest.fixture
def records(runs_root):
    for seed in (0, 1, 2):
        _record(runs_root, {"finetune.method": "random"}, seed)
        _record(runs_root, {"finetune.method": "spectral-clip", "gating.enabled": True, "gating.mode": "absolute"}, seed)
    _record(runs_root, {"finetune.control": "no-fine-tune"}, 0)
    return runs_root


def test_collect_finds_every_record_with_grouping_keys(records):
    df = analysis.collect(records)
    assert len(df) == 7
    assert list(df["method"].unique()) == ["no-fine-tune", "random", "active-gating"]
    assert set(df.loc[df["method"] == "active-gating", "setting"]) == {"thr0.3"}
    assert set(df.loc[df["method"] == "random", "setting"]) == {""}
    long = analysis.tidy(df)
    assert set(long["direction"]) == {"a", "b", "a/b"} and {"overall", "Unhealthy"} <= set(long["class"])


def test_reported_numbers_equal_those_recomputed_from_raw_predictions(records):
    df = analysis.collect(records)
    report = analysis.check(df)
    assert {"auroc_a", "auroc_b", "acc_a", "fter", "auroc_b_No Finding", "acc_a_Unhealthy"} <= set(report["metric"])
    assert report["checked"].min() == 7
    # a tampered record is caught
    victim = df.loc[3, "results_dir"]
    rec = pd.read_csv(f"{victim}/results.csv")
    rec.loc[0, "auroc_a"] += 0.01
    rec.to_csv(f"{victim}/results.csv", index=False)
    with pytest.raises(analysis.AnalysisMismatch, match="auroc_a"):
        analysis.check(analysis.collect(records))


def test_summary_means_stds_and_ci_match_a_direct_computation(records):
    df = analysis.collect(records)
    s = analysis.summary(df, n_boot=100)
    row = s[s["method"] == "random"].iloc[0]
    vals = df.loc[df["method"] == "random", "fter"]
    assert row["n_seeds"] == 3
    assert row["fter_mean"] == pytest.approx(vals.mean()) and row["fter_std"] == pytest.approx(vals.std(ddof=1))
    again = analysis.recompute(df[df["method"] == "random"])
    assert row["auroc_b_mean"] == pytest.approx(again["auroc_b"].mean(), abs=1e-12)
    assert row["fter_ci_low"] < row["fter_mean"] < row["fter_ci_high"]
    # a single seed has no std, but still a bootstrap interval
    nft = s[s["method"] == "no-fine-tune"].iloc[0]
    assert np.isnan(nft["fter_std"]) and nft["fter_ci_low"] < nft["fter_ci_high"]


def test_fast_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300), 2)           # with ties
    assert analysis._auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_thesis_tables_have_the_thesis_layout(records, tmp_path):
    tables = analysis.thesis_tables(analysis.summary(analysis.collect(records), n_boot=20))
    names = list(tables)
    assert names[0].startswith("Table 4.4: random") and names[1].startswith("Table 4.5: random")
    assert names[2].startswith("Table 4.12: active-gating") and names[3].startswith("Table 4.13")
    a, b = tables[names[0]], tables[names[1]]
    assert list(a.columns.get_level_values(0).unique()) == ["Accuracy", "AUROC"]
    assert list(a.index) == ["12 (no fine-tune)", "12"]              # Table 4.4's "No Fine tune" row first
    assert ("FTER", "mean ± std") in b.columns and "±" in b.loc["12", ("FTER", "mean ± std")]
    assert a.loc["12", ("AUROC", "95% CI")].startswith("[") and ("AUROC", "95% CI") in b.columns
    written = analysis.save_tables(tables, tmp_path)
    assert len(written) == 8 and r"\toprule" in written[1].read_text()


def test_records_in_the_evaluation_modules_format_are_read_too(runs_root):
    metrics = pytest.importorskip("lib.metrics")
    results = pytest.importorskip("lib.results")

    def writer(cfg, out):
        pa, pb = standins.fake_predictions(150, 0.5, 1), standins.fake_predictions(150, 2.0, 2)
        atomic.write_csv(out / "predictions_a.csv", pa)
        atomic.write_csv(out / "predictions_b.csv", pb)
        ya, yb = (pa["label"] == "Unhealthy").astype(int), (pb["label"] == "Unhealthy").astype(int)
        row = {"method": results.method_name(cfg), "tuning_per_label": cfg.selection.per_label, "tuning_size": 99,
               "seed": cfg.seed, **metrics.two_way(ya, pa["score"], yb, pb["score"], n_boot=20),
               **results.flatten(cfg.to_dict(), "param.")}
        atomic.write_csv(out / "results.csv", pd.DataFrame([row]))

    _record(runs_root, {"finetune.method": "random"}, 0, writer)
    df = analysis.collect(runs_root)
    assert df.loc[0, "tuning_size"] == 12 and "auroc_a_Unhealthy" in df and "acc_b_No Finding" in df
    assert analysis.check(df)["checked"].sum() >= 10


def test_no_records_gives_empty_tables_not_an_error(runs_root):
    df = analysis.collect(runs_root)
    assert df.empty and analysis.summary(df).empty and analysis.fter_table(analysis.summary(df)).empty


def test_analysis_figures_are_written_and_reproducible(runs_root, tmp_path):
    from lib.viz import analysis as viz

    standins.fake_study(runs_root, seeds=(0,))
    df = analysis.collect(runs_root)
    s = analysis.summary(df, n_boot=30)
    logs = analysis.gating_logs(df)
    assert set(logs) == {"active-gating", "random-skip"} and {"step", "skipped"} <= set(logs["random-skip"])
    samples = analysis.sample_paths(df, per_label=2)
    assert set(samples) == {"random", "spectral-clip", "active-gating", "random-skip"}
    for out in ("one", "two"):
        viz.tgap_plane(s, tmp_path / out)
        viz.fter_by_method(s, tmp_path / out)
        viz.gating_traces(logs, tmp_path / out)
        viz.sample_montage(samples, 32, tmp_path / out)
    one = sorted((tmp_path / "one").iterdir())
    assert [p.name for p in one][:2] == ["06_fter_by_method.pdf", "06_fter_by_method.png"] and len(one) == 8
    for p in one:
        assert p.read_bytes() == (tmp_path / "two" / p.name).read_bytes()
