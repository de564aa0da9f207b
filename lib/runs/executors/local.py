"""Executors on this machine: ``serial`` (the points one after another in this process) and ``local`` (a
process per point, ``--jobs`` at a time, one GPU each where there are GPUs)."""
from __future__ import annotations

import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool

from ..points import PointTask, Tracked, failed, run_task
from .registry import Context, Executor, gpu_count, register


class SerialExecutor(Executor):
    """Points one after another in this process (jobs = 1): plain logs, no pool."""
    slots = 1

    def __init__(self, engine=None):
        self.engine, self.results = engine, []

    def submit(self, task):
        fut: Future = Future()
        fut.set_result(run_task(task, self.engine, echo=True))
        self.results.append(fut.result())
        return fut

    def wait(self):
        out, self.results = self.results, []
        return out


def _init_worker(gpu: int | None) -> None:
    """Pin a worker process to its GPU (when there are GPUs) before any CUDA use."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


class LocalPoolExecutor(Executor):
    """Points on this machine, ``jobs`` at a time, one GPU each where GPUs exist. Each point runs in a worker
    process of its own, so a worker that dies (killed, out of memory) fails its own point and no other (a
    shared pool breaks whole, taking every running and queued point with it)."""

    def __init__(self, jobs: int, gpus: int = 0, engine=None):
        self.jobs = min(jobs, gpus) if gpus and jobs else (gpus or jobs)
        self.gpus, self.engine, self.slots = gpus, engine, self.jobs
        self.free = list(range(self.jobs))          # slot numbers; a slot's GPU where there are GPUs
        self.queue: list[tuple] = []                # (task, the future handed out), not started yet
        self.running: dict[Future, tuple] = {}      # the worker's future -> (task, future handed out, slot, pool)
        self.tracked = Tracked()

    def submit(self, task):
        fut = self.tracked.new()
        self.queue.append((task, fut))
        self._launch()
        return fut

    def _launch(self) -> None:
        while self.queue and self.free:
            (task, fut), slot = self.queue.pop(0), self.free.pop(0)
            pool = ProcessPoolExecutor(1, initializer=_init_worker, initargs=(slot if self.gpus else None,))
            inner = pool.submit(run_task, task, self.engine, False)   # each point's output in its run.log
            self.running[inner] = (task, fut, slot, pool)

    def wait(self):
        while self.running or self.queue:
            self._launch()
            done, _ = futures_wait(list(self.running), return_when=FIRST_COMPLETED)
            for inner in done:
                task, fut, slot, pool = self.running.pop(inner)
                pool.shutdown(wait=False)
                self.free.append(slot)
                fut.set_result(self._outcome(inner, task))      # its callbacks may submit more points
        return self.tracked.collect()

    @staticmethod
    def _outcome(inner: Future, task: PointTask) -> dict:
        try:
            return inner.result()
        except BrokenProcessPool:
            return failed(task, "the worker process running this point died (killed, or out of memory); "
                                "rerun the sweep to resume the point")
        except Exception as exc:     # e.g. a result that could not be pickled back
            return failed(task, f"{type(exc).__name__}: {exc}")

    def prepare(self, specs: list[tuple]) -> None:
        """Build the models every point shares side by side before the points start, instead of one point
        building each while the others wait on its lock with a core idle."""
        with ProcessPoolExecutor(max(1, min(self.jobs, len(specs)))) as pool:
            for spec, f in [(spec, pool.submit(build_shared, spec)) for spec in specs]:
                try:
                    f.result()
                except Exception as exc:      # each point that needs it builds it again and fails on its own
                    print(f"  could not build the shared model {spec}: {type(exc).__name__}: {exc}",
                          file=sys.stderr)

    def close(self):
        for *_, pool in self.running.values():
            pool.shutdown(wait=False, cancel_futures=True)


def build_shared(spec: tuple) -> str:
    """One shared model (a pool task); a model already built is only looked up."""
    from ...finetune import diffusion_model
    from ...tuningset import clip_offline

    if spec[0] == "clip":
        return str(clip_offline.build(clip_offline.DEFAULT_STEPS, progress=False))
    return str(diffusion_model.build_tiny(*spec[1:], progress=False))


@register("serial")
def make_serial(settings: dict, ctx: Context) -> Executor:
    return SerialExecutor(ctx.engine)


@register("local")
def make_local(settings: dict, ctx: Context) -> Executor:
    gpus = gpu_count()
    return LocalPoolExecutor(ctx.jobs or gpus or 1, gpus, ctx.engine)
