"""DataLoader settings that fit the device: pinned memory on CUDA, workers kept alive, deeper prefetching."""

from __future__ import annotations

from typing import Any

import torch

#: Batches each worker prepares ahead (PyTorch's default is 2): covers the step-time jitter of a fast model.
PREFETCH_FACTOR = 4


def training_on_cuda(trainer: Any = None) -> bool:
    """Whether the batches go to a CUDA device: the Trainer's root device when attached, else CUDA's availability."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    device = getattr(strategy, "root_device", None) if strategy is not None else None
    if device is not None:
        return device.type == "cuda"
    return torch.cuda.is_available()


def loader_options(num_workers: int, trainer: Any = None) -> dict[str, Any]:
    """``pin_memory`` on CUDA (page-locked batches copy asynchronously); with workers, ``persistent_workers``
    (no re-spawn and no re-pickled dataset every epoch or validation) and ``prefetch_factor``."""
    options: dict[str, Any] = {"pin_memory": training_on_cuda(trainer)}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=PREFETCH_FACTOR)
    return options
