"""FTER analysis: collection, recomputation from raw predictions, seed summaries and thesis tables."""
import json

import numpy as np
import pandas as pd
import pytest
import standins

from lib.analyze import aggregate, agreement, collection, matrix, recompute, tables, upstream
from lib.core import atomic, config, stages


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
    df = collection.collect(records)
    assert len(df) == 7
    assert list(df["method"].unique()) == ["no-fine-tune", "random", "active-gating"]
    assert set(df.loc[df["method"] == "active-gating", "setting"]) == {"thr0.3"}
    assert set(df.loc[df["method"] == "random", "setting"]) == {""}
    long = collection.tidy(df)
    assert set(long["direction"]) == {"a", "b", "trtr", "tsts", "det", "a/b", "a/trtr"}
    assert {"overall", "Unhealthy"} <= set(long["class"])


def test_reported_numbers_equal_those_recomputed_from_raw_predictions(records):
    df = collection.collect(records)
    report = recompute.check(df)
    assert {"auroc_a", "auroc_b", "auroc_trtr", "auroc_tsts", "acc_a", "fter", "cc_fter", "tr", "auroc_det",
            "auroc_det_Unhealthy", "auroc_b_No Finding", "acc_a_Unhealthy"} <= set(report["metric"])
    assert report["checked"].min() == 7
    # a tampered record is caught
    victim = df.loc[3, "results_dir"]
    rec = pd.read_csv(f"{victim}/results.csv")
    rec.loc[0, "a_auroc"] += 0.01
    rec.to_csv(f"{victim}/results.csv", index=False)
    with pytest.raises(recompute.AnalysisMismatch, match="auroc_a"):
        recompute.check(collection.collect(records))


def test_summary_means_stds_and_ci_match_a_direct_computation(records):
    df = collection.collect(records)
    s = aggregate.summary(df, n_boot=100)
    row = s[s["method"] == "random"].iloc[0]
    vals = df.loc[df["method"] == "random", "fter"]
    assert row["n_seeds"] == 3
    assert row["fter_mean"] == pytest.approx(vals.mean()) and row["fter_std"] == pytest.approx(vals.std(ddof=1))
    again = recompute.recompute(df[df["method"] == "random"])
    assert row["auroc_b_mean"] == pytest.approx(again["auroc_b"].mean(), abs=1e-12)
    # the pooled ratios are ratios of the seed-mean AUROCs, inside their two-level intervals
    assert row["fter_pooled"] == pytest.approx(again["auroc_a"].mean() / again["auroc_b"].mean(), abs=1e-12)
    assert row["tr_pooled"] == pytest.approx((again["auroc_a"].mean() - 0.5) / (again["auroc_trtr"].mean() - 0.5))
    assert row["fter_ci_low"] < row["fter_pooled"] < row["fter_ci_high"]
    # a single seed has no std, but still a bootstrap interval
    nft = s[s["method"] == "no-fine-tune"].iloc[0]
    assert np.isnan(nft["fter_std"]) and nft["fter_ci_low"] < nft["fter_ci_high"]
    table = tables.fter_table(s).set_index("method")
    assert list(table.columns[3:]) == list(tables.MATRIX_COLUMNS.values())
    # the table states the t-interval over seeds, and none for a group of one seed
    from scipy import stats as sps
    lo, hi = sps.t.interval(0.95, 2, loc=vals.mean(), scale=vals.std(ddof=1) / np.sqrt(3))
    assert table.loc["random", "FTER"] == f"{vals.mean():.3f} [{lo:.2f}, {hi:.2f}]"
    assert table.loc["no-fine-tune", "TR"].endswith("(n<3)")


