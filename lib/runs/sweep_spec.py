"""Sweep specifications: a sweep file (a base parameter file, a grid of dotted keys, explicit points) read
and expanded into override dicts.

A sweep file (``params/sweeps/*.yaml``)::

    base: params/demo.yaml        # the parameter file every point starts from
    fixed: {classifier.epochs: 4} # overrides shared by every point (optional)
    grid:                         # cartesian product; a value list per dotted key ...
      seed: [0, 1]
      method:                     # ... or a named axis whose values are bundles of overrides
        - {finetune.method: random}
        - {finetune.method: spectral-clip, gating.enabled: true}
    points:                       # explicit points, not crossed with the grid (controls)
      - {finetune.control: no-fine-tune}
      - set: {finetune.control: random-skip}
        grid: {seed: [0, 1]}      # a point may carry its own small grid
    figures_dir: figures          # where the closing analysis writes its figures (default: <runs_root>/<experiment>/sweep-<name>/figures)
    until: 05_classifier          # the last stage each point runs (optional; 04_generation for notebook 07)
    analysis: 07_mixing           # the notebook run once over the points (optional; default 06_fter_analysis)
    analysis_params:              # papermill parameters of that notebook (optional), e.g. its overrides
      experiment: brackets
      overrides: {mixing.brackets: [25, 50]}

    executor: {engine: slurm, partition: gpu, gpus_per_task: 1, time_min: 240, mem_gb: 32, array: true}
                                  # who runs the points (optional; lib/runs/executors/ lists the engines and settings)
    pairs:                        # named comparisons (optional; lib/runs/sweep_pairs.py): rows of the paired table
      - name: gate alone          # a and b select points by parameter values; seeds pair up by themselves
        a: {finetune.method: spectral-clip, gating.enabled: true}
        b: {finetune.method: spectral-clip}

Every point is validated against the parameter schema, and the executor settings against the engines'
registry, before anything runs. lib/runs/sweeps.py runs what this reads.
"""
from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core import config, paths
from . import executors, runner, sweep_pairs


@dataclass
class Sweep:
    name: str
    base: str
    points: list[dict]
    figures_dir: str | None = None   # None: <runs_root>/<experiment>/sweep-<name>/figures, never the suite's figures/
    until: str = "05_classifier"
    analysis: str = runner.ANALYSIS
    analysis_params: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)      # the ``executor:`` settings (lib/runs/executors/)
    unchanged: list[dict] = field(default_factory=list)   # points whose stage folders the --set overrides leave as
                                                          # they were: they keep their run folder
    pairs: list[sweep_pairs.Pair] = field(default_factory=list)   # the ``pairs:`` the file names


def _is_config_key(dotted: str) -> bool:
    cls = config.Config
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return False
        cls = typing.get_type_hints(cls)[part]
    return True


def _axis(key: str, values) -> list[dict]:
    if not isinstance(values, list) or not values:
        raise config.ParamError(f"grid axis '{key}' must be a non-empty list of values.")
    if _is_config_key(key):
        return [{key: v} for v in values]
    if all(isinstance(v, dict) for v in values):     # a named axis of override bundles
        return [dict(v) for v in values]
    raise config.ParamError(f"grid axis '{key}' is not a parameter (see lib/core/config/schema.py) and its values are "
                            f"not override mappings;{config.did_you_mean(key, config.dotted_keys())} "
                            "use a dotted key such as gating.threshold.")


def expand_grid(grid: dict | None) -> list[dict]:
    """Cartesian product of the axes, in file order (the last axis varies fastest)."""
    axes = [_axis(k, v) for k, v in (grid or {}).items()]
    return [{k: v for bundle in combo for k, v in bundle.items()} for combo in itertools.product(*axes)]


def _explicit(point) -> list[dict]:
    if not isinstance(point, dict):
        raise config.ParamError(f"a sweep point must be a mapping of dotted keys, got {point!r}.")
    if set(point) <= {"set", "grid"} and point:
        return [{**point.get("set", {}), **g} for g in expand_grid(point.get("grid"))]
    return [dict(point)]


