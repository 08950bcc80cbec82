"""The SLURM path without a cluster: two processes started with the environment ``srun`` gives each task
(``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_NODELIST``, ``SLURM_JOB_ID``, ...) form one DDP group through
Lightning's ``SLURMEnvironment``: ranks 0 and 1, one results table equal to a single process's; SIGUSR1 (the
template's ``--signal=SIGUSR1@90``) writes ``hpc_ckpt_1.ckpt`` and calls ``scontrol requeue <job id>`` (a fake
``scontrol`` on PATH records it); SIGTERM then saves ``last.ckpt`` on both ranks and exits 143 with the resume
command; the requeued job (same command) resumes from the hpc checkpoint by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from anomaly_zoo.metrics import load_results
from tests.test_ddp_fit import COMMON, MODELS

CLI = str(Path(sys.executable).parent / "anomaly-zoo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun(args: list[str], cwd: Path, tmp_path: Path, port: int) -> list[subprocess.Popen]:
    """Two tasks on one node, as ``srun --ntasks 2`` would start them."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    scontrol = fake_bin / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    processes = []
    for rank in range(2):
        env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
               "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "anomaly-zoo",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PATH": f"{fake_bin}:{os.environ['PATH']}"}
        # Output to files, not pipes: a pipe nobody reads while the test waits would block the run when full.
        log = open(tmp_path / f"task{rank}-{len(list(tmp_path.glob('task*.log')))}.log", "w")  # noqa: SIM115
        process = subprocess.Popen([CLI, *args, "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                                   cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        process.log_path = log.name
        processes.append(process)
    return processes


def finish(processes: list[subprocess.Popen], timeout: int = 300) -> list[tuple[int, str]]:
    try:
        codes = [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    return [(code, Path(p.log_path).read_text()) for code, p in zip(codes, processes)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_slurm_tasks_form_one_group_and_write_one_table(tmp_path: Path):
    fit = subprocess.run([CLI, "fit", *MODELS["feature_distance"], *COMMON, "--trainer.default_root_dir",
                          str(tmp_path / "fit")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = str(next((tmp_path / "fit").rglob("last.ckpt")))
    args = ["test", *MODELS["feature_distance"], *COMMON, "--ckpt_path", ckpt]
    results = finish(srun([*args, "--trainer.default_root_dir", str(tmp_path / "slurm")], tmp_path, tmp_path,
                          free_port()))
    assert [code for code, _ in results] == [0, 0], results[1][1][-3000:]
    assert "GLOBAL_RANK: 0" in results[0][1] + results[1][1] and "GLOBAL_RANK: 1" in results[0][1] + results[1][1]
    tables = list((tmp_path / "slurm").rglob("test_results.csv"))
    assert len(tables) == 1
    single = subprocess.run([CLI, *args, "--trainer.default_root_dir", str(tmp_path / "single")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    pd.testing.assert_frame_equal(load_results(tables[0]),
                                  load_results(next((tmp_path / "single").rglob("test_results.csv"))),
                                  check_exact=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_slurm_requeue_signal_and_sigterm_leave_resumable_checkpoints(tmp_path: Path):
    root = tmp_path / "run"
    args = ["fit", *MODELS["uniad"], *COMMON, "--trainer.max_epochs", "500", "--trainer.default_root_dir", str(root)]
    processes = srun(args, tmp_path, tmp_path, free_port())
    deadline = time.monotonic() + 400
    while not list(root.rglob("last.ckpt")) and time.monotonic() < deadline:  # the first epoch end
        assert all(p.poll() is None for p in processes), finish(processes)[0][1][-3000:]
        time.sleep(1)
    for p in processes:
        p.send_signal(signal.SIGUSR1)  # SLURM signals every task
    while not (root / "hpc_ckpt_1.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)
    for p in processes:
        p.send_signal(signal.SIGTERM)
    results = finish(processes)
    assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, results[0][1][-3000:]
    assert "requeue 4242" in (tmp_path / "scontrol.log").read_text()
    assert "Resume with:" in results[0][1] and "--ckpt_path" in results[0][1]
    # The requeued job runs the same command: Lightning finds hpc_ckpt_1.ckpt in default_root_dir and resumes.
    epochs = torch.load(root / "hpc_ckpt_1.ckpt", weights_only=True)["epoch"] + 2  # one more epoch to train
    again = srun([*args[:-4], "--trainer.max_epochs", str(epochs), *args[-2:]], tmp_path, tmp_path, free_port())
    results = finish(again)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert "hpc_ckpt_1.ckpt" in results[0][1]
