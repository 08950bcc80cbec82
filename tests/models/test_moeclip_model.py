"""MoECLIPModel / MoECLIP on a tiny random-init open_clip: frozen towers, caches, checkpointing, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from anomaly_zoo.models.components.backbone import PretrainedWeightsError
from anomaly_zoo.models.moeclip import MoECLIP, MoECLIPModel
from anomaly_zoo.models.moeclip.model import TINY_CLIP_CONFIG

SIZE = 32
TINY = {"clip_config": TINY_CLIP_CONFIG, "pretrained": False, "image_size": SIZE, "adapter_blocks": (1, 2, 3, 4)}


def _batch(n: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.uint8)
    mask[1:, :, 8:20, 8:20] = 1
    return {"image": torch.randn(n, 3, SIZE, SIZE, generator=generator), "mask": mask,
            "label": (mask.flatten(1).amax(1) > 0).long(), "category": ["bottle"] * (n - 1) + ["stripes"]}


@pytest.fixture(scope="module")
def module() -> MoECLIP:
    torch.manual_seed(0)
    return MoECLIP(**TINY, expert_dropout=0.0)


def test_clip_uses_exact_gelu_and_no_patch_dropout(module):
    clip = module.model.clip.module
    gelus = [m for m in clip.modules() if isinstance(m, nn.GELU)]
    assert gelus and all(m.approximate == "none" for m in gelus)
    assert not any(type(m).__name__ == "QuickGELU" for m in clip.modules())
    assert isinstance(clip.visual.patch_dropout, nn.Identity)
    assert module.model.clip.grid_size == (4, 4)


def test_one_step_changes_adapters_and_leaves_clip_bit_identical(module):
    model = copy.deepcopy(module)
    model.train()
    assert not model.model.clip.training and not any(m.training for m in model.model.clip.modules())
    assert model.model.adapters[0].training
    optimizer = model.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.model.clip.parameters()}
    assert optimised == {id(p) for p in model.model.parameters() if p.requires_grad}
    clip_before = {k: v.clone() for k, v in model.model.clip.state_dict().items()}
    trainable_before = {n: p.detach().clone() for n, p in model.model.named_parameters() if p.requires_grad}
    fofs_before = [a.down.clone() for a in model.model.adapters]
    for step in range(2):  # the router gets its first gradient once B ≠ 0 (step 2)
        batch = _batch(seed=step)
        terms = model.model.training_losses(batch["image"], batch["mask"], batch["label"], batch["category"])
        optimizer.zero_grad()
        model.weighted_loss(terms).backward()
        optimizer.step()
    assert all(torch.equal(v, clip_before[k]) for k, v in model.model.clip.state_dict().items())
    assert all(torch.equal(a.down, d) for a, d in zip(model.model.adapters, fofs_before))
    unchanged = [n for n, p in model.model.named_parameters() if p.requires_grad and torch.equal(p, trainable_before[n])]
    assert unchanged == []
    assert {id(p) for p in optimizer.state} <= optimised  # optimiser state only for the trained tensors


def test_frozen_text_features_cached_and_eval_text_once_per_run(module, monkeypatch):
    model = copy.deepcopy(module.model)
    calls = []
    encode = model._encode_sentences
    monkeypatch.setattr(model, "_encode_sentences", lambda s: calls.append(len(s)) or encode(s))
    model.prompt_cache.clear()
    model.train()
    for _ in range(3):
        first = model.text_features(["bottle", "bottle", "grid"])
        assert first.requires_grad  # the adapter runs with gradient at every training step
    assert calls == [16, 16]  # the frozen encoder ran once per description
    model.eval()
    with torch.no_grad():
        a = model.class_text("bottle")
        assert model.class_text("bottle") is a  # eval: computed once per test run
        model.eval()  # a new evaluation run recomputes (the adapter may have changed)
        assert model.class_text("bottle") is not a
    model.load_state_dict(model.state_dict())
    assert len(model.prompt_cache) == 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(module):
    batch = _batch()
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(module.model).train()
        model.gradient_checkpointing = checkpointing
        torch.manual_seed(1)
        with torch.no_grad():
            for adapter in model.adapters:
                adapter.up.normal_(std=0.1)
        terms = model.training_losses(batch["image"], batch["mask"], batch["label"], batch["category"])
        (terms["ce"] + terms["seg"] + terms["etf"]).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(*grads))


def test_etf_weight_zero_leaves_expert_gradients_from_it_at_zero():
    batch = _batch()
    torch.manual_seed(0)
    base = MoECLIP(**TINY, expert_dropout=0.0)
    with torch.no_grad():
        for adapter in base.model.adapters:
            adapter.up.normal_(std=0.1)
            adapter.router.gate.weight.normal_(std=0.1)  # off the uniform point, where cv² has zero gradient

    def expert_grads(etf_weight: float, lb_weight: float = 0.0, router: bool = False) -> list[torch.Tensor]:
        model = copy.deepcopy(base)
        model.hparams.etf_weight, model.hparams.lb_weight = etf_weight, lb_weight
        terms = model.model.training_losses(batch["image"], batch["mask"], batch["label"], batch["category"],
                                            with_etf=etf_weight > 0)
        model.weighted_loss(terms).backward()
        return [(a.router.gate.weight if router else a.up).grad.clone() for a in model.model.adapters]

    def plain_grads() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model = copy.deepcopy(base)
        terms = model.model.training_losses(batch["image"], batch["mask"], batch["label"], batch["category"])
        (terms["ce"] + terms["seg"]).backward(retain_graph=True)
        plain = [a.up.grad.clone() for a in model.model.adapters]
        model.zero_grad()
        terms["etf"].backward()
        return plain, [a.up.grad.clone() for a in model.model.adapters]

    plain, etf = plain_grads()
    assert all(torch.equal(a, b) for a, b in zip(expert_grads(0.0), plain))
    assert all(torch.allclose(a, p + 0.01 * e, atol=1e-6) for a, p, e in zip(expert_grads(0.01), plain, etf))
    assert any(e.abs().sum() > 0 for e in etf)
    # lb_weight really acts (on the routers, the only thing the load balance depends on)
    with_lb, without = expert_grads(0.0, 1.0, router=True), expert_grads(0.0, 0.0, router=True)
    assert not all(torch.allclose(a, b) for a, b in zip(with_lb, without))


def test_wrong_image_size_and_bad_options_fail_clearly(module):
    with pytest.raises(ValueError, match="image_size"):
        module.model.predict(torch.randn(1, 3, 48, 48), ["bottle"])
    with pytest.raises(ValueError, match="adapter_blocks"):
        MoECLIPModel(**{**TINY, "adapter_blocks": (2, 9)})
    with pytest.raises(ValueError, match="domain"):
        MoECLIPModel(**TINY, domain="space")


def test_missing_pretrained_weights_is_one_clear_error(monkeypatch, tmp_path):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("We have no connection to the Hub (HF_HUB_OFFLINE=1)")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(PretrainedWeightsError, match=r"backbone_weights PATH.*pretrained false"):
        MoECLIPModel()  # the paper defaults: ViT-L-14-336 / openai
    with pytest.raises(PretrainedWeightsError, match="backbone_weights"):
        MoECLIPModel(backbone_weights=str(tmp_path / "missing.pt"))


def test_text_cache_filled_in_inference_mode_still_trains(module):
    model = copy.deepcopy(module.model)
    model.prompt_cache.clear()
    model.eval()
    with torch.inference_mode():
        model.predict(torch.randn(1, 3, SIZE, SIZE), ["bottle"])
    model.train()
    batch = _batch()
    terms = model.training_losses(batch["image"], batch["mask"], batch["label"], ["bottle"] * 2)
    (terms["ce"] + terms["seg"]).backward()
    assert model.text_adapter.proj.weight.grad is not None
