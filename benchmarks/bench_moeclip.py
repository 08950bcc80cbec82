"""MoECLIP speed and memory: inference time per image ÷ the frozen CLIP visual tower alone (goal ≤ 1.3×), training
step time, and peak memory of a training step with and without gradient checkpointing.

    python benchmarks/bench_moeclip.py [--device cpu|cuda] [--repeats 5] [--configs demo paper] [--paper-depth 24]

``demo`` is configs/demo/moeclip.yaml's tiny open_clip; ``paper`` has ViT-L/14@336 widths at 518 px (random
weights — speed does not depend on them) with ``--paper-depth`` vision blocks (24 = the paper; fewer on slow
machines, adapters at the same quarter points). Tower-only and full inference are timed in alternation in one
process (machine load hits both alike), best of ``--repeats``. Peak memory of one training step is measured in a
fresh child process each (max RSS on CPU, max allocated on CUDA). Writes ``benchmarks/results/moeclip.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anomaly_zoo.models.moeclip import MoECLIP  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def demo_config() -> tuple[dict, int]:
    config = yaml.safe_load((ROOT / "configs" / "demo" / "moeclip.yaml").read_text())
    args = {k: v for k, v in config["model"]["init_args"].items() if k not in ("lr",)}
    train = config["data"]["init_args"]["train_data"]["init_args"]
    return args, int(train["batch_size"])


def paper_config(depth: int) -> tuple[dict, int]:
    blocks = [max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)]
    cfg = {"embed_dim": 768, "vision_cfg": {"image_size": 518, "layers": depth, "width": 1024, "patch_size": 14},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 1}}
    return {"clip_config": cfg, "pretrained": False, "image_size": 518, "adapter_blocks": blocks}, 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _batch(module: MoECLIP, batch: int, device) -> dict:
    size = module.model.clip.image_size
    mask = torch.zeros(batch, 1, *size, dtype=torch.uint8, device=device)
    mask[:, :, : size[0] // 4, : size[1] // 4] = 1
    return {"image": torch.randn(batch, 3, *size, device=device), "mask": mask,
            "label": torch.ones(batch, dtype=torch.long, device=device), "category": ["bottle"] * batch}


def _train_step(module: MoECLIP, optimizer, batch: dict) -> None:
    terms = module.model.training_losses(batch["image"], batch["mask"], batch["label"], batch["category"])
    optimizer.zero_grad()
    module.weighted_loss(terms).backward()
    optimizer.step()


def _peak_memory_child(args: dict, batch: int, checkpointing: bool, device: str, queue) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    module = MoECLIP(**args, gradient_checkpointing=checkpointing).to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    data = _batch(module, batch, device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _train_step(module, optimizer, data)
    if device == "cuda":
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)


def peak_memory(args: dict, batch: int, checkpointing: bool, device: str) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_peak_memory_child, args=(args, batch, checkpointing, device, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def bench(name: str, args: dict, batch: int, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    module = MoECLIP(**args).to(device).eval()
    visual = module.model.clip.visual
    data = _batch(module, 1, device)
    images, categories = data["image"], data["category"]
    with torch.inference_mode():
        module.predict_anomaly(images, categories)  # warm-up (fills the text caches)
        visual(images)
        tower, full = [], []
        for _ in range(repeats):
            tower.append(_timed(lambda: visual(images), device))
            full.append(_timed(lambda: module.predict_anomaly(images, categories), device))
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    train_batch = _batch(module, batch, device)
    _train_step(module, optimizer, train_batch)
    step = min(_timed(lambda: _train_step(module, optimizer, train_batch), device) for _ in range(max(1, repeats // 2)))
    memory = {flag: peak_memory(args, batch, flag, device.type) for flag in (False, True)}
    return {"config": name, "tower": min(tower), "full": min(full), "step": step, "batch": batch,
            "mem_plain": memory[False], "mem_ckpt": memory[True]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--paper-depth", type=int, default=24)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "moeclip.md"))
    opts = parser.parse_args()
    device = torch.device(opts.device)
    rows = []
    for name in opts.configs:
        args, batch = demo_config() if name == "demo" else paper_config(opts.paper_depth)
        label = name if name == "demo" else f"paper widths, {opts.paper_depth} blocks, 518 px"
        rows.append(bench(label, args, batch, device, opts.repeats))
        print(rows[-1], flush=True)
    lines = [
        "# MoECLIP speed and memory",
        "",
        f"`python benchmarks/bench_moeclip.py --paper-depth {opts.paper_depth}` on {device.type} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}). "
        "Inference: one image, best of the rounds, tower and full model timed in alternation. "
        "Memory: peak of one training step in a fresh process (CPU: max RSS growth).",
        "",
        "| config | frozen visual tower (s/img) | MoECLIP inference (s/img) | ratio | train step (s, batch) "
        "| peak mem plain (MiB) | peak mem checkpointed (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['tower']:.4f} | {r['full']:.4f} | {r['full'] / r['tower']:.2f}× | "
                     f"{r['step']:.3f} ({r['batch']}) | {r['mem_plain']:.0f} | {r['mem_ckpt']:.0f} |")
    lines += ["", "Goal: inference ≤ 1.3× the frozen visual tower alone (the full tower, all blocks, as CLIP runs it)."]
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
