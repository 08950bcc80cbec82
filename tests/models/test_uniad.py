"""UniAD building blocks against the spec: neighbour mask, attention, decoder wiring, jitter, backbone, map/score."""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anomaly_zoo.models.uniad.backbone import UniADBackbone, _same_padding  # noqa: E402
from anomaly_zoo.models.uniad.feature_jitter import FeatureJitter  # noqa: E402
from anomaly_zoo.models.uniad.model import UniADModel, max_avg_pool_score  # noqa: E402
from anomaly_zoo.models.uniad.neighbor_mask import additive_mask, neighbor_mask  # noqa: E402
from anomaly_zoo.models.uniad.transformer import NeighborMaskedAttention, ReconstructionTransformer  # noqa: E402

TINY = dict(backbone="test_efficientnet", taps=(0, 2, 4), feature_size=6, hidden_dim=32, num_heads=4,
            num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=48, neighbor_size=3, pretrained=False)


def tiny_model(**overrides) -> UniADModel:
    torch.manual_seed(0)
    return UniADModel(**{**TINY, **overrides})


# ---- neighbour mask -------------------------------------------------------------------------------
def test_neighbor_mask_counts_inside_edge_corner():
    blocked = neighbor_mask(14, 14, 7)
    assert blocked.shape == (196, 196) and blocked.dtype == torch.bool
    counts = blocked.sum(dim=1).view(14, 14)
    assert counts[7, 7] == 49 and counts[3, 3] == 49 and counts[10, 10] == 49  # full window inside
    assert counts[0, 7] == 28 and counts[7, 0] == 28 and counts[13, 7] == 28 and counts[7, 13] == 28  # edge middles
    assert counts[0, 0] == 16 and counts[0, 13] == 16 and counts[13, 0] == 16 and counts[13, 13] == 16  # corners
    assert torch.equal(blocked, blocked.T) and blocked.diagonal().all()  # self included, symmetric


@pytest.mark.parametrize("h,w,k", [(14, 14, 7), (5, 9, 3), (4, 6, 5), (3, 3, 1)])
def test_neighbor_mask_blocks_exactly_the_window(h, w, k):
    blocked = neighbor_mask(h, w, k)
    r = k // 2
    expected = torch.zeros(h * w, h * w, dtype=torch.bool)
    for (hq, wq), (hk, wk) in itertools.product(itertools.product(range(h), range(w)), repeat=2):
        expected[hq * w + wq, hk * w + wk] = abs(hq - hk) <= r and abs(wq - wk) <= r
    assert torch.equal(blocked, expected)


def test_neighbor_mask_rejects_even_window():
    with pytest.raises(ValueError, match="odd"):
        neighbor_mask(14, 14, 6)


@pytest.mark.parametrize("h,w,largest", [(14, 14, 13), (4, 4, 3), (4, 9, 7), (3, 3, 1), (1, 6, 5)])
def test_neighbor_size_must_leave_every_query_a_key(h, w, largest):
    # the largest window leaves every query at least one key (hand-worked: radius < max(h//2, w//2))
    assert not neighbor_mask(h, w, largest).all(dim=1).any()
    with pytest.raises(ValueError, match=rf"neighbor_size {largest + 2} masks the whole {h}x{w} token grid.*<= {largest}"):
        neighbor_mask(h, w, largest + 2)
    with pytest.raises(ValueError, match="masks the whole 6x6"):
        UniADModel(**{**TINY, "neighbor_size": 7})  # the tiny model's 6x6 grid


def attention_probs(attn: NeighborMaskedAttention, query, key, allowed=None) -> torch.Tensor:
    """The (B, heads, N, M) softmax probabilities written out explicitly (the module uses the fused kernel)."""
    q, k, _ = attn._project(query, key, key)
    logits = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
    if allowed is not None:
        logits = logits + allowed if allowed.is_floating_point() else logits.masked_fill(~allowed, float("-inf"))
    return logits.softmax(dim=-1)


