"""Evaluation loaders spawn no idle workers: at most one per batch and per available CPU; training keeps its count."""

from __future__ import annotations

from anomaly_zoo.data import loader_options
from anomaly_zoo.data.loader_options import evaluation_workers
from anomaly_zoo.data.synthetic import SyntheticDataModule


def test_evaluation_workers_by_hand(monkeypatch):
    monkeypatch.setattr(loader_options, "available_cpus", lambda: 2)
    assert evaluation_workers(0, 100, 8) == 0  # the main process, as asked
    assert evaluation_workers(4, 1, 8) == 1  # one image: one batch, one worker
    assert evaluation_workers(4, 17, 8) == 2  # three batches, but two CPUs
    assert evaluation_workers(1, 100, 8) == 1
    assert evaluation_workers(4, 0, 8) == 1  # an empty shard still gets a valid (persistent) loader
    monkeypatch.setattr(loader_options, "available_cpus", lambda: 64)
    assert evaluation_workers(4, 100, 8) == 4  # never more than asked


def test_a_datamodule_caps_its_evaluation_loader_and_keeps_the_training_one(tmp_path, monkeypatch):
    monkeypatch.setattr(loader_options, "available_cpus", lambda: 8)
    data = SyntheticDataModule(root=str(tmp_path), category="stripes", generated_size=32, num_train=8, num_val=0,
                               num_test=4, image_size=32, batch_size=4, num_workers=3)
    data.setup("fit")
    data.setup("test")
    assert data.test_dataloader().num_workers == 1  # 4 images, eval batch 4: one batch
    assert data.train_dataloader().num_workers == 3  # augmentation streams are per worker: as asked
