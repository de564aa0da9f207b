"""Sweeps: grid expansion, explicit points, skipping finished points, gated-before-random-skip, parallel pool."""
import json
from pathlib import Path

import pytest
import standins
import yaml

from lib.core import config, stages
from lib.runs import sweep_spec, sweeps
from lib.runs.executors import local


def _sweep_file(tmp_path, body: dict):
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"base": "params/smoke.yaml", "figures_dir": str(tmp_path / "fig"), **body}))
    return p


def test_grid_expands_to_the_cartesian_product_with_bundles_and_explicit_points(tmp_path):
    s = sweep_spec.load(_sweep_file(tmp_path, {
        "fixed": {"classifier.epochs": 2},
        "grid": {"method": [{"finetune.method": "random"},
                            {"finetune.method": "spectral-clip", "gating.enabled": True}],
                 "gating.threshold": [0.3, 0.5], "seed": [0, 1]},
        "points": [{"finetune.control": "no-fine-tune"},
                   {"set": {"finetune.control": "random-skip"}, "grid": {"seed": [0, 1]}},
                   {"finetune.control": "no-fine-tune"}]}))           # a duplicate, dropped
    assert len(s.points) == 2 * 2 * 2 + 1 + 2
    assert s.points[0] == {"classifier.epochs": 2, "finetune.method": "random", "gating.threshold": 0.3, "seed": 0}
    assert s.points[7] == {"classifier.epochs": 2, "finetune.method": "spectral-clip", "gating.enabled": True,
                           "gating.threshold": 0.5, "seed": 1}
    assert s.points[-1] == {"classifier.epochs": 2, "finetune.control": "random-skip", "seed": 1}


@pytest.mark.parametrize("body, match", [
    ({"grid": {"gating.thresold": [0.1]}}, r"not a parameter .*did you mean .gating.threshold.\?"),
    ({"grid": {"gating.threshold": [2.0]}}, "outside"),
    ({"grid": {"seed": []}}, "non-empty"),
    ({"grids": {}}, "unknown key"),
    ({}, "no points"),
])
def test_bad_sweep_files_are_refused_before_anything_runs(tmp_path, body, match):
    with pytest.raises(config.ParamError, match=match):
        sweep_spec.load(_sweep_file(tmp_path, body))


def test_shipped_sweeps_cover_the_thesis_grid_the_demo_and_a_threshold_sweep():
    thesis = sweep_spec.load("params/sweeps/thesis.yaml")
    cfgs = [config.load(thesis.base, p) for p in thesis.points]
    labels = {("active-gating" if c.gating.enabled else c.finetune.method) for c in cfgs
              if c.finetune.control == "none"}
    assert labels == {"random", "spectral-pixel", "spectral-clip", "textbook", "active-gating"}
    assert {c.selection.per_label for c in cfgs} == {500, 1000} and {c.seed for c in cfgs} == set(range(5))
    assert len([c for c in cfgs if c.finetune.control == "none"]) == 5 * 2 * 5
    # every point's tuning set is one that stage 02 writes
    assert all(c.finetune.method in c.selection.methods for c in cfgs)
    # the demo (15 min) keeps the gate-alone pair; the gate's other controls are the study's, which holds every demo point
    demo, study = (sweep_spec.load(f"params/sweeps/{n}.yaml") for n in ("demo", "study"))
    assert {config.load(demo.base, p).finetune.control for p in demo.points} == {"none"}
    assert {config.load(study.base, p).finetune.control for p in study.points} == \
        {"none", "no-fine-tune", "random-skip", "equal-updates"}
    assert all(p in study.points for p in demo.points) and demo.base == study.base
    thr = sweep_spec.load("params/sweeps/threshold.yaml")
    absolute = [c for c in (config.load(thr.base, p) for p in thr.points) if c.gating.mode == "absolute"]
    assert len({c.gating.threshold for c in absolute}) >= 5
    # points that differ in a setting the gate uses have different stage keys
    keys = {stages.key(config.load(thr.base, p), "03_dreambooth") for p in thr.points}
    assert len(keys) == len(thr.points)


DEMO_LIKE = {"grid": {"method": [{"finetune.method": "random"},
                                 {"finetune.method": "spectral-clip", "gating.enabled": True}]},
             "points": [{"finetune.method": "spectral-clip", "finetune.control": "random-skip"},
                        {"finetune.control": "no-fine-tune"}]}


