"""Finding the checkpoint to resume, and the command that resumes it.

Runs live in ``<root>/<model>/<data>/version_N/checkpoints/`` (the CLI's CSVLogger layout). ``--ckpt_path
last`` means the newest ``last.ckpt`` among the previous runs of that model and data — not the new run's
``version_N``, which is empty when the run starts.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


class NothingToResumeError(FileNotFoundError):
    """``--ckpt_path last`` found no ``last.ckpt`` (the CLI turns it into one ``error:`` line)."""


def find_last_checkpoint(run_root: str | Path) -> Path | None:
    """The most recently written ``last*.ckpt`` under ``run_root`` (``<root>/<model>/<data>``), or None."""
    root = Path(run_root)
    if not root.is_dir():
        return None
    candidates = [p for p in root.glob("version_*/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def require_last_checkpoint(run_root: str | Path) -> Path:
    found = find_last_checkpoint(run_root)
    if found is None:
        raise NothingToResumeError(
            f"--ckpt_path last: no last.ckpt under '{run_root}/version_*/checkpoints/' to resume (no previous run "
            "of this model and data wrote one): start without --ckpt_path, or give a checkpoint file.")
    return found


def resume_command(checkpoint: str | Path, argv: list[str] | None = None) -> str:
    """The command line that continues from ``checkpoint``: this process's own, ``--ckpt_path`` replaced.

    Under torchrun / srun every rank runs the same command: launch it the same way.
    """
    argv = list(sys.argv if argv is None else argv)
    program = "anomaly-zoo" if Path(argv[0]).name in ("anomaly-zoo", "cli.py") else shlex.join([sys.executable, argv[0]])
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        args.append(arg)
    launcher = ""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        launcher = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', '?')} "
    elif "SLURM_JOB_ID" in os.environ:
        launcher = "srun "
    return f"{launcher}{program} {shlex.join(args)} --ckpt_path {shlex.quote(str(checkpoint))}"
