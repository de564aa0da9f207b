"""benchmarks/rehearse_thesis.py's parameters: params/thesis.yaml with overrides the schema still takes (the
rehearsal itself runs for half an hour and is not a test)."""
import importlib.util

from lib.core import paths


def _module():
    spec = importlib.util.spec_from_file_location("rehearse_thesis", paths.ROOT / "benchmarks" / "rehearse_thesis.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_rehearsal_keeps_the_thesis_switches_and_changes_sizes(tmp_path):
    r = _module()
    for run in r.RUNS:
        cfg = r.cfg_for(tmp_path, run)
        f = cfg.finetune
        assert f.prior_preservation and f.gradient_checkpointing and f.mixed_precision == "bf16"
        assert f.lora == (run == "lora") and cfg.gating.enabled
        assert cfg.model.base == str(tmp_path / "sd15-random") and cfg.model.resolution == 64
        assert cfg.classifier.arch == "densenet121" and cfg.classifier.input_size == 224
        assert cfg.embedding.clip_model == "ViT-B-32" and cfg.embedding.clip_pretrained.startswith(str(tmp_path))
    assert r.cfg_for(tmp_path, "full").finetune.learning_rate == 5e-6          # the thesis's full-UNet rate