def test_a_sweep_runs_every_point_gated_first_and_skips_finished_points(tmp_path, runs_root, capsys):
    nb = standins.write_notebooks(tmp_path / "nb")
    f = _sweep_file(tmp_path, DEMO_LIKE)
    p = sweeps.plan(sweep_spec.load(f), runs_root, nb)
    assert p.status == ["new", "new", "new", "waits for gated run"]
    assert p.tasks[-1].overrides["finetune.control"] == "random-skip"

    out = sweeps.run(f, 1, runs_root, nb, engine=standins.exec_engine)
    assert all(r["ok"] for r in out["results"]) and len(out["results"]) == 4
    calls = standins.calls(runs_root)
    assert calls.count("01_data_curation") == 1 and calls.count("02_clustering") == 1   # one stage writes every tuning set
    assert calls.count("05_classifier") == 4
    rs = json.loads((runs_root / "smoke" / "spectral-clip_n12_random-skip_seed0" / "run.json").read_text())
    assert rs["params_hash"] and yaml.safe_load(
        (runs_root / "smoke" / "spectral-clip_n12_random-skip_seed0" / "params.yaml").read_text()
    )["gating"]["skip_rate"] == 0.25
    assert out["analysis"].exists() and out["analysis"].parent.name == "sweep-sweep"
    # one log per point (what the runner and the notebooks printed), and a progress line as each point ends
    for r in out["results"]:
        log = Path(r["log"]).read_text()
        assert Path(r["log"]) == Path(r["run"]) / "run.log" and "05_classifier: " in log, log
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("sweep sweep: ") and " done, " in line]
    assert len(lines) == 4 and lines[0].startswith("sweep sweep: 1/4 done, 0 running, 0 failed, 3 left;"), lines
    assert lines[-1].startswith("sweep sweep: 4/4 done, 0 running, 0 failed, 0 left;") and "ETA 0s" in lines[-1]
    again = sweeps.run(f, 1, runs_root, nb, engine=standins.exec_engine)
    assert "4 finished already; running 0" in capsys.readouterr().out
    assert again["results"] == [] and standins.calls(runs_root) == calls


def test_dry_run_lists_points_and_commands_and_writes_nothing(tmp_path, runs_root, capsys):
    f = _sweep_file(tmp_path, DEMO_LIKE)
    sweeps.run(f, 1, runs_root, dry_run=True)
    text = capsys.readouterr().out
    assert "python -m lib.runs.runner params/smoke.yaml --set finetune.method=random" in text
    assert not runs_root.exists()


def test_a_process_pool_runs_points_in_parallel_without_running_a_shared_stage_twice(tmp_path, runs_root):
    nb = standins.write_notebooks(tmp_path / "nb")
    f = _sweep_file(tmp_path, {"fixed": {"gating.enabled": True, "gating.mode": "absolute"},
                               "grid": {"gating.threshold": [0.2, 0.4, 0.6]}})
    ex = local.LocalPoolExecutor(jobs=2, engine=standins.exec_engine)
    out = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, executor=ex, analyse=False)
    assert all(r["ok"] for r in out["results"]), out["results"]
    calls = standins.calls(runs_root)
    assert calls.count("01_data_curation") == 1 and calls.count("02_clustering") == 1   # locked, then reused
    assert calls.count("03_dreambooth") == 3
    assert len(list((runs_root / "smoke" / "stages").glob(f"{stages.ORDER[2]}-*"))) == 3
    for r in out["results"]:    # a pool worker's output goes to its point's log, not the console
        assert "03_dreambooth: executing" in (Path(r["run"]) / "run.log").read_text()


def test_the_progress_line_counts_points_and_estimates_the_time_left():
    from concurrent.futures import Future

    prog = sweeps.Progress("demo", total=6, done_before=1, slots=2)
    for _ in range(5):
        prog.submitted()
    assert prog.line().startswith("sweep demo: 1/6 done, 2 running, 0 failed, 3 left;") and "ETA unknown" in prog.line()
    for ok in (True, False):
        f = Future()
        f.set_result({"ok": ok, "seconds": 120.0, "error": None if ok else "boom"})
        prog.finished(f)
    # 2 of 5 ended (one failed): 2 running, 1 left; 3 more at 120 s each over 2 slots = 3 min
    assert prog.line().startswith("sweep demo: 2/6 done, 2 running, 1 failed, 1 left;") and prog.line().endswith("ETA 3m00s")
    f = Future()
    f.set_exception(RuntimeError("worker died"))
    prog.finished(f)
    assert prog.failed == 2


def test_shared_models_lists_the_offline_clip_once_and_one_tiny_base_per_seed():
    sw = sweep_spec.load("params/sweeps/demo.yaml")
    specs = sweeps.shared_models(sw, sw.points)
    assert specs[0] == ("clip",) and specs.count(("clip",)) == 1
    tiny = [s for s in specs if s[0] == "tiny"]
    assert sorted(s[3] for s in tiny) == [2, 3] and all(s[1:3] == (32, 300) for s in tiny)
    refs = [p for p in sw.points if p.get("generation.kind") in ("real-holdout", "label-shuffled")]
    assert all(s[0] == "clip" for s in sweeps.shared_models(sw, refs))   # no base built for them


