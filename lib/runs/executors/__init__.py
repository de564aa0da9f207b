"""Sweep executors: who runs a sweep's points, one registry of engines by name.

- registry.py     the Executor interface, ``register``, the settings each engine reads, ``make``;
- local.py        ``serial`` (this process) and ``local`` (a process per point, one GPU each where there are GPUs);
- slurm.py        ``slurm`` through submitit, and ``submitit-local`` (the same path on this machine);
- ray_cluster.py  ``ray`` (a Ray cluster, or a Ray started here).

A sweep file picks one with ``executor: {engine: NAME, ...}`` (``--executor NAME`` overrides the engine); each
module's docstring lists its engine's settings. A new engine is one module in this folder that registers a
factory (CONTRIBUTING.md, "A sweep executor"): every module here is imported with the package, so its
engine is in the registry before a sweep file is read or ``--executor`` is parsed.
"""
import importlib
import pkgutil

from .registry import (Context, EngineUnavailable, Executor, Setting, check_settings, default_engine, gpu_count,
                       make, names, register, setting_names)

for _module in pkgutil.iter_modules(__path__):       # each engine module registers itself when imported
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Context", "EngineUnavailable", "Executor", "Setting", "check_settings", "default_engine", "gpu_count",
           "make", "names", "register", "setting_names"]
