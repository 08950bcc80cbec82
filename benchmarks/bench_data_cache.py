"""Epoch time of a UniAD fit uncached vs with the decoded-image cache vs with both caches (goal: ≥ 5× on CPU).

    python benchmarks/bench_data_cache.py [--images 32] [--epochs 3] [--threads 1] [--quick]

A generated MVTec-layout tree of 1024² RGB PNGs (smooth colour fields plus sensor-like noise: ~2 MB per file,
decoding like MVTec AD's photos), UniAD at the paper's 224 px with the paper's frozen EfficientNet-B4 taps
(random weights: speed does not depend on them) and the demo config's small transformer, batch 8, the loader in
the main process (``num_workers 0``: the decode cost shows fully instead of hiding behind idle cores). Three fits
in one run, each of ``--epochs`` epochs:

- ``uncached``: ``cache: off``, ``feature_cache: off`` — every epoch decodes and resizes every PNG;
- ``decoded cache``: ``cache: disk`` — decoded + resized once (built in epoch 1, timed separately);
- ``decoded + feature cache``: also ``feature_cache: float16`` — the backbone runs in epoch 1 only.

The steady epoch time is the fastest epoch after the first (least disturbed by other processes on a shared
machine). Also: the loader alone (images/s, one pass) and the caches' sizes. Prints a Markdown table and
writes it to ``benchmarks/results/data_cache.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(backbone="tf_efficientnet_b4", pretrained=False, taps=(1, 5, 9, 21), feature_size=14,
             hidden_dim=64, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=128,
             neighbor_size=7, lr=1e-3)
IMAGE_SIZE, BATCH = 224, 8


def write_tree(root: Path, n: int, side: int) -> float:
    """``n`` train PNGs of ``side``² in ``root/bench/train/good``; returns the mean decode+resize time (s)."""
    from PIL import Image

    folder = root / "bench" / "train" / "good"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"{i:03d}.png"
        if path.exists():
            continue
        low = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((side, side), Image.BICUBIC)).astype(np.float32)
        image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(path)
    (root / "bench" / "test" / "good").mkdir(parents=True, exist_ok=True)
    Image.open(folder / "000.png").save(root / "bench" / "test" / "good" / "000.png")
    from anomaly_zoo.data.io import read_image
    from anomaly_zoo.data.transforms import resize_pair

    times = []
    for path in sorted(folder.glob("*.png"))[:4]:
        start = time.perf_counter()
        image = read_image(path)
        resize_pair(image, np.zeros(image.shape[:2], bool), (IMAGE_SIZE, IMAGE_SIZE))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def datamodule(root: Path, cache: str):
    from anomaly_zoo.data.mvtec_ad import MVTecAD

    return MVTecAD(root=root, category="bench", image_size=IMAGE_SIZE, batch_size=BATCH, num_workers=0, cache=cache)


def loader_rate(root: Path, cache: str) -> float:
    """Images per second of one pass of the training loader (after the cache, if any, is built)."""
    dm = datamodule(root, cache)
    dm.setup("fit")
    loader = dm.train_dataloader()
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["image"])
    return n / (time.perf_counter() - start)


def fit(root: Path, cache: str, feature_cache: str, epochs: int) -> dict:
    import lightning as L
    import torch

    from anomaly_zoo.models.uniad import UniAD

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    module = UniAD(**MODEL, feature_cache=feature_cache)
    dm = datamodule(root, cache)
    timer = EpochTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer])
    start = time.perf_counter()
    dm.setup("fit")
    dm.train_dataloader()  # the decoded cache is built here, before the first epoch starts
    setup = time.perf_counter() - start
    trainer.fit(module, datamodule=dm)
    image_cache = dm.train_dataset.image_cache
    return {"setup": setup, "first": timer.times[0], "steady": min(timer.times[1:]),
            "image_cache_bytes": image_cache.nbytes if image_cache is not None else 0,
            "feature_cache_bytes": module.feature_cache.nbytes,
            "backbone_images": module.feature_cache.computed if module.feature_cache.enabled
            else epochs * trainer.num_training_batches * BATCH,
            "loss": float(trainer.callback_metrics.get("train/loss_epoch", float("nan")))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="training images in the generated tree")
    parser.add_argument("--side", type=int, default=1024, help="side of the generated PNGs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--root", default=None, help="where the PNG tree goes (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="8 images of 256², 2 epochs: a smoke run")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "data_cache.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.side, args.epochs = 8, 256, 2
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="az_bench_cache_"))
    os.environ["ANOMALY_ZOO_CACHE"] = str(work / "cache")  # a fresh cache: its build is part of the run
    root = Path(args.root) if args.root else work / "tree"
    decode = write_tree(root, args.images, args.side)

    rates = {"off": loader_rate(root, "off")}
    runs = {
        "uncached": fit(root, "off", "off", args.epochs),
        "decoded cache": fit(root, "disk", "off", args.epochs),
        "decoded + feature cache (float16)": fit(root, "disk", "float16", args.epochs),
    }
    rates["disk"] = loader_rate(root, "disk")
    base = runs["uncached"]["steady"]
    lines = [
        f"# Data caches: UniAD epoch time ({args.images} × {args.side}² PNG → {IMAGE_SIZE} px)",
        "",
        f"`python benchmarks/bench_data_cache.py --images {args.images} --side {args.side} --epochs {args.epochs} "
        f"--threads {args.threads}`{' (--quick)' if args.quick else ''} · {platform.processor() or platform.machine()}, "
        f"{args.threads} torch thread(s), loader in the main process, batch {BATCH}, all in one run.",
        f"Frozen EfficientNet-B4 taps (random weights), demo-size transformer. Decode + resize of one file: "
        f"{decode * 1e3:.0f} ms.",
        "",
        "| run | first epoch (s) | steady epoch (s) | speed-up | backbone runs | cache size |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        size = r["image_cache_bytes"] + r["feature_cache_bytes"]
        first = r["first"] + r["setup"]
        lines.append(f"| {name} | {first:.2f} | {r['steady']:.2f} | **{base / r['steady']:.1f}×** | "
                     f"{r['backbone_images']} images | {size / 2**20:.1f} MB |")
    image_mb = runs["decoded cache"]["image_cache_bytes"] / 2**20
    feature_mb = runs["decoded + feature cache (float16)"]["feature_cache_bytes"] / 2**20
    lines += [
        "",
        f"Loader alone (one pass of the training loader, main process): {rates['off']:.1f} images/s uncached, "
        f"{rates['disk']:.0f} images/s from the decoded cache (**{rates['disk'] / rates['off']:.0f}×**).",
        f"Cache sizes: decoded images {image_mb:.1f} MB on disk ({image_mb / args.images * 1024:.0f} KB per "
        f"image at {IMAGE_SIZE}²), frozen features {feature_mb:.1f} MB in RAM (float16).",
        "\"first epoch\" includes building the caches (the decoded cache: decode + resize + write once; the "
        "feature cache: the backbone once per image). \"backbone runs\": images the backbone ran on in the "
        "whole fit.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
