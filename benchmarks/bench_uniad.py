"""UniAD speed: inference time per image ÷ the frozen backbone's time alone (goal ≤ 1.3×), and training step time.

    python benchmarks/bench_uniad.py [--device cpu|cuda] [--repeats 7] [--configs demo paper]

Two configurations: ``demo`` (configs/demo/uniad.yaml: random ResNet-18 taps, small transformer, 128 px) and
``paper`` (EfficientNet-B4 taps 1/5/9/21, 256-d 4+4-layer transformer, 224 px; random weights — speed does not
depend on them). Backbone-only and full inference are timed in alternation (so machine load hits both alike);
each time is the best of ``--repeats`` rounds after warm-up (the least disturbed by other processes). Prints a Markdown table and writes it to
``benchmarks/results/uniad.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anomaly_zoo.models.uniad import UniADModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_ONLY = ("lr", "weight_decay", "lr_step_epochs", "lr_gamma", "official_checkpoint", "pixel_metrics",
              "fpr_limit", "results_dir")


def demo_config() -> tuple[dict, int, int]:
    config = yaml.safe_load((ROOT / "configs" / "demo" / "uniad.yaml").read_text())
    args = {k: v for k, v in config["model"]["init_args"].items() if k not in MODEL_ONLY}
    data = config["data"]["init_args"]
    return args, int(data["image_size"]), int(data["batch_size"])


CONFIGS = {
    "demo": demo_config,
    "paper": lambda: ({"backbone": "tf_efficientnet_b4", "pretrained": False}, 224, 8),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _gflops(model: UniADModel, size: int, device: torch.device) -> tuple[float, float]:
    """Forward GFLOP per image of the frozen backbone and of the transformer (torch's FLOP counter, plus the
    attention products, which it does not count for scaled_dot_product_attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            features = model.extract_features(image)
        backbone = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter:
            model.reconstruct(features, jitter=False)
    recon = model.reconstruction
    tokens = features.shape[-2] * features.shape[-1]
    hidden = recon.input_proj.out_features
    attentions = len(recon.encoder_layers) + 2 * len(recon.decoder_layers)
    attention_flops = attentions * 2 * (2 * tokens * tokens * hidden)  # q·kᵀ and p·v
    return backbone, (counter.get_total_flops() + attention_flops) / 1e9


def bench(name: str, device: torch.device, repeats: int, warmup: int = 2) -> dict:
    args, size, batch = CONFIGS[name]()
    torch.manual_seed(0)
    model = UniADModel(**args).to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)

    def backbone():
        with torch.no_grad():
            model.extract_features(images)

    def full():
        model.predict(images)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

    def train_step():
        model.train()
        loss = model(images)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        model.eval()

    for _ in range(warmup):
        backbone(), full(), train_step()
    t_backbone, t_full, t_train = [], [], []
    for _ in range(repeats):
        t_backbone.append(_timed(backbone, device))
        t_full.append(_timed(full, device))
    for _ in range(max(3, repeats // 2)):
        t_train.append(_timed(train_step, device))
    n_recon = sum(p.numel() for p in model.reconstruction.parameters())
    gflop_backbone, gflop_recon = _gflops(model, size, device)
    return {
        "config": name,
        "image": size,
        "batch": batch,
        "backbone_ms": 1000 * min(t_backbone) / batch,
        "full_ms": 1000 * min(t_full) / batch,
        "ratio": min(t_full) / min(t_backbone),
        "train_step_ms": 1000 * min(t_train),
        "train_ms_per_image": 1000 * min(t_train) / batch,
        "transformer_params": n_recon,
        "gflop_backbone": gflop_backbone,
        "gflop_recon": gflop_recon,
        "backbone": args.get("backbone"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "uniad.md"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench(name, device, args.repeats) for name in args.configs]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{_cpu_name()}, {torch.get_num_threads()} threads")
    lines = [
        "# UniAD speed",
        "",
        f"Device: {device.type} ({where}); torch {torch.__version__}; 1-min load average at the end: {load:.1f} "
        f"(above the core count means other processes shared the CPU). Best of {args.repeats} alternating rounds.",
        "",
        "| config | backbone | image | batch | transformer params | GFLOP/img backbone / transformer | backbone ms/img "
        "| UniAD ms/img | ratio (goal ≤ 1.3) | train step ms (batch) | train ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['backbone']} | {r['image']} | {r['batch']} | {r['transformer_params'] / 1e6:.2f} M "
            f"| {r['gflop_backbone']:.2f} / {r['gflop_recon']:.2f} | {r['backbone_ms']:.1f} | {r['full_ms']:.1f} | {r['ratio']:.2f}× | {r['train_step_ms']:.0f} "
            f"| {r['train_ms_per_image']:.1f} |"
        )
    lines += [
        "",
        "UniAD ms/img is the whole inference (frozen backbone, tap resizing, transformer, anomaly map at the input "
        "size, image score); the backbone column is the frozen feature extractor alone (the floor). Train step = "
        "forward, MSE, backward, clip-grad-norm 0.1 and AdamW on the transformer.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
