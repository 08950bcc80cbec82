"""MoECLIP's pieces against hand-worked values from the spec (router, FOFS, ETF, load balance, PAA, heads, text, maps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_zoo.models.moeclip.detection_head import DetectionHead
from anomaly_zoo.models.moeclip.etf_loss import etf_loss
from anomaly_zoo.models.moeclip.fofs import feature_blocks, fofs_down_projections
from anomaly_zoo.models.moeclip.load_balance import load_balance_loss
from anomaly_zoo.models.moeclip.losses import dice_loss, focal_loss
from anomaly_zoo.models.moeclip.maps import (
    anomaly_map,
    blur,
    detection_score,
    fixed_range_image_score,
    map_value_range,
    patch_anomaly,
    transductive_image_score,
)
from anomaly_zoo.models.moeclip.moe_adapter import MoEAdapter
from anomaly_zoo.models.moeclip.paa import patch_average_aggregation
from anomaly_zoo.models.moeclip.prompts import class_description, prompt_sentences
from anomaly_zoo.models.moeclip.router import TopKRouter
from anomaly_zoo.models.moeclip.text import TextAdapter, class_text_features


# ---- router ------------------------------------------------------------------------------------------------
def test_router_takes_exactly_top_k_with_renormalised_weights():
    torch.manual_seed(0)
    router = TopKRouter(width=16, num_experts=4, top_k=2)
    torch.nn.init.normal_(router.gate.weight)
    tokens = torch.randn(50, 16)
    routing = router(tokens)
    probs = torch.softmax(tokens @ router.gate.weight.T, dim=-1)
    assert torch.allclose(routing.probs, probs, atol=1e-6)
    assert routing.experts.shape == (50, 2) and (routing.experts[:, 0] != routing.experts[:, 1]).all()
    chosen = probs.gather(1, routing.experts)
    # the chosen two are the two largest probabilities, and their weights are p / (p1 + p2)
    assert torch.allclose(chosen.min(1).values, probs.sort(1, descending=True).values[:, 1])
    assert torch.allclose(routing.weights, chosen / chosen.sum(1, keepdim=True), atol=1e-6)
    assert torch.allclose(routing.weights.sum(1), torch.ones(50))
    # tokens of one image go to different experts
    assert len({tuple(sorted(e)) for e in routing.experts.tolist()}) > 1
    assert routing.expert_counts(4).sum() == 100


def test_router_hand_worked_probabilities():
    router = TopKRouter(width=2, num_experts=3, top_k=2)
    with torch.no_grad():
        router.gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    routing = router(torch.tensor([[math.log(3.0), 0.0]]))  # logits (log 3, 0, 0) → p = (3/5, 1/5, 1/5)
    assert torch.allclose(routing.probs, torch.tensor([[0.6, 0.2, 0.2]]))
    assert routing.experts.tolist() == [[0, 1]]  # the tie between experts 1 and 2 goes to the lower index
    assert torch.allclose(routing.weights, torch.tensor([[0.75, 0.25]]))


def test_router_ties_at_start_up_go_to_the_lowest_indices():
    router = TopKRouter(width=8, num_experts=4, top_k=2)  # zero-initialised: p = 1/4 everywhere
    routing = router(torch.randn(30, 8))
    assert torch.equal(routing.probs, torch.full((30, 4), 0.25))
    assert routing.experts.tolist() == [[0, 1]] * 30
    assert torch.equal(routing.weights, torch.full((30, 2), 0.5))


# ---- FOFS ------------------------------------------------------------------------------------------------
def test_fofs_blocks_orthonormal_and_disjoint():
    down = fofs_down_projections(width=40, num_experts=4, rank=3, generator=torch.Generator().manual_seed(0))
    assert down.shape == (4, 3, 40)
    for i, (start, end) in enumerate(feature_blocks(40, 4)):
        assert (start, end) == (10 * i, 10 * i + 10)
        assert torch.allclose(down[i] @ down[i].T, torch.eye(3), atol=1e-6)
        outside = torch.cat([down[i, :, :start], down[i, :, end:]], dim=1)
        assert torch.count_nonzero(outside) == 0
    support = (down != 0).any(dim=1)  # (K, width): which inputs each expert reads
    assert (support.sum(0) == 1).all()  # every input dim read by exactly one expert


def test_fofs_uneven_width_and_rank_limit():
    assert feature_blocks(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with pytest.raises(ValueError, match="rank"):
        fofs_down_projections(width=10, num_experts=4, rank=3)


def test_fofs_down_projection_frozen_up_projection_trained():
    torch.manual_seed(0)
    adapter = MoEAdapter(width=16, num_experts=4, rank=2, dropout=0.0)
    names = {n for n, _ in adapter.named_parameters()}
    assert "down" not in names and "down" in dict(adapter.named_buffers())
    adapter(torch.randn(2, 5, 16)).hidden.sum().backward()
    assert adapter.down.grad is None and not adapter.down.requires_grad
    assert adapter.up.grad is not None and adapter.up.grad.abs().sum() > 0


# ---- MoE layer ---------------------------------------------------------------------------------------------
def test_moe_layer_matches_the_routed_sum_and_mixing_rule():
    torch.manual_seed(0)
    adapter = MoEAdapter(width=16, num_experts=4, rank=2, alpha=4.0, top_k=2, dropout=0.0, mix_weight=0.1)
    with torch.no_grad():
        adapter.up.normal_()
        adapter.router.gate.weight.normal_()
    x = torch.randn(3, 5, 16)
    out = adapter(x, return_expert_outputs=True)
    tokens = x.reshape(-1, 16)
    experts = torch.stack([2.0 * tokens @ adapter.down[i].T @ adapter.up[i].T for i in range(4)], dim=1)
    assert torch.allclose(out.expert_outputs, experts, atol=1e-5)
    y = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        for w, e in zip(out.routing.weights[t], out.routing.experts[t]):
            y[t] += w * experts[t, e]
    expected = 0.1 * y * tokens.norm(dim=-1, keepdim=True) / (y.norm(dim=-1, keepdim=True) + 1e-6) + 0.9 * tokens
    assert torch.allclose(out.hidden, expected.reshape(3, 5, 16), atol=1e-5)


def test_moe_layer_at_init_scales_tokens_by_0_9():
    adapter = MoEAdapter(width=16, num_experts=4, rank=2)
    x = torch.randn(2, 3, 16)
    assert torch.allclose(adapter.eval()(x).hidden, 0.9 * x)


# ---- ETF and load balance ---------------------------------------------------------------------------------
def test_etf_loss_zero_for_a_simplex_etf():
    tetrahedron = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3)
    outputs = torch.zeros(5, 4, 8)
    outputs[:, :, 2:5] = tetrahedron * torch.tensor([0.5, 2.0, 3.0, 7.0]).unsqueeze(1)  # norms do not matter
    assert etf_loss(outputs).item() == pytest.approx(0.0, abs=1e-10)


def test_etf_loss_one_third_at_zero_outputs_and_positive_otherwise():
    assert etf_loss(torch.zeros(7, 4, 16)).item() == pytest.approx(1 / 3)
    assert etf_loss(torch.randn(7, 4, 16)).item() > 0.01
    # all experts equal: Gram = 1 everywhere → off-diagonal error (1 + 1/3)² on 12 of 16 entries
    same = torch.randn(3, 1, 16).expand(3, 4, 16)
    assert etf_loss(same).item() == pytest.approx(12 / 16 * (4 / 3) ** 2, rel=1e-5)


def test_etf_gradient_reaches_the_experts():
    torch.manual_seed(0)
    adapter = MoEAdapter(width=16, num_experts=4, rank=2, dropout=0.0)
    with torch.no_grad():
        adapter.up.normal_()
    out = adapter(torch.randn(2, 5, 16), return_expert_outputs=True)
    etf_loss(out.expert_outputs).backward()
    assert (adapter.up.grad.abs().sum(dim=(1, 2)) > 0).all()  # every expert, not only the routed ones


def test_load_balance_hand_values():
    assert load_balance_loss(torch.full((6, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-10)
    # importance (2, 0): mean 1, unbiased std √2 → cv² = 2
    assert load_balance_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(2.0, rel=1e-5)


# ---- PAA, detection head ---------------------------------------------------------------------------------
def test_paa_counts_zero_padding_in_the_divisor_and_keeps_cls():
    grid = torch.arange(9.0).reshape(3, 3)
    tokens = torch.cat([torch.tensor([[-5.0]]), grid.reshape(9, 1)]).reshape(1, 10, 1)
    out = patch_average_aggregation(tokens, 3, (3, 3))
    assert out[0, 0, 0] == -5.0
    assert out[0, 1, 0].item() == pytest.approx((0 + 1 + 3 + 4) / 9)  # corner: 4 real neighbours, divisor 9
    assert out[0, 5, 0].item() == pytest.approx(36 / 9)  # centre
    assert torch.equal(patch_average_aggregation(tokens, 1, (3, 3)), tokens)


def test_detection_head_hand_computation():
    torch.manual_seed(0)
    head = DetectionHead(width=4, out_dim=3)
    tokens = torch.randn(2, 6, 4)
    x = F.layer_norm(tokens, (4,))
    padded = F.pad(x, (0, 0, 1, 1))  # zero "same" padding along the token sequence
    kernel = head.depthwise.weight[:, 0, :]  # (4, 3)
    conv = torch.stack([(padded[:, t:t + 3, :] * kernel.T).sum(1) for t in range(6)], dim=1)
    point = F.gelu(conv) @ head.pointwise.weight[:, :, 0].T
    expected = F.normalize(point, dim=-1).mean(1)
    assert torch.allclose(head(tokens), expected, atol=1e-6)


# ---- text --------------------------------------------------------------------------------------------------
def test_prompt_table_and_sentences():
    normal, anomalous = prompt_sentences(class_description("bottle"))
    assert len(normal) == 6 and len(anomalous) == 10
    assert normal[:2] == ["dark bottle.", "a photo of dark bottle."]
    assert "a photo of a dark bottle with defect." in anomalous
    assert class_description("mvtec_ad/pcb1") == "dual ultrasonic distance sensor pcb module"
    assert class_description("bracket_black") == "bracket black"
    assert class_description("bottle", {"bottle": "green bottle"}) == "green bottle"


def test_class_text_features_hand_rule():
    adapter = TextAdapter(3)
    with torch.no_grad():
        adapter.proj.weight.copy_(torch.eye(3))
    normal = torch.tensor([[2.0, 0, 0], [0, 3.0, 0]])
    anomalous = torch.tensor([[0, 0, 5.0]])
    text = class_text_features(adapter, normal, anomalous)
    assert torch.allclose(text[:, 0], torch.tensor([1.0, 1.0, 0]) / math.sqrt(2))
    assert torch.allclose(text[:, 1], torch.tensor([0, 0, 1.0]))
    negative = class_text_features(adapter, -normal, anomalous)  # LeakyReLU(0.01) keeps the direction
    assert torch.allclose(negative[:, 0], -text[:, 0], atol=1e-6)


# ---- maps and scores ---------------------------------------------------------------------------------------
def _gaussian_blur_reference(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).float()
    padded = F.pad(x, (size // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kernel[None, None])


def test_patch_anomaly_and_blur_hand_values():
    logits = torch.tensor([10.0, 30.0]).reshape(1, 2, 1, 1)  # a = (30 + 1 - 10)/2
    assert patch_anomaly(logits).item() == pytest.approx(10.5)
    x = torch.randn(2, 1, 12, 12)
    assert torch.allclose(blur(x, "industrial"), _gaussian_blur_reference(x, 7, 1.0), atol=1e-5)
    assert torch.allclose(blur(x, "medical"), _gaussian_blur_reference(x, 9, 1.5), atol=1e-5)


def test_anomaly_map_equals_per_map_blur_upsample_sum():
    torch.manual_seed(0)
    logits = [100 * torch.randn(2, 2, 6, 6) / 10 for _ in range(12)]
    fast = anomaly_map(logits, "industrial", (25, 25))
    brute = sum(
        F.interpolate(_gaussian_blur_reference(patch_anomaly(x), 7, 1.0), size=(25, 25), mode="bilinear",
                      align_corners=True)
        for x in logits
    )
    assert torch.allclose(fast, brute, atol=1e-4)
    # bilinear upsampling is a convex combination: the map stays inside the patch grid's range
    low = _gaussian_blur_reference(sum(patch_anomaly(x) for x in logits), 7, 1.0)
    assert (fast.flatten(1).amax(1) <= low.flatten(1).amax(1) + 1e-4).all()
    assert (fast.flatten(1).amin(1) >= low.flatten(1).amin(1) - 1e-4).all()


def test_detection_score_and_fixed_range_rule():
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # C = 2: t_normal = e0, t_anomalous = e1
    assert detection_score(torch.tensor([[0.0, 0.6]]), text).item() == pytest.approx(0.8)
    low, high = map_value_range(12)
    assert (low, high) == (-1194.0, 1206.0)
    score = fixed_range_image_score(torch.tensor([low, high]), torch.tensor([0.2, 0.4]), 12, "industrial")
    assert torch.allclose(score, torch.tensor([0.1, 0.7]))
    assert torch.allclose(fixed_range_image_score(torch.tensor([high]), torch.tensor([0.0]), 12, "medical"),
                          torch.tensor([1.0]))


def test_transductive_rule_equals_the_authors_brute_force():
    rng = np.random.default_rng(0)
    maps = rng.normal(5, 3, size=(9, 16, 16)).astype(np.float32)
    scores = rng.uniform(0.4, 0.6, size=9).astype(np.float32)
    for domain in ("industrial", "medical"):
        # the authors' metrics_eval: min-max over the whole set when it leaves [0, 1], then fuse
        norm = (maps - maps.min()) / (maps.max() - maps.min())
        s = scores  # inside [0, 1]: left as is
        expected = 0.5 * norm.max(axis=(1, 2)) + 0.5 * s if domain == "industrial" else norm.max(axis=(1, 2))
        ours = transductive_image_score(
            torch.from_numpy(maps.max(axis=(1, 2))), torch.from_numpy(scores),
            (torch.tensor(maps.min()), torch.tensor(maps.max())), (torch.tensor(scores.min()), torch.tensor(scores.max())),
            domain,
        )
        assert np.allclose(ours.numpy(), expected, atol=1e-6)
    # scores outside [0, 1] are normalised too; a set inside [0, 1] is left alone
    out = transductive_image_score(torch.tensor([0.2, 0.9]), torch.tensor([-1.0, 3.0]), (torch.tensor(0.1), torch.tensor(0.9)),
                               (torch.tensor(-1.0), torch.tensor(3.0)), "industrial")
    assert torch.allclose(out, torch.tensor([0.1, 0.95]))


# ---- losses ------------------------------------------------------------------------------------------------
def test_focal_and_dice_hand_values():
    probs = torch.full((1, 2, 2, 2), 0.5)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    pt = 0.5 * (1 - 1e-5) + 0.5 * 1e-5 + 1e-5
    assert focal_loss(probs, mask).item() == pytest.approx(-((1 - pt) ** 2) * math.log(pt), rel=1e-5)
    ones = torch.ones(1, 2, 2)
    assert dice_loss(ones, ones).item() == pytest.approx(0.0, abs=1e-7)
    assert dice_loss(ones, torch.zeros(1, 2, 2)).item() == pytest.approx(1 - 1 / 5)