def load(path: str | Path, extra: dict | None = None) -> Sweep:
    """Read a sweep file and expand it into points (override dicts), validating each against the schema.

    ``extra`` overrides every point (the CLI's --set), e.g. a threshold rerun of the whole demo.
    """
    given, path = Path(path), paths.resolve(path)
    if not path.exists():
        where = "" if given.expanduser().is_absolute() else \
            f" (a relative path is resolved from the project root {paths.ROOT}, not the current directory)"
        raise config.ParamError(f"sweep file {path} not found{where}; shipped sweeps: "
                                f"{', '.join(p.name for p in sorted((paths.PARAMS / 'sweeps').glob('*.yaml')))}.")
    raw = _read_mapping(path)
    allowed = ["base", "fixed", "grid", "points", "figures_dir", "until", "analysis", "analysis_params", "executor",
               "pairs"]
    unknown = set(raw) - set(allowed)
    if unknown:
        raise config.ParamError(f"unknown key(s) {sorted(unknown)} in {path.name}; allowed: {', '.join(allowed)}.")
    until, analysis = raw.get("until", "05_classifier"), str(raw.get("analysis", runner.ANALYSIS))
    if until not in runner.stages.ORDER[:-1]:
        raise config.ParamError(f"until: {until!r} in {path.name} must be one of {runner.stages.ORDER[:-1]}.")
    runner.notebook_for(analysis)       # the closing notebook exists (its number picks it)
    if not isinstance(raw.get("analysis_params") or {}, dict):
        raise config.ParamError(f"analysis_params: in {path.name} must be a mapping of notebook parameters.")
    settings = executors.check_settings(raw.get("executor"), path.name)
    if "base" not in raw:
        raise config.ParamError(f"{path.name} needs `base:`, the parameter file every point starts from.")
    fixed = raw.get("fixed") or {}
    pts = (expand_grid(raw["grid"]) if raw.get("grid") else []) + \
        [p for point in raw.get("points") or [] for p in _explicit(point)]
    if not pts:
        raise config.ParamError(f"{path.name} declares no points: give `grid:` and/or `points:`.")
    pts = _dedupe([{**fixed, **p} for p in pts])
    for p in pts:  # fail on a bad key before anything runs
        _config(raw["base"], {**p, **(extra or {})})
    with_extra = [_with_extra(raw["base"], p, extra or {}, until) for p in pts]
    final = [p for p, _ in with_extra]
    return Sweep(path.stem, raw["base"], final, raw.get("figures_dir"), until, analysis,
                 dict(raw.get("analysis_params") or {}), settings,
                 unchanged=[p for p, changed in with_extra if extra and not changed],
                 pairs=sweep_pairs.parse(raw.get("pairs"), raw["base"], final, path.name))


def _config(base: str, point: dict) -> config.Config:
    return config.load(base, {k: v for k, v in point.items() if not (k == "gating.skip_rate" and v is None)})


def _with_extra(base: str, point: dict, extra: dict, until: str) -> tuple[dict, bool]:
    """(the point's overrides, whether --set changed them): with the --set overrides where they change one of its
    stage folders through ``until``, else as the file gives it, so a rerun reuses its run folder instead of making
    a new one that differs only in its name (a threshold rerun of the demo used to make 22)."""
    if not extra:
        return point, False
    merged = {**point, **extra}
    order = runner.stages.ORDER
    upto = order[: order.index(until) + 1]

    def folders(cfg: config.Config) -> list[str]:
        out = [str(runner.stages.stage_dir(cfg, s)) for s in upto]
        if runner.copies_gated(cfg):   # copies the gated run's skip rate (random-skip) or update count (equal-updates)
            out.append(str(runner.stages.stage_dir(runner.gated_counterpart(cfg), "03_dreambooth")))
        return out

    changed = folders(_config(base, point)) != folders(_config(base, merged))
    return (merged if changed else point), changed


def _read_mapping(path: Path) -> dict:
    """The sweep file as a mapping; malformed YAML is a ParamError naming the file and the line."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise config.ParamError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise config.ParamError(f"{path} must hold a mapping (base:, grid:, points: ...), not {type(raw).__name__}.")
    for key, kind in (("fixed", dict), ("grid", dict), ("points", list)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise config.ParamError(f"`{key}:` in {path.name} must be a {'mapping' if kind is dict else 'list'}, "
                                    f"got {raw[key]!r}.")
    return raw


def _dedupe(points: list[dict]) -> list[dict]:
    seen, out = set(), []
    for p in points:
        k = yaml.safe_dump(p, sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def waits_for_gated(base: str, point: dict) -> bool:
    """A random-skip control with no rate, or an equal-updates control with no update count, needs its gated
    counterpart's measured value first."""
    return runner.copies_gated(config.load(base, point))

