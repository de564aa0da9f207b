"""Kernel starts that cannot collide or kill a sweep (issue 20, deliverables 1-2).

A real kernel-start failure is planted with a kernel spec whose first start(s) exit at once, the way a kernel
that lost the port race dies (jupyter_client then raises 'Kernel died before replying to kernel_info').
"""
import json
import sys
from pathlib import Path

import nbformat
import pytest

import standins
from lib.runs import kernels, runner, sweep_spec, sweeps
from lib.runs.executors import local


def flaky_kernel(tmp_path: Path, monkeypatch, fails: int) -> Path:
    """A kernel spec 'flaky' whose first ``fails`` starts die before replying; returns its start counter."""
    counter = tmp_path / "starts.txt"
    wrapper = tmp_path / "flaky_kernel.py"
    wrapper.write_text(
        "import pathlib, sys\n"
        f"c = pathlib.Path({str(counter)!r}); n = int(c.read_text()) if c.exists() else 0\n"
        "c.write_text(str(n + 1))\n"
        f"if n < {fails}: sys.exit(3)\n"
        "from ipykernel import kernelapp\nkernelapp.launch_new_instance()\n")
    spec = tmp_path / "jupyter" / "kernels" / "flaky"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(wrapper), "-f", "{connection_file}"], "display_name": "flaky",
        "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setattr(kernels, "retry_pause", lambda attempt: 0.0)
    return counter


def one_cell_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from ipykernel.connect import get_connection_info\n"
                                          "print(get_connection_info(unpack=True)['transport'])")]
    nbformat.write(nb, path)
    return path


def test_a_kernel_that_dies_before_kernel_info_is_started_again_and_local_kernels_use_ipc(tmp_path, monkeypatch):
    counter = flaky_kernel(tmp_path, monkeypatch, fails=1)
    out = tmp_path / "out.ipynb"
    runner.papermill_engine(one_cell_notebook(tmp_path / "in.ipynb"), out, {}, "flaky")
    assert counter.read_text() == "2"                      # one failed start, one that ran the notebook
    text = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"]
    assert text.strip() == "ipc"                           # no TCP port to race for


def test_a_kernel_that_never_starts_is_a_clear_failure_of_its_notebook(tmp_path, monkeypatch):
    counter = flaky_kernel(tmp_path, monkeypatch, fails=99)
    with pytest.raises(runner.RunFailed, match=r"in\.ipynb: the kernel 'flaky' failed to start 3 times"):
        runner.papermill_engine(one_cell_notebook(tmp_path / "in.ipynb"), tmp_path / "out.ipynb", {}, "flaky")
    assert counter.read_text() == str(kernels.START_TRIES)


def test_a_failing_cell_is_never_retried(tmp_path, monkeypatch):
    counter = flaky_kernel(tmp_path, monkeypatch, fails=0)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("raise ValueError('planted')")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    with pytest.raises(runner.RunFailed, match="failed in cell 0.*ValueError: planted"):
        runner.papermill_engine(tmp_path / "in.ipynb", tmp_path / "out.ipynb", {}, "flaky")
    assert counter.read_text() == "1"


def test_two_ipc_kernels_get_distinct_socket_paths():
    a, b = kernels.IPCKernelManager(), kernels.IPCKernelManager()
    assert a.transport == b.transport == "ipc" and a.ip != b.ip and len(a.ip) < 90


# ------------------------------------------------------------------------------- sweeps that go on
SWEEP = {"grid": {"method": [{"finetune.method": "random"},
                             {"finetune.method": "spectral-clip", "gating.enabled": True}],
                  "seed": [0, 1]},
         "points": [{"set": {"finetune.method": "spectral-clip", "finetune.control": "random-skip"},
                     "grid": {"seed": [0, 1]}}]}


def _sweep_file(tmp_path, body):
    import yaml

    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump({"base": "params/smoke.yaml", **body}))
    return f


def flaky_engine(failures: dict):
    """The in-process stand-in engine, with the kernel-start path of the real one: ``failures`` maps a run-id
    fragment to what happens: 'start': its stage-01 notebook's kernel dies before any cell, once; 'raise': its
    stage-03 notebook raises an exception the runner does not know."""
    def engine(nb, out_nb, parameters, kernel):
        rid = Path(parameters["params_file"]).parent.name
        what = next((v for k, v in failures.items() if k in rid), None)
        what = what if nb.name.startswith({"start": "01_", "raise": "03_"}.get(what, "-")) else None
        state = {"tries": 0}

        def execute():
            state["tries"] += 1
            if what == "start" and state["tries"] == 1:
                nbformat.write(nbformat.v4.new_notebook(), out_nb)          # papermill's first write: no cell run
                raise RuntimeError("Kernel died before replying to kernel_info")
            if what == "raise":           # raised in a cell papermill had started: never a start failure
                cell = nbformat.v4.new_code_cell("x")
                cell.metadata["papermill"] = {"start_time": "2026-01-01T00:00:00"}
                nbformat.write(nbformat.v4.new_notebook(cells=[cell]), out_nb)
                raise KeyError("planted: not an error the runner reports itself")
            standins.exec_engine(nb, out_nb, parameters, kernel)
            with open(out_nb.parent.parent / "starts.log", "a") as fh:
                fh.write(f"{rid} {nb.name} {state['tries']}\n")
        kernels.with_start_retries(execute, out_nb, nb.name)
    return engine


