"""Two CPU processes (torchrun, DDP over gloo) must report exactly the numbers of one process.

The test set is split UNEVENLY over the 2 ranks (33 images: 17 + 16), so a sampler that pads the shorter
shard with a repeated image changes the table (``test_padding_sampler_is_caught`` shows it does); and a test
set of one image leaves rank 1 with no sample at all, which must neither hang nor change the table.
One torchrun launch runs every case (``tests/ddp_worker.py``), to keep the multi-process cost to one start-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest

from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.metrics import load_results
from anomaly_zoo.models.feature_distance import FeatureDistance

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
WORKER = str(Path(__file__).with_name("ddp_worker.py"))
ROOT = Path(__file__).resolve().parents[1]

COMMON = {"generated_size": 32, "num_train": 8, "num_val": 0, "image_size": 32, "eval_batch_size": 4}
#: name → (pixel mode, SyntheticDataModule arguments, expected shard sizes on 2 ranks)
RUNS = {
    "uneven_exact": ("exact", {**COMMON, "category": ["stripes", "carpet", "pill"], "num_test": 11}, [17, 16]),
    "uneven_streaming": ("streaming", {**COMMON, "category": ["stripes", "carpet", "pill"], "num_test": 11}, [17, 16]),
    # One test image: rank 1 gets only the filler sample (1 batch, counted nowhere) and must not hang.
    "rank_without_sample": ("exact", {**COMMON, "category": ["carpet"], "num_test": 1}, [1, 1]),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature-distance model fitted in this process (one statistics pass, no gradient)."""
    directory = tmp_path_factory.mktemp("ddp_fit")
    pl.seed_everything(0)
    model = FeatureDistance(pretrained=False)
    data = SyntheticDataModule(**{**COMMON, "category": ["stripes", "carpet", "pill"], "num_test": 11})
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=directory)
    trainer.fit(model, datamodule=data)
    path = directory / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def single_process_table(checkpoint: Path, out: Path, pixel_metrics: str, data: dict) -> pd.DataFrame:
    model = FeatureDistance.load_from_checkpoint(checkpoint, pixel_metrics=pixel_metrics, results_dir=str(out),
                                                 weights_only=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(model, datamodule=SyntheticDataModule(**data), verbose=False)
    return load_results(out / "test_results.csv")


def run_two_ranks(checkpoint: Path, out: Path, runs: dict, padding_sampler: bool = False) -> None:
    job = {"checkpoint": str(checkpoint), "out": str(out), "padding_sampler": padding_sampler,
           "runs": [{"name": name, "pixel_metrics": mode, "data": data} for name, (mode, data, _) in runs.items()]}
    job_file = out / "job.json"
    out.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    # A hang (a rank without samples skipping a collective) shows up as this timeout, not as a stuck suite.
    result = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--standalone", WORKER, str(job_file)],
                            cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.timeout(400)
def test_two_ranks_equal_one_process_uneven_and_empty_rank(checkpoint: Path, tmp_path: Path):
    run_two_ranks(checkpoint, tmp_path / "ddp", RUNS)
    for name, (mode, data, shards) in RUNS.items():
        assert json.loads((tmp_path / "ddp" / name / "shards.json").read_text()) == shards, name
        ddp = load_results(tmp_path / "ddp" / name / "test_results.csv")
        single = single_process_table(checkpoint, tmp_path / "single" / name, mode, data)
        assert ddp.loc["mean", "I-AUROC"] == ddp.loc["mean", "I-AUROC"] or name == "rank_without_sample"
        pd.testing.assert_frame_equal(ddp, single, check_exact=True, obj=name)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_padding_sampler_is_caught(checkpoint: Path, tmp_path: Path):
    """torch's padding DistributedSampler repeats image 0 on rank 1: the streaming table must differ."""
    runs = {"uneven_streaming": RUNS["uneven_streaming"]}
    run_two_ranks(checkpoint, tmp_path / "padded", runs, padding_sampler=True)
    assert json.loads((tmp_path / "padded" / "uneven_streaming" / "shards.json").read_text()) == [17, 17]
    padded = load_results(tmp_path / "padded" / "uneven_streaming" / "test_results.csv")
    mode, data, _ = RUNS["uneven_streaming"]
    single = single_process_table(checkpoint, tmp_path / "single", mode, data)
    with pytest.raises(AssertionError):
        pd.testing.assert_frame_equal(padded, single, check_exact=True)
