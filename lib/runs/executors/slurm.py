"""SLURM through submitit (``slurm``), and the same submission on this machine (``submitit-local``).

The sweep file picks one with an ``executor:`` mapping (``--executor NAME`` on the CLI overrides its engine)::

    executor:
      engine: slurm            # or submitit-local: submitit's LocalExecutor, the same code path here
      partition: gpu           # slurm: the partition (sbatch --partition)
      gpus_per_task: 1         # GPUs each point gets
      cpus_per_task: 4
      time_min: 240            # a point's wall-clock limit (minutes)
      mem_gb: 32               # slurm
      array: true              # one job array (submitit's batch) instead of a job per point
      max_parallel: 8          # points running at once (the array's %N on SLURM; submitit-local starts an
                               #   array's points all at once)
      setup: ["module load cuda"]   # shell lines run before each point
      sbatch: {account: lab}   # slurm: further sbatch options
      log_dir: runs/.submitit  # submitit's job folder (default <runs root>/.submitit/<sweep>)

Every engine runs the same ``points.run_task`` for a point, so the sweep's rules hold: finished points are
skipped before anything is submitted, a stage shared by points runs once under the runner's stage lock
(lib/core/atomic.py; on several machines that needs a shared file system with working flock, see there), a
failed point is reported with its ``run.log`` and does not stop the others, and a point whose job died
is reported with the job's own log and resumes when the sweep is run again.

Jobs import this project from the path it has here, so on a cluster the project and the runs root must be
on a file system every node sees at the same path.
"""
from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

from ...core import paths
from ..points import Tracked, failed, run_task
from .registry import (FLAG, SHELL_LINES, TEXT, WHOLE, WHOLE_POSITIVE, POSITIVE, Context, EngineUnavailable,
                       Executor, Setting, pythonpath, register, require_package)

DEFAULT_TIME_MIN = 240
PIN = "submitit==1.5.4"
LOCAL_SETTINGS = {"gpus_per_task": WHOLE, "cpus_per_task": WHOLE_POSITIVE, "time_min": WHOLE_POSITIVE,
                  "array": FLAG, "max_parallel": WHOLE_POSITIVE, "setup": SHELL_LINES, "log_dir": TEXT}
SLURM_SETTINGS = {"partition": TEXT, **LOCAL_SETTINGS, "mem_gb": POSITIVE,
                  "sbatch": Setting("a mapping of sbatch options, e.g. {account: lab, qos: normal}",
                                    lambda v: isinstance(v, dict))}


class SubmititExecutor(Executor):
    """Each point a submitit job: on SLURM (``slurm``), or as a local process through submitit's own
    LocalExecutor (``submitit-local``, the same submission, pickling and result path; what the tests run).
    With ``array: true`` the points of a wave go in as one job array (submitit's ``batch``)."""

    def __init__(self, kind: str, settings: dict, runs_root="runs", name: str = "sweep", engine=None,
                 jobs: int | None = None):
        submitit = require_package("submitit", PIN)
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
        self.tracked = Tracked()
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
                jobs = [self.ex.submit(run_task, t, self.engine, False) for t, _ in batch]
            self.running += [(j, t, f) for j, (t, f) in zip(jobs, batch)]
            return
        while self.queue and (self.limit is None or len(self.running) < self.limit):
            task, fut = self.queue.pop(0)
            self.running.append((self.ex.submit(run_task, task, self.engine, False), task, fut))

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
            return failed(task, f"job {job.job_id} raised: {why.strip()}", str(job.paths.stderr))
        except UncompletedJobError:         # killed, out of memory, timed out, node lost: no result at all
            return failed(task, f"job {job.job_id} died without a result (scheduler state {job.state}); rerun the sweep "
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


@register("slurm", settings=SLURM_SETTINGS)
def make_slurm(settings: dict, ctx: Context) -> Executor:
    return SubmititExecutor("slurm", settings, ctx.runs_root, ctx.sweep, ctx.engine, ctx.jobs)


@register("submitit-local", settings=LOCAL_SETTINGS)
def make_submitit_local(settings: dict, ctx: Context) -> Executor:
    return SubmititExecutor("submitit-local", settings, ctx.runs_root, ctx.sweep, ctx.engine, ctx.jobs)
