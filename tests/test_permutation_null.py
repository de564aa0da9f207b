"""The label-shuffled reference's permutation null (issue 22, deliverable 6a): its construction (labels really
permuted, the run's classifier settings, cached draws) and the check on the seed mean."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.analyze import calibration, permutation
from lib.core import config
from lib.evaluate import classifier, evaluation, results


@pytest.fixture
def stage05(tmp_path):
    """A stand-in stage-05 folder of a label-shuffled run (smoke parameters): train_a.csv, test_a.csv, results.json."""
    cfg = config.load("params/smoke.yaml", {"generation.kind": "label-shuffled", "seed": 3})
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(p)
        rows.append({"image_id": f"i{i}", "path": str(p), "label": ["No Finding", "Unhealthy"][i % 2]})
    d = tmp_path / "stages" / "05_classifier-abc123p4"
    d.mkdir(parents=True)
    pd.DataFrame(rows[:40]).to_csv(d / "train_a.csv", index=False)
    pd.DataFrame(rows[40:]).to_csv(d / "test_a.csv", index=False)
    results.write(d, {"method": "label-shuffled", "seed": 3, "auroc_a": 0.5, **evaluation.flatten_params(cfg)})
    return d, cfg


def test_each_draw_permutes_the_labels_and_trains_with_the_runs_settings(stage05, monkeypatch):
    d, cfg = stage05
    calls = []
    real_train = classifier.train

    def spy(data, c, seed, *args, **kw):
        calls.append({"y": data.y.cpu().numpy(), "cfg": c, "seed": seed})
        return real_train(data, c, seed, *args, **kw)

    monkeypatch.setattr(classifier, "train", spy)
    got = permutation.draws(d, 3)
    assert len(calls) == 3 and np.all((got >= 0) & (got <= 1))
    assert permutation.null_dir(d).name == "06_permutation_null-abc123p4"
    original = classifier.labels_of(pd.read_csv(d / "train_a.csv"))
    for c in calls:
        assert c["cfg"] == cfg.classifier                                   # the run's classifier section, as is
        assert np.bincount(c["y"]).tolist() == np.bincount(original).tolist()   # same class counts
        assert (c["y"] != original).any()                                   # labels really permuted
    assert not np.array_equal(calls[0]["y"], calls[1]["y"]) and len({c["seed"] for c in calls}) == 3
    assert calls[0]["seed"] == permutation.classifier_seed(3, 0)
    again = permutation.draws(d, 4)                                          # cached: only draw 3 trains
    assert len(calls) == 4 and np.array_equal(again[:3], got)


def test_the_check_flags_a_planted_value_and_passes_a_null_one():
    rng = np.random.default_rng(0)
    null = {s: rng.normal(0.5, 0.04, 10) for s in range(3)}
    planted = permutation.check({0: 0.62, 1: 0.60, 2: 0.63}, null)
    assert not planted["holds"] and planted["value"] > planted["null_high"] and planted["draws"] == 30
    assert planted["p"] < 0.05 and all(r == 1.0 for r in planted["seed_ranks"].values())
    fine = permutation.check({0: 0.47, 1: 0.53, 2: 0.50}, null)
    assert fine["holds"] and fine["null_low"] < 0.5 < fine["null_high"]
    # the range is that of a mean of 3 draws: narrower than one seed's null by about sqrt(3)
    single = np.quantile(np.concatenate(list(null.values())), [0.025, 0.975])
    assert (fine["null_high"] - fine["null_low"]) < 0.75 * (single[1] - single[0])
    # calibrated: a value drawn from the null itself falls outside its 95% range about 5% of the time
    misses = []
    for _ in range(400):
        truth = {s: rng.normal(0.5, 0.04, 10) for s in range(3)}
        observed = {s: rng.normal(0.5, 0.04) for s in range(3)}
        misses.append(not permutation.check(observed, truth, n_resample=2000)["holds"])
    assert 0.02 <= np.mean(misses) <= 0.10, np.mean(misses)


def test_calibration_checks_judge_label_shuffled_on_the_null():
    s = pd.DataFrame([{"method": "label-shuffled", "auroc_a_mean": 0.46, "auroc_a_t_low": 0.40, "auroc_a_t_high": 0.49,
                       "auroc_a_n": 3}])
    assert calibration.checks(s)["holds"].tolist() == [False]                # the t-interval misses 0.5
    rng = np.random.default_rng(1)
    null = permutation.check({0: 0.45, 1: 0.48, 2: 0.49}, {k: rng.normal(0.5, 0.04, 10) for k in range(3)})
    row = calibration.checks(s, null).iloc[0]
    assert row["holds"] and row["interval"].startswith("permutation null") and row["ci_low"] == null["null_low"]


def test_the_calibration_figure_shows_both_checks(tmp_path):
    from lib.viz import analysis

    def row(method, v):
        r = {"method": method, "tr_mean": v, "tr_t_low": v - 0.2, "tr_t_high": v + 0.2, "tr_n": 3}
        for m in ("auroc_a", "auroc_b", "fter", "cc_fter", "tr", "auroc_det"):
            r.update({f"{m}_pooled": 0.7, f"{m}_ci_low": 0.6, f"{m}_ci_high": 0.8})
        return r

    s = pd.DataFrame([row("real-holdout", 0.95), row("label-shuffled", 0.0)])
    rng = np.random.default_rng(0)
    null = {**permutation.check({0: 0.5, 1: 0.49}, {k: rng.normal(0.5, 0.04, 15) for k in range(2)}),
            "null": {k: rng.normal(0.5, 0.04, 15) for k in range(2)}}
    fig = analysis.calibration(s, tmp_path, null=null)
    titles = [ax.get_title() for ax in fig.axes]
    assert "label-shuffled AUROC(a): permutation null" in titles and "real-holdout TR: t-interval over seeds" in titles
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("3 seeds: holds" in t for t in texts)
    assert (tmp_path / "06_calibration.png").exists()
    analysis.calibration(s.iloc[:0], tmp_path, name="06_calibration_empty")     # nothing to show: still drawn


def test_with_classifier_repeats_a_draw_averages_as_many_trainings(tmp_path, monkeypatch):
    cfg = config.load("params/smoke.yaml", {"generation.kind": "label-shuffled", "seed": 3, "classifier.repeats": 2})
    d = tmp_path / "stages" / "05_classifier-rep2"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(p)
        rows.append({"image_id": f"i{i}", "path": str(p), "label": ["No Finding", "Unhealthy"][i % 2],
                     "patient": f"p{i // 2}"})
    pd.DataFrame(rows[:28]).to_csv(d / "train_a.csv", index=False)
    pd.DataFrame(rows[28:]).to_csv(d / "test_a.csv", index=False)
    results.write(d, {"method": "label-shuffled", "seed": 3, "auroc_a": 0.5, **evaluation.flatten_params(cfg)})
    seeds, real_train = [], classifier.train

    def spy(data, c, seed, *args, **kw):       # validation split by patient: 28 images of 14 patients
        seeds.append((seed, len(set(data.groups)) == 14))
        return real_train(data, c, seed, *args, **kw)

    monkeypatch.setattr(classifier, "train", spy)
    rec = permutation.draw(d, 0)
    base = permutation.classifier_seed(3, 0)
    assert seeds == [(classifier.repeat_seed(base, 0), True), (classifier.repeat_seed(base, 1), True)]
    assert rec["auroc_a"] == pytest.approx(np.mean(rec["auroc_a_repeats"])) and len(rec["auroc_a_repeats"]) == 2
