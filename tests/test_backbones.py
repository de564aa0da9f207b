"""Backbones through timm (issue 13, deliverable 3): presets and any timm name build offline, weights from a
file, the built-ins unchanged, unknown names refused at load time with the closest names."""
import pytest
import torch

from lib.evaluate import backbones, classifier
from lib.core import config
from lib.core.config import ClassifierConfig, ParamError


@pytest.mark.parametrize("arch", list(backbones.PRESETS) + ["densenet121", "densenet-mini", "resnet10t"])
def test_every_preset_builds_offline_and_answers_one_output_per_class(arch):
    torch.manual_seed(0)
    m = classifier.CheXNet(arch, "none", n_classes=2).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    assert m.n_classes == 2


def test_presets_name_the_related_studies_backbones():
    assert backbones.timm_name("efficientnet-b0") == "efficientnet_b0"
    assert backbones.timm_name("convnext-s") == "convnext_small"
    assert backbones.timm_name("timm/resnet18") == "resnet18"
    assert backbones.timm_name("densenet121") is None           # CheXNet's torchvision DenseNet-121, unchanged


def test_unknown_name_is_refused_at_load_time_with_the_closest_names():
    with pytest.raises(ParamError, match=r"unknown classifier.arch 'convnext-tiny'.*Closest names: .*convnext_tiny"):
        config.load("params/smoke.yaml", {"classifier.arch": "convnext-tiny"})
    with pytest.raises(ParamError, match="resnet50"):
        config.load("params/smoke.yaml", {"classifier.arch": "resnet-50"})


def test_weights_settings_are_checked_at_load_time(tmp_path):
    with pytest.raises(ParamError, match="neither 'none', 'imagenet' nor an existing weights file"):
        config.load("params/smoke.yaml", {"classifier.arch": "resnet50", "classifier.weights": "nope.pth"})
    with pytest.raises(ParamError, match="densenet-mini stand-in has no pre-trained weights"):
        config.load("params/smoke.yaml", {"classifier.weights": "imagenet"})
    cfg = config.load("params/smoke.yaml", {"classifier.arch": "convnext-t", "classifier.weights": "imagenet"})
    assert cfg.classifier.arch == "convnext-t"


def test_a_timm_backbone_loads_weights_from_a_file_and_drops_a_head_of_another_size(tmp_path):
    import timm

    torch.manual_seed(1)
    src = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    f = tmp_path / "resnet10t.pth"
    torch.save(src.state_dict(), f)
    cfg = config.load("params/smoke.yaml", {"classifier.arch": "resnet10t", "classifier.weights": str(f)})
    m = classifier.build(cfg.classifier, 2)
    assert torch.equal(m.net.conv1[0].weight, src.conv1[0].weight)
    assert m.net.get_classifier().out_features == 2


def test_a_timm_backbone_trains_and_predicts_through_the_suite():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 32, 32, generator=g) * 0.3
    y = torch.arange(32) % 2
    x[y == 1, :, 8:24, 8:24] += 0.6
    data = classifier.TensorSet((x.clamp(0, 1) * 255).to(torch.uint8), y)
    cfg = ClassifierConfig(arch="resnet10t", input_size=32, epochs=2, batch_size=16, patience=2)
    fit = classifier.train(data, cfg, seed=0, progress=False)
    out = classifier.predict_outputs(fit.model, data)
    assert out.shape == (32, 2) and len(fit.history) == 2


@pytest.mark.parametrize("arch", ["densenet-mini", "resnet10t"])
def test_the_fidelity_extractor_reads_the_heads_input_for_any_backbone(arch, tmp_path):
    """fidelity.extractor: classifier (lib.evaluate.features) takes the penultimate layer of whatever backbone trained."""
    from lib.evaluate import features

    torch.manual_seed(0)
    model = classifier.CheXNet(arch, "none", 2).eval()
    torch.save(model.state_dict(), tmp_path / "classifier_real.pt")
    ex = features.ClassifierFeatures(tmp_path / "classifier_real.pt", arch, 32, device=torch.device("cpu"))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    f = ex.embed(x)
    assert f.shape == (3, model.head().in_features)
    with torch.no_grad():
        assert torch.allclose(model.head()(torch.from_numpy(f)), model(x), atol=1e-5)
