"""Single-image ``anomaly-zoo predict`` from a checkpoint vs from its ONNX / TorchScript export (issue #13).

    python benchmarks/bench_predict.py [--ckpt CKPT] [--rounds 5] [--output benchmarks/results/predict.md]

Without ``--ckpt`` the UniAD demo config is fitted for one epoch (random init, ~1 min) into a temporary folder.
The checkpoint is exported to ONNX and TorchScript with the CLI, then each command predicts one 256 px PNG in a
fresh process, the three commands alternating round by round (machines are noisy). Reported: best and median
wall time and CPU time of the child process, and each command's best wall time over the checkpoint's.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from anomaly_zoo.data.synthetic_shapes import render, sample_rng  # noqa: E402

CLI = str(Path(sys.executable).with_name("anomaly-zoo"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([CLI, *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`anomaly-zoo {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
    return done


def _fit_demo(work: Path) -> Path:
    print("Fitting the UniAD demo config for one epoch (no --ckpt given) ...", flush=True)
    _run("fit", "--config", str(HERE.parent / "configs/demo/uniad.yaml"), "--trainer.max_epochs", "1",
         "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(work / "results"), "--data.root", str(work / "data"), cwd=work)
    return next((work / "results").rglob("*.ckpt"))


def _timed(args: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``anomaly-zoo`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    _run(*args, cwd=cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="a checkpoint (default: fit the UniAD demo for one epoch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=str(HERE / "results" / "predict.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="az_bench_predict_") as work:  # the fit, exports and predictions
        text = _bench(args, Path(work))
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)


def _bench(args: argparse.Namespace, work: Path) -> str:
    ckpt = Path(args.ckpt).resolve() if args.ckpt else _fit_demo(work)
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt")):
        _run("export", "--ckpt_path", str(ckpt), "--format", fmt, "--output", str(work / f"model.{suffix}"), cwd=work)
    image = work / "part.png"
    Image.fromarray(render("assembly", "missing_part", 256, sample_rng(0, "assembly", "test", 0)).image).save(image)
    commands = {"checkpoint (.ckpt)": ckpt, "ONNX (.onnx)": work / "model.onnx", "TorchScript (.pt)": work / "model.pt"}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for round_ in range(args.rounds):
        for name, model in commands.items():
            times[name].append(_timed(["predict", "--ckpt_path", str(model), str(image), "--output_dir",
                                       str(work / "pred" / f"{round_}")], cwd=work))
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1][0]:.2f} s" for n, t in times.items()),
              flush=True)
    reference = min(w for w, _ in times["checkpoint (.ckpt)"])
    load = os.getloadavg()[0]
    lines = [
        "# Single-image `predict`: checkpoint vs exported model",
        "",
        f"`python benchmarks/bench_predict.py` — {args.rounds} rounds, the commands alternating; one 256 px PNG, "
        f"the model {'`' + str(args.ckpt) + '`' if args.ckpt else 'of the UniAD demo config (1 epoch)'}; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end. Each run is a fresh `anomaly-zoo predict` "
        "process (import, load, predict, write the CSV and the overlay).",
        "",
        "| command | wall best (s) | wall median (s) | CPU best (s) | wall best / checkpoint's |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        lines.append(f"| `predict --ckpt_path` {name} | {min(walls):.2f} | {statistics.median(walls):.2f} | "
                     f"{min(cpus):.2f} | **{min(walls) / reference:.2f}×** |")
    lines += ["", "The ONNX route imports numpy, PIL, OpenCV and onnxruntime only (no torch, no Lightning); "
              "TorchScript imports torch but not Lightning; the checkpoint needs torch + Lightning + timm + "
              "albumentations before the model is built."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
