"""Command-line overrides: ``--set dotted.key=value`` pairs, read into the dict that config.load applies.

Every command line of the suite (the runner, sweeps, analysis, stage 03's launcher, benchmarks) reads its
--set options here, so a step's CLI needs nothing from the run machinery.
"""
from __future__ import annotations

import yaml

from .config import ParamError


def parse_sets(items: list[str] | None) -> dict:
    """``key=value`` pairs; values are read as YAML, so numbers, booleans and null keep their types."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ParamError(f"--set {item!r}: write it as dotted.key=value, e.g. gating.threshold=0.5")
        k, v = (x.strip() for x in item.split("=", 1))
        if not k:
            raise ParamError(f"--set {item!r} names no key: write it as dotted.key=value, e.g. gating.threshold=0.5")
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError as exc:
            raise ParamError(f"--set {item!r}: the value of {k} is not valid YAML ({exc.problem or exc}); "
                             f"quote text that holds ':', '[', '{{' or '#', e.g. --set {k}='\"...\"'") from None
    return out
