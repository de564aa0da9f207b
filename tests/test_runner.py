"""The batch runner: run ids, resume, never overwrite, recompute only what a parameter change affects."""
import json

import pytest
import standins

from lib.core import config, overrides, stages
from lib.runs import runner


@pytest.fixture
def notebooks(tmp_path):
    return standins.write_notebooks(tmp_path / "nb")


def _run(runs_root, notebooks, overrides=None, **kw):
    return runner.run("params/smoke.yaml", overrides or {}, runs_root, notebooks,
                      engine=standins.exec_engine, **kw)


def _statuses(run):
    return {s: v["status"] for s, v in run.status["stages"].items()}


def test_run_id_names_the_parameters_that_vary():
    cfg = config.load("params/smoke.yaml", {"gating.enabled": True, "gating.mode": "absolute", "gating.threshold": 0.3})
    assert runner.run_id(cfg) == "spectral-clip_n12_thr0.3_seed0"
    cfg = config.load("params/smoke.yaml", {"gating.enabled": True, "gating.mode": "quantile",
                                            "gating.skip_fraction": 0.25})
    assert runner.run_id(cfg) == "spectral-clip_n12_q0.25_seed0"
    cfg = config.load("params/smoke.yaml", {"finetune.control": "no-fine-tune", "seed": 2})
    assert runner.run_id(cfg, {"classifier.epochs": 3}) == "spectral-clip_n12_no-fine-tune_seed2_epochs3"


def test_full_run_writes_every_notebook_and_a_rerun_is_a_noop(runs_root, notebooks, capsys):
    run = _run(runs_root, notebooks)
    assert run.directory == runs_root / "smoke" / "spectral-clip_n12_seed0"
    assert set(_statuses(run).values()) == {"executed"} and len(run.status["stages"]) == 6
    assert standins.calls(runs_root) == stages.ORDER[:5]
    assert (run.directory / "03_dreambooth_active_gating.ipynb").exists()
    before = {p.name: p.stat().st_mtime_ns for p in run.directory.iterdir()}

    again = _run(runs_root, notebooks)
    assert "already finished" in capsys.readouterr().out
    assert again.directory == run.directory
    assert {p.name: p.stat().st_mtime_ns for p in run.directory.iterdir()} == before
    assert standins.calls(runs_root) == stages.ORDER[:5]       # no stage function ran again


def test_changing_only_the_threshold_reruns_only_notebooks_03_to_06(runs_root, notebooks):
    gated = {"gating.enabled": True, "gating.mode": "absolute"}
    first = _run(runs_root, notebooks, gated)
    second = _run(runs_root, notebooks, {**gated, "gating.threshold": 0.5})
    assert second.directory != first.directory
    assert _statuses(second) == {"01_data_curation": "reused", "02_clustering": "reused",
                                 "03_dreambooth": "executed", "04_generation": "executed",
                                 "05_classifier": "executed", "06_fter_analysis": "executed"}
    assert standins.calls(runs_root) == stages.ORDER[:5] + stages.ORDER[2:5]
    assert not (second.directory / "01_data_curation.ipynb").exists()
    # the reuse record points at the notebook that produced the stage
    assert second.status["stages"]["01_data_curation"]["notebook"] == str(first.directory / "01_data_curation.ipynb")


def test_a_failed_run_keeps_its_partial_notebook_and_resumes_at_the_failed_stage(runs_root, tmp_path, notebooks):
    broken = standins.write_notebooks(tmp_path / "broken", fail="04_generation")
    with pytest.raises(runner.RunFailed, match=r"04_generation.ipynb failed in cell 2.*planted failure"):
        _run(runs_root, broken)
    rec = json.loads((runs_root / "smoke" / "spectral-clip_n12_seed0" / "run.json").read_text())
    assert rec["stages"]["04_generation"]["status"] == "failed" and not rec["finished"]
    assert (runs_root / "smoke" / "spectral-clip_n12_seed0" / "04_generation.ipynb").exists()

    done = _run(runs_root, notebooks)
    assert done.status["finished"]
    # 04's stage had sealed before the planted failure: its notebook runs again to complete its output,
    # but no stage function runs twice
    assert standins.calls(runs_root) == stages.ORDER[:5]
    assert set(_statuses(done).values()) == {"executed"}


