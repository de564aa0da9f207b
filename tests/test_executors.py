"""Sweeps on cluster engines, for real: submitit's LocalExecutor (the SLURM code path, one process per job)
and a Ray instance started here. The points run the stand-in notebooks (tests/standins.py) through the real
runner, so stage locks, run.json and run.log are the ones a cluster sweep uses."""
import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import standins
import yaml

from lib.core import config
from lib.runs import executors, points, sweep_spec, sweeps
from lib.runs.executors import ray_cluster, slurm

HERE = Path(__file__).resolve().parent
THRESHOLDS = [0.2, 0.4, 0.6]

# A cell before the stand-in stage 03: the 0.4 point fails (a notebook error) while runs/fail-0.4 exists,
# the 0.6 point's process dies the first time (as a job killed for memory would), not on a rerun.
PLANTED = """
import os, pathlib
from lib.core import config as _config
_thr = _config.load(params_file, overrides).gating.threshold
if _thr == 0.4 and (pathlib.Path(runs_root) / 'fail-0.4').exists():
    raise ValueError('planted failure')
_marker = pathlib.Path(runs_root) / 'died-once'
if _thr == 0.6 and not _marker.exists():
    _marker.touch()
    os._exit(3)
"""


@pytest.fixture(autouse=True)
def workers_import_standins(monkeypatch):
    """Jobs and Ray workers are fresh interpreters: they must import the stand-in engine (tests/)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def ray_here():
    """Ray started on this machine by the executor, as a sweep with ``address: null`` starts it, and kept
    for the module (start-up costs seconds); shut down after. Requested inside the tests, after
    ``workers_import_standins``, so its workers import the stand-ins too."""
    ray = pytest.importorskip("ray")
    try:
        ray_cluster.RayExecutor({"engine": "ray", "address": None})
    except executors.EngineUnavailable as exc:    # Ray's own 30 s start-up limit, missed on a loaded machine
        if "timed out during startup" not in str(exc):
            raise
        pytest.skip(f"Ray could not start here (machine overloaded?): {exc}")
    yield ray
    ray.shutdown()


def _sweep_file(tmp_path, executor: dict, until="03_dreambooth") -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({
        "base": "params/smoke.yaml", "figures_dir": str(tmp_path / "fig"), "until": until,
        "fixed": {"gating.enabled": True, "gating.mode": "absolute"},
        "grid": {"gating.threshold": THRESHOLDS}, "executor": executor}))
    return p


def _settings(engine: str, request) -> dict:
    if engine == "ray":
        request.getfixturevalue("ray_here")
        return {"engine": "ray", "num_cpus": 1}        # address: the Ray ray_here started
    return {"engine": "submitit-local", "time_min": 5, "max_parallel": 3}


def _history(run_dir: Path, stage: str) -> list[str]:
    return [e["status"] for e in json.loads((run_dir / "run.json").read_text())["history"] if e["stage"] == stage]


# ------------------------------------------------------------------------------- bad input first
def test_slurm_without_sbatch_says_what_to_do(tmp_path, runs_root, capsys):
    if shutil.which("sbatch"):
        pytest.skip("this machine has SLURM")
    f = _sweep_file(tmp_path, {"engine": "serial"})
    # --executor overrides the file's engine; the error comes before anything runs
    assert sweeps.main([str(f), "--executor", "slurm", "--runs-root", str(runs_root)]) == 1
    err = capsys.readouterr().err
    assert "no SLURM here: sbatch not found" in err and "--executor submitit-local" in err, err
    assert not (runs_root / "smoke").exists()
    # a sweep with nothing left to run needs no scheduler
    nb = standins.write_notebooks(tmp_path / "nb")
    f = _sweep_file(tmp_path, {"engine": "serial"}, until="01_data_curation")
    assert all(r["ok"] for r in sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, engine=standins.exec_engine,
                                           analyse=False)["results"])
    capsys.readouterr()
    assert sweeps.main([str(f), "--executor", "slurm", "--runs-root", str(runs_root), "--notebooks", str(nb),
                        "--no-analysis"]) == 0
    assert "3 finished already; running 0" in capsys.readouterr().out


def test_no_ray_cluster_says_to_start_one(tmp_path, runs_root):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    f = _sweep_file(tmp_path, {"engine": "ray", "address": "auto"})
    with pytest.raises(executors.EngineUnavailable, match=r"ray.init\(address='auto'\) failed .*`ray start --head`"):
        sweeps.run(f, runs_root=runs_root, notebooks_dir=standins.write_notebooks(tmp_path / "nb"))


def test_a_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)        # as if not installed: import raises
    with pytest.raises(executors.EngineUnavailable, match=r"pip install submitit==1\.5\.4"):
        executors.make({"engine": "submitit-local"})


@pytest.mark.parametrize("raw, match", [
    ({"engine": "slurmm"}, "must be one of serial, local, ray, slurm, submitit-local"),
    ({"engine": "slurm", "gpus_per_tsk": 1}, r"did you mean .gpus_per_task.\?"),
    ({"engine": "slurm", "time_min": 0}, "at least 1"),
    ({"engine": "slurm", "array": "yes"}, "true or false"),
    ({"engine": "ray", "num_cpus": -1}, "positive"),
])
def test_bad_executor_settings_are_refused_when_the_sweep_is_read(tmp_path, raw, match):
    with pytest.raises(config.ParamError, match=match):
        sweep_spec.load(_sweep_file(tmp_path, raw))


def test_settings_become_submitit_parameters():
    p = slurm.submitit_parameters("slurm", {"partition": "gpu", "gpus_per_task": 1, "time_min": 90,
                                                "mem_gb": 32, "array": True, "max_parallel": 4,
                                                "setup": ["module load cuda"], "sbatch": {"account": "lab"}}, "demo")
    assert p["slurm_partition"] == "gpu" and p["gpus_per_node"] == 1 and p["timeout_min"] == 90
    assert p["mem_gb"] == 32 and p["slurm_array_parallelism"] == 4 and p["slurm_additional_parameters"] == {"account": "lab"}
    assert p["slurm_setup"][0].startswith("export PYTHONPATH=") and p["slurm_setup"][1] == "module load cuda"


# ------------------------------------------------------------------------------------- sweeps
def _threshold(result: dict) -> float:
    if result["ok"]:
        return config.load(Path(result["run"]) / "params.yaml").gating.threshold
    return result["overrides"]["gating.threshold"]


@pytest.mark.parametrize("engine", ["submitit-local", "ray"])
def test_an_engine_reports_failed_and_dead_points_computes_shared_stages_once_and_a_rerun_resumes(
        tmp_path, runs_root, request, capsys, engine):
    nb = standins.write_notebooks(tmp_path / "nb")
    path = nb / "03_dreambooth_active_gating.ipynb"
    book = nbformat.read(path, as_version=4)
    book.cells.insert(1, nbformat.v4.new_code_cell(PLANTED))
    nbformat.write(book, path)
    runs_root.mkdir(parents=True)
    (runs_root / "fail-0.4").touch()
    settings = _settings(engine, request)
    # submitit: the first sweep goes in as one job array, the rerun as one job per point
    f = _sweep_file(tmp_path, {**settings, "array": True} if engine != "ray" else settings)
    out = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, engine=standins.exec_engine, analyse=False)

    # the 0.4 point failed, reported with its log; the 0.6 point's job died; the 0.2 point finished anyway
    by_thr = {_threshold(r): r for r in out["results"]}
    assert by_thr[0.2]["ok"] and not by_thr[0.4]["ok"] and not by_thr[0.6]["ok"], out["results"]
    failed_log = Path(by_thr[0.4]["log"])
    assert failed_log.name == "run.log" and "FAILED: " in failed_log.read_text()
    assert "planted failure" in failed_log.read_text()
    assert "died without a result" in by_thr[0.6]["error"] and by_thr[0.6]["log"].endswith("run.log")
    if engine == "submitit-local":
        assert Path(by_thr[0.6]["job_log"]).exists()      # the job's own stderr, named in the report
    err = capsys.readouterr().err
    assert err.count("FAILED point") == 2 and "planted failure" in err and err.count("  log: ") == 2, err

    # stages 01 and 02 are shared by the three points: computed once (one folder), the others reused them
    calls = standins.calls(runs_root)
    assert calls.count("01_data_curation") == 1 and calls.count("02_clustering") == 1
    assert len(list((runs_root / "smoke" / "stages").glob("01_data_curation-*"))) == 1
    runs = [Path(by_thr[0.2]["run"])] + [Path(by_thr[t]["log"]).parent for t in (0.4, 0.6)]
    assert sorted(_history(r, "01_data_curation")[-1] for r in runs) == ["executed", "reused", "reused"]
    pids = {e["pid"] for r in runs for e in json.loads((r / "run.json").read_text())["history"]}
    assert os.getpid() not in pids                        # the points ran in jobs / workers, not here

    # rerun: the finished point is skipped, the failed and the dead one resume and finish
    (runs_root / "fail-0.4").unlink()
    if engine != "ray":
        f = _sweep_file(tmp_path, {**settings, "array": False})
    again = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, engine=standins.exec_engine, analyse=False)
    assert "1 finished already; running 2" in capsys.readouterr().out
    assert [r["ok"] for r in again["results"]] == [True, True], again["results"]
    calls = standins.calls(runs_root)
    assert calls.count("01_data_curation") == 1 and calls.count("03_dreambooth") == 3
    if engine == "submitit-local":                        # one job each; submitit's folders hold the results
        assert len(list((runs_root / ".submitit" / "sweep").glob("*/*_result.pkl"))) == 4
    last = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, engine=standins.exec_engine, analyse=False)
    assert "3 finished already; running 0" in capsys.readouterr().out and last["results"] == []


# ------------------------------------------------------------------------ a new engine, in one file
class LastFirstExecutor(executors.Executor):
    """A toy engine (CONTRIBUTING.md, "A sweep executor"): points queue on submit and run in this process
    at wait, the last submitted first; each summary names the engine's ``label`` setting and when it ran.
    No slot limit, so the sweep submits every point before wait."""
    slots = None

    def __init__(self, label: str, engine=None):
        self.label, self.engine, self.queue, self.tracked, self.ran = label, engine, [], points.Tracked(), 0

    def submit(self, task):
        fut = self.tracked.new()
        self.queue.append((task, fut))
        return fut

    def wait(self):
        while self.queue:                   # a done-callback may submit more points: keep draining
            task, fut = self.queue.pop()
            fut.set_result({**points.run_task(task, self.engine, echo=False), "label": self.label, "ran": self.ran})
            self.ran += 1
        return self.tracked.collect()


def make_last_first(settings: dict, ctx: executors.Context) -> executors.Executor:
    return LastFirstExecutor(settings.get("label", "toy"), ctx.engine)


@pytest.fixture
def toy_engine():
    """The toy registered as its own module would register it at import; removed again after the test."""
    executors.register("last-first", settings={"label": executors.Setting("a string", lambda v: isinstance(v, str))})(
        make_last_first)
    yield
    del executors.registry.ENGINES["last-first"]


def test_an_engine_registered_in_one_place_runs_a_sweep(tmp_path, runs_root, toy_engine, capsys):
    f = _sweep_file(tmp_path, {"engine": "last-first", "label": 3}, until="01_data_curation")
    with pytest.raises(config.ParamError, match=r"executor setting label: 3 in sweep.yaml must be a string"):
        sweep_spec.load(f)                  # its settings are checked when the sweep is read, as the built-ins'
    with pytest.raises(config.ParamError, match=r"must be one of serial, .*last-first"):
        sweep_spec.load(_sweep_file(tmp_path, {"engine": "last-frist"}))
    # --executor offers it (argparse refuses a name not registered) ...
    f = _sweep_file(tmp_path, {"engine": "serial", "label": "mine"}, until="01_data_curation")
    assert sweeps.main([str(f), "--executor", "last-first", "--dry-run", "--runs-root", str(runs_root)]) == 0
    # ... and runs every point through it
    nb = standins.write_notebooks(tmp_path / "nb")
    out = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, engine=standins.exec_engine, analyse=False,
                     executor_name="last-first")
    assert [r["ok"] for r in out["results"]] == [True] * 3 and {r["label"] for r in out["results"]} == {"mine"}
    assert [_threshold(r) for r in out["results"]] == THRESHOLDS        # summaries in submission order
    assert [r["ran"] for r in out["results"]] == [2, 1, 0]             # run last submitted first
    assert standins.calls(runs_root).count("01_data_curation") == 1     # the shared stage computed once