def test_masked_keys_get_exactly_zero_probability_and_do_not_influence_output():
    torch.manual_seed(0)
    attn = NeighborMaskedAttention(32, 4).eval()
    allowed = ~neighbor_mask(6, 6, 3)
    x = torch.randn(2, 36, 32)
    probs = attention_probs(attn, x, x, allowed)
    assert (probs.masked_select(~allowed.expand_as(probs)) == 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 36))
    out = attn(x, x, x, allowed)
    # The fused (scaled_dot_product_attention) path equals the explicit probabilities times the values.
    v = attn._heads(F.linear(x, attn.in_proj_weight[64:], attn.in_proj_bias[64:]))
    explicit = attn.out_proj((probs @ v).transpose(1, 2).reshape(2, 36, 32))
    assert torch.allclose(out, explicit, atol=1e-5)
    # Changing the VALUES of masked keys cannot change a query's output: token 14's 3×3 window.
    q = 14
    blocked_keys = (~allowed[q]).nonzero().flatten()
    assert len(blocked_keys) == 9
    value = x.clone()
    value[:, blocked_keys] += 1000.0
    bias = additive_mask(~allowed)  # the cached form the model passes
    assert torch.allclose(attn(x, x, x, bias), out, atol=1e-6)
    assert torch.equal(attention_probs(attn, x, x, bias) == 0, probs == 0)
    for mask in (allowed, bias):
        out2 = attn(x, x, value, mask)
        assert torch.allclose(out2[:, q], out[:, q], atol=1e-4)
        assert not torch.allclose(out2[:, (q + 3 * 6) % 36], out[:, (q + 3 * 6) % 36])  # a token that may see them


