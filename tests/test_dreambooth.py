"""Stage 03 on CPU with the untrained tiny model, a few steps: gating extremes, controls, resume, LoRA."""
import json

import pandas as pd
import pytest
import torch

from dreambooth_fixtures import fake_stage02, tiny_cfg
from lib.core import config, stages
from lib.finetune import checkpoints, diffusion_model, dreambooth, trainer
from lib.data.nih import DataError


def _unet(path):
    return diffusion_model.load_pipeline(str(path), device="cpu").unet.state_dict()


def _run(cfg, runs_root, tmp_path, name="03", **kw):
    fake_stage02(cfg, runs_root, tmp_path)
    out = tmp_path / name
    return out, dreambooth.run(cfg, out, runs_root, progress=False, **kw)


def test_threshold_plus_one_never_skips(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"gating.threshold": 1.0})
    out, summary = _run(cfg, runs_root, tmp_path)
    log = pd.read_csv(out / "gating_log.csv")
    assert len(log) == 4 and not log["skipped"].any() and summary["skip_rate"] == 0.0
    assert log["score"].between(-1, 1).all() and log["seconds"].gt(0).all()
    assert len(pd.read_csv(out / "loss_log.csv")) == 4
    base = _unet(summary["base"])
    assert any(not torch.equal(v, base[k]) for k, v in _unet(out / "model").items())  # it did train


def test_threshold_minus_one_always_skips_and_weights_stay_bit_identical(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"gating.threshold": -1.0})
    out, summary = _run(cfg, runs_root, tmp_path)
    log = pd.read_csv(out / "gating_log.csv")
    assert log["skipped"].all() and summary["skipped"] == 4 and summary["skip_rate"] == 1.0
    assert len(pd.read_csv(out / "loss_log.csv")) == 0
    base, tuned = _unet(summary["base"]), _unet(out / "model")
    assert base.keys() == tuned.keys() and all(torch.equal(tuned[k], base[k]) for k in base)


def test_random_skip_control_matches_the_given_rate(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"finetune.control": "random-skip", "gating.skip_rate": 0.5,
                                "finetune.steps": 8, "finetune.checkpoint_every": 100})
    out, summary = _run(cfg, runs_root, tmp_path)
    log = pd.read_csv(out / "gating_log.csv")
    assert summary["skipped"] == 4 and summary["skip_rate"] == 0.5 and log["score"].isna().all()
    assert sorted(pd.read_csv(out / "loss_log.csv")["step"]) == sorted(log.loc[~log["skipped"], "step"])
    assert dreambooth.skip_rate_of(out) == 0.5


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, runs_root):
    # Quantile gating (state: warm-up scores) with fresh samples every 2nd batch; the checkpoint at step 3
    # sits between two gates, so resuming must also restore the last samples' embeddings.
    cfg = tiny_cfg(tmp_path, **{"finetune.steps": 8, "finetune.learning_rate": 1e-5, "finetune.checkpoint_every": 3,
                                "gating.mode": "quantile", "gating.warmup_batches": 4, "gating.every_k": 2,
                                "gating.skip_fraction": 0.9})
    fake_stage02(cfg, runs_root, tmp_path)
    straight = dreambooth.run(cfg, tmp_path / "a", runs_root, progress=False)
    with pytest.raises(trainer.Interrupted):
        dreambooth.run(cfg, tmp_path / "b", runs_root, progress=False, stop_after=4)  # dies after step 4
    assert [p.name for p in (tmp_path / "b/checkpoints/model").glob("*.pt")] == ["step_000003.pt"]
    # the logs were written at the checkpoint, while training ran, not only at the end
    assert list(pd.read_csv(tmp_path / "b/gating_log.csv")["step"]) == [0, 1, 2]
    assert set(pd.read_csv(tmp_path / "b/loss_log.csv")["step"]) <= {0, 1, 2}
    resumed = dreambooth.run(cfg, tmp_path / "b", runs_root, progress=False)
    a, b = _unet(tmp_path / "a/model"), _unet(tmp_path / "b/model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a/gating_log.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "b/gating_log.csv").drop(columns="seconds"))
    assert straight["skipped"] == resumed["skipped"] > 0


def test_resume_from_a_checkpoint_of_another_config_is_refused(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"finetune.steps": 4})
    fake_stage02(cfg, runs_root, tmp_path)
    with pytest.raises(trainer.Interrupted):
        dreambooth.run(cfg, tmp_path / "a", runs_root, progress=False, stop_after=2)
    other = tiny_cfg(tmp_path, **{"finetune.steps": 4, "finetune.learning_rate": 0.5})
    with pytest.raises(checkpoints.CheckpointMismatch, match="other parameters"):
        dreambooth.run(other, tmp_path / "b", runs_root, progress=False,
                       resume_from=tmp_path / "a/checkpoints/model")