def test_a_sweep_without_figures_dir_never_writes_into_the_suites_figures(tmp_path, runs_root):
    # A scratch sweep (no figures_dir) once overwrote figures/ with its closing analysis: the default is now
    # a folder of its own beside the sweep's output notebook.
    nb = standins.write_notebooks(tmp_path / "nb")
    f = tmp_path / "scratch.yaml"
    f.write_text(yaml.safe_dump({"base": "params/smoke.yaml", "grid": {"seed": [0]}}))
    sw = sweep_spec.load(f)
    sweeps.run(f, 1, runs_root, nb, engine=standins.exec_engine, analyse=False)
    seen = {}
    sweeps.analyse_sweep(sw, runs_root, nb, engine=lambda nb_, out, params, kernel: seen.update(params))
    assert Path(seen["figures_dir"]) == runs_root.resolve() / "smoke" / "sweep-scratch" / "figures"


def test_a_rerun_with_set_makes_folders_only_for_points_whose_stage_folders_change(tmp_path, capsys):
    """make demo SET="gating.threshold=..." used to give every point a new run folder (22 in the demo)."""
    f = _sweep_file(tmp_path, {"fixed": {"gating.mode": "absolute"}, **DEMO_LIKE})
    sw = sweep_spec.load(f, {"gating.threshold": 0.42})
    changed = [p for p in sw.points if p not in sw.unchanged]
    assert [p.get("gating.enabled") or p.get("finetune.control") for p in changed] == [True, "random-skip"]
    assert all("gating.threshold" not in p for p in sw.unchanged) and len(sw.unchanged) == 2
    nothing = sweep_spec.load(f, {"gating.skip_fraction": 0.5})     # read in quantile mode only
    assert nothing.unchanged == nothing.points and all("gating.skip_fraction" not in p for p in nothing.points)
    sweeps.run(f, dry_run=True, runs_root=tmp_path / "runs", extra={"gating.skip_fraction": 0.5})
    assert "changes nothing" in capsys.readouterr().out


EQUAL = {"grid": {"method": [{"finetune.method": "random"},
                             {"finetune.method": "spectral-clip", "gating.enabled": True}], "seed": [0, 1]},
         "points": [{"set": {"finetune.method": "spectral-clip", "finetune.control": "equal-updates"},
                     "grid": {"seed": [0, 1]}}]}


class _Recorder(local.SerialExecutor):
    """Runs points in this process; records the run id of each point in the order it is submitted."""

    def __init__(self, engine):
        super().__init__(engine)
        self.order = []

    def submit(self, task):
        self.order.append(sweeps.runner.run_id(config.load(task.base, task.overrides), task.overrides))
        return super().submit(task)


def test_an_equal_updates_control_waits_for_its_gated_point_and_copies_its_trained_count(tmp_path, runs_root):
    nb = standins.write_notebooks(tmp_path / "nb")
    f = _sweep_file(tmp_path, EQUAL)
    p = sweeps.plan(sweep_spec.load(f), runs_root, nb)
    assert p.status[-2:] == ["waits for gated run"] * 2
    assert p.run_ids[-2:] == [f"spectral-clip_n12_equal-updates_seed{s}" for s in (0, 1)]
    ex = _Recorder(standins.exec_engine)
    out = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, executor=ex, analyse=False)
    assert all(r["ok"] for r in out["results"]) and len(out["results"]) == 6
    for seed in (0, 1):      # started as soon as its own gated point ended, not after the whole first wave
        gated = ex.order.index(f"spectral-clip_n12_q0.3_seed{seed}")   # smoke: quantile gate
        assert ex.order.index(f"spectral-clip_n12_equal-updates_seed{seed}") == gated + 1, ex.order
        params = yaml.safe_load((runs_root / "smoke" / f"spectral-clip_n12_equal-updates_seed{seed}" /
                                 "params.yaml").read_text())
        assert params["finetune"]["updates"] == 6 and not params["gating"]["enabled"]   # the stand-in's 6 of 8


def test_a_set_that_changes_the_gated_point_changes_its_equal_updates_control(tmp_path):
    """The control's own stage keys hold no gate setting; its gated counterpart's stage 03 is its input."""
    f = _sweep_file(tmp_path, {"fixed": {"gating.mode": "absolute"}, **EQUAL})
    sw = sweep_spec.load(f, {"gating.threshold": 0.42})
    changed = [p for p in sw.points if p not in sw.unchanged]
    assert [p.get("finetune.control", "gated") for p in changed] == ["gated", "gated", "equal-updates", "equal-updates"]
