"""The runner's resume and concurrency holes of issue 20: a run whose data changed under it resumes
(hole 3), and two identical runs started at once never execute one notebook twice (hole 7)."""
import json
import threading
import time

import pytest
import standins

from lib.core import config, stages
from lib.runs import runner


@pytest.fixture
def notebooks(tmp_path):
    return standins.write_notebooks(tmp_path / "nb")


def _run(runs_root, notebooks, **kw):
    return runner.run("params/smoke.yaml", {}, runs_root, notebooks, engine=kw.pop("engine", standins.exec_engine), **kw)


def test_an_unfinished_run_whose_data_changed_redoes_its_finished_stages_for_the_new_key(
        runs_root, tmp_path, notebooks, monkeypatch):
    monkeypatch.setattr(stages, "_data_fingerprint", lambda cfg: "metadata-v1")
    broken = standins.write_notebooks(tmp_path / "broken", fail="03_dreambooth")
    with pytest.raises(runner.RunFailed, match="planted failure"):
        _run(runs_root, broken)                       # 01 and 02 done, 03 failed: an unfinished run
    cfg = config.load("params/smoke.yaml")
    old_key = stages.key(cfg, "01_data_curation")

    monkeypatch.setattr(stages, "_data_fingerprint", lambda cfg: "metadata-v2")   # e.g. new NIH metadata
    done = _run(runs_root, notebooks)
    assert done.status["finished"]
    assert standins.calls(runs_root) == stages.ORDER[:3] + stages.ORDER[:5]       # 01, 02 redone for the new data
    for stage in stages.ORDER[:5]:
        entry = done.status["stages"][stage]
        assert entry["status"] == "executed" and entry["key"] == stages.key(cfg, stage)
        assert stages.is_done(stages.stage_dir(cfg, stage, runs_root))
    # the notebook executed for the old data is kept beside the new one
    assert (done.directory / f"01_data_curation.{old_key}.ipynb").exists()
    assert (done.directory / "01_data_curation.ipynb").exists()
    record = json.loads(done.record_path.read_text())
    assert [e["key"] for e in record["history"] if e["stage"] == "01_data_curation" and e["status"] == "executed"] \
        == [old_key, stages.key(cfg, "01_data_curation")]


def test_a_resumed_run_whose_stage_another_key_already_sealed_reuses_it(runs_root, tmp_path, notebooks, monkeypatch):
    monkeypatch.setattr(stages, "_data_fingerprint", lambda cfg: "v1")
    broken = standins.write_notebooks(tmp_path / "broken", fail="02_clustering")
    with pytest.raises(runner.RunFailed):
        _run(runs_root, broken)
    monkeypatch.setattr(stages, "_data_fingerprint", lambda cfg: "v2")
    other = runner.run("params/smoke.yaml", {"classifier.epochs": 2}, runs_root, notebooks,
                       engine=standins.exec_engine)     # another run seals 01-05 for the new data first
    done = _run(runs_root, notebooks)
    assert {s: v["status"] for s, v in done.status["stages"].items()} == {
        **{s: "reused" for s in stages.ORDER[:4]}, "05_classifier": "executed", "06_fter_analysis": "executed"}
    assert done.status["stages"]["01_data_curation"]["notebook"] == str(other.directory / "01_data_curation.ipynb")


def test_two_identical_runs_at_once_execute_each_notebook_once(runs_root, notebooks):
    calls, second = [], {}

    def engine(nb, out_nb, parameters, kernel):
        calls.append(nb.name)
        standins.exec_engine(nb, out_nb, parameters, kernel)
        if nb.name.startswith("02") and "thread" not in second:   # the same run started again, mid-run
            second["thread"] = threading.Thread(target=lambda: second.update(run=_run(runs_root, notebooks,
                                                                                       engine=engine)))
            second["thread"].start()
            time.sleep(1.0)                                   # it reaches the run (and, before, stage 02's lock)

    first = _run(runs_root, notebooks, engine=engine)
    second["thread"].join(timeout=60)
    assert first.status["finished"] and second["run"].status["finished"]
    assert calls == [runner.notebook_for(s, notebooks).name for s in stages.ORDER]   # no notebook executed twice
    statuses = {s: v["status"] for s, v in json.loads(first.record_path.read_text())["stages"].items()}
    assert set(statuses.values()) == {"executed"}
