"""The planner's trade-off (issue 22, item 10): the MDE on AUROC(a) a wall-time budget buys, from the pilot's own
wall times; the best seeds x classifier repeats per budget, a CSV and a figure, --budget-min."""
import json

import numpy as np
import pandas as pd
import pytest

import standins
from lib.analyze import collection, comparisons, planner, power, tradeoff
from lib.core import config, stages

COMP = "no-fine-tune − random"


def _pilot(root, seeds=(0, 1, 2), train_seconds=None):
    """Random (03: 60 s, 05: 40 s) and no-fine-tune (05: 40 s) at each seed; their run.json as the runner writes it."""
    for seed in seeds:
        for i, over in enumerate(({"finetune.method": "random"}, {"finetune.control": "no-fine-tune"})):
            cfg = config.load("params/smoke.yaml", {**over, "seed": seed})
            out = stages.stage_dir(cfg, "05_classifier", root)
            out.mkdir(parents=True)
            standins.write_fake_results(cfg, out)
            if train_seconds:        # seconds of one classifier: direction a, and the real baseline (b)
                rec = pd.read_csv(out / "results.csv")
                extra = pd.DataFrame([train_seconds], columns=["a_train_seconds", "b_train_seconds"])
                pd.concat([rec, extra], axis=1).to_csv(out / "results.csv", index=False)
            run = root / "smoke" / f"run{seed}{i}"
            run.mkdir(parents=True)
            (run / "run.json").write_text(json.dumps({"stages": {
                "03_dreambooth": {"seconds": 60.0 if i == 0 else 0.0},
                "05_classifier": {"stage_dir": str(out), "seconds": 40.0, "status": "executed"}}}))
    df = collection.collect(root)
    return df, comparisons.compare(df)


def test_the_curve_never_rises_and_one_point_is_the_power_functions_design(tmp_path):
    df, compared = _pilot(tmp_path / "runs")
    budgets = [3, *range(5, 61, 5)]
    t = planner.tradeoff_table(df, compared, tmp_path / "runs", budgets).query("comparison == @COMP")
    assert list(t["budget_min"]) == budgets and (np.diff(t["mde"].to_numpy()[1:]) <= 0).all()
    assert (np.diff(t["seeds"].to_numpy()[1:]) >= 0).all()
    # by hand at 10 min on 2 slots: 8 no-fine-tune points (40 s) four to a slot, then 8 random ones (100 s) four to a
    # slot, 4 x 40 + 4 x 100 = 560 s; a ninth seed would end at 660 s > 600 s
    row = t[t["budget_min"] == 10].iloc[0]
    assert (row["seeds"], row["repeats"], row["wall_min"]) == (8, 1, pytest.approx(560 / 60))
    assert (row["point_x_s"], row["point_b_s"]) == (40, 100)
    sd = compared.set_index("comparison").loc[COMP, "sd_d_auroc_a"]
    assert row["sd_per_seed"] == pytest.approx(sd)
    # the same design another way: 80% power at the MDE (noncentral t, and simulated paired t-tests), and the
    # planner's single-design function (power.plan) asks for these 8 seeds to find that difference
    assert power.power_paired(row["mde"], sd, 8) == pytest.approx(0.80, abs=1e-6)
    assert power.simulated_power(row["mde"], sd, 8, reps=40000) == pytest.approx(0.80, abs=0.01)
    assert power.plan(row["mde"] * 1.0001, sd, 0.0, 140.0, 0.0, max_repeats=1).iloc[0]["seeds"] == 8
    assert power.mde_paired(sd, 7) > row["mde"] * 1.05          # one seed fewer finds noticeably less
    assert np.isnan(t[t["budget_min"] == 3].iloc[0]["mde"])     # 3 seeds take 4 min: no design fits 3


def test_classifier_repeats_are_bought_when_they_are_cheap_and_the_noise_is_theirs(tmp_path, capsys):
    df, compared = _pilot(tmp_path / "runs", train_seconds=(2.0, 3.0))
    sd = compared.set_index("comparison").loc[COMP, "sd_d_auroc_a"]
    t = planner.tradeoff_table(df, compared, tmp_path / "runs", [10, 20], sd_classifier=sd).query(
        "comparison == @COMP").set_index("budget_min")
    r = t.loc[10]
    assert r["repeats"] > 1 and r["sd_generator"] == 0           # all of the pilot's spread is the classifiers'
    assert r["mde"] == pytest.approx(power.mde_paired(sd / np.sqrt(r["repeats"]), int(r["seeds"])))
    c = tradeoff.costs(df[df["method"] == "no-fine-tune"], df[df["method"] == "random"],
                       tradeoff.stage_records(tmp_path / "runs"))      # a repeat: a on each side + the real baseline
    assert c.durations(3) == (40 + 2 * (2 + 3), 100 + 2 * 2)
    assert tradeoff.wall_seconds(c, int(r["seeds"]), int(r["repeats"])) / 60 == pytest.approx(r["wall_min"])
    assert planner.main(["--root", str(tmp_path / "runs"), "--budget-min", "10", "--budgets", "10", "20",
                         "--sd-classifier", str(sd), "--figures", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    assert "Best design for 10 min" in out and f"{r['mde']:.3f} ({int(r['seeds'])}×{int(r['repeats'])})" in out
    saved = pd.read_csv(tmp_path / "fig" / "06_planner_tradeoff.csv")
    assert set(saved["budget_min"]) == {10, 20}
    assert all((tmp_path / "fig" / f"06_planner_tradeoff.{e}").exists() for e in ("pdf", "png"))


def test_a_control_waits_for_its_gated_point():
    c = tradeoff.Costs(100.0, 10.0, 0.0, 0.0, 0.0, 1, waits=True)
    assert tradeoff.wall_seconds(c, 1, 1) == 110.0               # not 100: random-skip copies the gated skip rate
    assert tradeoff.wall_seconds(tradeoff.Costs(100.0, 10.0, 0.0, 0.0, 0.0, 1, waits=False), 1, 1) == 100.0
