"""The machine and software a benchmark ran on: the header of every generated table."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time

from benchmarks.suite.spec import ROOT

PACKAGES = ("torch", "lightning", "timm", "open_clip_torch")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """Short commit, ``+dirty`` when tracked files under anomaly_zoo/, configs/ or benchmarks/suite/ changed."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "anomaly_zoo",
                                "configs", "benchmarks/suite"], cwd=ROOT, capture_output=True, text=True).stdout
        return commit + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def describe() -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": f"cuda ({gpu})" if gpu else "cpu",
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "torch threads": str(torch.get_num_threads()),
        "load average (1 min)": f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a",
        **{name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "git commit": git_commit(),
    }


def header_line(info: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in info.items())
