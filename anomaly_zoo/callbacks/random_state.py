"""The random generators' state in every checkpoint, restored when training resumes.

Lightning checkpoints hold the model, optimiser, scheduler and loop position but not the global random
state that dropout, feature jitter and noise draw from; without it a resumed run continues on other random
numbers than the uninterrupted one. The state is captured when a checkpoint is written (the end of a
training batch or epoch) and restored at the first training batch after the resume — after Lightning has
rebuilt the loaders, so their construction does not consume the restored numbers.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


def capture_random_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) every CUDA device's generator state."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # Tensors and plain values only: checkpoints are read with torch.load(weights_only=True).
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStateCheckpoint(pl.Callback):
    """Saves the random state in checkpoints and restores it on resume.

    The checkpoint holds rank 0's state (every rank is seeded alike by ``seed_everything``).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"state": capture_random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("state")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            restore_random_state(self._pending)
            self._pending = None
