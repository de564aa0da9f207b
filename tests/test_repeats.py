"""Classifier repeats (classifier.repeats, lib/evaluate/repeats.py) and variance components (lib/analyze/variance.py).

One repeat must leave every stage key and every result as it was (the record below was written by the code before
the field existed, at smoke size); two repeats through stage 05 keep each repeat's predictions, average their estimates in the record
(and their outputs per test image in predictions_<cell>.csv); the variance-component estimator recovers known components from simulated nested data.
"""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lib.analyze import collection, power, recompute, variance
from lib.core import config, stages
from lib.core.config import ParamError
from lib.evaluate import classifier, evaluation, results

from test_evaluation import fake_upstream

# results.json of params/smoke.yaml's stage 05 over fake_upstream, written by the code before classifier.repeats;
# the real baseline's and the detector's since issue 23, item 3 (their validation splits patient-disjoint at R = 1 too:
# b_auroc was 1.0, trtr_auroc 0.5673701298701299, b_classifier_hash daacc582faa4279e, det_classifier_hash
# b277b5161f59960f).
# Direction a's are the old ones: fake_upstream's synthetic images record no patient, each is its own group, and
# a split of one-image groups is the image split it was.
BEFORE = {"a_auroc": 0.45008116883116883, "b_auroc": 0.9722222222222222, "trtr_auroc": 0.47362012987012986,
          "tsts_auroc": 0.8611111111111112, "a_classifier_hash": "fdf46684b0f0275a",
          "b_classifier_hash": "ee74736596e901f9", "det_classifier_hash": "d915e772586f0f2a", "a_n_val": 12}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Stage 05 at smoke size with one repeat and with two, on the same upstream stages."""
    root = tmp_path_factory.mktemp("runs")
    one = config.load("params/smoke.yaml")
    fake_upstream(one, root)
    d1 = stages.run_stage(one, "05_classifier", evaluation.run, root, progress=False)
    two = config.load("params/smoke.yaml", {"classifier.repeats": 2})
    d2 = stages.run_stage(two, "05_classifier", evaluation.run, root, progress=False)
    return one, two, root, d1, d2


def test_one_repeat_keeps_keys_and_two_change_only_stage_05():
    one = config.load("params/smoke.yaml")
    two = config.load("params/smoke.yaml", {"classifier.repeats": 2})
    assert one.section_hash("classifier") == config.load("params/smoke.yaml", {"classifier.repeats": 1}
                                                         ).section_hash("classifier")
    for stage in ("01_data_curation", "02_clustering", "03_dreambooth", "04_generation"):
        assert stages.key(one, stage) == stages.key(two, stage), stage
    for stage in ("05_classifier", "05_real_baseline"):
        assert stages.key(one, stage) != stages.key(two, stage), stage
    assert "param.classifier.repeats" not in evaluation.flatten_params(one)
    assert evaluation.flatten_params(two)["param.classifier.repeats"] == 2
    with pytest.raises(ParamError, match="classifier.repeats"):
        config.load("params/smoke.yaml", {"classifier.repeats": 0})


def test_repeat_seeds_and_patient_disjoint_validation():
    assert classifier.repeat_seed(7, 0) == 7
    seeds = {classifier.repeat_seed(s, r) for s in range(4) for r in range(1, 5)}
    assert len(seeds) == 16 and not seeds & set(range(10))
    y = np.repeat([0, 1], 30)
    patients = np.repeat(np.arange(20), 3)
    splits = []
    for r in range(3):
        tr, va = classifier.split_validation(y, 0.2, classifier.repeat_seed(1, r), patients)
        assert not set(patients[tr]) & set(patients[va])
        splits.append(tuple(va))
    assert len(set(splits)) == 3                          # every repeat validates on another split
    df = pd.DataFrame({"image_id": [f"i{i}" for i in range(60)], "patient": patients.astype(str)})
    groups = classifier.validation_groups(df)             # at every R (issue 23): by patient where recorded
    assert len(set(groups)) == 20 and len(set(classifier.validation_groups(df.assign(patient=None)))) == 60


def test_one_repeat_gives_the_record_and_files_as_before(two_runs):
    _, _, _, d1, _ = two_runs
    row = results.read(d1)
    for k, v in BEFORE.items():
        assert row[k] == v, k
    assert not [k for k in row if "repeat" in k]
    assert not list(d1.glob("*_r[0-9]*")) and not list(d1.glob("*_r[0-9]*.*"))


def test_two_repeats_keep_each_repeats_predictions_and_average_their_estimates(two_runs):
    _, two, root, d1, d2 = two_runs
    row = results.read(d2)
    real = stages.stage_dir(two, "05_real_baseline", root)
    assert row["repeats"] == 2 and row["param.classifier.repeats"] == 2
    assert (real / "classifier_real_r1.pt").exists() and (real / "predictions_trtr_r1.csv").exists()
    cols = ["p[No Finding]", "p[Unhealthy]"]
    for cell in ("a", "b", "trtr", "tsts"):
        per = [pd.read_csv(d2 / f"predictions_{cell}_r{r}.csv") for r in range(2)]
        mean = pd.read_csv(d2 / f"predictions_{cell}.csv")
        np.testing.assert_allclose(mean[cols].to_numpy(), (per[0][cols].to_numpy() + per[1][cols].to_numpy()) / 2,
                                   rtol=0, atol=1e-12)
        assert not np.allclose(per[0][cols], per[1][cols]), cell          # two classifiers, not one twice
        single = [roc_auc_score(p["label"] == "Unhealthy", p["p[Unhealthy]"] / p[cols].sum(1)) for p in per]
        assert json.loads(row[f"{cell}_auroc_repeats"]) == pytest.approx(single, rel=1e-12)
        assert row[f"{cell}_auroc"] == pytest.approx(np.mean(single), rel=1e-12)    # estimates averaged
        acc = [np.mean((p["score"] >= 0.5) == (p["label"] == "Unhealthy")) for p in per]
        assert row[f"{cell}_accuracy"] == pytest.approx(np.mean(acc), rel=1e-12)
        assert row[f"{cell}_auroc_ci_low"] <= row[f"{cell}_auroc"] <= row[f"{cell}_auroc_ci_high"]
    a, t = json.loads(row["a_auroc_repeats"]), json.loads(row["trtr_auroc_repeats"])
    if row["tr_defined"]:
        assert row["tr"] == pytest.approx((np.mean(a) - .5) / (np.mean(t) - .5), rel=1e-12)
    assert json.loads(row["tr_repeats"]) == pytest.approx([(x - .5) / (y - .5) for x, y in zip(a, t)], rel=1e-12)
    again = results.recompute_from_predictions(d2)
    for k, v in again.items():
        assert (row[k] == v) or (isinstance(v, float) and np.isnan(v) and np.isnan(row[k])), k
    df = collection.collect(d2)
    assert recompute.check(df)["checked"].sum() > 0      # every number again with scikit-learn, per repeat
    # repeat 0 of direction a (no patients in this synthetic set) trains exactly as the single classifier did
    assert row["a_classifier_hash"].split(",")[0] == results.read(d1)["a_classifier_hash"]
    assert pd.read_csv(d2 / "predictions_a_r0.csv").equals(pd.read_csv(d1 / "predictions_a.csv"))
    info = json.loads((d2 / "direction_a_r1.json").read_text())
    assert row["a_train_seconds"] == pytest.approx(json.loads((d2 / "direction_a.json").read_text())["train_seconds"]
                                                   + info["train_seconds"], abs=0.011)


def _simulate(rng, n_seeds, n_rep, sd_seed, sd_rep, sd_test, n_boot=40):
    """One nested run: x_ij = mu + seed effect + the seed's test-sample effect + classifier effect; each repeat's
    bootstrap replicates spread by the test-sample s.d. around it."""
    rows = []
    for i in range(n_seeds):
        g, t = rng.normal(0, sd_seed), rng.normal(0, sd_test)
        for j in range(n_rep):
            x = 0.7 + g + t + rng.normal(0, sd_rep)
            rows.append({"seed": i, "repeat": j, "value": x,
                         "test_var": np.var(x + rng.normal(0, sd_test, n_boot), ddof=1)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("sd", [(0.04, 0.03, 0.02), (0.01, 0.05, 0.02), (0.06, 0.0, 0.03)])
def test_the_estimator_recovers_known_components(sd):
    rng = np.random.default_rng(1)
    got = pd.DataFrame([variance.nested(_simulate(rng, 8, 3, *sd), "test_var") for _ in range(1500)])
    for part, s in zip(("seed_raw", "repeat", "test"), sd):
        # the mean of the moment estimates over 1,500 simulated runs, within 10% of the variance (or 2e-5 of 0)
        assert got[f"var_{part}"].mean() == pytest.approx(s ** 2, rel=0.10, abs=2e-5), part
    assert (got["var_seed"] >= 0).all() and (got["var_seed"] >= got["var_seed_raw"]).all()   # reported: truncated


def test_components_from_outputs_are_the_per_repeat_aurocs():
    rng = np.random.default_rng(0)
    n, rows = 80, []
    y = np.repeat([0, 1], n // 2)
    for s in range(2):
        for r in range(3):
            for cell, sep in (("a", 0.8), ("trtr", 1.6)):
                p1 = 1 / (1 + np.exp(-(sep * (y - 0.5) + rng.normal(0, 1, n))))
                rows.append(pd.DataFrame({"seed": s, "repeat": r, "cell": cell, "image_id": [f"i{k}" for k in range(n)],
                                          "y": y, "p0": 1 - p1, "p1": p1}))
    df = pd.concat(rows)
    est = variance._estimates({k: (g["image_id"].to_numpy(), g["y"].to_numpy(), g[["p0", "p1"]].to_numpy())
                               for k, g in df.groupby(["seed", "repeat", "cell"])}, n_boot=30, seed=0)
    for _, e in est.iterrows():
        g = df[(df["seed"] == e["seed"]) & (df["repeat"] == e["repeat"])]
        a, t = (roc_auc_score(g[g.cell == c].y, g[g.cell == c].p1) for c in ("a", "trtr"))
        assert e.auroc_a == pytest.approx(a, abs=1e-12) and e.tr == pytest.approx((a - .5) / (t - .5), abs=1e-12)
        assert e.auroc_a_test_var > 0
    comp = variance.from_predictions(df, n_boot=30)
    m = est.groupby("seed")["auroc_a"]
    within = ((est["auroc_a"] - est["seed"].map(m.mean())) ** 2).sum() / (len(est) - 2)
    assert comp["auroc_a"]["var_repeat"] == pytest.approx(within, rel=1e-9)
    tab = variance.table(comp)
    assert list(tab["metric"]) == ["AUROC(a)", "TR"] and (tab["seeds"] == 2).all()


def test_plan_takes_the_components():
    comp = {"var_seed": 0.02 ** 2, "var_test": 0.01 ** 2, "var_repeat": 0.03 ** 2}
    sd_g, sd_c = variance.plan_inputs(comp)
    assert sd_g == pytest.approx(np.sqrt(2 * (0.02 ** 2 + 0.01 ** 2))) and sd_c == pytest.approx(np.sqrt(2) * 0.03)
    p = variance.plan(comp, 0.05, 300.0, 10.0).set_index("repeats")
    assert p.loc[1, "sd_per_seed"] == pytest.approx(np.sqrt(sd_g ** 2 + sd_c ** 2))
    assert p.loc[4, "seeds"] == power.seeds_needed(0.05, np.sqrt(sd_g ** 2 + sd_c ** 2 / 4))


def test_the_report_cli_prints_the_components_of_records_with_repeats(two_runs, capsys):
    from lib.runs import report

    _, _, root, d1, d2 = two_runs
    comp = variance.from_records(collection.collect(root))
    assert len(comp) == 2 and set(comp["metric"]) == {"AUROC(a)", "TR"} and (comp["repeats"] == 2).all()
    assert variance.from_records(collection.collect(d1)).empty          # one repeat: nothing to split
    assert report.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Variance components" in out and "AUROC(a)" in out.split("Variance components")[1]