def test_two_level_interval_holds_the_spread_between_seeds(runs_root):
    """Seeds whose AUROC(a) differ widely give a wider interval than test-set resampling alone."""
    for seed in range(4):
        cfg, out = _record(runs_root, {"finetune.method": "random"}, seed)
        pa = pd.read_csv(out / "predictions_a.csv")
        y = (pa["label"] == "Unhealthy").to_numpy()
        q = [0.2, 2.5, 0.5, 3.0][seed]                     # very different generators per seed
        pa["p[Unhealthy]"] = 1 / (1 + np.exp(-(q * (2 * y - 1) + np.random.default_rng(seed).normal(0, 1, len(y)))))
        pa["p[No Finding]"] = 1 - pa["p[Unhealthy]"]
        pa["score"] = pa["p[Unhealthy]"]
        pa.to_csv(out / "predictions_a.csv", index=False)
    dirs = list(collection.collect(runs_root)["results_dir"])
    both = aggregate.bootstrap_ci(dirs, n_boot=300)
    one = aggregate.bootstrap_ci(dirs[1:2], n_boot=300)
    assert both["auroc_a_ci_high"] - both["auroc_a_ci_low"] > 2 * (one["auroc_a_ci_high"] - one["auroc_a_ci_low"])


def test_fast_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300), 2)           # with ties
    assert aggregate._auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_thesis_tables_have_the_thesis_layout(records, tmp_path):
    thesis = tables.thesis_tables(aggregate.summary(collection.collect(records), n_boot=20))
    names = list(thesis)
    assert names[0].startswith("Table 4.4: random") and names[1].startswith("Table 4.5: random")
    assert names[2].startswith("Table 4.12: active-gating") and names[3].startswith("Table 4.13")
    a, b = thesis[names[0]], thesis[names[1]]
    assert list(a.columns.get_level_values(0).unique()) == ["Accuracy", "AUROC"]
    assert list(a.columns)[:3] == [("Accuracy", "Overall"), ("Accuracy", "Unhealthy"), ("Accuracy", "No Finding")]
    assert list(a.index) == ["12 (no fine-tune)", "12"]              # Table 4.4's "No Fine tune" row first
    assert ("FTER", "mean ± std") in b.columns and "±" in b.loc["12", ("FTER", "mean ± std")]
    assert a.loc["12", ("AUROC", "95% CI")].startswith("[") and ("AUROC", "95% CI") in b.columns
    written = tables.save_tables(thesis, tmp_path)
    assert len(written) == 8 and r"\toprule" in written[1].read_text()
    tex = written[1].read_text()        # multi-column headers, not "Accuracy & Accuracy & Accuracy"
    assert r"\multicolumn{3}{c}{Accuracy}" in tex and "Accuracy & Accuracy" not in tex


def test_no_records_gives_empty_tables_not_an_error(runs_root):
    df = collection.collect(runs_root)
    assert df.empty and aggregate.summary(df).empty and tables.fter_table(aggregate.summary(df)).empty


def test_analysis_figures_are_written_and_reproducible(runs_root, tmp_path):
    from lib.viz import analysis as viz

    standins.fake_study(runs_root, seeds=(0,))
    df = collection.collect(runs_root)
    s = aggregate.summary(df, n_boot=30)
    logs = upstream.gating_logs(df)
    assert set(logs) == {"active-gating seed 0", "random-skip seed 0"} and {"step", "skipped"} <= set(logs["random-skip seed 0"])
    samples = upstream.sample_paths(df, per_label=2)
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


def test_a_ratio_whose_denominator_is_at_chance_is_undefined(runs_root):
    cfg, out = _record(runs_root, {"finetune.method": "random"}, 0)
    pb = pd.read_csv(out / "predictions_b.csv")
    rng = np.random.default_rng(0)
    pb["p[Unhealthy]"], pb["p[No Finding]"] = rng.random(len(pb)), rng.random(len(pb))   # (b) at chance
    pb["score"] = pb["p[Unhealthy]"] / (pb["p[Unhealthy]"] + pb["p[No Finding]"])
    pb.to_csv(out / "predictions_b.csv", index=False)
    s = aggregate.summary(collection.collect(runs_root), n_boot=100)
    r = s.iloc[0]
    assert r["cc_fter_defined"] is False or r["cc_fter_defined"] == False  # noqa: E712
    assert np.isnan(r["cc_fter_pooled"]) and tables.fter_table(s).loc[0, "FTER (chance-corr.)"] == "undefined"
    assert r["tr_defined"] and np.isfinite(r["tr_pooled"])              # TRTR is far from chance


