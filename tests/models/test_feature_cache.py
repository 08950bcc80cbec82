"""The frozen-feature cache: computed once, served afterwards without the backbone, exact in float32, off when
the input is augmented; a UniAD fit with it equals one without."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly_zoo.data.transforms import build_transform
from anomaly_zoo.models.components.feature_cache import FrozenFeatureCache, random_steps
from anomaly_zoo.models.uniad import UniAD

TINY = dict(backbone="test_efficientnet", taps=(0, 2, 4), feature_size=6, hidden_dim=32, num_heads=4,
            num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=48, neighbor_size=3, pretrained=False)


class RandomImages(Dataset):
    """10 fixed images; ``transform`` only marks whether the images are 'augmented'."""

    def __init__(self, augmentations: tuple[str, ...] = ()) -> None:
        self.transform = build_transform("imagenet", augmentations)

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"image": torch.randn(3, 48, 48, generator=g), "label": torch.tensor(0), "index": torch.tensor(index)}


class CountingExtractor:
    def __init__(self) -> None:
        self.images = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images += len(images)
        return images[:, :2, ::8, ::8] * 1000.0 + 0.1  # values float16 rounds


def test_served_from_cache_after_first_sight_and_only_missing_items_computed():
    cache = FrozenFeatureCache("float32")
    cache.reset(10, True, [])
    extract = CountingExtractor()
    images = torch.randn(10, 3, 16, 16)
    first = cache.features(torch.arange(4), images[:4], extract)
    assert extract.images == 4 and torch.equal(first, extract(images[:4]))
    extract.images = 0
    # items 2, 3 stored; 4, 5 new: the backbone runs on the whole batch (its size decides an image's last bits
    # on CPU: a resumed run must compute them as the uninterrupted one did), only 4 and 5 are stored
    mixed = cache.features(torch.tensor([2, 4, 3, 5]), images[[2, 4, 3, 5]], extract)
    assert extract.images == 4 and cache.computed == 6
    extract.images = 0
    assert torch.equal(mixed, extract(images[[2, 4, 3, 5]]))
    extract.images = 0
    cache.features(torch.arange(6, 10), images[6:], extract)
    assert cache.complete and cache.computed == 10
    extract.images = 0
    again = cache.features(torch.tensor([9, 0]), torch.zeros(2, 3, 16, 16), extract)  # images ignored when cached
    assert extract.images == 0
    assert torch.equal(again, extract(images[[9, 0]]))


def test_float16_stores_rounded_values_and_serves_them_from_the_first_epoch_on():
    cache = FrozenFeatureCache("auto")
    cache.reset(4, True, [])
    extract = CountingExtractor()
    images = torch.randn(4, 3, 16, 16)
    out = cache.features(torch.arange(4), images, extract)
    exact = extract(images)
    assert cache.storage is not None and cache.storage.dtype == torch.float16 and out.dtype == torch.float32
    assert torch.equal(out, exact.half().float()) and not torch.equal(out, exact)
    # float16 has 11 significant bits: relative error at most 2^-11
    assert float(((out - exact).abs() / exact.abs().clamp_min(1e-3)).max()) <= 2.0**-11


def test_float16_out_of_range_falls_back_to_float32():
    cache = FrozenFeatureCache("float16")
    cache.reset(2, True, [])
    big = torch.full((2, 1, 2, 2), 1e6)
    out = cache.features(torch.arange(2), big, lambda x: x)
    assert torch.equal(out, big) and cache.dtype == torch.float32


@pytest.mark.parametrize(
    ("mode", "deterministic", "steps", "enabled"),
    [("auto", True, [], True), ("off", True, [], False), ("auto", False, [], False),
     ("float32", True, ["HorizontalFlip"], False), ("auto", True, None, False)],
)
def test_enabled_only_when_exact(mode, deterministic, steps, enabled):
    cache = FrozenFeatureCache(mode)
    cache.reset(3, deterministic, steps)
    assert cache.enabled is enabled
    extract = CountingExtractor()
    cache.features(torch.arange(3), torch.randn(3, 3, 16, 16), extract)
    cache.features(torch.arange(3), torch.randn(3, 3, 16, 16), extract)
    assert extract.images == (3 if enabled else 6)


def test_random_steps_reads_the_training_transform():
    assert random_steps(RandomImages()) == []
    assert random_steps(RandomImages(("hflip", "color_jitter"))) == ["HorizontalFlip", "ColorJitter"]
    assert random_steps(object()) is None


def _fit(feature_cache: str, epochs: int = 3, augment: tuple[str, ...] = ()) -> UniAD:
    torch.manual_seed(0)
    module = UniAD(**TINY, lr=1e-2, feature_cache=feature_cache)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_epochs=epochs,
                        gradient_clip_val=0.1)
    trainer.fit(module, DataLoader(RandomImages(augment), batch_size=4, shuffle=True))
    return module


def test_uniad_fit_with_float32_feature_cache_gives_the_same_weights():
    # One thread: with several, the CPU convolution's summation order depends on the batch's composition
    # (shuffled differently each epoch), so the uncached run's features differ from the cached ones in the
    # last bits (~3e-6 after training) — noise of the backbone, not of the cache.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain, cached = _fit("off"), _fit("float32")
    finally:
        torch.set_num_threads(threads)
    assert not plain.feature_cache.enabled
    assert cached.feature_cache.enabled and cached.feature_cache.complete
    assert cached.feature_cache.computed == 10  # 3 epochs × 10 images, the backbone ran on each image once
    before = UniAD(**TINY, lr=1e-2).model.reconstruction.state_dict()
    for name, value in plain.model.reconstruction.state_dict().items():
        assert not torch.equal(value, before[name]) or "mask" in name
        torch.testing.assert_close(cached.model.reconstruction.state_dict()[name], value, rtol=0, atol=1e-6)
    assert not any(k.startswith("feature_cache") for k in cached.state_dict())  # never in a checkpoint


def test_uniad_fit_with_augmentation_keeps_the_cache_off():
    module = _fit("auto", epochs=1, augment=("hflip",))
    assert not module.feature_cache.enabled and "HorizontalFlip" in module.feature_cache.reason
