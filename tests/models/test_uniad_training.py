"""UniAD inside Lightning: frozen backbone during fit, optimiser and LR schedule, and learning on synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import binary_auroc

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anomaly_zoo.models.uniad import UniAD  # noqa: E402
from anomaly_zoo.registry import MODELS  # noqa: E402

TINY = dict(backbone="test_efficientnet", taps=(0, 2, 4), feature_size=6, hidden_dim=32, num_heads=4,
            num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=48, neighbor_size=3, pretrained=False)
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo" / "uniad.yaml"


class RandomImages(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"image": torch.randn(3, 48, 48, generator=g), "label": torch.tensor(0), "index": torch.tensor(index)}


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


def test_registered_and_hparams():
    assert MODELS["uniad"] is UniAD
    module = UniAD(**TINY)
    assert module.hparams.hidden_dim == 32 and module.hparams.lr == 1e-4 and module.hparams.lr_step_epochs == 800
    assert "16×16" in UniAD(**TINY).image_score_rule and "mean" in UniAD(**TINY, image_score="mean").image_score_rule


class _Spy(L.Callback):
    def __init__(self) -> None:
        self.modes: list[tuple[bool, bool, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        model = module.model
        self.modes.append((model.backbone.training, model.backbone.module.training, model.reconstruction.training))

    def on_after_backward(self, trainer, module) -> None:
        assert all(p.grad is None for p in module.model.backbone.parameters())
        assert all(p.grad is not None for p in module.model.reconstruction.parameters())


def test_backbone_stays_frozen_in_eval_mode_inside_fit():
    torch.manual_seed(0)
    module = UniAD(**TINY, lr=1e-2)
    backbone_before = {k: v.clone() for k, v in module.model.backbone.state_dict().items()}
    recon_before = {k: v.clone() for k, v in module.model.reconstruction.state_dict().items()}
    spy = _Spy()
    trainer(max_epochs=2, callbacks=[spy], gradient_clip_val=0.1).fit(module, DataLoader(RandomImages(), batch_size=4))
    assert len(spy.modes) == 4
    assert all(mode == (False, False, True) for mode in spy.modes)  # backbone (and its BNs) eval, transformer train
    for k, v in module.model.backbone.state_dict().items():  # weights AND BatchNorm running statistics unchanged
        assert torch.equal(v, backbone_before[k]), k
    assert all(not p.requires_grad for p in module.model.backbone.parameters())
    changed = [k for k, v in module.model.reconstruction.state_dict().items() if not torch.equal(v, recon_before[k])]
    assert len(changed) == len(recon_before)  # every transformer tensor trained


def test_optimizer_holds_only_the_transformer_and_drops_lr_at_epoch_800():
    module = UniAD(**TINY)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 1e-4
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in module.model.reconstruction.parameters()}
    lrs = []
    for _ in range(1000):  # Lightning steps an epoch-interval scheduler once after every epoch
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[799] == pytest.approx(1e-4)  # epochs 0..799 (800 epochs) at 1e-4
    assert lrs[800] == lrs[999] == pytest.approx(1e-5)  # the authors' loop would still use 1e-4 in epoch 800


def test_base_contract_with_mask_resolution():
    module = UniAD(**TINY).eval()
    batch = {"image": torch.randn(2, 3, 61, 45), "mask": torch.zeros(2, 1, 30, 20, dtype=torch.uint8)}
    out = module.anomaly_output(batch)
    assert out["anomaly_map"].shape == (2, 1, 30, 20) and out["pred_score"].shape == (2,)


# ---- learning on the synthetic data ---------------------------------------------------------------------
def _demo_args() -> tuple[dict, dict, dict]:
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    return config["model"]["init_args"], config["data"]["init_args"], config["trainer"]


def _evaluate(module: UniAD, datamodule) -> tuple[float, float]:
    """Mean per-category image AUROC and pooled pixel AUROC on the test split."""
    datamodule.setup("test")
    module.eval()
    scores, labels, maps, masks, categories = [], [], [], [], []
    for batch in datamodule.test_dataloader():
        out = module.anomaly_output(batch)
        scores.append(out["pred_score"])
        labels.append(batch["label"])
        maps.append(out["anomaly_map"].flatten())
        masks.append(batch["mask"].flatten().long())
        categories += batch["category"]
    score, label = torch.cat(scores), torch.cat(labels)
    per_category = []
    for category in sorted(set(categories)):
        index = torch.tensor([c == category for c in categories])
        per_category.append(binary_auroc(score[index], label[index]).item())
    pixel = binary_auroc(torch.cat(maps), torch.cat(masks)).item()
    return sum(per_category) / len(per_category), pixel


def _train_on_synthetic(seed: int, epochs: int, **data_overrides) -> tuple[float, float]:
    from anomaly_zoo.data.synthetic import SyntheticDataModule

    model_args, data_args, trainer_args = _demo_args()
    L.seed_everything(seed, verbose=False)
    datamodule = SyntheticDataModule(**{**data_args, "seed": seed, **data_overrides})
    module = UniAD(**model_args)
    trainer(max_epochs=epochs, gradient_clip_val=trainer_args["gradient_clip_val"], limit_val_batches=0).fit(
        module, datamodule=datamodule)
    return _evaluate(module, datamodule)


def test_demo_config_learns_on_a_held_out_seed_quick():
    """A shortened demo run (fewer images and epochs) on data seed 1 — the demo was tuned on seed 0.

    Reached: mean image AUROC 0.79 / pixel AUROC 0.77 on seed 1 (seeds 2-4: ≥ 0.72 / ≥ 0.75); the thresholds
    leave a margin. Chance is 0.5. About 7 s on 2 CPU cores.
    """
    pytest.importorskip("anomaly_zoo.data.synthetic")
    image_auroc, pixel_auroc = _train_on_synthetic(seed=1, epochs=4, num_train=16, num_val=0, num_test=16)
    assert image_auroc > 0.65, image_auroc
    assert pixel_auroc > 0.7, pixel_auroc


@pytest.mark.slow
def test_demo_config_learns_on_a_held_out_seed_full():
    """The demo config as shipped (10 epochs, all 5 categories, 48 training images each) on data seed 1.

    Reached: mean image AUROC 0.80 (carpet 1.0, grid 1.0, stripes 0.87, pill 0.68, assembly 0.44 — logical
    anomalies), pixel AUROC 0.92. About a minute on 2 idle CPU cores.
    """
    pytest.importorskip("anomaly_zoo.data.synthetic")
    image_auroc, pixel_auroc = _train_on_synthetic(seed=1, epochs=_demo_args()[2]["max_epochs"])
    assert image_auroc > 0.7, image_auroc
    assert pixel_auroc > 0.85, pixel_auroc
