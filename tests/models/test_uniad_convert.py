"""Import of the authors' checkpoints: a state dict built in their layout (from the spec) maps completely."""

from __future__ import annotations

import os
import sys
import types
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anomaly_zoo.models.uniad import (  # noqa: E402
    OfficialCheckpointError,
    UniAD,
    UniADModel,
    convert_official_state_dict,
    load_official_file,
    load_official_state_dict,
)


def authors_reconstruction(gen: torch.Generator, c_in=272, c=256, ffn=1024, grid=14, enc=4, dec=4) -> dict:
    """The reconstruction tensors exactly as listed in the spec's table, filled with distinct random values."""
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed.row_embed.weight": (grid, c // 2), "pos_embed.col_embed.weight": (grid, c // 2),
        "input_proj.weight": (c, c_in), "input_proj.bias": (c,),
        "output_proj.weight": (c_in, c), "output_proj.bias": (c_in,),
        "transformer.decoder.norm.weight": (c,), "transformer.decoder.norm.bias": (c,),
    }

    def attn(prefix):
        shapes.update({f"{prefix}.in_proj_weight": (3 * c, c), f"{prefix}.in_proj_bias": (3 * c,),
                       f"{prefix}.out_proj.weight": (c, c), f"{prefix}.out_proj.bias": (c,)})

    def ffn_and_norms(prefix, norms):
        shapes.update({f"{prefix}.linear1.weight": (ffn, c), f"{prefix}.linear1.bias": (ffn,),
                       f"{prefix}.linear2.weight": (c, ffn), f"{prefix}.linear2.bias": (c,)})
        for n in norms:
            shapes.update({f"{prefix}.{n}.weight": (c,), f"{prefix}.{n}.bias": (c,)})

    for i in range(enc):
        attn(f"transformer.encoder.layers.{i}.self_attn")
        ffn_and_norms(f"transformer.encoder.layers.{i}", ("norm1", "norm2"))
    for i in range(dec):
        p = f"transformer.decoder.layers.{i}"
        shapes[f"{p}.learned_embed.weight"] = (grid * grid, c)
        attn(f"{p}.self_attn")
        attn(f"{p}.multihead_attn")
        ffn_and_norms(p, ("norm1", "norm2", "norm3"))
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def authors_backbone(gen: torch.Generator) -> dict:
    """lukemelas' EfficientNet-B4 state dict, from the B4 arithmetic (not from timm)."""
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix, n):
        for p in ("weight", "bias", "running_mean"):
            sd[f"{prefix}.{p}"] = torch.randn(n, generator=gen)
        sd[f"{prefix}.running_var"] = torch.rand(n, generator=gen) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    def conv(prefix, out, inp, k, bias=False):
        sd[f"{prefix}.weight"] = torch.randn(out, inp, k, k, generator=gen)
        if bias:
            sd[f"{prefix}.bias"] = torch.randn(out, generator=gen)

    conv("_conv_stem", 48, 3, 3)
    bn("_bn0", 48)
    repeats, kernels, outs = [2, 4, 4, 6, 6, 8, 2], [3, 3, 5, 3, 5, 5, 3], [24, 32, 56, 112, 160, 272, 448]
    i, inp = 0, 48
    for stage, (r, k, out) in enumerate(zip(repeats, kernels, outs)):
        for _ in range(r):
            e = 1 if stage == 0 else 6
            mid, squeezed = inp * e, max(1, int(inp * 0.25))
            p = f"_blocks.{i}"
            if e != 1:
                conv(f"{p}._expand_conv", mid, inp, 1)
                bn(f"{p}._bn0", mid)
            sd[f"{p}._depthwise_conv.weight"] = torch.randn(mid, 1, k, k, generator=gen)
            bn(f"{p}._bn1", mid)
            conv(f"{p}._se_reduce", squeezed, mid, 1, bias=True)
            conv(f"{p}._se_expand", mid, squeezed, 1, bias=True)
            conv(f"{p}._project_conv", out, mid, 1)
            bn(f"{p}._bn2", out)
            i, inp = i + 1, out
    conv("_conv_head", 1792, 448, 1)
    bn("_bn1", 1792)
    sd["_fc.weight"] = torch.randn(1000, 1792, generator=gen)
    sd["_fc.bias"] = torch.randn(1000, generator=gen)
    return sd