def test_a_changed_parameter_never_overwrites_a_finished_run_of_the_same_name(runs_root, notebooks):
    first = _run(runs_root, notebooks)
    nb_bytes = (first.directory / "05_classifier.ipynb").read_bytes()
    # same readable id (classifier keys are not part of it when set in the file), other parameters
    raw = config.read_yaml("params/smoke.yaml")
    raw["classifier"] = {"epochs": 2}
    other = runs_root.parent / "other.yaml"
    other.write_text(__import__("yaml").safe_dump(raw))
    second = runner.run(other, {}, runs_root, notebooks, engine=standins.exec_engine)
    assert second.directory.parent == first.directory.parent and second.directory != first.directory
    assert second.directory.name.startswith(first.directory.name + "_")
    assert (first.directory / "05_classifier.ipynb").read_bytes() == nb_bytes
    # with the first folder removed, the second run is still found where it is (an analysis of the sweep
    # looks it up without creating anything)
    import shutil

    shutil.rmtree(first.directory)
    again = runner.prepare(other, {}, runs_root, create=False)
    assert again.directory == second.directory and runner.done_through(again, "05_classifier")


def test_random_skip_takes_the_gated_runs_skip_rate(runs_root, notebooks):
    ctrl = {"finetune.control": "random-skip"}
    with pytest.raises(config.ParamError, match="gated run"):
        _run(runs_root, notebooks, ctrl)
    _run(runs_root, notebooks, {"gating.enabled": True})        # stand-in 03 writes skip_rate 0.25
    run = _run(runs_root, notebooks, ctrl)
    assert run.cfg.gating.skip_rate == 0.25
    assert run.status["stages"]["03_dreambooth"]["status"] == "executed"


def test_equal_updates_takes_the_gated_runs_trained_count_and_refuses_the_gate(runs_root, notebooks):
    ctrl = {"finetune.control": "equal-updates"}
    with pytest.raises(config.ParamError, match="needs the gated run's trained update count"):
        _run(runs_root, notebooks, ctrl)                          # no gated counterpart has finished stage 03
    _run(runs_root, notebooks, {"gating.enabled": True})        # stand-in 03 trains 6 of 8 batches
    run = _run(runs_root, notebooks, ctrl)
    assert run.cfg.finetune.updates == 6 and not run.cfg.gating.enabled
    assert run.directory.name == "spectral-clip_n12_equal-updates_seed0"
    assert run.status["stages"]["03_dreambooth"]["status"] == "executed"
    with pytest.raises(config.ParamError, match="equal-updates is ungated training: set gating.enabled: false"):
        _run(runs_root, notebooks, {**ctrl, "gating.enabled": True})


def test_papermill_failure_names_notebook_and_cell_and_keeps_the_partial_output(runs_root, tmp_path):
    broken = standins.write_notebooks(tmp_path / "broken", fail="01_data_curation")
    with pytest.raises(runner.RunFailed) as err:
        runner.run("params/smoke.yaml", {}, runs_root, broken, kernel="python3")
    assert "01_data_curation.ipynb failed in cell 2" in str(err.value)
    assert "planted failure" in str(err.value)
    out = runs_root / "smoke" / "spectral-clip_n12_seed0" / "01_data_curation.ipynb"
    assert out.exists() and "planted failure" in out.read_text()
    assert runner.main(["params/smoke.yaml", "--runs-root", str(runs_root), "--notebooks", str(broken),
                        "--kernel", "python3"]) == 1


def test_set_values_keep_their_types():
    assert overrides.parse_sets(["gating.threshold=0.5", "gating.enabled=true", "gating.skip_rate=null"]) == \
        {"gating.threshold": 0.5, "gating.enabled": True, "gating.skip_rate": None}
    with pytest.raises(config.ParamError, match="dotted.key=value"):
        overrides.parse_sets(["gating.threshold"])


def test_stage_keys_hold_only_the_gating_settings_that_can_change_a_decision():
    quantile = {"gating.enabled": True, "gating.mode": "quantile"}
    absolute = {"gating.enabled": True, "gating.mode": "absolute"}
    key = lambda over: stages.key(config.load("params/smoke.yaml", over), "03_dreambooth")  # noqa: E731
    assert key(quantile) == key({**quantile, "gating.threshold": 0.9})         # calibrated, not used
    assert key(quantile) != key({**quantile, "gating.skip_fraction": 0.5})
    assert key(absolute) == key({**absolute, "gating.skip_fraction": 0.5})     # no calibration
    assert key(absolute) != key({**absolute, "gating.threshold": 0.9})
    assert key(quantile) != key(absolute)


def test_an_ungated_run_does_not_depend_on_the_threshold(runs_root, notebooks):
    first = _run(runs_root, notebooks)
    second = _run(runs_root, notebooks, {"gating.threshold": 0.5})
    assert second.directory.name == "spectral-clip_n12_seed0_threshold0.5"
    assert [s for s, v in _statuses(second).items() if v == "executed"] == ["06_fter_analysis"]
    assert standins.calls(runs_root) == stages.ORDER[:5]
    assert all(stages.stage_dir(first.cfg, s, runs_root) == stages.stage_dir(second.cfg, s, runs_root)
               for s in stages.ORDER[:5])