def test_lora_trains_and_saves(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"finetune.lora": True, "finetune.lora_rank": 2, "gating.enabled": False,
                                "finetune.learning_rate": 1e-2})
    out, summary = _run(cfg, runs_root, tmp_path)
    assert (out / "model_lora" / "pytorch_lora_weights.safetensors").exists()
    base, tuned = _unet(summary["base"]), _unet(out / "model")
    assert base.keys() == tuned.keys()                       # merged: a plain UNet again
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert changed and all("attn" in k for k in changed)     # only the adapted attention layers moved


def test_per_label_layout_writes_one_model_per_label(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"finetune.model_layout": "per-label", "finetune.steps": 2, "gating.enabled": False,
                                "finetune.prior_preservation": True, "finetune.num_class_images": 2})
    out, summary = _run(cfg, runs_root, tmp_path)
    assert (out / "model_no-finding/model_index.json").exists() and (out / "model_unhealthy/model_index.json").exists()
    assert pd.read_csv(out / "loss_log.csv")["loss_prior"].gt(0).all()
    assert dreambooth.model_path(out, cfg, "Unhealthy").endswith("model_unhealthy")


def test_no_fine_tune_records_the_base_model(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"finetune.control": "no-fine-tune"})
    out, summary = _run(cfg, runs_root, tmp_path)
    assert summary["steps"] == 0 and dreambooth.model_path(out, cfg, "No Finding") == summary["base"]
    assert json.loads((out / "train_summary.json").read_text())["control"] == "no-fine-tune"


def test_empty_tuning_set_is_a_clear_error(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path)
    df = fake_stage02(cfg, runs_root, tmp_path)
    d02 = stages.stage_dir(cfg, "02_clustering", runs_root)
    df.iloc[:0].to_csv(d02 / "tuning_spectral-clip.csv", index=False)
    (d02 / "DONE.json").unlink()                 # sealed again with the empty set (an edited sealed stage is refused)
    stages.mark_done(d02, cfg, "02_clustering")
    with pytest.raises(DataError, match="empty"):
        dreambooth.run(cfg, tmp_path / "03", runs_root, progress=False)