def test_a_sweep_goes_on_past_a_kernel_start_failure_and_a_point_that_raises(tmp_path, runs_root, monkeypatch,
                                                                              capsys, caplog):
    monkeypatch.setattr(kernels, "retry_pause", lambda attempt: 0.0)
    nb = standins.write_notebooks(tmp_path / "nb")
    f = _sweep_file(tmp_path, SWEEP)
    # the gated seed-0 point fails with an exception the runner does not know
    ids = sweeps.plan(sweep_spec.load(f), runs_root, nb).run_ids
    gated0 = next(i for i in ids if "spectral-clip" in i and "seed0" in i and "random-skip" not in i)
    engine = flaky_engine({"random_n12_seed1": "start", gated0: "raise"})
    out = sweeps.run(f, 1, runs_root, nb, engine=engine)

    ok = {Path(r["run"]).name for r in out["results"] if r["ok"]}
    bad = [r for r in out["results"] if not r["ok"]]
    # the kernel-start failure was retried and its point finished; the raising point failed alone
    assert "random_n12_seed1" in ok
    starts = (runs_root / "smoke" / "starts.log").read_text()
    assert "random_n12_seed1 01_data_curation.ipynb 2" in starts
    assert len(bad) == 2, bad          # the gated seed-0 point, and the control that needed its skip rate
    assert any("KeyError" in r["error"] and "planted" in r["error"] for r in bad)
    assert any("skip rate" in r["error"] for r in bad)
    assert len(ok) == 4                # random seeds 0-1, gated seed 1 and its random-skip control
    err = capsys.readouterr().err
    assert err.count("FAILED point") == 2 and "KeyError" in err
    assert "log: " in err              # each failed point names its log
    # the analysis ran over the finished points and named what it left out
    assert out["analysis"] is not None and out["analysis"].exists()
    assert "left out (not finished)" in err and gated0 in err
    retries = [r.getMessage() for r in caplog.records if "failed to start" in r.getMessage()]
    assert len(retries) == 1 and retries[0].startswith("01_data_curation")  # the raising cell was not retried


class _Recorder(local.SerialExecutor):
    def __init__(self, engine):
        super().__init__(engine)
        self.order = []

    def submit(self, task):
        self.order.append(runner.run_id(runner.config.load(task.base, task.overrides), task.overrides))
        return super().submit(task)


def test_a_random_skip_control_starts_right_after_its_own_gated_point(tmp_path, runs_root):
    nb = standins.write_notebooks(tmp_path / "nb")
    f = _sweep_file(tmp_path, SWEEP)
    ex = _Recorder(standins.exec_engine)
    out = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, executor=ex, analyse=False)
    assert all(r["ok"] for r in out["results"]) and len(out["results"]) == 6
    order = ex.order
    for seed in (0, 1):
        gated = next(i for i, r in enumerate(order) if "spectral-clip" in r and "random-skip" not in r
                     and f"seed{seed}" in r)
        control = next(i for i, r in enumerate(order) if "random-skip" in r and f"seed{seed}" in r)
        assert control == gated + 1, order      # not after the whole first wave


class _TwoSlots(local.SerialExecutor):
    """Two slots, points ended first come first in wait(), as a pool of two does; records the submission order."""
    slots = 2

    def __init__(self, engine):
        super().__init__(engine)
        self.order, self.pending = [], []

    def submit(self, task):
        from concurrent.futures import Future

        self.order.append(runner.run_id(runner.config.load(task.base, task.overrides), task.overrides))
        fut = Future()
        self.pending.append((task, fut))
        return fut

    def wait(self):
        from lib.runs.points import run_task

        while self.pending:
            task, fut = self.pending.pop(0)
            self.results.append(run_task(task, self.engine, echo=False))
            fut.set_result(self.results[-1])          # its callbacks may submit more
        return super().wait()


def test_with_two_slots_a_control_goes_ahead_of_points_queued_before_it(tmp_path, runs_root):
    nb = standins.write_notebooks(tmp_path / "nb")
    body = {**SWEEP, "points": SWEEP["points"] + [{"set": {"finetune.control": "no-fine-tune"},
                                                   "grid": {"seed": [0, 1]}}]}
    ex = _TwoSlots(standins.exec_engine)
    out = sweeps.run(_sweep_file(tmp_path, body), runs_root=runs_root, notebooks_dir=nb, executor=ex, analyse=False)
    assert all(r["ok"] for r in out["results"]) and len(out["results"]) == 8
    control = min(i for i, r in enumerate(ex.order) if "random-skip" in r)
    nft = min(i for i, r in enumerate(ex.order) if "no-fine-tune" in r)
    assert control < nft, ex.order     # queued first come, the controls had waited for every other point


def test_a_pool_worker_that_dies_fails_its_point_and_the_pool_goes_on(tmp_path, runs_root, monkeypatch):
    # the stand-in points use no model: the pool builds none (on a fresh clone it built three tiny bases, ~30 s)
    monkeypatch.setattr(sweeps, "shared_models", lambda sweep, points: [])
    nb = standins.write_notebooks(tmp_path / "nb")
    f = _sweep_file(tmp_path, {"grid": {"seed": [0, 1, 2]}})
    ex = local.LocalPoolExecutor(jobs=1, engine=_dying_engine)
    out = sweeps.run(f, runs_root=runs_root, notebooks_dir=nb, executor=ex, analyse=False)
    ex.close()
    res = {r["overrides"]["seed"] if not r["ok"] else Path(r["run"]).name[-5:]: r for r in out["results"]}
    assert set(res) == {1, "seed0", "seed2"}, res     # no other point lost its worker with it
    assert "worker process running this point died" in res[1]["error"]


def _dying_engine(nb, out_nb, parameters, kernel):
    import os

    if "seed1" in Path(parameters["params_file"]).parent.name:
        os._exit(9)                    # a worker killed mid-point (OOM killer, kill -9)
    standins.exec_engine(nb, out_nb, parameters, kernel)
