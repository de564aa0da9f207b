"""Stage 03's live TensorBoard logs (lib/finetune/tracking.py): what they hold, that a resume does not repeat steps,
and that switching them off changes no stage key and no weight."""
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dreambooth_fixtures import fake_stage02, tiny_cfg
from lib.finetune import diffusion_model, dreambooth, trainer
from lib.core import stages

# quantile gating with a short window: within 4 batches the gate both trains and skips
GATED = {"finetune.steps": 4, "finetune.validation_every": 2, "gating.mode": "quantile",
         "gating.warmup_batches": 2, "gating.skip_fraction": 0.5}


def _events(run_dir):
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def _scalars(ea, tag):
    return [(e.step, e.value) for e in ea.Scalars(tag)]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    cfg = tiny_cfg(tmp, **GATED)
    fake_stage02(cfg, tmp / "runs", tmp)
    summary = dreambooth.run(cfg, tmp / "on", tmp / "runs", progress=False)
    return tmp, cfg, summary


def _run_dir(out, cfg):
    """tb/<method>_n<size>_<gate>_seed<seed>/model, spelt out so that a renamed folder fails here."""
    gate = f"_q{cfg.gating.skip_fraction:g}" if cfg.gating.enabled else ""
    return out / "tb" / f"{cfg.finetune.method}_n{cfg.selection.per_label}{gate}_seed{cfg.seed}" / "model"


def test_a_run_logs_loss_gate_scores_skips_and_validation_images(logged):
    tmp, cfg, summary = logged
    ea = _events(_run_dir(tmp / "on", cfg))
    gates, losses = pd.read_csv(tmp / "on/gating_log.csv"), pd.read_csv(tmp / "on/loss_log.csv")
    assert 0 < summary["skipped"] < 4
    score = _scalars(ea, "gate/score")
    assert [s for s, _ in score] == gates["step"].tolist()
    assert [v for _, v in score] == pytest.approx(gates["score"].tolist(), rel=1e-6)
    assert [v for _, v in _scalars(ea, "gate/skipped")] == gates["skipped"].astype(float).tolist()
    assert _scalars(ea, "gate/skip_rate")[-1][1] == pytest.approx(summary["skip_rate"])
    loss = _scalars(ea, "train/loss")           # trained batches only: skipped ones leave no point
    assert [s for s, _ in loss] == losses["step"].tolist() and len(loss) < 4
    assert [v for _, v in loss] == pytest.approx(losses["loss"].tolist(), rel=1e-6)
    assert "train/lr" in ea.Tags()["scalars"]
    for label in ("no-finding", "unhealthy"):   # validation at steps 0, 2 and 4, as validation/ holds
        assert [e.step for e in ea.Images(f"validation/{label}")] == [0, 2, 4]


def test_switched_off_it_writes_no_events_and_changes_no_key_or_weight(logged):
    tmp, cfg, _ = logged
    off = tiny_cfg(tmp, **GATED, **{"finetune.tensorboard": False})
    assert stages.key(off, "03_dreambooth") == stages.key(cfg, "03_dreambooth")
    dreambooth.run(off, tmp / "off", tmp / "runs", progress=False)
    assert not (tmp / "off/tb").exists()
    a, b = (diffusion_model.load_pipeline(str(tmp / d / "model"), device="cpu").unet.state_dict()
            for d in ("on", "off"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(tmp / "on/gating_log.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp / "off/gating_log.csv").drop(columns="seconds"))


def test_a_resumed_run_logs_each_step_once(logged):
    tmp, cfg, _ = logged
    cfg = tiny_cfg(tmp, **GATED, **{"finetune.checkpoint_every": 2})
    with pytest.raises(trainer.Interrupted):
        dreambooth.run(cfg, tmp / "resumed", tmp / "runs", progress=False, stop_after=3)   # checkpoint at 2
    dreambooth.run(cfg, tmp / "resumed", tmp / "runs", progress=False)
    ea = _events(_run_dir(tmp / "resumed", cfg))
    assert [s for s, _ in _scalars(ea, "gate/score")] == [0, 1, 2, 3]     # step 2 logged twice, purged once
    assert [e.step for e in ea.Images("validation/no-finding")] == [0, 2, 4]


def test_an_ungated_run_is_named_by_method_size_and_seed_and_draws_no_gate_lines(logged):
    tmp, _, _ = logged
    cfg = tiny_cfg(tmp, **{**GATED, "gating.enabled": False, "seed": 3})
    fake_stage02(cfg, tmp / "runs", tmp)
    dreambooth.run(cfg, tmp / "ungated", tmp / "runs", progress=False)
    assert [p.name for p in (tmp / "ungated/tb").iterdir()] == [f"{cfg.finetune.method}_n{cfg.selection.per_label}_seed3"]
    tags = _events(_run_dir(tmp / "ungated", cfg)).Tags()["scalars"]
    assert "train/loss" in tags and not [t for t in tags if t.startswith("gate/")]