def test_comparisons_pair_methods_on_shared_seeds_and_correct_for_multiplicity(records):
    from lib.analyze import comparisons
    from lib.core import stats

    df = collection.collect(records)
    c = comparisons.compare(df)
    assert set(c["comparison"]) == {"no-fine-tune − random", "active-gating thr0.3 − random"}
    g = c.set_index("comparison").loc["active-gating thr0.3 − random"]
    assert g["seeds"] == "0,1,2" and g["d_auroc_a"] > 0        # the stand-in gives gating the better (a)
    np.testing.assert_allclose(c["p_t_holm"], stats.holm(c["p_t"].to_numpy()))
    # the paired difference recomputed by hand from the prediction files, with scikit-learn
    from sklearn.metrics import roc_auc_score
    diffs = []
    for seed in (0, 1, 2):
        rx = df[(df["method"] == "active-gating") & (df["seed"] == seed)]["results_dir"].iloc[0]
        rb = df[(df["method"] == "random") & (df["seed"] == seed)]["results_dir"].iloc[0]
        px, pb = pd.read_csv(f"{rx}/predictions_a.csv"), pd.read_csv(f"{rb}/predictions_a.csv")
        diffs.append(roc_auc_score(px["label"] == "Unhealthy", px["score"]) -
                     roc_auc_score(pb["label"] == "Unhealthy", pb["score"]))
    assert g["d_auroc_a"] == pytest.approx(np.mean(diffs), abs=1e-12)
    # the seed-level test recomputed with scipy from those differences: p, t-interval, and the MDE by simulation
    from scipy import stats as sps
    ref = sps.ttest_1samp(diffs, 0.0)
    assert g["p_t"] == pytest.approx(ref.pvalue, rel=1e-9)
    lo, hi = ref.confidence_interval(0.95)
    assert (g["d_auroc_a_t_low"], g["d_auroc_a_t_high"]) == pytest.approx((lo, hi), abs=1e-12)
    sd = np.std(diffs, ddof=1)
    sim = np.random.default_rng(0).normal(g["mde_auroc_a"], sd, (20000, 3))
    t = sim.mean(axis=1) / (sim.std(axis=1, ddof=1) / np.sqrt(3))
    assert np.mean(np.abs(t) > sps.t.ppf(0.975, 2)) == pytest.approx(0.80, abs=0.012)
    printed = comparisons.table(c)
    assert {"verdict", "MDE ΔAUROC(a)", "DeLong p (within seed)"} <= set(printed.columns)


def test_comparisons_below_three_seeds_give_no_interval_and_pair_tuning_sizes(tmp_path):
    """Two seeds: no seed-level interval or verdict; a method at two tuning sizes is paired with itself."""
    from lib.analyze import comparisons

    root = tmp_path / "runs"
    for seed in (0, 1):
        for per_label in (5, 12):
            _record(root, {"finetune.method": "random", "selection.per_label": per_label}, seed)
    df = collection.collect(root)
    c = comparisons.compare(df).set_index("comparison")
    row = c.loc["random n5 − random n12"]
    assert row["tuning size"] == "5 vs 12" and row["seeds"] == "0,1"
    assert np.isnan(row["d_auroc_a_t_low"]) and row["verdict"] == "not called: 2 seed(s), 3 needed"
    assert "n<3: no interval" in comparisons.table(c.reset_index()).iloc[0]["ΔAUROC(a) [t-CI over seeds]"]


# ------------------------------------------------------------------------------ fidelity vs trainability
def _fidelity_writer(fid_of):
    """A stand-in record (standins.write_fake_results) with the fidelity fields stage 05 adds: FID from
    fid_of(record), the other metrics fixed, each with an asymmetric image-bootstrap CI."""
    def writer(cfg, out):
        standins.write_fake_results(cfg, out)
        rec = pd.read_csv(out / "results.csv")
        values = {k: 0.5 for k in aggregate.FIDELITY}
        values.update({"fidelity.fid": fid_of(rec.iloc[0]), "memorization.copy_fraction": 0.0})
        fields = {}
        for k, v in values.items():
            fields.update({k: v, f"{k}_ci_low": max(v - 0.1 * v - 0.01, 0), f"{k}_ci_high": v + 0.2 * v + 0.01})
        pd.concat([rec, pd.DataFrame([fields])], axis=1).to_csv(out / "results.csv", index=False)
    return writer