@pytest.fixture(scope="module")
def official() -> dict:
    gen = torch.Generator().manual_seed(0)
    recon = authors_reconstruction(gen)
    assert len(recon) == 132 and sum(v.numel() for v in recon.values()) == 7_717_392  # the spec's numbers
    state = {f"module.reconstruction.{k}": v for k, v in recon.items()}
    state.update({f"module.backbone.{k}": v for k, v in authors_backbone(gen).items()})
    return state


@pytest.fixture(scope="module")
def paper_model() -> UniADModel:
    return UniADModel("tf_efficientnet_b4", pretrained=False)


def test_every_reconstruction_tensor_maps_once(official, paper_model):
    converted = convert_official_state_dict(official)
    recon = {k: v for k, v in converted.items() if k.startswith("reconstruction.")}
    model_keys = {k for k in paper_model.state_dict() if k.startswith("reconstruction.")}
    assert set(recon) == model_keys and len(recon) == 132
    # Bijective on the tensors themselves (each official tensor has distinct random content).
    official_recon = [v for k, v in official.items() if ".reconstruction." in k]
    assert sorted(id(v) for v in recon.values()) == sorted(id(v) for v in official_recon)
    # The semantic correspondences the spec states.
    o = "module.reconstruction.transformer.decoder.layers.2."
    assert recon["reconstruction.decoder_layers.2.query"] is official[o + "learned_embed.weight"]
    assert recon["reconstruction.decoder_layers.2.encoder_attn.in_proj_weight"] is official[o + "self_attn.in_proj_weight"]
    assert recon["reconstruction.decoder_layers.2.previous_attn.out_proj.bias"] is official[o + "multihead_attn.out_proj.bias"]
    assert recon["reconstruction.decoder_layers.2.norm3.weight"] is official[o + "norm3.weight"]
    assert recon["reconstruction.decoder_norm.bias"] is official["module.reconstruction.transformer.decoder.norm.bias"]
    assert recon["reconstruction.encoder_layers.3.ffn.linear2.weight"] is official[
        "module.reconstruction.transformer.encoder.layers.3.linear2.weight"]
    assert recon["reconstruction.pos_embed.col_embed.weight"] is official["module.reconstruction.pos_embed.col_embed.weight"]


def test_backbone_maps_onto_timm_names(official, paper_model):
    converted = convert_official_state_dict(official)
    backbone = {k: v for k, v in converted.items() if k.startswith("backbone.")}
    assert len(backbone) == sum(".backbone." in k for k in official)  # every backbone tensor used
    ob = "module.backbone."
    assert backbone["backbone.module.conv_stem.weight"] is official[ob + "_conv_stem.weight"]
    assert backbone["backbone.module.bn1.running_var"] is official[ob + "_bn0.running_var"]
    # block 1 = stage 0 (no expansion): depthwise → conv_dw, project → conv_pw
    assert backbone["backbone.module.blocks.0.1.conv_pw.weight"] is official[ob + "_blocks.1._project_conv.weight"]
    assert backbone["backbone.module.blocks.0.1.bn2.bias"] is official[ob + "_blocks.1._bn2.bias"]
    # block 6 = stage 2, first block (with expansion): expand → conv_pw, project → conv_pwl, bn2 → bn3
    assert backbone["backbone.module.blocks.2.0.conv_dw.weight"] is official[ob + "_blocks.6._depthwise_conv.weight"]
    assert backbone["backbone.module.blocks.2.0.conv_pw.weight"] is official[ob + "_blocks.6._expand_conv.weight"]
    assert backbone["backbone.module.blocks.2.0.conv_pwl.weight"] is official[ob + "_blocks.6._project_conv.weight"]
    assert backbone["backbone.module.blocks.2.0.bn3.weight"] is official[ob + "_blocks.6._bn2.weight"]
    assert backbone["backbone.module.blocks.4.5.se.conv_reduce.bias"] is official[ob + "_blocks.21._se_reduce.bias"]
    assert backbone["backbone.module.classifier.weight"] is official[ob + "_fc.weight"]


def test_load_into_the_paper_model(official, paper_model):
    info = load_official_state_dict(paper_model, official)
    state = paper_model.state_dict()
    assert torch.equal(state["reconstruction.decoder_layers.0.query"],
                       official["module.reconstruction.transformer.decoder.layers.0.learned_embed.weight"])
    assert torch.equal(state["backbone.module.blocks.4.5.conv_pwl.weight"],
                       official["module.backbone._blocks.21._project_conv.weight"])
    # Blocks after the last tap (21) and the head are not computed, hence not loaded.
    assert all(k.startswith(("backbone.module.blocks.4.", "backbone.module.blocks.5.", "backbone.module.blocks.6.",
                             "backbone.module.conv_head", "backbone.module.bn2", "backbone.module.classifier"))
               for k in info["ignored"])
    assert not any(k.startswith("backbone.module.blocks.4.5.") for k in info["ignored"])