# ---- transformer wiring ----------------------------------------------------------------------------
def _reference_forward(model: ReconstructionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The spec's equations, written independently with torch.nn.MultiheadAttention (seq-first, −inf masks)."""
    mask = model.attn_bias  # checked against the window counts in the neighbour-mask tests above

    def mha(attn: NeighborMaskedAttention, q, k, v):
        ref = nn.MultiheadAttention(attn.dim, attn.num_heads)
        ref.load_state_dict(attn.state_dict())
        return ref.eval()(q, k, v, attn_mask=mask, need_weights=False)[0]

    pos = model.pos_embed().unsqueeze(1)  # (N, 1, C)
    h = model.input_proj(tokens).transpose(0, 1)  # (N, B, C)
    for layer in model.encoder_layers:
        h = layer.norm1(h + mha(layer.self_attn, h + pos, h + pos, h))
        h = layer.norm2(h + layer.ffn.linear2(F.relu(layer.ffn.linear1(h))))
    enc, prev = h, h
    for layer in model.decoder_layers:
        q = layer.query.unsqueeze(1).expand(-1, h.shape[1], -1)
        t = layer.norm1(q + mha(layer.encoder_attn, q + pos, enc + pos, enc))
        t = layer.norm2(t + mha(layer.previous_attn, t + pos, prev + pos, prev))
        t = layer.norm3(t + layer.ffn.linear2(F.relu(layer.ffn.linear1(t))))
        prev = t
    return model.output_proj(model.decoder_norm(prev)).transpose(0, 1)


def test_transformer_matches_the_spec_equations():
    torch.manual_seed(0)
    model = ReconstructionTransformer(20, (5, 6), hidden_dim=32, num_heads=4, num_encoder_layers=2,
                                      num_decoder_layers=3, dim_feedforward=40, neighbor_size=3).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped norm or missing bias shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    tokens = torch.randn(3, 30, 20)
    with torch.no_grad():
        assert torch.allclose(model(tokens), _reference_forward(model, tokens), atol=1e-4)


def test_decoder_attends_encoder_then_previous_layer_and_ends_with_layer_norm():
    torch.manual_seed(0)
    model = ReconstructionTransformer(20, (4, 4), hidden_dim=16, num_heads=2, num_encoder_layers=2,
                                      num_decoder_layers=3, dim_feedforward=24, neighbor_size=3).eval()
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda mod, args, out: seen.__setitem__(name, (args, out))

    model.encoder_layers[-1].register_forward_hook(keep("encoder"))
    for i, layer in enumerate(model.decoder_layers):
        layer.register_forward_hook(keep(f"dec{i}"))
        layer.encoder_attn.register_forward_hook(keep(f"dec{i}.encoder_attn"))
        layer.previous_attn.register_forward_hook(keep(f"dec{i}.previous_attn"))
    model.decoder_norm.register_forward_hook(keep("norm"))
    model.output_proj.register_forward_hook(keep("output_proj"))
    with torch.no_grad():
        model(torch.randn(2, 16, 20))
    encoder_out = seen["encoder"][1]
    for i in range(3):
        enc_value = seen[f"dec{i}.encoder_attn"][0][2]
        prev_value = seen[f"dec{i}.previous_attn"][0][2]
        assert torch.equal(enc_value, encoder_out)  # first attention: always the encoder output
        expected_prev = encoder_out if i == 0 else seen[f"dec{i - 1}"][1]
        assert torch.equal(prev_value, expected_prev)  # second: the previous decoder layer (layer 0: encoder)
    assert torch.equal(seen["norm"][0][0], seen["dec2"][1])  # final LayerNorm on the last layer's output
    assert torch.equal(seen["output_proj"][0][0], seen["norm"][1])
    for layer in model.decoder_layers:  # exactly two attentions per layer: no self-attention among queries
        assert sum(isinstance(m, NeighborMaskedAttention) for m in layer.modules()) == 2


def test_each_decoder_layer_has_its_own_query_table():
    model = ReconstructionTransformer(20, (4, 5), hidden_dim=16, num_heads=2, num_encoder_layers=1,
                                      num_decoder_layers=3, dim_feedforward=24, neighbor_size=3)
    queries = [layer.query for layer in model.decoder_layers]
    assert all(q.shape == (20, 16) for q in queries)
    assert len({q.data_ptr() for q in queries}) == 3
    assert not torch.equal(queries[0], queries[1])  # independent initialisation (the authors' start identical)
    model(torch.randn(2, 20, 20)).square().mean().backward()
    grads = [q.grad for q in queries]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert not torch.allclose(grads[0], grads[1])
    # The query table is the layer's input: it does not depend on the batch, and changing layer 1's
    # table changes the output.
    x = torch.randn(2, 20, 20)
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.decoder_layers[1].query.add_(1.0)
        assert not torch.allclose(before, model(x))


def test_masks_and_position_tables_are_cached_buffers():
    model = ReconstructionTransformer(20, (14, 14))
    assert model.attn_bias.shape == (196, 196) and (model.attn_bias == float("-inf")).sum(1).max() == 49
    assert "attn_bias" not in model.state_dict()  # derived, not saved
    pos = model.pos_embed()
    col, row = model.pos_embed.col_embed.weight, model.pos_embed.row_embed.weight
    h, w = 3, 11
    assert torch.equal(pos[h * 14 + w], torch.cat([col[w], row[h]]))  # column half first
    assert 0 <= pos.min() and pos.max() < 1  # U[0, 1) initialisation
    no_mask = ReconstructionTransformer(20, (4, 4), neighbor_size=None)
    assert no_mask.masks() == (None, None, None)
    partial = ReconstructionTransformer(20, (4, 4), neighbor_size=3, mask_attentions=(False, True, False))
    enc, dec1, dec2 = partial.masks()
    assert enc is None and dec2 is None and dec1 is partial.attn_bias
    assert torch.equal(partial.attn_bias == float("-inf"), neighbor_mask(4, 4, 3)) and partial.attn_bias.max() == 0


def test_parameter_count_of_the_paper_transformer():
    model = ReconstructionTransformer(272)  # the paper's defaults: 256 hidden, 8 heads, 4+4 layers, FFN 1024
    state = model.state_dict()
    assert len(state) == 132  # as the authors' reconstruction module
    assert sum(v.numel() for v in state.values()) == 7_717_392


# ---- feature jitter ---------------------------------------------------------------------------------
def test_jitter_only_in_training_and_with_the_specified_scale():
    torch.manual_seed(0)
    jitter = FeatureJitter(scale=20.0, prob=1.0)
    tokens = torch.randn(8, 196, 272) * torch.rand(8, 196, 1) * 5
    jitter.eval()
    assert jitter(tokens) is tokens
    jitter.train()
    noise = jitter(tokens) - tokens
    ratio = noise.norm(dim=-1) / tokens.norm(dim=-1)
    # ε·scale·‖f‖/C with ε ~ N(0, I_C): E‖noise‖ ≈ scale·sqrt(C)/C·‖f‖ = 20/sqrt(272) ≈ 1.213·‖f‖
    assert ratio.mean().item() == pytest.approx(20 / 272**0.5, rel=0.02)
    per_element = noise / (tokens.norm(dim=-1, keepdim=True) * 20 / 272)
    assert per_element.std().item() == pytest.approx(1.0, rel=0.02) and abs(per_element.mean().item()) < 0.01
    zero = torch.zeros(1, 4, 272)
    assert torch.equal(jitter(zero), zero)  # noise scales with each token's norm
    assert torch.equal(FeatureJitter(20.0, prob=0.0).train()(tokens), tokens)


def test_jitter_probability_is_per_batch():
    torch.manual_seed(0)
    jitter = FeatureJitter(scale=1.0, prob=0.5).train()
    x = torch.randn(2, 3, 8)
    changed = [not torch.equal(jitter(x), x) for _ in range(400)]
    assert 0.4 < sum(changed) / len(changed) < 0.6


def test_model_jitters_inputs_in_training_but_target_and_eval_stay_clean():
    model = tiny_model()
    seen = []
    model.reconstruction.input_proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    images = torch.randn(2, 3, 64, 64)
    clean = model.extract_features(images).flatten(2).transpose(1, 2)
    model.train()
    out = model(images)
    assert torch.equal(out["features"].flatten(2).transpose(1, 2), clean)  # the loss target is clean
    assert not torch.allclose(seen[-1], clean)
    assert out["loss"] == F.mse_loss(out["reconstruction"], out["features"])
    model.eval()
    model(images)
    assert torch.equal(seen[-1], clean)
    model.train()
    model.predict(images)  # prediction never jitters, whatever the mode
    assert torch.equal(seen[-1], clean)


# ---- backbone ----------------------------------------------------------------------------------------
def test_paper_backbone_taps_and_the_authors_padding():
    torch.manual_seed(0)
    backbone = UniADBackbone("tf_efficientnet_b4", pretrained=False)
    assert backbone.channels == [24, 32, 56, 160] and backbone.out_channels == 272
    x = torch.randn(1, 3, 224, 224)
    taps = backbone.taps_forward(x)
    assert [tuple(t.shape) for t in taps] == [(1, 24, 112, 112), (1, 32, 56, 56), (1, 56, 28, 28), (1, 160, 14, 14)]
    # Only blocks[2][0].conv_dw differs from timm's dynamic 'same' padding at 224/256/320 px.
    sizes: dict[str, tuple[int, int]] = {}
    for name in backbone.static_padded_convs:
        conv = backbone.module.get_submodule(name)
        conv.register_forward_pre_hook(lambda m, a, name=name: sizes.__setitem__(name, tuple(a[0].shape[-2:])))
    for side in (224, 256, 320):
        backbone.taps_forward(torch.zeros(1, 3, side, side))
        differ = []
        for name in backbone.static_padded_convs:
            conv = backbone.module.get_submodule(name)
            dynamic = [_same_padding(sizes[name][i], conv.kernel_size[i], conv.stride[i], 1) for i in range(2)]
            static = getattr(conv, "pad", None)
            static = [(static[2], static[3]), (static[0], static[1])] if static else [(p, p) for p in conv.padding]
            if dynamic != static:
                differ.append((name, static))
        assert differ == [("blocks.2.0.conv_dw", [(2, 2), (2, 2)])], side
    # Numerically: the first two taps (before that conv) equal plain timm's, the later ones do not.
    import timm

    from anomaly_zoo.models.uniad.backbone import _forward_blocks

    plain = timm.create_model("tf_efficientnet_b4", pretrained=False).eval()
    plain.load_state_dict(backbone.module.state_dict(), strict=False)
    with torch.no_grad():
        ref = _forward_blocks(plain, x, [1, 5, 9, 21])
    assert torch.equal(taps[0], ref[0]) and torch.equal(taps[1], ref[1])
    assert not torch.allclose(taps[2], ref[2])
    aligned = backbone(x)
    assert aligned.shape == (1, 272, 14, 14)
    expected = torch.cat([F.interpolate(t, size=(14, 14), mode="bilinear", align_corners=True) for t in taps], 1)
    assert torch.equal(aligned, expected)


def test_backbone_is_truncated_after_the_last_tap():
    backbone = UniADBackbone("tf_efficientnet_b4", taps=(1, 5), pretrained=False)
    assert sum(len(s) for s in backbone.module.blocks) == 6
    assert isinstance(backbone.module.conv_head, nn.Identity)
    with pytest.raises(ValueError, match="does not exist"):
        UniADBackbone("test_efficientnet", taps=(0, 9), pretrained=False)


def test_backbone_weights_file_survives_construction_untouched(tmp_path):
    """Building the backbone (truncation, the padding probe at native size) must not alter the loaded weights,
    BatchNorm running statistics included."""
    import timm

    source = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False)
    with torch.no_grad():
        for name, tensor in source.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + (0.5 if "running_var" in name else 0.0))
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    backbone = UniADBackbone("tf_mobilenetv3_small_minimal_100", taps=(0, 2, 5), weights_path=str(path))
    assert backbone.static_padded_convs  # the probe ran
    saved = torch.load(path)
    kept = backbone.module.state_dict()
    assert kept and all(torch.equal(v, saved[k]) for k, v in kept.items())


