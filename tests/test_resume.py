"""Resumable training: a run stopped after k steps (by a signal, or a crash after a periodic ``last.ckpt``) and
resumed ends with bit-identical weights to the uninterrupted run (CPU, seeded), mid-epoch and across the LR
step; ``last.ckpt`` is written without any validation split; a signal leaves a checkpoint and the command
that resumes it. UniAD (tiny, dropout + feature jitter: random numbers every step) on 12 synthetic images,
batch 4: 3 steps per epoch, 3 epochs, StepLR after epoch 1.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from anomaly_zoo.callbacks import (
    RandomStateCheckpoint,
    ResumableCheckpoint,
    SaveOnSignal,
    TrainingInterrupted,
    find_last_checkpoint,
    resume_command,
)
from anomaly_zoo.data.resumable_loader import ResumableDataLoader
from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.uniad import UniAD

TINY = dict(backbone="test_efficientnet", taps=(0, 2, 4), feature_size=4, hidden_dim=16, num_heads=2,
            num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32, neighbor_size=3, pretrained=False,
            dropout=0.1, lr=1e-2, lr_step_epochs=1, lr_gamma=0.5)
DATA = dict(category="carpet", generated_size=32, num_train=12, num_val=0, num_test=4, image_size=32, batch_size=4,
            cache="off")


class Data(SyntheticDataModule):
    """The synthetic DataModule; its training loader must be the resumable one (seeded per epoch, stateful)."""

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        assert isinstance(loader, ResumableDataLoader)
        return loader


class StopAt(pl.Callback):
    """Sends ``signum`` to this process at the end of global step ``step`` (or raises, as a crash would)."""

    def __init__(self, step: int, signum: int | None = None) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.signum is None:
                raise RuntimeError("simulated crash")
            os.kill(os.getpid(), self.signum)


def fit(root: Path, callbacks: list, ckpt_path: str | None = None, rng: bool = True) -> UniAD:
    pl.seed_everything(0)  # every run of the CLI seeds first, the resumed one too
    model = UniAD(**TINY)
    checkpoint = ResumableCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=2)
    extra = [RandomStateCheckpoint()] if rng else []
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root,
                         callbacks=[*callbacks, checkpoint, *extra])
    trainer.fit(model, datamodule=Data(**DATA), ckpt_path=ckpt_path)
    return model


def weights(model: UniAD) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.reconstruction.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return weights(fit(tmp_path_factory.mktemp("full"), []))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.timeout(300)
def test_signal_mid_epoch_saves_and_resume_equals_uninterrupted(tmp_path: Path, uninterrupted, capsys):
    # Step 5 = the 2nd batch of epoch 2: mid-epoch, after the LR step, not on the periodic (every 2) save.
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(tmp_path, [StopAt(5, signal.SIGTERM), SaveOnSignal()])
    assert stopped.value.code == 128 + signal.SIGTERM
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 5 and state["epoch"] == 1
    assert "--ckpt_path" in resume_command(last, ["anomaly-zoo", "fit", "--ckpt_path", "x", "--model", "uniad"])
    assert signal.getsignal(signal.SIGTERM) == before  # handlers are put back when fit ends
    resumed = fit(tmp_path, [], ckpt_path=str(last))
    assert_same(weights(resumed), uninterrupted)


@pytest.mark.timeout(300)
def test_crash_resumes_from_the_periodic_last_ckpt(tmp_path: Path, uninterrupted):
    """A crash at step 7 leaves the every-2-steps last.ckpt of step 6 (no validation split exists)."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, [StopAt(7)])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert_same(weights(fit(tmp_path, [], ckpt_path=str(last))), uninterrupted)


@pytest.mark.timeout(300)
def test_resume_after_the_first_batch_of_an_epoch(tmp_path: Path, uninterrupted):
    """Resumed from step 4 (the first batch of epoch 1): that batch's images are not in the resumed run's
    (unsaved) frozen-feature cache, so they are computed again in epoch 2 beside cached ones. The cache used to
    run the backbone on the new images only, a smaller batch, and CPU convolutions give an image's features to the
    last bits as a function of the batch size: step 8 then differed by ulps. It now runs the whole batch."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, [StopAt(5)])
    assert_same(weights(fit(tmp_path, [], ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))), uninterrupted)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_without_the_random_state_differs(tmp_path: Path, uninterrupted):
    """The equality above is not automatic: without the saved random state the resumed run diverges."""
    with pytest.raises(RuntimeError):
        fit(tmp_path, [StopAt(5)], rng=False)
    resumed = fit(tmp_path, [], ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"), rng=False)
    with pytest.raises(AssertionError):
        assert_same(weights(resumed), uninterrupted)


def test_find_last_checkpoint_picks_the_newest_previous_run(tmp_path: Path):
    root = tmp_path / "uniad" / "synthetic"
    assert find_last_checkpoint(root) is None
    for version, mtime in (("version_0", 100), ("version_1", 300), ("version_2", 200)):
        path = root / version / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    (root / "version_3" / "checkpoints").mkdir(parents=True)  # the new run's empty folder
    assert find_last_checkpoint(root) == root / "version_1" / "checkpoints" / "last.ckpt"