def _fidelity_study(runs_root, fid_of, seeds=(0, 1, 2)):
    for seed in seeds:
        for method in ({"finetune.method": "random"}, {"finetune.method": "spectral-clip"},
                       {"finetune.control": "no-fine-tune"},
                       {"finetune.method": "spectral-clip", "gating.enabled": True}):
            _record(runs_root, method, seed, _fidelity_writer(fid_of))
    _record(runs_root, {"generation.kind": "label-shuffled"}, 0, _fidelity_writer(lambda r: 0.5))
    return aggregate.summary(collection.collect(runs_root), n_boot=400)


def test_fidelity_metrics_are_summarised_over_seeds_with_two_level_cis(runs_root, tmp_path):
    s = _fidelity_study(runs_root, lambda r: 20 * (1 - r["tr"]))
    df = collection.collect(runs_root)
    for method, r in s.set_index("method").iterrows():
        fid = df.loc[df["method"] == method, "fidelity.fid"]
        assert r["fidelity.fid_pooled"] == pytest.approx(fid.mean()) == pytest.approx(r["fidelity.fid_mean"])
        assert r["fidelity.fid_ci_low"] < r["fidelity.fid_pooled"] < r["fidelity.fid_ci_high"]
        assert r["fidelity_extractor"] == "classifier"                 # params/smoke.yaml
        if len(fid) > 1:
            assert r["fidelity.fid_std"] == pytest.approx(fid.std(ddof=1))
    one = s.set_index("method").loc["label-shuffled"]               # one seed: about that seed's own CI
    assert np.isnan(one["fidelity.fid_std"])
    assert one["fidelity.fid_ci_low"] == pytest.approx(0.5 - 0.06, abs=0.02)
    assert one["fidelity.fid_ci_high"] == pytest.approx(0.5 + 0.11, abs=0.02)
    assert one["memorization.copy_fraction_ci_low"] == 0.0            # clipped to the metric's range
    table = tables.fidelity_table(s)
    assert list(table.columns[4:]) == [f"{h}: {c}" for h, c in aggregate.FIDELITY.values()]
    assert table["Fidelity: FID"].str.match(r"^[\d.]+ \[[\d.]+, [\d.]+\]$").all()
    csv, tex = tables.save_fidelity_table(table, tmp_path)
    assert csv.name == "06_fidelity.csv" and pd.read_csv(csv).shape == table.shape
    assert r"\multicolumn{4}{c}{Fidelity}" in tex.read_text() and "label-shuffled" in tex.read_text()
    # records written before stage 05 measured fidelity: dashes, not an error
    old = tables.fidelity_table(aggregate.summary(collection.collect(runs_root).drop(
        columns=[c for c in df.columns if c.startswith(("fidelity.", "memorization."))]), n_boot=20))
    assert (old["Fidelity: FID"] == "–").all()


