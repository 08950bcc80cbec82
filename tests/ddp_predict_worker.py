"""Run under ``torchrun --nproc_per_node N``: ``predict`` of one checkpoint on several synthetic sets (DDP, gloo).

Not a test module (pytest does not collect it): ``tests/test_ddp_predict.py`` launches it.

    torchrun --nproc_per_node 2 tests/ddp_predict_worker.py JOB.json

``JOB.json``: ``{"checkpoint": path, "out": dir, "runs": [{"name", "data": {...}, "thresholds": bool}]}``; each run
writes into ``out/<name>``; ``"thresholds": false`` drops the checkpoint's calibrated thresholds (and so its
colour range: the writer then chooses one from every rank's images).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.feature_distance import FeatureDistance


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(1)
    for run in job["runs"]:
        model = FeatureDistance.load_from_checkpoint(job["checkpoint"], weights_only=True)
        if not run["thresholds"]:
            model.thresholds = None
        model.prediction_options = {"output_dir": str(Path(job["out"]) / run["name"])}
        trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]), strategy="ddp",
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=job["out"])
        trainer.predict(model, datamodule=SyntheticDataModule(**run["data"]), return_predictions=False)


if __name__ == "__main__":
    main(sys.argv[1])
