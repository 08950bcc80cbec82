"""The frozen-feature cache: a frozen backbone's outputs computed once per training image, reused every epoch.

When a model's backbone is frozen (eval mode, no gradient) and what reaches it is the same every epoch (no
augmentation or jitter before it), every epoch recomputes identical features. UniAD is such a model: its
feature jitter is applied after the backbone, so 1000 epochs run the same EfficientNet-B4 forward 1000 times.
This cache stores the features by dataset ``index`` the first time an image is seen (in the first epoch,
with no extra pass over the data) and from then on returns them without running the backbone.

Modes (``feature_cache``): ``auto`` (default) = ``float16`` where exact, i.e. when the model declares its
backbone input deterministic (``backbone_input_deterministic = True``) and the training transform has no
random step; off otherwise. ``float16`` halves the memory (UniAD's paper config: 107 KB per image, 0.39 GB
for MVTec AD's 3,629 training images) and rounds the targets to ~3 significant digits; ``float32`` keeps them
exact (training is then the same as without the cache); ``off``. Every epoch — the first included — trains
on the stored values, so all epochs see the same targets.

The cache lives in this process's RAM (CPU; pinned when training on CUDA) and is never saved in checkpoints.
Under DDP each rank caches the images its sampler gives it. A batch whose images are partly new (after a
resume, under DDP) runs the backbone on the WHOLE batch and stores the new ones: CPU convolutions give an
image's features to the last bits as a function of the batch SIZE (not of the other images), so features
computed in a smaller sub-batch differed from the uninterrupted run's (a resumed run then ended ulps away).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["FEATURE_CACHE_MODES", "FrozenFeatureCache", "random_steps"]

FEATURE_CACHE_MODES = ("auto", "off", "float16", "float32")
_DTYPES = {"float16": torch.float16, "float32": torch.float32}
#: Albumentations steps that change nothing at random (the fixed tail of every transform).
_DETERMINISTIC_STEPS = ("Normalize", "ToTensorV2", "ToFloat")
_FLOAT16_MAX = 65504.0


def random_steps(dataset: Any) -> list[str] | None:
    """Names of the random steps in a dataset's transform; ``None`` when it cannot be told (treated as random).

    Looks through unions (``parts``) and wrappers (``dataset``); a transform is albumentations' ``Compose``.
    """
    if dataset is None:
        return None
    if hasattr(dataset, "parts"):
        found: list[str] = []
        for _, _, part in dataset.parts:
            steps = random_steps(part)
            if steps is None:
                return None
            found += steps
        return found
    transform = getattr(dataset, "transform", None)
    if transform is None:
        inner = getattr(dataset, "dataset", None)
        return random_steps(inner) if inner is not None and inner is not dataset else None
    steps = getattr(transform, "transforms", None)
    if steps is None:
        return None
    return [type(s).__name__ for s in steps if type(s).__name__ not in _DETERMINISTIC_STEPS]


class FrozenFeatureCache:
    """Features by dataset index; see the module docstring. Not an ``nn.Module``: never in a ``state_dict``.

    Args:
        mode: ``auto`` | ``off`` | ``float16`` | ``float32``.
    """

    def __init__(self, mode: str = "auto") -> None:
        if mode not in FEATURE_CACHE_MODES:
            raise ValueError(f"feature_cache must be one of {', '.join(FEATURE_CACHE_MODES)}, got {mode!r}.")
        self.mode = mode
        self.enabled = False
        self.reason = "not set up"
        self.dtype = torch.float16 if mode in ("auto", "float16") else torch.float32
        self.size = 0
        self.storage: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None
        #: Images the backbone ran on since the last ``reset`` (0 in an epoch served from the cache).
        self.computed = 0
        self._pin = False

    def reset(self, size: int, model_deterministic: bool, dataset_random_steps: list[str] | None,
              pin_memory: bool = False) -> None:
        """Empty the cache for a training set of ``size`` items and decide whether it is used (call at fit start)."""
        self.storage = self.filled = None
        self.size, self.computed, self._pin = size, 0, pin_memory
        self.dtype = torch.float16 if self.mode in ("auto", "float16") else torch.float32
        if self.mode == "off":
            self.enabled, self.reason = False, "off (feature_cache: off)"
        elif not model_deterministic:
            self.enabled, self.reason = False, "off: the model changes its backbone input at random"
        elif dataset_random_steps is None:
            self.enabled, self.reason = False, "off: the training transform cannot be inspected"
        elif dataset_random_steps:
            self.enabled = False
            self.reason = f"off: the training images are augmented ({', '.join(dataset_random_steps)})"
        elif size <= 0:
            self.enabled, self.reason = False, "off: no training items"
        else:
            self.enabled, self.reason = True, f"on ({str(self.dtype).removeprefix('torch.')})"

    @property
    def complete(self) -> bool:
        return self.filled is not None and bool(self.filled.all())

    @property
    def nbytes(self) -> int:
        return 0 if self.storage is None else self.storage.numel() * self.storage.element_size()

    def features(self, index: torch.Tensor, images: torch.Tensor,
                 extract: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The frozen features of a batch: from the cache where stored, else ``extract(images)`` (then stored).

        Always returns the stored values (float32 on the images' device), so with ``float16`` the first epoch
        trains on the same rounded targets as every later one.
        """
        if not self.enabled:
            return extract(images)
        index = index.detach().to("cpu", torch.long)
        if self.filled is None:
            self.filled = torch.zeros(self.size, dtype=torch.bool)
        if int(index.min()) < 0 or int(index.max()) >= self.size:
            raise IndexError(f"feature cache: index out of range 0..{self.size - 1} (did the training set change?)")
        missing = ~self.filled[index]
        if bool(missing.any()):
            new = index[missing]
            with torch.no_grad():  # the whole batch, whatever is new in it: see the module docstring
                computed = extract(images).detach()
            self._store(new, computed if bool(missing.all()) else computed[missing.to(computed.device)])
            self.computed += len(new)
        assert self.storage is not None
        out = self.storage[index]
        return out.to(images.device, torch.float32, non_blocking=self._pin)

    def _store(self, index: torch.Tensor, features: torch.Tensor) -> None:
        if self.storage is None:
            self.storage = torch.empty((self.size, *features.shape[1:]), dtype=self.dtype)
            if self._pin and torch.cuda.is_available():
                self.storage = self.storage.pin_memory()
        if self.dtype == torch.float16 and bool(features.abs().amax() > _FLOAT16_MAX):
            # Out of float16's range: keep float32 rather than store infinities.
            self.storage, self.dtype = self.storage.float(), torch.float32
            self.reason = "on (float32: the features exceed float16's range)"
        self.storage[index] = features.to("cpu", self.dtype)
        assert self.filled is not None
        self.filled[index] = True

    def describe(self) -> str:
        """One line for the log: on/off, why, and the memory it takes once full."""
        if not self.enabled:
            return f"Frozen-feature cache {self.reason}."
        per_item = "" if self.storage is None else f", {self.nbytes / 2**20:.0f} MB for {self.size} images"
        return f"Frozen-feature cache {self.reason}{per_item}: the backbone runs once per training image."