def test_the_agreement_sentence_follows_the_rank_correlation(runs_root, tmp_path):
    from scipy.stats import spearmanr

    from lib.viz import analysis as viz

    s = _fidelity_study(runs_root / "agree", lambda r: 20 * (1 - r["tr"]))     # lower FID, higher TR
    c = agreement.fidelity_trainability(s).set_index(["methods", "trainability"])
    gen = s[s["method"] != "label-shuffled"]
    assert c.loc[("generators", "tr"), "n"] == 4 and c.loc[("all", "tr"), "n"] == 5
    assert c.loc[("generators", "tr"), "rho"] == pytest.approx(
        spearmanr(gen["fidelity.fid_pooled"], gen["tr_pooled"])[0]) == pytest.approx(-1.0, abs=0.21)
    text = agreement.fidelity_agreement(s)
    assert "generators (diffusion methods and controls), fidelity and trainability agree" in text
    assert "With the reference generators" in text and "ρ(FID, TR) = " in text
    for out in ("one", "two"):
        viz.fidelity_vs_trainability(s, tmp_path / out)
    for ext in ("pdf", "png"):
        name = f"06_fidelity_vs_trainability.{ext}"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()

    s = _fidelity_study(runs_root / "disagree", lambda r: 5 + 20 * r["tr"])     # lower FID, lower TR
    text = agreement.fidelity_agreement(s)
    assert "fidelity and trainability do not agree" in text and "agree: methods" not in text
    viz.fidelity_vs_trainability(aggregate.summary(collection.collect(runs_root / "none")), tmp_path / "empty")
    assert "cannot be compared" in agreement.fidelity_agreement(aggregate.summary(collection.collect(runs_root / "none")))


def test_parameters_come_back_from_a_column_that_is_null_in_other_records():
    """Records with fidelity.fid_dims null and 12 share a CSV column, which pandas reads as float (12.0)."""
    from lib.evaluate import results

    cfg = config.load("params/smoke.yaml")
    row = pd.Series({**results.flatten(cfg.to_dict(), "param."), "param.fidelity.fid_dims": 12.0,
                     "param.classifier.learning_rate": 1.0, "param.gating.skip_rate": np.nan})
    back = config.from_dict(collection.params_of(row))
    assert back.fidelity.fid_dims == 12 and isinstance(back.fidelity.fid_dims, int)
    assert back.classifier.learning_rate == 1.0 and isinstance(back.classifier.learning_rate, float)
    assert back.gating.skip_rate is None


# ------------------------------------------------------------------------------------------ k classes
SHAPES = ["circle", "square", "triangle"]


def _k_cell(prefix: str, quality: float, seed: int, n: int = 90) -> tuple[pd.DataFrame, np.ndarray]:
    """A test manifest of the three shapes and sigmoid outputs that favour each image's own class."""
    y = np.arange(n) % len(SHAPES)
    noise = np.random.default_rng(seed).normal(0, 1, (n, len(SHAPES)))
    outputs = 1 / (1 + np.exp(-(quality * (2 * np.eye(len(SHAPES))[y] - 1) + noise)))
    return pd.DataFrame({"image_id": [f"{prefix}{i}" for i in range(n)], "label": [SHAPES[i] for i in y],
                         "path": [f"/nowhere/{prefix}{i}.png" for i in range(n)]}), outputs


def _write_k_class_results(cfg, out):
    """A stage-05 record of a three-class run in the evaluation's format (lib.evaluate.metrics.matrix with classes)."""
    from lib.evaluate import metrics, results

    real, o_trtr = _k_cell("real", 1.5, 1)
    syn, o_b = _k_cell("syn", 2.0, 2)
    cells = {"a": (real, _k_cell("real", 0.4, 3)[1]), "trtr": (real, o_trtr), "b": (syn, o_b),
             "tsts": (syn, _k_cell("syn", 1.0, 4)[1])}
    for k, (m, o) in cells.items():
        atomic.write_csv(out / f"predictions_{k}.csv", results.predictions_frame(m, o, SHAPES))
    atomic.write_csv(out / "test_a.csv", real)
    atomic.write_csv(out / "test_b.csv", syn)
    det = pd.concat([real.assign(source="real"), syn.assign(source="synthetic")], ignore_index=True)
    det["score"] = np.random.default_rng(5).random(len(det)) + 0.3 * (det["source"] == "synthetic")
    atomic.write_csv(out / "predictions_det.csv", det.drop(columns="path"))
    row = {"method": results.method_name(cfg), "tuning_per_label": cfg.selection.per_label, "seed": cfg.seed,
           "bootstrap_seed": cfg.seed, **metrics.matrix(results.cells_from(out), cfg.classifier.threshold, 50,
                                                        cfg.seed, detection=results.detection_from(out),
                                                        classes=SHAPES),
           **results.flatten(cfg.to_dict(), "param.")}
    atomic.write_csv(out / "results.csv", pd.DataFrame([row]))


