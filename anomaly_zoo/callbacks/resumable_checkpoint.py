"""``last.ckpt`` at every epoch end and every N steps / T minutes, whether or not there is a validation split.

Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only when a top-k save
happened at that step, or once when training ends; with ``check_val_every_n_epoch`` > 1 and no validation
split (MVTec AD, VisA) nothing is written until the end. This subclass always refreshes ``last.ckpt`` at
the end of each training epoch (and on its step / time triggers), so an interrupted run loses at most one
epoch — or ``every_n_train_steps`` steps — of work. Statistics-only models (no optimiser step) get their
``last.ckpt`` from ``AnomalyModule.on_fit_end`` at the end of their pass.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that always keeps a resumable ``last.ckpt`` up to date.

    Args:
        every_n_train_steps: also refresh ``last.ckpt`` every this many optimiser steps (long epochs).
        train_time_interval: also refresh it after this much training time (e.g. ``"00:00:30:00"``, DD:HH:MM:SS,
            or a ``timedelta``); Lightning allows one of the two triggers.
        save_top_k, monitor, ...: as ``ModelCheckpoint`` (default: no other checkpoint than ``last.ckpt``).
    """

    def __init__(self, every_n_train_steps: int | None = None, train_time_interval: str | timedelta | None = None,
                 save_top_k: int = 0, **kwargs: Any) -> None:
        if isinstance(train_time_interval, str):
            days, hours, minutes, seconds = (int(p) for p in train_time_interval.split(":"))
            train_time_interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        kwargs.setdefault("save_on_train_epoch_end", True)
        super().__init__(save_last=True, save_top_k=save_top_k, every_n_train_steps=every_n_train_steps,
                         train_time_interval=train_time_interval, **kwargs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning's rule: last.ckpt only if a top-k save happened at this step. Ours: at every epoch end.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