def test_missing_pretrained_weights_name_the_option():
    from anomaly_zoo.models.components.backbone import PretrainedWeightsError

    with pytest.raises(PretrainedWeightsError, match="pretrained false"):
        UniADModel(backbone="test_efficientnet", taps=(0, 2), pretrained=True)


# ---- map, score, shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (75, 50)])
def test_map_and_score_contract_for_odd_sizes(size):
    model = tiny_model().eval()
    images = torch.randn(3, 3, *size)
    out = model.predict(images)
    assert out["anomaly_map"].shape == (3, 1, *size) and out["pred_score"].shape == (3,)
    assert out["anomaly_map"].dtype == torch.float32 and (out["anomaly_map"] >= 0).all()
    features = model.extract_features(images)
    assert features.shape == (3, model.backbone.out_channels, 6, 6)
    with torch.no_grad():
        recon = model.reconstruct(features)
    distance = (recon - features).pow(2).sum(1, keepdim=True).sqrt()
    expected_map = F.interpolate(distance, size=size, mode="bilinear", align_corners=True)
    assert torch.allclose(out["anomaly_map"], expected_map, atol=1e-5)
    expected_score = F.avg_pool2d(expected_map, 16, stride=1).flatten(1).amax(1)
    assert torch.allclose(out["pred_score"], expected_score, rtol=1e-4)