def test_a_three_class_record_is_collected_checked_and_tabled_per_class(runs_root):
    from sklearn.metrics import roc_auc_score

    for seed in (0, 1):
        _record(runs_root, {"data.source": "shapes", "data.classes": SHAPES, "finetune.method": "random"}, seed,
                _write_k_class_results)
    df = collection.collect(runs_root)
    cols = collection.metric_columns(df)
    assert {"auroc_a_circle", "acc_b_triangle", "auroc_det_square", "auroc_tsts", "tr"} <= set(cols)
    assert not [c for c in cols if "ci_" in c]                   # the record's intervals are no metric
    report = recompute.check(df)                                   # scikit-learn's macro OvR and argmax agree
    assert {"auroc_a", "acc_a", "acc_a_square", "auroc_det_circle", "tr"} <= set(report["metric"])
    y, _, o = matrix.read_predictions(df.loc[0, "results_dir"], "a")
    assert recompute.recompute(df).loc[0, "auroc_a"] == pytest.approx(
        roc_auc_score(y, o / o.sum(1, keepdims=True), multi_class="ovr", average="macro"), abs=1e-12)
    s = aggregate.summary(df, n_boot=20)
    assert s.loc[0, "auroc_a_pooled"] == pytest.approx(df["auroc_a"].mean(), abs=1e-12)   # macro AUROC too
    t = tables.direction_table(s, "a")
    assert list(t.columns)[:4] == [("Accuracy", c) for c in ["Overall", *SHAPES]]
    samples = upstream.sample_paths(df, per_label=2)
    assert list(samples[upstream.REAL_ROW]) == SHAPES and all(len(v) == 2 for v in samples[upstream.REAL_ROW].values())


def test_a_verdict_needs_three_shared_seeds():
    from lib.analyze import comparisons

    row = pd.Series({"comparison": "x − random", "seeds": "0,1", "n_seeds": 2, "p_t_holm": 0.001,
                     "d_auroc_a": 0.03, "mde_auroc_a": 0.02})
    assert comparisons._verdict(row, 0.05) == "not called: 2 seed(s), 3 needed"
    three = row.copy()
    three["n_seeds"] = 3
    assert comparisons._verdict(three, 0.05) == "x > random"
    three["p_t_holm"] = 0.2
    assert comparisons._verdict(three, 0.05) == "not separated (MDE 0.020)"


# ------------------------------------------------------------------------------------------ the report
def test_the_report_cli_reads_a_sweeps_finished_runs_and_lists_the_others(tmp_path, runs_root, capsys):
    # `make demo` prints this report (python -m lib.runs.report); it moved out of the analysis step so that no
    # step imports the run machinery (tests/test_layout.py): the sweep-aware CLI lives beside the sweeps.
    import yaml

    from lib.runs import report, sweeps

    nb = standins.write_notebooks(tmp_path / "nb")
    body = {"base": "params/smoke.yaml", "figures_dir": str(tmp_path / "fig"), "grid": {"seed": [0, 1]}}
    (tmp_path / "ran.yaml").write_text(yaml.safe_dump(body))
    sweeps.run(tmp_path / "ran.yaml", 1, runs_root, nb, engine=standins.exec_engine, analyse=False)
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({**body, "grid": {"seed": [0, 1, 7]}}))
    (tmp_path / "fig").mkdir()
    (tmp_path / "fig" / "06_tgap_plane.png").write_bytes(b"")
    capsys.readouterr()
    assert report.main(["--root", str(runs_root), "--sweep", str(tmp_path / "more.yaml"),
                        "--runs-root", str(runs_root)]) == 0
    out, err = capsys.readouterr()
    assert "The trainability matrix (2 runs;" in out and "Paired comparisons" in out
    assert "all 60 reported metric values match their recomputation" in out
    assert "figures:" in out and "06_tgap_plane.png" in out
    assert "1 of 3 points of" in err and "seed7" in err          # the unfinished point is named, and left out
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({**body, "grid": {"seed": [8]}}))
    assert report.main(["--root", str(runs_root), "--sweep", str(tmp_path / "none.yaml"),
                        "--runs-root", str(runs_root)]) == 1      # never every record under --root instead
    assert "has finished stage 05" in capsys.readouterr().err


