"""Ray (``ray``): each point a Ray task on a running cluster, or on a Ray this process starts.

    executor:
      engine: ray
      address: auto            # a running cluster (auto), host:port, or null to start Ray on this machine
      gpus_per_task: 1         # GPUs each point reserves (default: 1 where the cluster has GPUs)
      num_cpus: 1              # CPUs each point reserves
      retries: 0               # reruns of a point whose worker died (0: report it; rerun the sweep)

Workers import this project from the path it has here (lib/runs/executors/slurm.py says what that asks of
a cluster); a point runs through ``points.run_task`` as on every engine.
"""
from __future__ import annotations

from ..points import Tracked, failed, run_task
from .registry import (POSITIVE, WHOLE, Context, EngineUnavailable, Executor, Setting, pythonpath, register,
                       require_package)

PIN = "ray==2.60.0"
SETTINGS = {"gpus_per_task": WHOLE, "num_cpus": POSITIVE, "retries": WHOLE,
            "address": Setting("auto, host:port, or null", lambda v: v is None or isinstance(v, str))}


class RayExecutor(Executor):
    """Each point a Ray task on a running cluster (or on a Ray this process started): one GPU per point
    where the cluster has GPUs, ``num_cpus`` CPUs per point."""

    def __init__(self, settings: dict, engine=None):
        ray = require_package("ray", PIN)
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
                                 **task_env)(run_task)
        self.slots = max(1, int(min(resources.get("CPU", 1) // cpus,
                                    resources.get("GPU", 0) // gpus if gpus else float("inf"))))
        self.pending: dict = {}             # ref -> (task, future)
        self.tracked = Tracked()

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
            return failed(task, f"Ray task raised: {str(exc.cause or exc).splitlines()[0]}")
        except rx.RayError as exc:          # the worker or its node died: no result
            return failed(task, f"Ray worker died without a result ({type(exc).__name__}); rerun the sweep to "
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


@register("ray", settings=SETTINGS)
def make_ray(settings: dict, ctx: Context) -> Executor:
    return RayExecutor(settings, ctx.engine)