@pytest.mark.parametrize("layout", ["module", "no_module", "bare", "file_dict"])
def test_prefix_variants_give_the_same_result(official, layout):
    recon = {k[len("module.reconstruction."):]: v for k, v in official.items() if ".reconstruction." in k}
    variants = {
        "module": {f"module.reconstruction.{k}": v for k, v in recon.items()},
        "no_module": {f"reconstruction.{k}": v for k, v in recon.items()},
        "bare": recon,
        "file_dict": {"epoch": 1000, "state_dict": {f"module.reconstruction.{k}": v for k, v in recon.items()}},
    }
    converted = convert_official_state_dict(variants[layout])
    assert set(converted) == {k for k in convert_official_state_dict(official) if k.startswith("reconstruction.")}


def _recon_only(official):
    return {k: v for k, v in official.items() if ".reconstruction." in k}


def test_missing_tensor_is_named(official):
    broken = _recon_only(official)
    del broken["module.reconstruction.transformer.decoder.layers.1.norm2.bias"]
    with pytest.raises(OfficialCheckpointError, match=r"decoder\.layers\.1\.norm2\.bias"):
        convert_official_state_dict(broken)


def test_wrong_shape_is_named(official):
    broken = dict(_recon_only(official))
    broken["module.reconstruction.transformer.encoder.layers.2.self_attn.in_proj_weight"] = torch.zeros(767, 256)
    with pytest.raises(OfficialCheckpointError, match=r"encoder\.layers\.2\.self_attn\.in_proj_weight has \(767, 256\)"):
        convert_official_state_dict(broken)


@pytest.mark.parametrize("key", ["module.reconstruction.transformer.encoder.layers.0.extra.weight",
                                 "module.neck.weight", "module.classifier.weight"])
def test_unknown_tensor_is_an_error(official, key):
    broken = dict(_recon_only(official))
    broken[key] = torch.zeros(3)
    with pytest.raises(OfficialCheckpointError, match="extra|neck|classifier"):
        convert_official_state_dict(broken)


def test_unknown_backbone_tensor_is_an_error(official):
    broken = dict(official)
    broken["module.backbone._blocks.3._mystery.weight"] = torch.zeros(1)
    with pytest.raises(OfficialCheckpointError, match="_mystery"):
        convert_official_state_dict(broken)


def test_configuration_mismatch_names_the_options(official):
    model = UniADModel("tf_efficientnet_b4", pretrained=False, num_decoder_layers=3)
    with pytest.raises(OfficialCheckpointError, match="num_decoder_layers"):
        load_official_state_dict(model, official)


def test_official_checkpoint_option_loads_the_authors_file_offline(official, tmp_path):
    # The authors' file also pickles their EasyDict config; simulate it with a stand-in module that is
    # gone when the file is loaded (easydict is not a dependency).
    fake = types.ModuleType("easydict")

    class EasyDict(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for k, v in self.items():
                object.__setattr__(self, k, v)

    EasyDict.__module__, EasyDict.__qualname__ = "easydict", "EasyDict"
    fake.EasyDict = EasyDict
    sys.modules["easydict"] = fake
    try:
        path = tmp_path / "ckpt.pth.tar"
        torch.save({"epoch": 1000, "arch": [EasyDict(name="backbone", kwargs=EasyDict(outlayers=[1, 2, 3, 4]))],
                    "state_dict": official, "best_metric": np.float64(0.97)}, path)
    finally:
        del sys.modules["easydict"]
    # Loaded safely (weights_only, EasyDict and numpy scalars on the allow-list): no warning, no full unpickling.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_official_file(path)) == len(official)
    # pretrained=True needs no network: the file carries the backbone weights.
    module = UniAD(backbone="tf_efficientnet_b4", official_checkpoint=str(path), pretrained=True)
    assert torch.equal(module.model.state_dict()["reconstruction.input_proj.weight"],
                       official["module.reconstruction.input_proj.weight"])
    assert module.hparams.official_checkpoint == str(path)


def test_plain_state_dict_file_loads_safely(official, tmp_path):
    path = tmp_path / "recon.pt"
    torch.save(_recon_only(official), path)
    assert set(load_official_file(path)) == set(_recon_only(official))
    with pytest.raises(FileNotFoundError, match="official_checkpoint"):
        load_official_file(tmp_path / "missing.pth")
