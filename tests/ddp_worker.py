"""Run under ``torchrun --nproc_per_node N``: test one checkpoint on several test sets, write rank 0's tables.

Not a test module (pytest does not collect it): ``tests/test_ddp.py`` launches it. Lightning detects the
torchrun environment and joins its process group (gloo on CPU): the launch recipe the README documents.

    torchrun --nproc_per_node 2 tests/ddp_worker.py JOB.json

``JOB.json``: ``{"checkpoint": path, "out": dir, "runs": [{"name", "pixel_metrics", "data": {...}}]}`` where
``data`` are ``SyntheticDataModule`` arguments. With ``"padding_sampler": true`` the evaluation loader uses
torch's padding ``DistributedSampler`` instead of the project's (to show the test can fail).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

import anomaly_zoo.data.base as data_base
from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.feature_distance import FeatureDistance


def padding_sampler(dataset):
    return DistributedSampler(dataset, shuffle=False)  # pads the last shard with repeated samples


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(1)
    if job.get("padding_sampler"):
        data_base.eval_sampler = padding_sampler
    out = Path(job["out"])
    for run in job["runs"]:
        model = FeatureDistance.load_from_checkpoint(job["checkpoint"], pixel_metrics=run["pixel_metrics"],
                                                     results_dir=str(out / run["name"]), weights_only=True)
        datamodule = SyntheticDataModule(**run["data"])
        trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]), strategy="ddp",
                             logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.test(model, datamodule=datamodule, verbose=False)
        loader = trainer.test_dataloaders
        counts = torch.tensor([len(loader.sampler) if isinstance(loader, DataLoader) else -1])
        counts = trainer.strategy.all_gather(counts).flatten().tolist()
        if trainer.is_global_zero:
            (out / run["name"] / "shards.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    main(sys.argv[1])
