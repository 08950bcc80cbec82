"""AnomalyMoE: each concept on tensors, checked against hand-worked numbers from the spec."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anomaly_zoo.models.anomalymoe.backbone import DINOv2Encoder, dinov2_resample_pos_embed
from anomaly_zoo.models.anomalymoe.component_expert import component_features
from anomaly_zoo.models.anomalymoe.eir import CLUBSample, EIREstimator
from anomaly_zoo.models.anomalymoe.esb_loss import esb_terms
from anomaly_zoo.models.anomalymoe.fusion import gaussian_kernel, level_weights, top_percent_score
from anomaly_zoo.models.anomalymoe.global_expert import GlobalExpert
from anomaly_zoo.models.anomalymoe.model import AnomalyMoEModel
from anomaly_zoo.models.anomalymoe.patch_expert import LinearAttention, hard_mined_loss
from anomaly_zoo.models.anomalymoe.router import top_k_routing
from anomaly_zoo.models.anomalymoe.stable_adamw import StableAdamW, warm_cosine_factor

TINY_VIT = {"embed_dim": 24, "depth": 12, "num_heads": 2, "img_size": 70}


def tiny_model(**overrides) -> AnomalyMoEModel:
    kwargs = dict(
        backbone_kwargs=TINY_VIT, pretrained=False, decoder_heads=2, router_hidden=16, global_ae_channels=(4, 4, 8),
        global_student_channels=(4, 8), global_input_size=56, component_hidden=16, component_inner=8,
        component_code=8,
    )
    kwargs.update(overrides)
    return AnomalyMoEModel(**kwargs)


# ---- router and ESB ------------------------------------------------------------------------------------
def test_router_selects_exactly_top_k_per_image():
    logits = torch.randn(7, 18, generator=torch.Generator().manual_seed(0))
    r = top_k_routing(logits, 3)
    assert (r.selected.sum(1) == 3).all()
    for b in range(7):
        chosen = set(r.selected[b].nonzero().flatten().tolist())
        assert chosen == set(logits[b].argsort(descending=True)[:3].tolist())
        top = logits[b, sorted(chosen)]
        assert torch.allclose(r.weights[b, sorted(chosen)], torch.softmax(top, 0))
        assert (r.weights[b][~r.selected[b]] == 0).all()
    assert torch.allclose(r.weights.sum(1), torch.ones(7))


def _selection(rows: list[list[int]], experts: int = 18) -> torch.Tensor:
    mask = torch.zeros(len(rows), experts, dtype=torch.bool)
    for b, row in enumerate(rows):
        mask[b, row] = True
    return mask


def test_esb_load_term_matches_the_spec_numbers():
    balanced = _selection([[(3 * b + j) % 18 for j in range(3)] for b in range(8)])  # 24 picks: 6 experts twice
    assert balanced.sum(0).max() == 2
    cap = 4 * 8 / 18
    assert esb_terms(torch.zeros(8, 18), balanced)["load"].item() == pytest.approx(6 * (2 - cap) ** 2, abs=1e-5)
    assert esb_terms(torch.zeros(8, 18), balanced)["load"].item() == pytest.approx(0.296, abs=5e-4)
    collapsed = _selection([[0, 1, 2]] * 8)
    assert esb_terms(torch.zeros(8, 18), collapsed)["load"].item() == pytest.approx(116.15, abs=5e-3)


def test_esb_is_minimal_for_balanced_routing_and_grows_with_collapse():
    balanced = _selection([[(3 * b + j) % 18 for j in range(3)] for b in range(8)])
    uniform = esb_terms(torch.zeros(8, 18), balanced)
    assert uniform["importance"].item() == pytest.approx(1.0)  # 18·Σ(1/18)² = 1, the minimum
    assert uniform["z"].item() == 0
    peaked = torch.zeros(8, 18)
    peaked[:, :3] = 3.0
    collapsed = esb_terms(peaked, _selection([[0, 1, 2]] * 8))
    assert collapsed["importance"] > uniform["importance"] and collapsed["total"] > 90 * uniform["total"]
    # z-term: larger logits of the same ranking cost more.
    assert esb_terms(4 * peaked, _selection([[0, 1, 2]] * 8))["z"] == pytest.approx(16 * collapsed["z"].item())


# ---- EIR (CLUB) ----------------------------------------------------------------------------------------
def _train_club(x, y, steps=150):
    torch.manual_seed(0)
    club = CLUBSample(x.shape[1])
    opt = torch.optim.Adam(club.parameters(), lr=5e-3)
    for _ in range(steps):
        opt.zero_grad()
        club.nll(x, y).backward()
        opt.step()
    return club


def test_club_is_larger_for_dependent_than_independent_outputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=g)
    dependent = x @ torch.randn(16, 16, generator=g) * 0.5
    independent = torch.randn(256, 16, generator=g)
    perm = torch.randperm(256, generator=g)
    dep = _train_club(x, dependent).upper_bound(x, dependent, perm).item()
    ind = _train_club(x, independent).upper_bound(x, independent, perm).item()
    assert dep > 5 * max(ind, 0.1)


def test_club_upper_bound_by_hand():
    club = CLUBSample(4)
    for p in club.parameters():
        torch.nn.init.zeros_(p)  # μ = 0, s = tanh(0) = 0 → e^s = 1
    x, y = torch.randn(3, 4), torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 3.0]])
    perm = torch.tensor([1, 2, 0])
    # Σ_d[(0−y_π)² − (0−y)²]/2 per row: (4−1)/2, (9−4)/2, (1−9)/2 → mean 0
    assert club.upper_bound(x, y, perm).item() == pytest.approx(0.0, abs=1e-6)
    assert club.nll(x, y).item() == pytest.approx((1 + 4 + 9) / 2 / 3)
    assert club.nll(x, y, with_log_variance=True).item() == pytest.approx((1 + 4 + 9) / 2 / 3)  # s = 0 here


def test_eir_gradient_reaches_experts_not_estimator_and_vice_versa():
    est = EIREstimator(8)
    expert = torch.nn.Linear(8, 8)
    inputs = torch.randn(6, 8)
    feats = {"patch": (expert(inputs), expert(inputs) * 2), "global": (expert(inputs) + 1, expert(inputs))}
    est.eir(feats).backward()
    assert expert.weight.grad is not None and expert.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in est.parameters())
    assert all(p.requires_grad for p in est.parameters())  # restored after the frozen call
    expert.zero_grad(set_to_none=True)
    feats = {"patch": (expert(inputs), expert(inputs) * 2), "global": (expert(inputs) + 1, expert(inputs))}
    est.estimator_loss(feats).backward()
    assert expert.weight.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in est.parameters())


# ---- backbone ------------------------------------------------------------------------------------------
def test_pos_embed_is_resampled_with_dinov2_scale_factor_rule():
    side, grid, dim = 5, 8, 3
    pos = torch.randn(1, side * side, dim, generator=torch.Generator().manual_seed(0))
    out = dinov2_resample_pos_embed(pos, (grid, grid), offset=0.1)
    # Independent: bicubic sampling (a = −0.75, border clamp) at source x = (i + 0.5)·S/(grid + 0.1) − 0.5.
    src = (torch.arange(grid) + 0.5) * side / (grid + 0.1) - 0.5
    norm = (2 * src + 1) / side - 1
    gy, gx = torch.meshgrid(norm, norm, indexing="ij")
    image = pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    ref = F.grid_sample(image, torch.stack([gx, gy], -1)[None], mode="bicubic", padding_mode="border",
                        align_corners=False)
    assert torch.allclose(out, ref.permute(0, 2, 3, 1).reshape(1, grid * grid, dim), atol=1e-5)
    by_size = F.interpolate(image, size=(grid, grid), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, dim)
    assert not torch.allclose(out, by_size, atol=1e-3)  # the size-based rule (timm's) is different
    assert dinov2_resample_pos_embed(pos, (side, side)) is pos


def test_encoder_taps_match_timm_at_the_native_grid_and_cls_is_the_last_block():
    torch.manual_seed(0)
    enc = DINOv2Encoder(taps=(2, 3, 4, 5, 6, 7, 8, 9), pretrained=False, model_kwargs=TINY_VIT)
    x = torch.randn(2, 3, 70, 70)
    out = enc(x)
    timm_out = enc.module.forward_intermediates(x, indices=[2, 3, 4, 5, 6, 7, 8, 9, 11], norm=False,
                                                return_prefix_tokens=True, output_fmt="NLC",
                                                intermediates_only=True)
    for ours, (patches, prefix) in zip(out.taps, timm_out[:8]):
        assert torch.allclose(ours, torch.cat([prefix, patches], 1), atol=1e-6)
    assert torch.allclose(out.cls, timm_out[8][1][:, 0], atol=1e-6)
    assert out.taps[0].shape == (2, 1 + 4 + 25, 24) and out.grid == (5, 5)


# ---- experts --------------------------------------------------------------------------------------------
def test_linear_attention_by_hand_single_head():
    attn = LinearAttention(2, num_heads=1)
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.cat([torch.eye(2)] * 3))
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(torch.eye(2))
        attn.proj.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]])
    phi = F.elu(x[0]) + 1
    expected = torch.stack([(phi[s] @ (phi.T @ x[0])) / (phi[s] @ phi.sum(0)) for s in range(3)])
    assert torch.allclose(attn(x)[0], expected, atol=1e-6)


def test_hard_mining_scales_easy_pixels_and_reproduces_the_closure_bug():
    g = torch.Generator().manual_seed(0)
    en = [torch.randn(2, 4, 5, 5, generator=g) for _ in range(2)]
    de0 = [torch.randn(2, 4, 5, 5, generator=g) for _ in range(2)]

    def grads(masks, factor):
        de = [d.clone().requires_grad_(True) for d in de0]
        loss = hard_mined_loss(en, de, p=0.9, factor=factor, masks=masks)
        loss.sum().backward()
        return loss.detach(), [d.grad for d in de]

    plain_loss, plain = grads("own", 1.0)
    own_loss, own = grads("own", 0.1)
    auth_loss, authors = grads("authors", 0.1)
    assert torch.allclose(plain_loss, own_loss) and torch.allclose(plain_loss, auth_loss)  # values untouched
    for g_index in range(2):
        dist = 1 - F.cosine_similarity(en[g_index], de0[g_index], dim=1)
        k = int(dist.numel() * (1 - 0.9))  # 4 of 50: 50·(1 − 0.9) = 4.999… in floating point, as the authors'
        thr = dist.flatten().topk(k).values[-1]
        easy = (dist < thr).unsqueeze(1).expand_as(plain[g_index])
        assert int((dist >= thr).sum()) == k
        assert torch.allclose(own[g_index][easy], 0.1 * plain[g_index][easy])
        assert torch.allclose(own[g_index][~easy], plain[g_index][~easy])
    last = 1 - F.cosine_similarity(en[1], de0[1], dim=1)
    easy_last = (last < last.flatten().topk(4).values[-1]).unsqueeze(1).expand_as(plain[0])
    assert torch.allclose(authors[0][easy_last], 0.1 * plain[0][easy_last])  # group 0 uses group 1's mask
    assert torch.allclose(authors[0][~easy_last], plain[0][~easy_last])


def test_component_feature_is_the_mean_under_the_dilated_mask():
    fmap = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(1, 2, 6, 6)
    masks = torch.zeros(1, 2, 12, 12, dtype=torch.uint8)
    masks[0, 0, 4:6, 4:6] = 1  # → token (2, 2) after nearest; 3×3 dilation → rows/cols 1..3
    out = component_features(fmap, masks, dilation=3)
    expected = fmap[0, :, 1:4, 1:4].mean(dim=(1, 2))
    assert torch.allclose(out[0, 0], expected)
    assert torch.allclose(out[0, 1], torch.zeros(2))  # empty mask: 0 / (0 + 1e-8)


def test_global_expert_shapes_at_392_and_at_small_sizes():
    ge = GlobalExpert(16, (4, 4, 8), (4, 8), input_size=392)
    assert ge.autoencoder[10].kernel_size == (9, 9)  # the authors' layer at 392 px
    ae, st = ge(torch.randn(1, 3, 392, 392))
    assert ae.shape == st.shape == (1, 16, 28, 28)
    small = GlobalExpert(16, (4, 4, 8), (4, 8), input_size=112)
    ae, st = small(torch.randn(2, 3, 112, 112))
    assert ae.shape == st.shape == (2, 16, 8, 8)


# ---- fusion and score ----------------------------------------------------------------------------------------
def test_fusion_pieces_by_hand():
    weights = torch.tensor([[0.5, 0.0, 0.0, 0.3, 0.2, 0.0]])
    assert torch.allclose(level_weights(weights, (2, 2, 2)), torch.tensor([[0.5, 0.3, 0.2]]))
    kernel = gaussian_kernel(5, 4.0)[0, 0]
    assert kernel.sum().item() == pytest.approx(1.0)
    assert (kernel[2, 2] / kernel[0, 0]).item() == pytest.approx(math.exp(8 / 32), rel=1e-5)
    maps = torch.zeros(1, 1, 10, 20)
    maps.view(-1)[:3] = torch.tensor([3.0, 6.0, 9.0])
    assert top_percent_score(maps, 0.01).item() == pytest.approx(7.5)  # k = 2 of 200: (9 + 6)/2


# ---- optimiser and schedule -------------------------------------------------------------------------------
def test_stable_adamw_first_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([0.5, -0.1, 2.0])
    opt = StableAdamW([p], lr=0.1, weight_decay=0.01, eps=1e-10, amsgrad=True)
    opt.step()
    # step 1: m̂/denom = g / |g| (bias corrections cancel), RMS(g/denom) ≈ 1 → no extra scaling.
    expected = torch.tensor([1.0, -2.0, 3.0]) * (1 - 0.1 * 0.01) - 0.1 * torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(p.detach(), expected, atol=1e-6)


def test_warm_cosine_schedule():
    assert warm_cosine_factor(0, 1000, 100, 5e-4, 5e-6) == 0.0
    assert warm_cosine_factor(99, 1000, 100, 5e-4, 5e-6) == pytest.approx(1.0)
    assert warm_cosine_factor(100, 1000, 100, 5e-4, 5e-6) == pytest.approx(1.0)
    assert warm_cosine_factor(550, 1000, 100, 5e-4, 5e-6) == pytest.approx((5e-6 + 0.5 * (5e-4 - 5e-6)) / 5e-4)
    assert warm_cosine_factor(5000, 1000, 100, 5e-4, 5e-6) == pytest.approx(0.01)


# ---- the whole model ---------------------------------------------------------------------------------------
def _batch(seed=0, b=6, size=56):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=g)
    masks = (torch.rand(b, 5, size, size, generator=g) > 0.6).to(torch.uint8)
    valid = torch.rand(b, 5, generator=g) > 0.3
    return images, masks, valid


def test_selected_only_equals_run_everything_maps_losses_and_gradients():
    torch.manual_seed(0)
    model = tiny_model(num_patch_experts=3, num_global_experts=3, num_component_experts=3, top_k=4).eval()
    torch.nn.init.normal_(model.router.gate[2].weight, std=3.0)  # varied routing: every family gets images
    # eval: no dropout, so the two runs compute the same function
    images, masks, valid = _batch()
    draw = {"patch": (2, 0), "global": (1, 2)}
    sparse = model.forward_train(images, images.flip(-1), masks, valid, eir_draw=draw)
    grads_sparse = torch.autograd.grad(sparse["patch"] + sparse["global"] + sparse["component"],
                                       [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    full = model.forward_train(images, images.flip(-1), masks, valid, eir_draw=draw, run_all=True)
    grads_full = torch.autograd.grad(full["patch"] + full["global"] + full["component"],
                                     [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    for key in ("patch", "global", "component"):
        assert full[key].item() > 0
        assert torch.allclose(sparse[key], full[key], rtol=1e-5, atol=1e-7), key
    for a, b in zip(grads_sparse, grads_full):
        a = torch.zeros(1) if a is None else a
        b = torch.zeros(1) if b is None else b
        assert torch.allclose(a, b, rtol=1e-5, atol=2e-6 * float(1 + b.abs().max()))  # float summation order
    for family in ("patch", "global"):
        for a, b in zip(sparse["eir_features"][family], full["eir_features"][family]):
            assert torch.allclose(a, b, atol=1e-6)
    maps_sparse, maps_full = model.level_maps(images, masks, valid), model.level_maps(images, masks, valid, run_all=True)
    for key in ("patch", "global", "component"):
        assert maps_full[key].abs().sum() > 0
        assert torch.allclose(maps_sparse[key], maps_full[key], atol=1e-7), key


def test_eir_features_of_the_estimator_forward_match_the_training_forward():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images, _, _ = _batch(1)
    draw = {"patch": (3, 1), "global": (0, 4)}
    out = model.forward_train(images, eir_draw=draw)
    again = model.eir_features(out["fused_tokens"], images, draw)
    for family in ("patch", "global"):
        for a, b in zip(out["eir_features"][family], again[family]):
            assert torch.allclose(a, b, atol=1e-6)


def test_expert_linears_use_the_authors_init():
    model = tiny_model()
    linears = [m for m in model.patch_experts.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.abs().max() <= 0.03 and 0.007 < weights.std() < 0.011
    assert all((m.bias == 0).all() for m in linears)
