"""DataLoader settings that fit the device: pinned memory on CUDA, workers kept alive, deeper prefetching."""

from __future__ import annotations

import math
import os
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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one; PyTorch checks the same)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def evaluation_workers(num_workers: int, n_items: int, batch_size: int) -> int:
    """Workers of a one-pass evaluation / predict loader: at most one per batch and per available CPU.

    More would only spawn idle processes (4 for one image, or 4 on a 2-CPU machine, which PyTorch warns
    about). Evaluation reads every image once in order, with no randomness, so the count changes no value;
    training loaders keep the requested count (their augmentation streams are per worker).
    """
    if num_workers <= 0:
        return 0
    return max(1, min(num_workers, math.ceil(n_items / max(1, batch_size)), available_cpus()))