def test_a_model_id_that_cannot_be_found_says_offline_and_how_to_give_a_local_path(tmp_path, runs_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_cfg(tmp_path, **{"model.base": "no-such-org/no-such-model"})
    fake_stage02(cfg, runs_root, tmp_path)
    with pytest.raises(diffusion_model.ModelNotFoundError) as err:
        dreambooth.run(cfg, tmp_path / "03", runs_root, progress=False)
    assert "offline" in str(err.value) and "model.base" in str(err.value)


def test_zero_terminal_snr_trains_and_saves_the_rescaled_schedule(tmp_path, runs_root):
    cfg = tiny_cfg(tmp_path, **{"gating.enabled": False, "finetune.zero_terminal_snr": True,
                                "finetune.noise_offset": 0.1})
    out, summary = _run(cfg, runs_root, tmp_path)
    saved = json.loads((out / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["rescale_betas_zero_snr"] is True and saved["timestep_spacing"] == "trailing"
    from diffusers import DDPMScheduler

    # the rescaled schedule reaches (almost) zero signal at its last step; the base's does not
    assert DDPMScheduler.from_config(saved).alphas_cumprod[-1] < 1e-6
    base = json.loads((__import__("pathlib").Path(summary["base"]) / "scheduler" / "scheduler_config.json").read_text())
    assert DDPMScheduler.from_config(base).alphas_cumprod[-1] > 1e-3


def test_zero_terminal_snr_on_an_epsilon_base_is_a_clear_error(tmp_path, runs_root):
    import shutil

    cfg = tiny_cfg(tmp_path, **{"gating.enabled": False, "finetune.zero_terminal_snr": True})
    base = tmp_path / "eps-base"
    shutil.copytree(diffusion_model.base_for(cfg.model, seed=cfg.seed, progress=False), base)
    sc = base / "scheduler" / "scheduler_config.json"
    sc.write_text(sc.read_text().replace('"v_prediction"', '"epsilon"'))
    cfg.model.base = str(base)
    with pytest.raises(config.ParamError, match="v-prediction"):
        _run(cfg, runs_root, tmp_path)


def test_noise_offset_out_of_range_is_refused(tmp_path):
    with pytest.raises(config.ParamError, match="noise_offset"):
        tiny_cfg(tmp_path, **{"finetune.noise_offset": 2.0})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's choices")
def test_cpu_precision_honours_an_explicit_bf16_only(caplog):
    assert trainer.precision("bf16") == "bf16"
    assert trainer.precision("auto") == "no" and trainer.precision("no") == "no"
    with caplog.at_level("WARNING", logger="lib.finetune.trainer"):
        assert trainer.precision("fp16") == "no"
    assert "needs a GPU" in caplog.text


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed precision per process (a second Accelerator with another is refused): the
    other tests' "no" is cleared before this test and its "bf16" after it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_bf16_autocast_with_prior_preservation_and_the_optimizer_freed_before_saving(tmp_path, runs_root, monkeypatch,
                                                                                      fresh_accelerate_state):
    # The thesis's switches on the tiny model (benchmarks/rehearse_thesis.py runs them at SD1.5 size).
    cfg = tiny_cfg(tmp_path, **{"gating.enabled": False, "finetune.mixed_precision": "bf16", "finetune.steps": 2,
                                "finetune.prior_preservation": True, "finetune.num_class_images": 2,
                                "finetune.gradient_checkpointing": True, "finetune.checkpoint_every": 100})
    seen, release = {}, trainer.Trainer.release_optimizer

    def spy(self):
        seen.update(precision=self.acc.mixed_precision, vae=self.vae.dtype, unet=next(self.unet.parameters()).dtype,
                    before=len(self.opt.state))
        release(self)
        seen["after"] = len(self.opt.state)

    monkeypatch.setattr(trainer.Trainer, "release_optimizer", spy)
    out, summary = _run(cfg, runs_root, tmp_path)
    # frozen parts in bf16, the trained UNet in fp32 under autocast; AdamW's state gone before the save
    assert seen["precision"] == "bf16" and seen["vae"] == torch.bfloat16 and seen["unet"] == torch.float32
    assert seen["before"] > 0 and seen["after"] == 0
    assert summary["mixed_precision"] == "bf16"
    loss = pd.read_csv(out / "loss_log.csv")
    assert len(loss) == 2 and loss["loss_prior"].gt(0).all()
    base = _unet(summary["base"])
    assert any(not torch.equal(v, base[k]) for k, v in _unet(out / "model").items())


def test_equal_updates_trains_the_gated_runs_trained_count_ungated_on_its_lr_schedule(tmp_path, runs_root):
    # a warm-up longer than the gated run's first skip, so "the same schedule" is tested where it could differ
    common = {"finetune.steps": 6, "finetune.checkpoint_every": 100, "finetune.lr_warmup_steps": 3,
              "gating.mode": "quantile", "gating.warmup_batches": 2, "gating.skip_fraction": 0.5}
    gated_out, gated = _run(tiny_cfg(tmp_path, **common), runs_root, tmp_path, "gated")
    assert 0 < gated["trained"] < 6, gated          # the gate skipped some batches, not all
    n = dreambooth.trained_of(gated_out)
    cfg = tiny_cfg(tmp_path, **common, **{"gating.enabled": False, "finetune.control": "equal-updates",
                                          "finetune.updates": n})
    out, summary = _run(cfg, runs_root, tmp_path, "equal")
    log, loss = pd.read_csv(out / "gating_log.csv"), pd.read_csv(out / "loss_log.csv")
    assert (summary["trained"], summary["steps"], summary["skipped"]) == (n, n, 0) and not summary["gating"]
    assert summary["updates_target"] == n and log["score"].isna().all() and not log["skipped"].any()
    assert list(loss["step"]) == list(range(n))     # the first n batches of the seed's order, every one trained
    gated_lr = pd.read_csv(gated_out / "loss_log.csv")["lr"]
    assert loss["lr"].tolist() == pytest.approx(gated_lr.tolist())   # k-th update, same LR as the gated run's k-th
    assert loss["lr"].iloc[0] < loss["lr"].iloc[-1]                  # the warm-up is in it
    with pytest.raises(config.ParamError, match="equal-updates needs finetune.updates"):
        dreambooth.run(tiny_cfg(tmp_path, **{"gating.enabled": False, "finetune.control": "equal-updates"}),
                       tmp_path / "none", runs_root, progress=False)
