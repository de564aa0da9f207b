"""Sweep executors for clusters: SLURM through submitit, and Ray. Both sit behind ``sweeps.Executor``.

The sweep file picks one with an ``executor:`` mapping (``--executor NAME`` on the CLI overrides its engine)::

    executor:
      engine: slurm            # serial | local | slurm | submitit-local | ray
      partition: gpu           # slurm: the partition (sbatch --partition)
      gpus_per_task: 1         # slurm, submitit-local, ray: GPUs each point gets
      cpus_per_task: 4         # slurm, submitit-local
      time_min: 240            # slurm, submitit-local: a point's wall-clock limit (minutes)
      mem_gb: 32               # slurm
      array: true              # slurm, submitit-local: one job array (submitit's batch) instead of a job per point
      max_parallel: 8          # slurm, submitit-local: points running at once (the array's %N on SLURM;
                               #   submitit-local starts an array's points all at once)
      setup: ["module load cuda"]   # slurm, submitit-local: shell lines run before each point
      sbatch: {account: lab}   # slurm: further sbatch options
      log_dir: runs/.submitit  # slurm, submitit-local: submitit's job folder (default <runs root>/.submitit/<sweep>)
      address: auto            # ray: a running cluster (auto), host:port, or null to start Ray on this machine
      num_cpus: 1              # ray: CPUs each point reserves
      retries: 0               # ray: reruns of a point whose worker died (0: report it; rerun the sweep)

Every engine runs the same ``sweeps.run_task`` for a point, so the sweep's rules hold: finished points are
skipped before anything is submitted, a stage shared by points runs once under the runner's stage lock
(lib/core/atomic.py; on several machines that needs a shared file system with working flock, see there), a
failed point is reported with its ``run.log`` and does not stop the others, and a point whose job died
is reported with the job's own log and resumes when the sweep is run again.

Jobs and Ray workers import this project from the path it has here, so on a cluster the project and the
runs root must be on a file system every node sees at the same path.
"""
from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

from ..core import config, paths
from . import sweeps

ENGINES = ("serial", "local", "slurm", "submitit-local", "ray")
SUBMITIT = ("slurm", "submitit-local")
_INT = ("gpus_per_task", "cpus_per_task", "time_min", "max_parallel", "retries")
SETTINGS = {   # setting -> the engines that read it (the others ignore it, so --executor can switch engines)
    "engine": ENGINES, "partition": ("slurm",), "gpus_per_task": SUBMITIT + ("ray",),
    "cpus_per_task": SUBMITIT, "time_min": SUBMITIT, "mem_gb": ("slurm",), "array": SUBMITIT,
    "max_parallel": SUBMITIT, "setup": SUBMITIT, "sbatch": ("slurm",), "log_dir": SUBMITIT,
    "address": ("ray",), "num_cpus": ("ray",), "retries": ("ray",),
}
DEFAULT_TIME_MIN = 240
PINS = {"submitit": "submitit==1.5.4", "ray": "ray==2.60.0"}


class EngineUnavailable(config.ParamError):
    """The sweep asks for an engine this machine does not have (not installed, no scheduler, no cluster)."""