def test_score_pools_with_a_window_no_larger_than_the_map():
    anomaly_map = torch.zeros(2, 1, 10, 40)
    anomaly_map[0, 0, :, 5] = 10.0
    score = max_avg_pool_score(anomaly_map, 16)
    assert score[0] == pytest.approx(10.0 * 10 / (10 * 16)) and score[1] == 0


def test_map_is_16x_upsampling_at_224():
    model = tiny_model(feature_size=14).eval()
    distance = torch.rand(1, 1, 14, 14)
    up = model.anomaly_map(distance, torch.zeros_like(distance), (224, 224))
    assert torch.allclose(up, nn.UpsamplingBilinear2d(scale_factor=16)(distance), atol=1e-6)


devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices)
def test_runs_on_the_inputs_device(device):
    model = tiny_model().to(device)
    assert model.reconstruction.attn_bias.device.type == device
    images = torch.randn(2, 3, 48, 48, device=device)
    model.train()
    loss = model(images)["loss"]
    loss.backward()
    out = model.eval().predict(images)
    assert out["anomaly_map"].device.type == device and out["pred_score"].device.type == device


def test_no_hard_coded_cuda_in_the_sources():
    source = Path(__file__).resolve().parents[2] / "anomaly_zoo" / "models" / "uniad"
    for path in source.glob("*.py"):
        assert not re.search(r"\.cuda\(", path.read_text()), path
