"""What a stage key holds besides parameters, as the pipeline steps register it (lib.core.stages reads it).

lib.core must not import the steps (they import it), so each step says here, when it is imported, how what
it reads is fingerprinted:

- ``register_data(fn)``: fn(cfg) -> a fingerprint of the data on disk, or None (lib.data.curation);
- ``register_source(source, suffix)``: a generator version for data.source (lib.data.phantoms, lib.data.shapes):
  stages built on an older generator's images are not reused;
- ``register_selection(method, fn, sections)``: fn(cfg) -> a fingerprint of the files a selection method reads,
  and the parameter sections it depends on beyond stage 02's own (lib.tuningset.external);
- ``register_reference(fn, version)``: fn(cfg) -> whether stage 04 builds a reference set, whose stages skip 02-03,
  and version(cfg, stage, sections) -> a tag for a reference kind whose output changed, or None (lib.generate.references);
- ``register_listed_hashes(fn)``: fn(paths) -> the content hashes a stage manifest lists (lib.data.leakage).

A key must never be computed before every step has registered: the first use imports the modules in STEPS.
"""
from __future__ import annotations

import importlib
from typing import Callable, NamedTuple

# The modules that register here, by name: imported at the first use, never by lib.core at import time.
STEPS = ("..data.curation", "..data.leakage", "..data.phantoms", "..data.shapes", "..tuningset.external",
         "..generate.references")


class Selection(NamedTuple):
    fingerprint: Callable
    sections: tuple[str, ...]


_data: list[Callable] = []
_sources: dict[str, str] = {}
_selection: dict[str, Selection] = {}
_reference: list[Callable] = []
_reference_version: list[Callable] = []
_listed: list[Callable] = []
_loaded = False


def register_data(fn: Callable) -> None:
    _data[:] = [fn]


def register_source(source: str, suffix: str) -> None:
    _sources[source] = suffix


def register_selection(method: str, fingerprint: Callable, sections: tuple[str, ...] = ()) -> None:
    _selection[method] = Selection(fingerprint, tuple(sections))


def register_reference(fn: Callable, version: Callable | None = None) -> None:
    _reference[:] = [fn]
    _reference_version[:] = [version] if version else []


def register_listed_hashes(fn: Callable) -> None:
    _listed[:] = [fn]


def _load() -> None:
    """Import every registering step once (a no-op after the first call)."""
    global _loaded
    if not _loaded:
        for name in STEPS:
            importlib.import_module(name, __package__)
        _loaded = True


def data(cfg) -> str | None:
    _load()
    return _data[0](cfg) if _data else None


def source_suffix(source: str) -> str:
    _load()
    return _sources.get(source, "")


def selection_inputs(methods) -> list[tuple[str, Selection]]:
    """The registered methods among ``methods`` (each once, in their order)."""
    _load()
    return [(m, _selection[m]) for m in dict.fromkeys(methods) if m in _selection]


def is_reference(cfg) -> bool:
    _load()
    return bool(_reference) and _reference[0](cfg)


def reference_version(cfg, stage: str, sections: list[str]) -> str | None:
    _load()
    return _reference_version[0](cfg, stage, sections) if _reference_version else None


def listed_hashes(paths: list) -> list[str]:
    _load()
    return _listed[0](paths)