def test_each_imported_folder_is_its_own_row_and_folders_are_compared(tmp_path):
    """Folder imports used to pool into one row ("folder, seeds 9"); each folder is now its own group."""
    from lib.analyze import comparisons

    root = tmp_path / "runs"
    for name in ("gan-a", "gan-b"):
        folder = tmp_path / name
        for cls in ("No Finding", "Unhealthy"):
            (folder / cls).mkdir(parents=True)
        for seed in (0, 1, 2):
            cfg = config.load("params/smoke.yaml", {"generation.kind": "folder", "generation.folder": str(folder),
                                                    "seed": seed})
            out = stages.stage_dir(cfg, "05_classifier", root)
            out.mkdir(parents=True)
            standins.write_fake_results(cfg, out)
    df = collection.collect(root)
    s = aggregate.summary(df, n_boot=20)
    assert sorted(zip(s["method"], s["setting"], s["n_seeds"])) == [("folder", "gan-a", 3), ("folder", "gan-b", 3)]
    c = comparisons.compare(df)
    assert list(c["comparison"]) == ["folder gan-a − folder gan-b"] and c.iloc[0]["seeds"] == "0,1,2"


def test_gating_is_compared_with_ungated_training_on_its_own_tuning_set(records):
    """Against random, gating differs in the tuning set too; against its own set ungated, only the gate differs."""
    from lib.analyze import comparisons

    for seed in (0, 1, 2):
        _record(records, {"finetune.method": "spectral-clip"}, seed)
    df = collection.collect(records)
    from lib.analyze import upstream

    for _, r in df[df["method"].isin(["active-gating", "spectral-clip"])].iterrows():   # stage 03's summaries
        gated = r["method"] == "active-gating"
        d = upstream.upstream_dir(r, "03_dreambooth")
        d.mkdir(parents=True, exist_ok=True)
        (d / "train_summary.json").write_text(json.dumps({"wall_seconds": 130.0 + r["seed"], "trained": 450 if gated
                                                          else 600, "gating_seconds": 40.0 if gated else None}))
    c = comparisons.compare(df).set_index("comparison")
    row = c.loc["active-gating thr0.3 − spectral-clip"]
    assert row["seeds"] == "0,1,2" and np.isfinite(row["mde_auroc_a"])
    # the gate's own compute and its fewer updates beside the comparison (seed means)
    assert (row["gate_seconds_x"], row["stage03_seconds_x"], row["updates_x"], row["updates_b"]) == (40, 131, 450, 600)
    printed = comparisons.table(c.reset_index()).set_index("comparison")
    assert printed.loc["active-gating thr0.3 − spectral-clip", "gate cost (stage 03)"] == "40 of 131 s; 450 vs 600 updates"
    assert printed.loc["no-fine-tune − random", "gate cost (stage 03)"] == "–"


def test_gating_is_compared_with_its_equal_updates_control(records):
    """Ungated training for as many updates as the gate left: the gate's choice of batches, not its fewer updates."""
    from lib.analyze import comparisons

    for seed in (0, 1, 2):
        _record(records, {"finetune.method": "spectral-clip", "finetune.control": "equal-updates",
                          "finetune.updates": 450}, seed)
    df = collection.collect(records)
    assert set(df.loc[df["control"] == "equal-updates", "method"]) == {"equal-updates"}
    for _, r in df[df["method"].isin(["active-gating", "equal-updates"])].iterrows():   # stage 03's summaries
        gated = r["method"] == "active-gating"
        d = upstream.upstream_dir(r, "03_dreambooth")
        d.mkdir(parents=True, exist_ok=True)
        (d / "train_summary.json").write_text(json.dumps({"wall_seconds": 130.0 if gated else 90.0, "trained": 450,
                                                          "gating_seconds": 40.0 if gated else None}))
    c = comparisons.compare(df).set_index("comparison")
    row = c.loc["active-gating thr0.3 − equal-updates"]
    assert row["seeds"] == "0,1,2" and row["d_auroc_a"] > 0 and np.isfinite(row["mde_auroc_a"])
    assert np.isfinite(row["p_t_holm"]) and row["verdict"]
    printed = comparisons.table(c.reset_index()).set_index("comparison")
    assert printed.loc["active-gating thr0.3 − equal-updates", "gate cost (stage 03)"] == "40 of 130 s; 450 vs 450 updates"
    assert printed.loc["active-gating thr0.3 − equal-updates", "MDE ΔAUROC(a)"] != "–"


