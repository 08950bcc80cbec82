import pytest
import torch

from anomaly_zoo.models.components.backbone import (
    FrozenModule,
    PretrainedWeightsError,
    TimmFeatureExtractor,
    create_timm_model,
)
from anomaly_zoo.models.components.upsample import resize_map


def test_pretrained_weights_offline_error_names_the_option():
    with pytest.raises(PretrainedWeightsError, match=r"pretrained false") as info:
        create_timm_model("resnet18", pretrained=True)
    assert "backbone_weights" in str(info.value)


def test_local_weights_file_loads(tmp_path):
    model = create_timm_model("resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    extractor = TimmFeatureExtractor("resnet18", (1, 2), pretrained=True, weights_path=str(path))
    weight = extractor.module.conv1.weight
    assert torch.equal(weight, model.conv1.weight)


def test_local_weights_that_do_not_fit_fail_clearly(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsError, match="do not fit"):
        create_timm_model("resnet18", weights_path=path)
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_timm_model("resnet18", weights_path=tmp_path / "missing.pth")


def test_frozen_module_stays_eval_and_gradient_free():
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    frozen = FrozenModule(inner)
    assert not frozen.training  # the wrapper's own flag too, from construction on
    parent = torch.nn.Sequential(frozen, torch.nn.Conv2d(4, 1, 1))
    parent.train()
    assert not frozen.training and not inner[1].training
    running_mean = inner[1].running_mean.clone()
    out = parent(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    assert torch.equal(inner[1].running_mean, running_mean)  # BN statistics untouched in "training"
    assert all(p.grad is None and not p.requires_grad for p in inner.parameters())
    assert parent[1].weight.grad is not None


def test_feature_extractor_shapes():
    extractor = TimmFeatureExtractor("resnet18", (1, 2, 3), pretrained=False)
    features = extractor(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == extractor.channels == [64, 128, 256]
    assert [64 // f.shape[-1] for f in features] == extractor.reductions == [4, 8, 16]


def test_resize_map_is_identity_at_the_target_size_and_bilinear_otherwise():
    m = torch.rand(2, 1, 8, 8)
    assert resize_map(m, (8, 8)) is m
    up = resize_map(m, (16, 16))
    assert up.shape == (2, 1, 16, 16)
    assert torch.allclose(up.mean(), m.mean(), atol=1e-2)
