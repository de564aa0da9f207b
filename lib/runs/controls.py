"""Controls that copy a measured value of their gated counterpart's finished stage 03: random-skip (its skip rate)
and equal-updates (its trained update count). The runner resolves them before a point runs; the sweep schedules
them after their gated point."""
from __future__ import annotations

from pathlib import Path

from ..core import config, stages


def resolve_config(params_file: str | Path, overrides: dict | None, runs_root: str | Path) -> config.Config:
    """Load the parameters; a random-skip control with no rate takes the gated run's measured skip rate, an
    equal-updates control with no update count the gated run's trained count."""
    overrides = dict(overrides or {})
    cfg = config.load(params_file, overrides)
    if cfg.finetune.control == "random-skip" and cfg.gating.skip_rate is None:
        overrides["gating.skip_rate"] = gated_skip_rate(cfg, runs_root)
        cfg = config.load(params_file, overrides)
    if cfg.finetune.control == "equal-updates" and cfg.finetune.updates is None:
        overrides["finetune.updates"] = gated_trained(cfg, runs_root)
        cfg = config.load(params_file, overrides)
    return cfg


def copies_gated(cfg: config.Config) -> bool:
    """A control that copies a measured value of its gated counterpart's stage 03, not yet filled in."""
    return (cfg.finetune.control == "random-skip" and cfg.gating.skip_rate is None) or \
        (cfg.finetune.control == "equal-updates" and cfg.finetune.updates is None)


def gated_counterpart(cfg: config.Config) -> config.Config:
    """The gated run a random-skip or equal-updates control copies its skip rate or update count from: same
    parameters, gating on."""
    raw = cfg.to_dict()
    raw["finetune"]["control"] = "none"
    raw["finetune"]["updates"] = None
    raw["gating"]["enabled"] = True
    raw["gating"]["skip_rate"] = None
    return config.from_dict(raw)


def _gated_stage(cfg: config.Config, runs_root: str | Path, needs: str, what: str) -> Path:
    """The gated counterpart's finished stage-03 folder, or an error saying that the control's key ``needs``
    copies ``what`` from it."""
    d = stages.stage_dir(gated_counterpart(cfg), "03_dreambooth", runs_root)
    if not (stages.is_done(d) and (d / "train_summary.json").exists()):
        raise config.ParamError(
            f"finetune.control = {cfg.finetune.control} with {needs} = null needs the gated run's {what}, "
            f"but the gated run (same parameters, gating.enabled = true) has not finished stage 03 "
            f"(looked for {d / 'train_summary.json'}). Run that point first, or set {needs}.")
    return d


def gated_trained(cfg: config.Config, runs_root: str | Path) -> int:
    """The updates the gated counterpart trained (the equal-updates control trains as many, ungated)."""
    from ..finetune.dreambooth import trained_of

    d = _gated_stage(cfg, runs_root, "finetune.updates", "trained update count")
    try:
        n = trained_of(d)
    except ValueError:
        raise config.ParamError(f"{d / 'train_summary.json'} has no 'trained'; set finetune.updates by hand.") from None
    if n < 1:
        raise config.ParamError(f"the gated run {d} trained no update (it skipped every batch): an equal-updates "
                                "control would train nothing. Loosen the gate (a higher gating.threshold, or a lower "
                                "gating.skip_fraction in quantile mode), or drop the control.")
    return n


def gated_skip_rate(cfg: config.Config, runs_root: str | Path) -> float:
    from ..finetune.dreambooth import skip_rate_of

    d = _gated_stage(cfg, runs_root, "gating.skip_rate", "skip rate")
    try:
        return skip_rate_of(d)
    except ValueError:
        raise config.ParamError(f"{d / 'train_summary.json'} has no 'skip_rate'; set gating.skip_rate by hand.") \
            from None
