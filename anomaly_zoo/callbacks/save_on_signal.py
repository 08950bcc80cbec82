"""SIGINT / SIGTERM / SIGUSR1 during ``fit``: finish the current batch, write a resumable ``last.ckpt``, say how
to resume, stop.

The handler only records the signal; the checkpoint is written between two training batches, where model,
optimiser, scheduler, loop position, loader position and random state are consistent (a checkpoint written
from inside a signal handler could catch an optimiser step half-way). Under DDP the ranks agree at every
batch end (one tiny all-reduce) whether any rank was signalled, so all of them save and stop together.
A second Ctrl-C stops at once, without a checkpoint.

SLURM: with Lightning's auto-requeue (``SLURMEnvironment``, the default under ``srun``) SIGUSR1 is left to
Lightning, which writes ``hpc_ckpt_N.ckpt`` in ``default_root_dir``, requeues the job and resumes from it on
restart; SIGTERM (pre-emption, time limit) is handled here.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

from anomaly_zoo.callbacks.resume import resume_command
from anomaly_zoo.models.components.distributed import trains_by_gradient


class TrainingInterrupted(SystemExit):
    """Raised after the checkpoint is written: the process exits with 128 + the signal number (shell rule)."""


class SaveOnSignal(pl.Callback):
    """Turns SIGINT, SIGTERM and (outside SLURM auto-requeue) SIGUSR1 into a checkpoint and a clean stop.

    Args:
        signals: names of the signals to handle.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGINT", "SIGTERM", "SIGUSR1")) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._launcher: Any = None
        self._forwarded: set[int] = set()

    # ---- handlers ----------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = signum
        if signum == signal.SIGINT:
            sys.stderr.write("\nCtrl-C: saving a resumable checkpoint after this batch (Ctrl-C again: stop now)\n")
        if self._launcher is not None and signum not in self._forwarded:
            # Lightning started the other ranks itself: pass the signal on, as its own SIGTERM handler does.
            self._forwarded.add(signum)
            self._launcher.kill(signum)
        # Lightning's SIGTERM handler is replaced, not chained: it runs a collective (a broadcast) inside the
        # handler, which the ranks reach at different points of their step and which can then deadlock.

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed after Lightning's own handlers (registered when the run starts), which are chained for
        # SIGTERM and put back, with the handlers from before the run, when Lightning tears down.
        if threading.current_thread() is not threading.main_thread():
            return
        launcher = trainer.strategy.launcher
        self._launcher = launcher if launcher is not None and hasattr(launcher, "procs") else None
        environment = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        for name in self.signals:
            signum = getattr(signal, name, None)
            if signum is None or (slurm_requeue and signum == (environment.requeue_signal or signal.SIGUSR1)):
                continue
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            if threading.current_thread() is threading.main_thread():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    # ---- the checkpoint --------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        signalled = self.received is not None
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        signum = self.received or signal.SIGTERM
        name = signal.Signals(signum).name
        if not trains_by_gradient(pl_module):
            # A statistics pass has nothing resumable mid-pass (each rank holds a partial, unreduced sum).
            rank_zero_info(f"{name}: stopped. The statistics pass is one epoch; run the same command again.")
            raise TrainingInterrupted(128 + signum)
        path = self._checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"{name}: saved a resumable checkpoint at epoch {trainer.current_epoch}, step "
                       f"{trainer.global_step}: {path}\nResume with:\n  {resume_command(path)}")
        raise TrainingInterrupted(128 + signum)

    @staticmethod
    def _checkpoint_path(trainer: pl.Trainer) -> str:
        callback = trainer.checkpoint_callback
        directory = getattr(callback, "dirpath", None)
        if not directory:
            directory = str(Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints")
        last = getattr(callback, "CHECKPOINT_NAME_LAST", "last")
        return str(Path(directory) / f"{last}.ckpt")
