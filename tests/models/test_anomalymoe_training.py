"""AnomalyMoE's LightningModule: frozen backbone, the two optimisers, determinism, both normalisations, learning."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.anomalymoe import AnomalyMoE
from anomaly_zoo.models.anomalymoe.fusion import LEVELS, finish_map, fuse_levels, top_percent_score

TINY = dict(
    backbone_kwargs={"embed_dim": 24, "depth": 12, "num_heads": 2, "img_size": 70}, pretrained=False,
    decoder_heads=2, router_hidden=16, global_ae_channels=(4, 4, 8), global_student_channels=(4, 8),
    global_input_size=56, component_hidden=16, component_inner=8, component_code=8, center_crop=0.875,
)


class FakeSet(Dataset):
    """64 px images (cropped to 56 by the model), two categories, component masks for every sample."""

    categories = ["a", "b"]

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 64, 64, generator=g)
        self.masks = (torch.rand(n, 5, 64, 64, generator=g) > 0.6).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": torch.zeros(1, 64, 64, dtype=torch.uint8), "label": int(i % 2),
                "category": self.categories[i % 2], "index": i, "path": f"{i}.png",
                "component_masks": self.masks[i], "component_valid": torch.tensor([True, True, True, False, True])}


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def test_backbone_is_bit_identical_after_steps_and_only_experts_and_estimator_train():
    torch.manual_seed(0)
    module = AnomalyMoE(**TINY, total_iters=10, warmup_iters=1)
    encoder = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    experts = {k: v.clone() for k, v in module.model.state_dict().items() if not k.startswith("encoder.")}
    estimator = {k: v.clone() for k, v in module.eir.state_dict().items()}
    _trainer(max_steps=3).fit(module, DataLoader(FakeSet(), batch_size=4))
    after = module.model.encoder.state_dict()
    assert all(torch.equal(encoder[k], after[k]) for k in encoder)
    assert not any(p.requires_grad for p in module.model.encoder.parameters())
    changed = [k for k, v in module.model.state_dict().items() if k in experts and not torch.equal(v, experts[k])]
    assert any(k.startswith("patch_experts.") for k in changed) and any(k.startswith("router.") for k in changed)
    assert any(not torch.equal(v, estimator[k]) for k, v in module.eir.state_dict().items())


def test_estimator_step_leaves_the_experts_alone():
    torch.manual_seed(0)
    module = AnomalyMoE(**TINY)
    module.eir_optimizer = torch.optim.Adam(module.eir.parameters(), lr=1e-2)
    batch = module.crop_batch(next(iter(DataLoader(FakeSet(), batch_size=4))))
    losses = module.compute_losses(batch)
    experts = {k: v.clone() for k, v in module.model.state_dict().items()}
    before = {k: v.clone() for k, v in module.eir.state_dict().items()}
    module._estimator_step(losses)
    assert all(torch.equal(v, experts[k]) for k, v in module.model.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in module.eir.state_dict().items())
    assert all(p.grad is None for p in module.model.parameters())


def test_two_test_runs_give_identical_maps_and_no_jitter_at_test():
    torch.manual_seed(0)
    module = AnomalyMoE(**TINY).eval()
    batch = module.on_after_batch_transfer(next(iter(DataLoader(FakeSet(), batch_size=4))), 0)
    first = module.predict_anomaly(batch["image"])
    batch = module.on_after_batch_transfer(next(iter(DataLoader(FakeSet(), batch_size=4))), 0)
    second = module.predict_anomaly(batch["image"])
    assert torch.equal(first["anomaly_map"], second["anomaly_map"])
    assert torch.equal(first["pred_score"], second["pred_score"])
    assert first["anomaly_map"].shape == (4, 1, 256, 256) and batch["image"].shape[-1] == 56
    assert batch["component_masks"].shape[-1] == 56  # cropped with the image


def _maps_at_crop(module, images, masks=None, valid=None):
    out = module.model.level_maps(images, masks, valid)
    size = tuple(images.shape[-2:])
    maps = [F.interpolate(out[k], size=size, mode="bilinear", align_corners=False) if out[k].shape[-1] != size[-1]
            else out[k] for k in LEVELS]
    return out, maps


def test_test_set_protocol_equals_min_max_over_the_whole_set():
    torch.manual_seed(0)
    module = AnomalyMoE(**TINY, normalization="test_set").eval()
    assert module.set_level_protocol()
    images = torch.randn(6, 3, 56, 56)
    stats = module.predict_set_statistics(images)["set_stats"]
    ranges = {name: (stats[name].min(), stats[name].max()) for name in module.set_statistics}
    finished = module.finish_set(stats, ranges)
    # Independent: the authors' evaluate() on full-resolution level maps.
    out, maps = _maps_at_crop(module, images)
    low = [m.min() for m in maps]
    high = [m.max() for m in maps]
    weights = torch.stack([out["routing"].weights[:, s].amax(1) for s in
                           (module.model.expert_slice(f) for f in LEVELS)], 1)
    fused = sum(weights[:, i].view(-1, 1, 1, 1) * (maps[i] - low[i]) / (high[i] - low[i] + 1e-11) for i in range(3))
    final = finish_map(fused)
    assert torch.allclose(finished["anomaly_map"], final, atol=1e-5)
    assert torch.allclose(finished["pred_score"], top_percent_score(final), atol=1e-5)
    assert "Transductive" in module.protocol_caption()


def test_training_statistics_are_per_category_and_survive_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = AnomalyMoE(**TINY).eval()
    torch.nn.init.normal_(module.model.router.gate[2].weight, std=3.0)  # varied routing: every level used
    data = FakeSet(6)
    stats = module.compute_train_stats(DataLoader(data, batch_size=4))
    assert set(stats) == {"a", "b"}
    batch = module.crop_batch(next(iter(DataLoader(data, batch_size=6))))
    _, maps = _maps_at_crop(module, batch["image"], batch["component_masks"], batch["component_valid"])
    rows = torch.tensor([i % 2 == 1 for i in range(6)])
    for level, m in enumerate(maps):
        assert stats["b"][level, 0].item() == pytest.approx(m[rows].min().item(), abs=1e-6)
        assert stats["b"][level, 1].item() == pytest.approx(m[rows].max().item(), abs=1e-6)
    assert stats["a"][2, 1] > 0 and stats["b"][2, 1] > 0  # component level present
    module.train_stats = stats
    assert not module.set_level_protocol() and "non-transductive" in module.protocol_caption()
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    fresh = AnomalyMoE(**TINY)
    fresh.on_load_checkpoint(checkpoint)
    assert torch.equal(fresh.train_stats["a"], stats["a"])
    # predict_anomaly applies the category's ranges
    module._stash = {"image": batch["image"], "category": ["a", "b"] * 3,
                     "component_masks": batch["component_masks"], "component_valid": batch["component_valid"]}
    out, maps = _maps_at_crop(module, batch["image"], batch["component_masks"], batch["component_valid"])
    weights = torch.stack([out["routing"].weights[:, module.model.expert_slice(f)].amax(1) for f in LEVELS], 1)
    ranges = torch.stack([stats[c] for c in ["a", "b"] * 3])
    expected = fuse_levels(maps, weights, [(ranges[:, i, 0].view(-1, 1, 1, 1), ranges[:, i, 1].view(-1, 1, 1, 1))
                                           for i in range(3)], (56, 56))
    assert torch.allclose(module.predict_anomaly(batch["image"])["anomaly_map"], finish_map(expected), atol=1e-6)


def _auroc(module, datamodule) -> tuple[float, float]:
    trainer = _trainer()
    trainer.test(module, datamodule=datamodule, verbose=False)
    mean = module.results["test"].loc["mean"]
    return float(mean["I-AUROC"]), float(mean["P-AUROC"])


LEARN = dict(TINY, component_masks=False, num_component_experts=0, num_patch_experts=2, num_global_experts=2,
             top_k=2, lr=3e-3, warmup_iters=5, final_lr=3e-5, ae_jitter=0.0)


def _learning_run(epochs: int, categories: list[str], num_train: int, **overrides: Any) -> tuple[tuple, tuple]:
    data = dict(category=categories, generated_size=64, image_size=64, batch_size=8, num_workers=0, num_val=0)
    train_dm = SyntheticDataModule(num_train=num_train, num_test=4, seed=0, **data)
    test_dm = SyntheticDataModule(num_train=8, num_test=16, seed=7, **data)  # held-out seed
    pl.seed_everything(0)
    untrained = AnomalyMoE(**LEARN, **overrides)
    before = _auroc(untrained, test_dm)
    pl.seed_everything(0)
    trained = AnomalyMoE(**LEARN, **overrides)
    _trainer(max_epochs=epochs, num_sanity_val_steps=0, limit_val_batches=0).fit(trained, datamodule=train_dm)
    return before, _auroc(trained, test_dm)


def test_demo_scale_model_learns_fast():
    (i0, p0), (i1, p1) = _learning_run(epochs=6, categories=["carpet"], num_train=32)
    assert p1 > p0 + 10 and i1 > i0 + 10, ((i0, p0), (i1, p1))


@pytest.mark.slow
def test_demo_scale_model_learns_on_every_category():
    # Unrouted experts are not stepped here: with the authors' semantics (every expert stepped, weight decay on
    # the ones no image chose) this 4-expert model reaches only P-AUROC 56.8 -> 62.1 in 10 epochs; the test
    # checks that the architecture learns every category, the demo config checks the default.
    (i0, p0), (i1, p1) = _learning_run(epochs=10, categories=["stripes", "grid", "carpet", "pill", "assembly"],
                                       num_train=48, step_unrouted_experts=False)
    assert p1 > p0 + 10 and i1 > i0 + 10, ((i0, p0), (i1, p1))


@pytest.mark.slow
def test_demo_config_runs_end_to_end_through_the_cli_with_masks_and_routing_files(tmp_path, monkeypatch):
    from anomaly_zoo.cli import main

    monkeypatch.setenv("ANOMALY_ZOO_CACHE", str(tmp_path / "cache"))
    seen = []
    original = AnomalyMoE.training_step

    def spy(self, batch, batch_idx):
        seen.append("component_masks" in batch and bool(batch["component_valid"].any()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AnomalyMoE, "training_step", spy)
    main(["fit", "--config", "configs/demo/anomalymoe.yaml", "--test_after_fit", "true",
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_test_batches", "2",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    assert seen and all(seen)  # every training batch carried component masks
    run = next((tmp_path / "anomalymoe" / "synthetic").iterdir())
    for name in ("test_results.csv", "routing_statistics.csv", "routing_statistics.png"):
        assert (run / name).is_file(), name
    assert "hard_mining_masks=authors" in (run / "test_results.md").read_text()


@pytest.mark.parametrize("step_unrouted", [True, False])
def test_unrouted_experts_get_exact_zero_gradients_and_a_decay_step_or_nothing(step_unrouted):
    torch.manual_seed(0)
    module = AnomalyMoE(**TINY, step_unrouted_experts=step_unrouted, eir_weight=0.0, warmup_iters=1, total_iters=4,
                        lr=1e-2, weight_decay=0.5)
    routed = []
    original = module.compute_losses

    def spy(batch, *args, **kwargs):
        out = original(batch, *args, **kwargs)
        routed.append(out["out"]["routing"].selected.any(dim=0))
        return out

    module.compute_losses = spy
    experts = [*module.model.patch_experts, *module.model.global_experts, *module.model.component_experts]
    before = [[p.detach().clone() for p in e.parameters()] for e in experts]
    _trainer(max_steps=1).fit(module, DataLoader(FakeSet(), batch_size=4))
    unrouted = [i for i in range(len(experts)) if not routed[0][i]]
    assert len(routed) == 1 and unrouted and len(unrouted) < len(experts)
    for i in unrouted:
        for p, old in zip(experts[i].parameters(), before[i]):
            if step_unrouted:  # as the authors' (every expert in the graph, weight 0): grad 0, decoupled decay
                assert p.grad is not None and not p.grad.any()
                assert torch.allclose(p.detach(), old * (1 - 1e-2 * 0.5), rtol=0, atol=1e-7)
            else:
                assert p.grad is None and torch.equal(p.detach(), old)
