"""Named pairs of a sweep file (issue 22, item 8): ``pairs:`` selects points by parameter values, each pair a row of
the paired-comparison table through the report CLI and notebook 06's ``pairs`` parameter."""
import pytest
import standins
import yaml

from lib.core import config
from lib.runs import sweep_spec, sweeps

GRID = {"method": [{"finetune.method": "random"}, {"finetune.method": "spectral-clip"},
                   {"finetune.method": "spectral-clip", "gating.enabled": True}]}
GATE_ALONE = {"name": "gate alone", "a": {"finetune.method": "spectral-clip", "gating.enabled": True},
              "b": {"finetune.method": "spectral-clip"}}


def _file(tmp_path, pairs, grid=None, seeds=(0, 1)):
    p = tmp_path / "paired.yaml"
    p.write_text(yaml.safe_dump({"base": "params/smoke.yaml", "figures_dir": str(tmp_path / "fig"),
                                 "grid": {**(grid or GRID), "seed": list(seeds)}, "pairs": pairs}))
    return p


def test_a_pair_selects_one_configuration_at_every_seed_the_plain_one_when_several_match(tmp_path):
    sw = sweep_spec.load(_file(tmp_path, [GATE_ALONE, {"name": "clip vs random", "a": {"finetune.method":
                                                                                          "spectral-clip"},
                                                       "b": {"finetune.method": "random"}}]))
    gate, clip = sw.pairs
    assert gate.name == "gate alone" and gate.describe("a") == "finetune.method=spectral-clip, gating.enabled=True"
    assert gate.a_points == [{"finetune.method": "spectral-clip", "gating.enabled": True, "seed": s} for s in (0, 1)]
    # {finetune.method: spectral-clip} also matches the gated points: the one differing from the base only there
    assert gate.b_points == clip.a_points == [{"finetune.method": "spectral-clip", "seed": s} for s in (0, 1)]


@pytest.mark.parametrize("pair, match", [
    ({"name": "x", "a": {"finetune.methd": "random"}, "b": {"finetune.method": "random"}},
     r"pair 'x' in paired.yaml: `a:` names unknown parameter 'finetune.methd'; did you mean 'finetune.method'\?"),
    ({"name": "x", "a": {"finetune.method": "randm"}, "b": {"finetune.method": "random"}},
     r"`a:` \{finetune.method: 'randm'\} selects no point of the sweep; its points have finetune.method in "
     r"\{'random', 'spectral-clip'\} \(did you mean 'random'\?\)"),
    ({"name": "x", "a": {"finetune.method": "random", "selection.per_label": 7}, "b": {"finetune.method": "random"}},
     r"selects no point .*selection.per_label in \{"),
    ({"name": "x", "a": {"finetune.method": "random"}, "b": {"finetune.method": "random", "seed": 1}},
     "names seed; seeds pair up by themselves"),
    ({"name": "x", "a": {"finetune.method": "random"}, "b": {"finetune.method": "random"}}, "select the same points"),
    ({"name": "x", "a": {"finetune.method": "random"}}, r"pair 'x' in paired.yaml needs b"),
    ({"name": "x", "a": {"finetune.method": "random"}, "b": {"finetune.method": "random"}, "c": {}},
     r"unknown key\(s\) \['c'\]"),
    ({"name": "x", "a": {}, "b": {"finetune.method": "random"}}, "`a:` must be a non-empty mapping"),
])
def test_a_bad_pair_is_refused_naming_the_pair_and_what_to_fix(tmp_path, pair, match):
    with pytest.raises(config.ParamError, match=match):
        sweep_spec.load(_file(tmp_path, [pair]))


def test_a_side_matching_several_configurations_none_of_them_plain_asks_for_the_key(tmp_path):
    grid = {"finetune.method": ["random", "spectral-clip"], "classifier.epochs": [1, 2]}    # neither is smoke's 3
    with pytest.raises(config.ParamError, match=r"`b:` \{finetune.method: 'random'\} selects 2 configurations that "
                                                r"differ in classifier.epochs \(1, 2\); add the one you mean"):
        sweep_spec.load(_file(tmp_path, [{"name": "x", "a": {"finetune.method": "spectral-clip",
                                                             "classifier.epochs": 1},
                                          "b": {"finetune.method": "random"}}], grid))


def test_a_named_pair_is_a_row_of_the_report_and_reaches_notebook_06(tmp_path, runs_root, capsys):
    from lib.analyze import collection, comparisons, planner
    from lib.runs import report

    f = _file(tmp_path, [GATE_ALONE], seeds=(0, 1, 2))
    seen = {}
    sweeps.run(f, 1, runs_root, standins.write_notebooks(tmp_path / "nb"), engine=standins.exec_engine,
               analyse=False)
    sweeps.analyse_sweep(sweep_spec.load(f), runs_root, tmp_path / "nb",
                         engine=lambda nb, out, params, kernel: seen.update(params))
    named = seen["pairs"]                                            # what notebook 06 receives
    assert [p["name"] for p in named] == ["gate alone"] and len(named[0]["a_runs"]) == 3
    df = collection.collect(runs_root, seen["runs"])
    c = comparisons.compare(df, pairs=named).set_index("comparison")
    plain = comparisons.compare(df).set_index("comparison")
    auto = plain.loc["active-gating q0.3 − spectral-clip"]        # the automatic gate-alone row: the same pair ...
    assert "active-gating q0.3 − spectral-clip" not in c.index     # ... stands once, under its name
    assert len(c) == len(plain) and set(plain.index) - set(c.index) == {"active-gating q0.3 − spectral-clip"}
    mine = c.loc["gate alone"]
    for k in ("d_auroc_a", "d_auroc_a_t_low", "p_t", "mde_auroc_a", "d_tr", "delong_p_within_seed"):
        assert mine[k] == pytest.approx(auto[k], rel=1e-12)
    assert mine["n_seeds"] == 3 and mine["p_t_holm"] == auto["p_t_holm"] >= mine["p_t"]   # Holm over as many rows
    assert mine["verdict"] == auto["verdict"].replace("active-gating q0.3", "a").replace("spectral-clip", "b")
    plan = planner.plan_table(df, comparisons.compare(df, pairs=named), 0.05, runs_root).set_index("comparison")
    auto_plan = planner.plan_table(df, comparisons.compare(df), 0.05, runs_root).set_index("comparison")
    assert plan.loc["gate alone"].equals(auto_plan.loc["active-gating q0.3 − spectral-clip"].rename("gate alone"))
    capsys.readouterr()
    assert report.main(["--root", str(runs_root), "--sweep", str(f), "--runs-root", str(runs_root)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.lstrip().startswith("gate alone"))
    assert f"{mine['d_auroc_a']:+.3f} [" in line and f"{mine['mde_auroc_a']:.3f}" in line


def test_pairs_for_analysis_lists_only_finished_points(tmp_path, runs_root):
    sw = sweep_spec.load(_file(tmp_path, [GATE_ALONE]))
    assert sweeps.named_pairs(sw, runs_root) == [{
        "name": "gate alone", "a": "finetune.method=spectral-clip, gating.enabled=True",
        "b": "finetune.method=spectral-clip", "a_runs": [], "b_runs": []}]
