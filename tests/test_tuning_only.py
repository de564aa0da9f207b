"""The tuning-set-only baseline (issue 23, item 5): the classifier trains exactly on stage 02's selection of the run
(duplicates once) and none of the test pool's patients, its AUROC recomputes from its cached predictions, the cache is
shared and never retrained, and the matrix table carries the tuning-only columns beside TR."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from lib.analyze import collection, tables, tuning_only
from lib.core import config, provenance
from lib.data import leakage
from lib.evaluate import classifier, evaluation, results

LABELS = ["No Finding", "Unhealthy"]


def _images(tmp_path, n=40):
    """n tiny images, two per patient, the label showing in the brightness so a classifier can learn it."""
    rng, rows = np.random.default_rng(0), []
    for i in range(n):
        y = (i // 2) % 2
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 120, (16, 16), dtype=np.uint8) + 100 * y, mode="L").save(p)
        rows.append({"image_id": f"i{i:02d}", "path": str(p), "label": LABELS[y], "patient": f"p{i // 2:02d}"})
    return pd.DataFrame(rows)


def stand_in(tmp_path, seed=3, leak=False):
    """Stage folders as a finished diffusion run leaves them: stage 01's test pool, stage 02's tuning_random.csv
    (with a duplicate), stage 05's test_a.csv, results record and DONE.json recording what it read."""
    cfg = config.load("params/smoke.yaml", {"finetune.method": "random", "seed": seed})
    rows, st = _images(tmp_path), tmp_path / "runs" / "x" / "stages"
    pool_tune, pool_test = rows.iloc[:24], rows.iloc[24:]
    chosen = pool_tune.iloc[[0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18, 19]]
    tuning = pd.concat([chosen, chosen.iloc[[0]]]).assign(cluster=-1, duplicate=[False] * 16 + [True])
    if leak:        # an image of a test patient in the selection
        tuning = pd.concat([tuning, pool_test.iloc[[0]].assign(cluster=-1, duplicate=False)])
    d01, d02, d05 = st / "01_data_curation-a", st / "02_clustering-b", st / "05_classifier-c"
    for d in (d01, d02, d05):
        d.mkdir(parents=True)
    pool_test.to_csv(d01 / "test.csv", index=False)
    tuning.to_csv(d02 / "tuning_random.csv", index=False)
    pool_test.to_csv(d05 / "test_a.csv", index=False)
    results.write(d05, {"method": "random", "tuning_per_label": 8, "seed": seed, "auroc_trtr": 0.9, "tr": 0.5,
                        "auroc_a": 0.7, **evaluation.flatten_params(cfg)})
    inputs = {"01_data_curation": {"dir": d01.name, "files": {"test.csv": provenance.file_hash(d01 / "test.csv")}},
              "02_clustering": {"dir": d02.name,
                                "files": {"tuning_random.csv": provenance.file_hash(d02 / "tuning_random.csv")}}}
    (d05 / "DONE.json").write_text(json.dumps({"inputs": inputs}))
    return d05, tuning, cfg


def cache_of(d05):
    (d,) = [p for p in d05.parent.glob("06_tuning_only-*") if p.is_dir()]      # its lock file sits beside it
    return d


def test_trains_exactly_on_the_runs_stage02_selection_and_caches(tmp_path, monkeypatch):
    d05, tuning, cfg = stand_in(tmp_path)
    seen, calls = [], []
    real_from, real_train = classifier.TensorSet.from_manifest.__func__, classifier.train

    def spy_from(cls, manifest, *a, **kw):
        seen.append(manifest.copy())
        return real_from(cls, manifest, *a, **kw)

    def spy_train(data, c, seed, *a, **kw):
        calls.append({"cfg": c, "seed": seed, "n": len(data)})
        return real_train(data, c, seed, *a, **kw)

    monkeypatch.setattr(classifier.TensorSet, "from_manifest", classmethod(spy_from))
    monkeypatch.setattr(classifier, "train", spy_train)
    res = tuning_only.compute_run(d05)
    trained_on = seen[0]
    # stage 02's selected rows of this run, each image once (the duplicate dropped), in the selection's order
    assert list(trained_on["image_id"]) == list(tuning["image_id"].drop_duplicates())
    assert len(trained_on) == 16 and res["n_train"] == 16 and res["tuning_file"].endswith("tuning_random.csv")
    assert set(trained_on["patient"]).isdisjoint(pd.read_csv(d05 / "test_a.csv", dtype=str)["patient"])
    assert calls == [{"cfg": cfg.classifier, "seed": cfg.seed, "n": 16}]     # direction a's classifier and seed
    assert list(seen[1]["image_id"]) == list(pd.read_csv(d05 / "test_a.csv")["image_id"])   # tested on test_a's rows
    cache = cache_of(d05)
    assert (cache / "result.json").exists() and not any(d05.glob("*tun*"))       # beside stage 05, never in it
    # a second call reads the cache: nothing trains again
    assert tuning_only.compute_run(d05) == res and len(calls) == 1


