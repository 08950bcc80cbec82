"""``predict`` on 2 CPU processes (torchrun, DDP over gloo) writes what one process writes: ONE ``predictions.csv``
with every image once, in input order, the same scores, and the same overlays (one colour range on every rank).

5 images in batches of 2 split 3 + 2 over the ranks: rank 0 runs 2 batches, rank 1 one (a collective in a batch
hook would hang); with 1 image rank 1 predicts only the filler sample (no row, no file). Without stored
thresholds the colour range comes from every rank's images (a MIN/MAX all-reduce at the end of the run), so the
overlays still equal one process's. One torchrun launch runs every case (``tests/ddp_predict_worker.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.feature_distance import FeatureDistance

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
WORKER = str(Path(__file__).with_name("ddp_predict_worker.py"))
ROOT = Path(__file__).resolve().parents[1]

COMMON = {"generated_size": 32, "num_train": 8, "num_val": 0, "image_size": 32, "eval_batch_size": 2}
#: name → (SyntheticDataModule arguments, keep the checkpoint's thresholds, images)
RUNS = {
    "uneven": ({**COMMON, "category": ["carpet"], "num_test": 5}, True, 5),
    "one_image": ({**COMMON, "category": ["carpet"], "num_test": 1}, True, 1),
    "range_from_images": ({**COMMON, "category": ["carpet"], "num_test": 5}, False, 5),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature-distance model fitted in this process; fit calibrates thresholds on the training images."""
    directory = tmp_path_factory.mktemp("ddp_predict_fit")
    pl.seed_everything(0)
    model = FeatureDistance(pretrained=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=directory)
    trainer.fit(model, datamodule=SyntheticDataModule(**{**COMMON, "category": ["carpet"], "num_test": 5}))
    assert model.thresholds is not None
    path = directory / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def predict_one_process(checkpoint: Path, out: Path, data: dict, thresholds: bool) -> None:
    model = FeatureDistance.load_from_checkpoint(checkpoint, weights_only=True)
    if not thresholds:
        model.thresholds = None
    model.prediction_options = {"output_dir": str(out)}
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out)
    trainer.predict(model, datamodule=SyntheticDataModule(**data), return_predictions=False)


def pictures(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


@pytest.mark.timeout(600)  # generous: 1-2 min on a 2-core CPU shared with other jobs; a hang is caught either way
def test_two_rank_predict_writes_one_csv_and_the_overlays_of_one_process(checkpoint: Path, tmp_path: Path):
    job = {"checkpoint": str(checkpoint), "out": str(tmp_path / "ddp"),
           "runs": [{"name": name, "data": data, "thresholds": keep} for name, (data, keep, _) in RUNS.items()]}
    (tmp_path / "ddp").mkdir()
    job_file = tmp_path / "ddp" / "job.json"
    job_file.write_text(json.dumps(job))
    torch.set_num_threads(1)  # the same conv summation order as the one-thread ranks
    # A hang (a collective only some ranks call) shows up as this timeout, not as a stuck suite.
    result = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--standalone", WORKER, str(job_file)],
                            cwd=ROOT, capture_output=True, text=True, timeout=420,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    # Rank 0 alone prints (torchrun forwards both ranks' output).
    assert (result.stdout + result.stderr).count("Predictions written to") == len(RUNS)
    for name, (data, keep, images) in RUNS.items():
        ddp = tmp_path / "ddp" / name
        assert sorted(p.name for p in ddp.iterdir()) == ["overlays", "predictions.csv"], name  # no parts left
        table = pd.read_csv(ddp / "predictions.csv", keep_default_na=False)
        assert len(table) == images and table["path"].is_unique, name
        single = tmp_path / "single" / name
        predict_one_process(checkpoint, single, data, keep)
        pd.testing.assert_frame_equal(table, pd.read_csv(single / "predictions.csv", keep_default_na=False),
                                      check_exact=True, obj=name)
        ours, theirs = pictures(ddp), pictures(single)
        assert sorted(ours) == sorted(theirs) and len(ours) == images, name
        for picture in ours:
            np.testing.assert_array_equal(ours[picture], theirs[picture], err_msg=f"{name}: {picture}")
