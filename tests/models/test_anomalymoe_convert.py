"""convert_official_state_dict: the authors' checkpoint layout (spec, last section) onto AnomalyMoEModel."""

from __future__ import annotations

import pytest
import torch

from anomaly_zoo.models.anomalymoe import AnomalyMoE
from anomaly_zoo.models.anomalymoe.convert import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_state_dict,
)
from anomaly_zoo.models.anomalymoe.model import AnomalyMoEModel

WIDTH = 24  # reduced from 768; the key set does not depend on the width
TINY = dict(
    backbone_kwargs={"embed_dim": WIDTH, "depth": 12, "num_heads": 2, "img_size": 70}, pretrained=False,
    decoder_heads=2, global_ae_channels=(4, 4, 8), global_student_channels=(4, 8), global_input_size=392,
    component_hidden=16, component_inner=8, component_code=8, router_hidden=16,
)


def authors_layout(seed: int = 0) -> dict[str, torch.Tensor]:
    """A fake checkpoint with the authors' key names (spec table), random values, shapes of the tiny model."""
    g = torch.Generator().manual_seed(seed)
    ours = AnomalyMoEModel(**TINY).state_dict()
    fake = {}
    for k, v in ours.items():
        if k.startswith("encoder."):
            continue
        name = k.replace("router.gate.", "gating_network.gate.")
        fake[name] = torch.randn(v.shape, generator=g)
    c, grid = WIDTH, 5 * 5
    fake["encoder.cls_token"] = torch.randn(1, 1, c, generator=g)
    fake["encoder.pos_embed"] = torch.randn(1, grid + 1, c, generator=g)
    fake["encoder.register_tokens"] = torch.randn(1, 4, c, generator=g)
    fake["encoder.mask_token"] = torch.randn(1, c, generator=g)
    fake["encoder.patch_embed.proj.weight"] = torch.randn(c, 3, 14, 14, generator=g)
    fake["encoder.patch_embed.proj.bias"] = torch.randn(c, generator=g)
    for i in range(12):
        for name, shape in (("norm1.weight", (c,)), ("norm1.bias", (c,)), ("attn.qkv.weight", (3 * c, c)),
                            ("attn.qkv.bias", (3 * c,)), ("attn.proj.weight", (c, c)), ("attn.proj.bias", (c,)),
                            ("ls1.gamma", (c,)), ("norm2.weight", (c,)), ("norm2.bias", (c,)),
                            ("mlp.fc1.weight", (4 * c, c)), ("mlp.fc1.bias", (4 * c,)),
                            ("mlp.fc2.weight", (c, 4 * c)), ("mlp.fc2.bias", (c,)), ("ls2.gamma", (c,))):
            fake[f"encoder.blocks.{i}.{name}"] = torch.randn(shape, generator=g)
    fake["encoder.norm.weight"] = torch.randn(c, generator=g)
    fake["encoder.norm.bias"] = torch.randn(c, generator=g)
    return fake


def test_fake_checkpoint_has_the_spec_key_counts():
    fake = authors_layout()
    assert len(fake) == 1092
    assert sum(not k.startswith("encoder.") for k in fake) == 916
    assert sum(k.startswith("encoder.") for k in fake) == 176


def test_conversion_loads_every_tensor_and_folds_the_class_position():
    fake = authors_layout()
    model = AnomalyMoEModel(**TINY)
    load_official_state_dict(model, fake)
    state = model.state_dict()
    assert torch.equal(state["router.gate.2.weight"], fake["gating_network.gate.2.weight"])
    assert torch.equal(state["patch_experts.5.decoder.7.attn.qkv.weight"], fake["patch_experts.5.decoder.7.attn.qkv.weight"])
    assert torch.equal(state["global_experts.3.autoencoder.38.weight"], fake["global_experts.3.autoencoder.38.weight"])
    assert torch.equal(state["component_experts.1.decoder.7.bias"], fake["component_experts.1.decoder.7.bias"])
    assert torch.equal(state["encoder.module.reg_token"], fake["encoder.register_tokens"])
    assert torch.equal(state["encoder.module.pos_embed"], fake["encoder.pos_embed"][:, 1:])
    assert torch.equal(state["encoder.module.cls_token"], fake["encoder.cls_token"] + fake["encoder.pos_embed"][:, :1])
    assert torch.equal(state["encoder.module.blocks.11.ls2.gamma"], fake["encoder.blocks.11.ls2.gamma"])


def test_conversion_is_strict():
    fake = authors_layout()
    with pytest.raises(OfficialCheckpointError, match="not AnomalyMoE's"):
        convert_official_state_dict({**fake, "teacher.0.weight": torch.zeros(1)})
    missing = dict(fake)
    del missing["global_experts.0.student.12.bias"]
    with pytest.raises(OfficialCheckpointError, match="missing 1"):
        load_official_state_dict(AnomalyMoEModel(**TINY), missing)
    wrong = {**fake, "gating_network.gate.0.weight": torch.zeros(3, 3)}
    with pytest.raises(OfficialCheckpointError, match="other shapes"):
        load_official_state_dict(AnomalyMoEModel(**TINY), wrong)
    with pytest.raises(OfficialCheckpointError, match="not in this model"):
        load_official_state_dict(AnomalyMoEModel(**{**TINY, "num_patch_experts": 5}), fake)


def test_official_checkpoint_option(tmp_path):
    fake = authors_layout(1)
    path = tmp_path / "model_final.pth"
    torch.save(fake, path)
    module = AnomalyMoE(**TINY, official_checkpoint=str(path))
    assert torch.equal(module.model.state_dict()["router.gate.0.weight"], fake["gating_network.gate.0.weight"])
    with pytest.raises(FileNotFoundError, match="official_checkpoint"):
        AnomalyMoE(**TINY, official_checkpoint=str(tmp_path / "absent.pth"))