def test_reported_development_seeds_are_warned_about_and_change_no_key(records):
    from lib.runs import runner

    df = collection.collect(records)
    assert collection.development_seed_warning(df, []) is None
    w = collection.development_seed_warning(df, [1, 100])
    assert w.startswith("warning: seed(s) [1] are among the development seeds [1, 100]")
    a, b = config.load("params/smoke.yaml"), config.load("params/smoke.yaml", {"development_seeds": [0, 1]})
    assert runner.params_hash(a) == runner.params_hash(b)
    assert all(stages.key(a, s) == stages.key(b, s) for s in stages.ORDER)
    with pytest.raises(config.ParamError, match="development_seeds"):
        config.load("params/smoke.yaml", {"development_seeds": [-1]})


def test_references_are_their_own_group_in_fter_by_method_and_the_tgap_legend_counts_come_from_the_data():
    """Issue 25: references were bars at tuning size 0 beside the methods, and the T-Gap legend read
    "real-holdout (n=0)"."""
    from lib.viz import analysis as viz

    s = pd.DataFrame({"method": ["random", "spectral-clip", "spectral-clip", "real-holdout", "collapsed"],
                      "setting": ["", "", "", "", ""], "tuning_size": [100, 50, 100, 0, 0],
                      "fter_pooled": [0.8, 0.7, 0.9, 1.0, 0.6], "fter_ci_low": [0.7] * 5, "fter_ci_high": [1.1] * 5})
    bars = viz.fter_bars(s)
    assert list(bars["group"]) == ["diffusion"] * 3 + ["reference"] * 2
    assert list(bars["label"]) == ["random, n=100", "spectral-clip, n=50", "spectral-clip, n=100",
                                   "real-holdout", "collapsed"]
    assert list(bars["x"]) == [0, 1, 2, 4, 5]                   # one empty slot between the groups
    labels = [viz.point_label(r) for _, r in s.iterrows()]
    assert labels[0] == "random (n=100 per label)" and labels[3] == "real-holdout"   # no "n=0"


def test_the_fid_axis_is_logarithmic_when_the_fids_span_more_than_ten_times():
    from lib.viz import analysis as viz

    assert viz.fid_scale([0.3, 0.7, 3.4, 17.0, 40.0]) == "log"       # the old demo's spread: 9 of 11 under 6
    assert viz.fid_scale([12.0, 20.0, 40.0, float("nan")]) == "linear"


def test_gating_logs_name_every_seed(runs_root):
    standins.fake_study(runs_root, seeds=(0, 1))
    logs = upstream.gating_logs(collection.collect(runs_root))
    assert list(logs) == ["active-gating seed 0", "random-skip seed 0", "active-gating seed 1", "random-skip seed 1"]


def test_a_failing_calibration_check_is_flagged_in_its_panel():
    import matplotlib.pyplot as plt
    from lib.viz import calibration_checks

    null = {"null": {0: np.full(10, 0.5), 1: np.full(10, 0.52)}, "null_low": 0.49, "null_high": 0.53,
            "draws": 20, "value": 0.6, "seeds": 2, "holds": False}
    fig, (bad, good) = plt.subplots(1, 2)
    calibration_checks.null_panel(bad, null)
    calibration_checks.null_panel(good, {**null, "value": 0.51, "holds": True})
    assert bad.get_title().endswith("FAILS") and not good.get_title().endswith("FAILS")
    plt.close(fig)