def test_the_auroc_recomputes_from_the_cached_predictions_with_sklearn(tmp_path):
    d05, _, _ = stand_in(tmp_path)
    res = tuning_only.compute_run(d05)
    pred = pd.read_csv(cache_of(d05) / "predictions_tun.csv")
    y = (pred["label"] == "Unhealthy").astype(int)
    assert res["auroc_tun"] == pytest.approx(roc_auc_score(y, pred["p[Unhealthy]"] / (pred["p[Unhealthy]"] +
                                                                                       pred["p[No Finding]"])))
    assert res["auroc_tun"] == pytest.approx(roc_auc_score(y, pred["score"]))


def test_a_selection_holding_a_test_patient_is_refused_before_training(tmp_path, monkeypatch):
    d05, _, _ = stand_in(tmp_path, leak=True)
    monkeypatch.setattr(classifier, "train", lambda *a, **k: pytest.fail("trained on a test patient"))
    with pytest.raises(leakage.LeakageError, match="patient"):
        tuning_only.compute_run(d05)


def test_a_changed_tuning_file_is_refused(tmp_path):
    d05, tuning, _ = stand_in(tmp_path)
    tuning.iloc[:-1].to_csv(next(d05.parent.glob("02_clustering-*")) / "tuning_random.csv", index=False)
    with pytest.raises(RuntimeError, match="changed after"):
        tuning_only.compute_run(d05)


def test_the_matrix_table_has_the_tuning_only_columns_beside_tr(tmp_path):
    d05, _, _ = stand_in(tmp_path)
    records = collection.collect(tmp_path / "runs")
    runs = tuning_only.per_run(records)
    r = runs.iloc[0]
    assert r["tr_tun"] == pytest.approx((r["auroc_tun"] - 0.5) / (0.9 - 0.5))
    assert r["generator_gain"] == pytest.approx(0.5 - r["tr_tun"])
    # a reference has no tuning set: NaN, and why
    ref = records.assign(params=[{**records["params"][0], "generation": {**records["params"][0]["generation"],
                                                                           "kind": "real-holdout"}}])
    assert np.isnan(tuning_only.per_run(ref)["auroc_tun"][0]) and "no tuning set" in tuning_only.per_run(ref)["why"][0]
    s = pd.DataFrame([{"method": "random", "tuning_size": 8, "setting": "", "n_seeds": 3, "tr_mean": 0.4}])
    three = pd.DataFrame({"method": "random", "tuning_size": 8, "setting": "", "seed": [0, 1, 2],
                          "auroc_tun": [0.80, 0.82, 0.84], "tr_tun": [0.7, 0.8, 0.9], "generator_gain": [-0.3, -0.4, -0.5]})
    t = tables.fter_table(tuning_only.add(s, three))
    cols = list(t.columns)
    assert cols[cols.index("TR") + 1: cols.index("TR") + 4] == ["TSTR tuning-only", "TR tuning-only", "generator gain"]
    assert t.loc[0, "generator gain"].startswith("-0.400 [")           # the seed mean with its t-interval
    assert t.loc[0, "TR tuning-only"].startswith("0.800 [")
    two = tables.fter_table(tuning_only.add(s.assign(n_seeds=2), three.iloc[:2]))
    assert two.loc[0, "generator gain"] == "-0.350 (n<3)"               # no interval below 3 seeds