# ----------------------------------------------------------------------------------- settings
def check_settings(raw, where: str = "the sweep file") -> dict:
    """The ``executor:`` mapping, validated: known keys, sensible types. A bare name is ``{engine: name}``."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"engine": raw}
    if not isinstance(raw, dict):
        raise config.ParamError(f"executor: in {where} must be a mapping such as {{engine: slurm, partition: gpu}}, "
                                f"got {raw!r}.")
    for key, value in raw.items():
        if key not in SETTINGS:
            raise config.ParamError(f"unknown executor setting {key!r} in {where};"
                                    f"{config.did_you_mean(key, list(SETTINGS))} allowed: {', '.join(SETTINGS)}.")
        _check_value(key, value, where)
    return dict(raw)


def _check_value(key: str, value, where: str) -> None:
    def bad(want: str):
        raise config.ParamError(f"executor setting {key}: {value!r} in {where} must be {want}.")

    if key == "engine" and value not in ENGINES:
        bad(f"one of {', '.join(ENGINES)}")
    elif key in _INT and (isinstance(value, bool) or not isinstance(value, int) or value < (1 if key in (
            "time_min", "max_parallel", "cpus_per_task") else 0)):
        bad("a whole number" + (" of at least 1" if key in ("time_min", "max_parallel", "cpus_per_task") else " >= 0"))
    elif key in ("mem_gb", "num_cpus") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                            or value <= 0):
        bad("a positive number")
    elif key == "array" and not isinstance(value, bool):
        bad("true or false")
    elif key == "setup" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        bad("a list of shell lines")
    elif key == "sbatch" and not isinstance(value, dict):
        bad("a mapping of sbatch options, e.g. {account: lab, qos: normal}")
    elif key in ("partition", "log_dir") and not isinstance(value, str):
        bad("a string")
    elif key == "address" and value is not None and not isinstance(value, str):
        bad("auto, host:port, or null")


def _import(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise EngineUnavailable(f"the {module} executor needs the {module} package: "
                                f"pip install {PINS[module]} (pinned in requirements.txt).") from None


def pythonpath() -> str:
    """PYTHONPATH for jobs and workers: this project first, so they import ``lib`` from the same tree."""
    return os.pathsep.join([str(paths.ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


# ----------------------------------------------------------------------------------- submitit
class SubmititExecutor(sweeps.Executor):
    """Each point a submitit job: on SLURM (``slurm``), or as a local process through submitit's own
    LocalExecutor (``submitit-local``, the same submission, pickling and result path; what the tests run).
    With ``array: true`` the points of a wave go in as one job array (submitit's ``batch``)."""

    def __init__(self, kind: str, settings: dict, runs_root="runs", name: str = "sweep", engine=None,
                 jobs: int | None = None):
        submitit = _import("submitit")
        if kind == "slurm" and shutil.which("sbatch") is None:
            raise EngineUnavailable("no SLURM here: sbatch not found on PATH. Run the sweep on a SLURM login node, "
                                    "or use --executor submitit-local to test the same code path on this machine.")
        self.kind, self.engine, self.array = kind, engine, bool(settings.get("array", False))
        folder = paths.resolve(settings.get("log_dir") or Path(paths.resolve(runs_root)) / ".submitit" / name)
        self.ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm" if kind == "slurm" else "local")
        self.ex.update_parameters(**submitit_parameters(kind, settings, name))
        self.limit = settings.get("max_parallel") or jobs or (None if kind == "slurm" else 1)
        self.slots = self.limit
        self.queue: list[tuple] = []      # (task, future) not yet submitted
        self.running: list[tuple] = []    # (job, task, future)
        self.tracked = sweeps.Tracked()
        self.poll_s = 0.25 if kind != "slurm" else 5.0

    def submit(self, task):
        fut = self.tracked.new()
        self.queue.append((task, fut))
        if not self.array:
            self._launch()
        return fut

    def _launch(self) -> None:
        if not self.queue:
            return
        if self.array:        # the whole wave as one array; SLURM's %N (max_parallel) paces it
            batch, self.queue = self.queue, []
            with self.ex.batch():
                jobs = [self.ex.submit(sweeps.run_task, t, self.engine, False) for t, _ in batch]
            self.running += [(j, t, f) for j, (t, f) in zip(jobs, batch)]
            return
        while self.queue and (self.limit is None or len(self.running) < self.limit):
            task, fut = self.queue.pop(0)
            self.running.append((self.ex.submit(sweeps.run_task, task, self.engine, False), task, fut))

    def wait(self):
        self._launch()
        while self.running:
            ended = [r for r in self.running if r[0].done()]
            for r in ended:
                self.running.remove(r)
                r[2].set_result(self._outcome(*r[:2]))
            self._launch()
            if not ended:
                time.sleep(self.poll_s)
        return self.tracked.collect()

    def _outcome(self, job, task) -> dict:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        if self.kind != "slurm":
            job._results_timeout_s = 1   # a local disk has no cache lag to wait out (submitit waits 15 s)
        try:
            return job.result()
        except FailedJobError as exc:       # run_task raised something the runner does not report itself
            last = [ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("---")]
            why = next((ln for ln in reversed(last) if "Error" in ln), last[0] if last else "")
            return sweeps.failed(task, f"job {job.job_id} raised: {why.strip()}", str(job.paths.stderr))
        except UncompletedJobError:         # killed, out of memory, timed out, node lost: no result at all
            return sweeps.failed(task, f"job {job.job_id} died without a result (scheduler state {job.state}); rerun the sweep "
                                "to resume the point", str(job.paths.stderr))


def submitit_parameters(kind: str, settings: dict, name: str) -> dict:
    """Sweep-file settings as submitit's AutoExecutor parameters."""
    lines = [f"export PYTHONPATH={shlex.quote(pythonpath())}"] + list(settings.get("setup") or [])
    out = {"name": f"sweep-{name}", "timeout_min": settings.get("time_min", DEFAULT_TIME_MIN), "nodes": 1,
           "tasks_per_node": 1, "gpus_per_node": settings.get("gpus_per_task", 0),
           "cpus_per_task": settings.get("cpus_per_task", 1)}
    if kind == "slurm":
        out.update(slurm_setup=lines, slurm_additional_parameters=dict(settings.get("sbatch") or {}))
        if settings.get("partition"):
            out["slurm_partition"] = settings["partition"]
        if settings.get("mem_gb"):
            out["mem_gb"] = settings["mem_gb"]
        if settings.get("max_parallel") and settings.get("array"):
            out["slurm_array_parallelism"] = settings["max_parallel"]
    else:
        out["local_setup"] = lines
    return out


# ---------------------------------------------------------------------------------------- ray
class RayExecutor(sweeps.Executor):
    """Each point a Ray task on a running cluster (or on a Ray this process started): one GPU per point
    where the cluster has GPUs, ``num_cpus`` CPUs per point."""

    def __init__(self, settings: dict, engine=None):
        ray = _import("ray")
        self.ray, self.engine = ray, engine
        env = {"env_vars": {"PYTHONPATH": pythonpath()}}
        task_env = {"runtime_env": env}
        if not ray.is_initialized():        # already connected (a notebook, a test): each task gets the env
            address = settings.get("address", "auto")
            try:                            # Ray started or joined here lives until this process ends
                _init(ray, address, env)
            except Exception as exc:        # ConnectionError (no cluster), a node that did not start, ...
                what = f"ray.init(address={address!r}) failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                raise EngineUnavailable(what + (
                    ": Ray could not start on this machine (on an overloaded machine its node can miss Ray's 30 s "
                    "start-up limit; try again when it is quieter), or start a cluster with `ray start --head` and "
                    "use address: auto." if address is None else
                    ": start a cluster with `ray start --head` (then address: auto), give its address (host:port), "
                    "or set address: null to start Ray on this machine.")) from None
            task_env = {}                   # the job's env: workers Ray started already can take points
        resources = ray.cluster_resources()
        gpus = settings.get("gpus_per_task")
        gpus = (1 if resources.get("GPU", 0) else 0) if gpus is None else gpus
        cpus = settings.get("num_cpus", 1)
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=settings.get("retries", 0),
                                 **task_env)(sweeps.run_task)
        self.slots = max(1, int(min(resources.get("CPU", 1) // cpus,
                                    resources.get("GPU", 0) // gpus if gpus else float("inf"))))
        self.pending: dict = {}             # ref -> (task, future)
        self.tracked = sweeps.Tracked()

    def submit(self, task):
        fut = self.tracked.new()
        self.pending[self.remote.remote(task, self.engine, False)] = (task, fut)
        return fut

    def wait(self):
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=10)
            for ref in ready:
                task, fut = self.pending.pop(ref)
                fut.set_result(self._outcome(ref, task))
        return self.tracked.collect()

    def _outcome(self, ref, task) -> dict:
        from ray import exceptions as rx

        try:
            return self.ray.get(ref)
        except rx.RayTaskError as exc:      # run_task raised something the runner does not report itself
            return sweeps.failed(task, f"Ray task raised: {str(exc.cause or exc).splitlines()[0]}")
        except rx.RayError as exc:          # the worker or its node died: no result
            return sweeps.failed(task, f"Ray worker died without a result ({type(exc).__name__}); rerun the sweep to "
                                "resume the point")


def _init(ray, address, env: dict) -> None:
    """ray.init; a Ray started here gets a second try, since on a loaded machine its raylet can miss the
    30 s Ray gives it to register."""
    for attempt in range(1 if address else 2):
        try:
            ray.init(address=address, include_dashboard=False, runtime_env=env)
            return
        except Exception:
            if attempt or address:
                raise
            ray.shutdown()


# ---------------------------------------------------------------------------------- choosing
def make(settings: dict, jobs: int | None = None, engine=None, runs_root="runs", name: str = "sweep"):
    """The executor the settings ask for; serial/local (or no engine) keep lib.runs.sweeps' own choice."""
    kind = settings.get("engine")
    if kind in SUBMITIT:
        return SubmititExecutor(kind, settings, runs_root, name, engine, jobs)
    if kind == "ray":
        return RayExecutor(settings, engine)
    if kind == "serial":
        return sweeps.SerialExecutor(engine)
    gpus = sweeps.gpu_count()
    if kind == "local":
        return sweeps.LocalPoolExecutor(jobs or gpus or 1, gpus, engine)
    return None
