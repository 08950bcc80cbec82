"""AnomalyMoE's component masks: CRF, Otsu, background filter, cache, and masks reaching training (spec "Masks")."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_zoo.data.multi_dataset import MultiDataset
from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.anomalymoe import prepare_masks
from anomaly_zoo.models.anomalymoe.component_masks import (
    DinoPatchFeatures,
    binarize,
    foreground_clusters,
    greedy_coreset_indices,
    kmeans,
    otsu_threshold,
    quantize,
)
from anomaly_zoo.models.anomalymoe.crf import CRFParams, dense_crf, pydensecrf_available
from anomaly_zoo.models.anomalymoe.prepare_masks import ComponentMaskDataset, attach_component_masks
from anomaly_zoo.models.components.backbone import PretrainedWeightsError

#: A tiny random-init DINO-style ViT and a small prepare size: the demo/test configuration.
TINY = {"pretrained": False, "feature_model_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2},
        "image_size": 128, "coreset_ratio": 0.1, "progress": False}


# ---- CRF -----------------------------------------------------------------------------------------
def _two_regions(size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left half dark, right half bright; probabilities of 'right' = truth ± heavy noise (30 % flipped)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=bool)
    truth[:, size // 2 :] = True
    image = np.where(truth[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
    p_right = np.where(truth, 0.6, 0.4) + rng.uniform(-0.25, 0.25, truth.shape)
    probs = np.stack([1 - p_right, p_right]).astype(np.float32)
    return image, probs, truth


@pytest.mark.parametrize("backend", ["torch", "pydensecrf"])
def test_crf_sharpens_a_noisy_two_region_probability_toward_the_true_split(backend):
    if backend == "pydensecrf" and not pydensecrf_available():
        pytest.skip("optional extra pydensecrf2 not installed")
    image, probs, truth = _two_regions()
    before = (probs.argmax(0) == truth).mean()
    posterior = dense_crf(image, probs, CRFParams(), backend=backend)
    after = (posterior.argmax(0) == truth).mean()
    assert before < 0.75 and after > 0.95  # two iterations pull nearly every pixel to its colour region
    assert posterior.shape == probs.shape and np.allclose(posterior.sum(0), 1, atol=1e-5)
    # confidence in the true label grows: mean posterior of the true class vs the input's
    assert posterior[1][truth].mean() > probs[1][truth].mean() + 0.2


def test_crf_without_pairwise_terms_returns_the_input():
    image, probs, _ = _two_regions()
    none = CRFParams(gaussian_compat=0.0, bilateral_compat=0.0)
    assert np.allclose(dense_crf(image, probs, none, backend="torch"), probs, atol=1e-6)


# ---- Otsu, filter, coreset, k-means ---------------------------------------------------------------
def test_otsu_on_the_probability_by_hand_and_against_opencv():
    # 50 % at 0.2, 25 % at 0.5, 25 % at 0.8 (8-bit 51, 128, 204). Between-class variance:
    # {51} vs {128,204}: .5·.5·(165.5-51)² = 3277.6; {51,128} vs {204}: .75·.25·(204-76.67)² = 3040.1.
    values = np.array([0.2] * 8 + [0.5] * 4 + [0.8] * 4)
    levels = quantize(values)
    assert list(np.unique(levels)) == [51, 128, 204]
    assert otsu_threshold(levels) == 51  # smallest t of the winning split, so 0.5 and 0.8 are foreground
    rng = np.random.default_rng(1)
    image = np.clip(np.concatenate([rng.normal(60, 15, 3000), rng.normal(170, 25, 2000)]), 0, 255).astype(np.uint8)
    reference, _ = cv2.threshold(image.reshape(50, 100), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert otsu_threshold(image) == int(reference)
    assert otsu_threshold(np.full(10, 77, np.uint8)) == 77  # constant: nothing above it


def test_binarize_thresholds_each_posterior_itself():
    posterior = np.zeros((2, 4, 4), dtype=np.float32)
    posterior[0, :2] = 0.9
    posterior[0, 2:] = 0.1
    posterior[1] = 1 - posterior[0]
    masks = binarize(posterior)
    assert masks[0, :2].all() and not masks[0, 2:].any() and masks[1, 2:].all() and not masks[1, :2].any()


def test_background_filter_drops_corner_touching_and_faint_clusters():
    size = 448
    posterior = np.full((4, size, size), 0.02, dtype=np.float32)
    posterior[0] = 0.9
    posterior[0, 100:350, 100:350] = 0.05  # a frame around the object: all four corners → background
    posterior[1, 150:300, 150:300] = 0.9  # a centred part → kept
    posterior[2, 150:300, 150:300] = 0.2  # a faint part: 11×11 box peak 51 ≤ 64 → dropped
    posterior[3, :, : size // 2] = 0.8  # the left half: two corners only → kept
    assert foreground_clusters(posterior).tolist() == [False, True, False, True]
    posterior[3, : size // 2, :] = 0.8  # now also the top-right corner: three → dropped
    assert foreground_clusters(posterior).tolist() == [False, True, False, False]


def test_greedy_coreset_picks_the_farthest_points():
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [10.5]])
    # row norms of the distance matrix: the point 10.5 is the most remote; then 0 is farthest from it; then 2.
    assert greedy_coreset_indices(points, ratio=0.6).tolist() == [4, 0, 2]
    assert len(greedy_coreset_indices(points, ratio=0.01)) == 1  # at least one point per image


def test_kmeans_recovers_separated_centres():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(30, 2, generator=generator) for c in truth])
    centres = kmeans(points, 3, seed=0)
    order = torch.cdist(truth, centres).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert torch.allclose(centres[order], truth, atol=0.1)


def test_feature_grid_and_missing_weights_error(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DinoPatchFeatures(pretrained=False, model_kwargs=TINY["feature_model_kwargs"])
    assert model(torch.zeros(2, 3, 448, 448)).shape == (2, 32, 28, 28)  # 448 px / 16 → the authors' grid
    with pytest.raises(PretrainedWeightsError, match="component_mask_weights"):
        DinoPatchFeatures(weights=tmp_path / "absent.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PretrainedWeightsError, match="pass a local file with `component_mask_weights PATH`"):
        DinoPatchFeatures(pretrained=True)


# ---- the prepare step on the synthetic data ---------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    data = SyntheticDataModule(root=str(tmp_path_factory.mktemp("synthetic") / "data"), generated_size=64,
                               num_train=6, num_val=0, num_test=4)
    data.prepare_data()
    return data.root


def _data(root: Path, category="assembly", **kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(root=str(root), category=category, generated_size=64, num_train=6, num_val=0,
                               num_test=4, image_size=48, batch_size=2, **kwargs)


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """How many images had features computed (0 when the cache answers)."""
    calls: list[int] = []
    original = DinoPatchFeatures.forward

    def forward(self, images):
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(DinoPatchFeatures, "forward", forward)
    return calls


class _MaskedModel(pl.LightningModule):
    """Attaches the masks in ``setup`` — as AnomalyMoE does — and records what every training batch carried."""

    def __init__(self, cache: Path) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.cache = cache
        self.batches: list[dict] = []

    def setup(self, stage: str) -> None:
        attach_component_masks(self.trainer.datamodule, stage, cache_dir=self.cache, **TINY)

    def training_step(self, batch, batch_idx):
        self.batches.append({k: batch[k] for k in ("image", "component_masks", "component_valid", "category")})
        return (batch["image"].mean() * self.weight).square()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_masks_reach_every_training_batch(synthetic_root, tmp_path):
    model = _MaskedModel(tmp_path / "cache")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=_data(synthetic_root))
    assert len(model.batches) == 6  # 6 images, batch 2, 2 epochs
    for batch in model.batches:
        masks, valid = batch["component_masks"], batch["component_valid"]
        assert masks.dtype == torch.uint8 and masks.shape == (2, 5, 48, 48)  # aligned with the 48-px image
        assert valid.dtype == torch.bool and valid.shape == (2, 5)
        assert (masks.flatten(2).sum(-1) > 0).eq(valid).all()
        assert valid.any(1).all(), "an assembly image arrived without any component mask"


def test_cache_is_reused_and_invalidated_by_a_file_or_a_setting(synthetic_root, tmp_path, counted):
    cache = tmp_path / "cache"
    data = _data(synthetic_root)
    data.setup("fit")
    attach_component_masks(data, "fit", cache_dir=cache, **TINY)
    first = [data.train_dataset[i]["component_masks"] for i in range(len(data.train_dataset))]
    assert sum(counted) == 12  # 6 training images for the clusters, then the same 6 for their masks
    counted.clear()

    data = _data(synthetic_root)
    data.setup("fit")
    attach_component_masks(data, "fit", cache_dir=cache, **TINY)
    assert sum(counted) == 0
    assert all(torch.equal(a, data.train_dataset[i]["component_masks"]) for i, a in enumerate(first))

    data.setup("test")  # test images of the same category: only their masks, the clusters are cached
    attach_component_masks(data, "test", cache_dir=cache, **TINY)
    assert sum(counted) == 4
    counted.clear()

    changed = Path(data.train_dataset.samples[3].image_path)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # one training image "changes"
    attach_component_masks(data, "fit", cache_dir=cache, **TINY)
    assert sum(counted) == 12
    counted.clear()

    attach_component_masks(data, "fit", cache_dir=cache, **{**TINY, "num_clusters": 3})  # a setting changes
    assert sum(counted) == 12
    assert data.train_dataset[0]["component_masks"].shape[0] == 3
    assert list(cache.glob("**/.*tmp*")) == []  # atomic writes leave no temporary files


def test_wrapped_items_keep_the_dataset_item_and_align_masks(synthetic_root, tmp_path):
    data = _data(synthetic_root)
    data.setup("fit")
    base = data.train_dataset
    attach_component_masks(data, "fit", cache_dir=tmp_path / "cache", **TINY)
    wrapped = data.train_dataset
    assert isinstance(wrapped, ComponentMaskDataset) and wrapped.categories == base.categories
    item, plain = wrapped[1], base[1]
    assert torch.equal(item["image"], plain["image"]) and torch.equal(item["mask"], plain["mask"])
    stored = wrapped.component_masks(1)  # (5, 128, 128) at the prepare size
    # the dataset's own mask resize (PIL nearest, pixel centres), one cluster at a time
    expected = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((48, 48), Image.NEAREST)) > 0
                         for m in stored])
    assert np.array_equal(item["component_masks"].numpy(), expected.astype(np.uint8))


def test_geometric_augmentation_is_refused(synthetic_root, tmp_path):
    data = _data(synthetic_root, train_augmentations=["hflip"])
    data.setup("fit")
    with pytest.raises(prepare_masks.DatasetError, match="train_augmentations"):
        attach_component_masks(data, "fit", cache_dir=tmp_path / "cache", **TINY)


def test_composite_multi_dataset_gets_masks_per_member(synthetic_root, tmp_path):
    data = MultiDataset({"a": _data(synthetic_root), "b": _data(synthetic_root, category="pill")}, batch_size=4)
    data.setup("fit")
    attach_component_masks(data, "fit", cache_dir=tmp_path / "cache", **TINY)
    batch = next(iter(data.train_dataloader()))
    assert batch["component_masks"].shape == (4, 5, 48, 48)
    assert set(batch["category"]) <= {"a/assembly", "b/pill"}
    parts = data.train_dataset.parts
    assert all(isinstance(dataset, ComponentMaskDataset) for _, _, dataset in parts)
