"""Run folder names: a readable id from the parameters that vary (method, tuning size, gate setting, control,
seed, other overrides). The runner names run folders with it and TensorBoard names its runs the same way."""
from __future__ import annotations

from . import config


def _fmt(value) -> str:
    if value is None:
        return "null"                 # as it was written (--set key=null), and as it was applied
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt(v) for v in value)
    return str(value).replace("/", "-").replace(" ", "")


def run_id(cfg: config.Config, overrides: dict | None = None) -> str:
    """Readable id from the parameters that vary: method, size, threshold, control, seed, other overrides."""
    if cfg.generation.kind != "diffusion":      # a reference generator: no tuning set, no fine-tuning
        return "_".join([f"ref-{cfg.generation.kind}", f"seed{cfg.seed}"] +
                        [f"{k.split('.')[-1]}{_fmt(v)}" for k, v in sorted((overrides or {}).items())
                         if k not in ("generation.kind", "seed", "experiment")])
    parts = [cfg.finetune.method, f"n{cfg.selection.per_label}"]
    named = {"experiment", "finetune.method", "selection.per_label", "finetune.control", "seed",
             "gating.enabled"}
    if cfg.gating.enabled:
        quantile = cfg.gating.mode == "quantile"
        parts.append(f"q{_fmt(cfg.gating.skip_fraction)}" if quantile else f"thr{_fmt(cfg.gating.threshold)}")
        named |= {"gating.mode", "gating.skip_fraction" if quantile else "gating.threshold"}
    if cfg.finetune.control != "none":
        parts.append(cfg.finetune.control)
    if cfg.finetune.control == "random-skip":
        named.add("gating.skip_rate")      # filled from the gated run; its id stays the same
    if cfg.finetune.control == "equal-updates":
        named.add("finetune.updates")      # filled from the gated run; its id stays the same
    parts.append(f"seed{cfg.seed}")
    for k in sorted(set(overrides or {}) - named):
        parts.append(f"{k.split('.')[-1]}{_fmt(overrides[k])}")
    return "_".join(parts)
