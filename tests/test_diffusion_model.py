"""The base model: the tiny SD-architecture model built offline, loaded like any checkpoint."""
import numpy as np
import pytest
import torch

from lib.finetune import diffusion_model as dm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return dm.build_tiny(resolution=32, pretrain_steps=0, seed=0, out_dir=tmp_path_factory.mktemp("m") / "tiny")


def _draw(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pipe(["an image of Healthy chest X-ray"], num_inference_steps=2, guidance_scale=2.0, generator=g,
                output_type="np").images


def test_tiny_model_has_the_sd_architecture_and_loads_through_from_pretrained(tiny):
    pipe = dm.load_pipeline(str(tiny), device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and type(pipe.vae).__name__ == "AutoencoderKL"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and "CLIPTokenizer" in type(pipe.tokenizer).__name__
    ids = pipe.tokenizer("an image of Healthy chest X-ray").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id and len(ids) > 4
    assert _draw(pipe).shape == (1, 32, 32, 3)


def test_save_then_from_pretrained_round_trips(tiny, tmp_path):
    pipe = dm.load_pipeline(str(tiny), device="cpu")
    before = _draw(pipe, 3)
    pipe.save_pretrained(tmp_path / "copy")
    again = dm.load_pipeline(str(tmp_path / "copy"), device="cpu")
    for a, b in zip(pipe.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(before, _draw(again, 3))
    assert not np.array_equal(before, _draw(again, 4))     # the comparison can fail


def test_build_is_cached(tiny):
    stamp = (tiny / "model_index.json").stat().st_mtime
    assert dm.build_tiny(32, 0, 0, out_dir=tiny) == tiny and (tiny / "model_index.json").stat().st_mtime == stamp


def test_missing_model_id_says_offline_and_how_to_give_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(dm.ModelNotFoundError) as err:
        dm.load_pipeline("no-such-org/no-such-model", device="cpu")
    msg = str(err.value)
    assert "offline" in msg and "local" in msg and "model.base" in msg
    with pytest.raises(dm.ModelNotFoundError, match="does not exist"):
        dm.load_pipeline("models/not-here", device="cpu")


def test_shapes_corpus_is_out_of_domain_and_captioned():
    imgs, caps = dm.shapes_corpus(16, 32, seed=0)
    assert imgs.shape == (16, 3, 32, 32) and 0 <= imgs.min() and imgs.max() <= 1
    assert all(c.startswith("a ") for c in caps) and any("background" in c for c in caps)
    assert imgs.std(axis=1).mean() > 0.05            # coloured, unlike the grayscale phantoms
