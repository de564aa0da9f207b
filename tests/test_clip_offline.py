"""The offline CLIP: built on shapes, loaded back through the embedder's pretrained path, and it learns."""
import numpy as np
import pytest
import torch

from lib.tuningset import clip_offline, embeddings
from lib.core import compute, paths
from lib.finetune import diffusion_model
from lib.core.config import EmbeddingConfig

STEPS = 30   # a short build: enough to rise clearly above chance (seed 0: top-5 0.64 vs chance 0.10, 60 steps 0.86;
#              the default is clip_offline.DEFAULT_STEPS)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A short build into a private folder: (checkpoint path, the in-memory model it was saved from)."""
    out = tmp_path_factory.mktemp("clip") / "clip-offline-test"
    torch.manual_seed(0)
    with compute.cpu_threads(1):
        model = clip_offline.train(STEPS, seed=0, progress=False)
    ckpt = out / clip_offline.CHECKPOINT
    out.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt)
    return ckpt, model


def _cfg(pretrained, model=clip_offline.OFFLINE_MODEL):
    return EmbeddingConfig(clip_model=model, clip_pretrained=str(pretrained), clip_image_size=None)


def test_round_trip_through_the_pretrained_path(built):
    ckpt, model = built
    imgs, caps = diffusion_model.shapes_corpus(16, 32, seed=5)
    emb = embeddings.ClipEmbedder(_cfg(ckpt), device=torch.device("cpu"))
    mine, _ = clip_offline.encode(model, imgs, caps)
    np.testing.assert_allclose(emb.embed(imgs), mine, atol=1e-5)
    assert not emb.random_weights


def test_build_caches_under_models_with_a_key(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "MODELS", tmp_path)
    ckpt = clip_offline.build(steps=2, progress=False)
    assert ckpt == tmp_path / f"clip-offline-{clip_offline.offline_key(2)}" / clip_offline.CHECKPOINT
    assert (ckpt.parent / "clip_offline.json").is_file()
    stamp = ckpt.stat().st_mtime_ns
    assert clip_offline.build(steps=2, progress=False).stat().st_mtime_ns == stamp   # reused, not rebuilt
    assert clip_offline.offline_key(2) != clip_offline.offline_key(3)


def test_offline_tag_resolves_to_the_cached_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "MODELS", tmp_path)
    monkeypatch.setattr(clip_offline, "DEFAULT_STEPS", 2)
    path = clip_offline.resolve_pretrained(clip_offline.OFFLINE_MODEL, "offline", progress=False)
    assert path == str(clip_offline.offline_dir(2) / clip_offline.CHECKPOINT)
    assert clip_offline.resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k") == "laion2b_s34b_b79k"  # tags untouched
    assert clip_offline.resolve_pretrained("ViT-B-32", None) is None


def test_missing_checkpoint_names_path_and_model(tmp_path):
    missing = tmp_path / "nowhere" / "clip.pt"
    with pytest.raises(embeddings.EmbeddingError, match=r"nowhere/clip\.pt does not exist.*ViT-Tiny-P4-32"):
        embeddings.ClipEmbedder(_cfg(missing))


def test_checkpoint_of_another_architecture_names_path_and_model(built):
    ckpt, _ = built
    with pytest.raises(embeddings.EmbeddingError, match=r"clip-offline-test/open_clip_model\.pt does not fit "
                                                        r"open_clip model 'RN50'"):
        embeddings.ClipEmbedder(_cfg(ckpt, model="RN50"))


def test_offline_tag_with_another_model_is_refused():
    with pytest.raises(embeddings.EmbeddingError, match="clip_model: ViT-Tiny-P4-32"):
        embeddings.ClipEmbedder(_cfg("offline", model="ViT-B-32"))


def test_cache_key_says_which_weights():
    a = embeddings.clip_key(_cfg("offline"))
    b = embeddings.clip_key(EmbeddingConfig(clip_model=clip_offline.OFFLINE_MODEL, clip_image_size=None))
    assert a != b and clip_offline.offline_key() in clip_offline.pretrained_id("offline")


def test_retrieval_above_chance_after_short_training(built):
    _, model = built
    acc = clip_offline.retrieval(model, n=50)
    seen = acc["seen_captions"]
    assert seen["i2t_top5"] > 3 * seen["chance_top5"] and seen["t2i_top5"] > 3 * seen["chance_top5"]
    assert seen["i2t_top1"] > 2 * seen["chance_top1"]


def test_cosine_report_has_the_three_pairs(built):
    emb = embeddings.ClipEmbedder(_cfg(built[0]), device=torch.device("cpu")).embed
    ph = clip_offline.phantom_images(6)
    corpus, _ = diffusion_model.shapes_corpus(5, 32, seed=3)
    rep = clip_offline.cosine_report(emb, ph, corpus, samples=corpus[:3])
    assert set(rep) == {"phantom-phantom", "base_sample-phantom", "corpus-phantom"}
    assert all(-1 <= q["q05"] <= q["q50"] <= q["q95"] <= 1 for q in rep.values())
