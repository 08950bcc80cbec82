"""AnomalyMoE speed: inference per image ÷ the frozen backbone alone (goal ≤ 1.5×), selected-only vs run-all.

    python benchmarks/bench_anomalymoe.py [--device cpu|cuda] [--repeats 3] [--configs demo paper] [--prepare 16]

``demo`` = configs/demo/anomalymoe.yaml (tiny random ViT, 112 px crop); ``paper`` = ViT-B/14-reg4 at 392 px with
the authors' expert widths (random weights: speed does not depend on them). Inference = the model's level maps
(each image's selected experts only), fusion, resize, blur and score; "run-all" is the authors' way (all 18
experts on every image). The router is given random weights so images pick varied experts (a freshly
initialised router sends every image to the same three). Backbone-only and full runs alternate; each time is
the best of ``--repeats`` rounds. ``--prepare N`` also times the component-mask prepare step per image on N
synthetic images (tiny random DINO-v1 ViT for demo; ViT-S/16 at 448 px, random weights, for paper).
Writes ``benchmarks/results/anomalymoe.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anomaly_zoo.models.anomalymoe import AnomalyMoE  # noqa: E402
from anomaly_zoo.models.anomalymoe.fusion import LEVELS, finish_map, fuse_levels, top_percent_score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def demo_config() -> tuple[dict, int, int, dict]:
    config = yaml.safe_load((ROOT / "configs" / "demo" / "anomalymoe.yaml").read_text())
    args = dict(config["model"]["init_args"])
    size = int(int(config["data"]["init_args"]["image_size"]) * args.get("center_crop", 0.875))
    return args, size, 8, dict(args.get("mask_settings") or {})


CONFIGS = {
    "demo": demo_config,
    "paper": lambda: ({"pretrained": False}, 392, 2, {"pretrained": False}),
}


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _infer(module: AnomalyMoE, images, masks, valid, run_all: bool):
    with torch.no_grad():
        out = module.model.level_maps(images, masks, valid, run_all=run_all)
        from anomaly_zoo.models.anomalymoe.fusion import level_weights
        weights = level_weights(out["routing"].weights, module.model.counts)
        fused = fuse_levels([out[k] for k in LEVELS], weights, [(0.0, 1.0)] * 3, tuple(images.shape[-2:]))
        final = finish_map(fused)
        return top_percent_score(final)


def bench(name: str, device: torch.device, repeats: int) -> dict:
    args, size, batch, _ = CONFIGS[name]()
    torch.manual_seed(0)
    module = AnomalyMoE(**{**args, "component_masks": False}).to(device).eval()
    torch.nn.init.normal_(module.model.router.gate[2].weight, std=1.0)  # varied routing
    images = torch.randn(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, 5, size, size, device=device) > 0.7).to(torch.uint8)
    valid = torch.ones(batch, 5, dtype=torch.bool, device=device)
    with torch.no_grad():
        def backbone():
            module.model.encode(images)
    backbone()
    _infer(module, images, masks, valid, False)
    t_b, t_s, t_a = [], [], []
    for _ in range(repeats):
        t_b.append(_timed(backbone, device))
        t_s.append(_timed(lambda: _infer(module, images, masks, valid, False), device))
        t_a.append(_timed(lambda: _infer(module, images, masks, valid, True), device))
    routing = module.model.level_maps(images[:1])["routing"]
    del routing
    per_family = [int(module.model.router(module.model.encode(images).cls).selected[:, module.model.expert_slice(f)]
                      .sum()) for f in LEVELS]
    return {"config": name, "image": size, "batch": batch, "backbone_ms": 1000 * min(t_b) / batch,
            "selected_ms": 1000 * min(t_s) / batch, "all_ms": 1000 * min(t_a) / batch,
            "ratio": min(t_s) / min(t_b), "ratio_all": min(t_a) / min(t_b), "speedup": min(t_a) / min(t_s),
            "picks": per_family, "params": sum(p.numel() for p in module.model.parameters() if p.requires_grad)}


def bench_prepare(name: str, n: int) -> float:
    from anomaly_zoo.data.synthetic import SyntheticDataModule
    from anomaly_zoo.models.anomalymoe.prepare_masks import attach_component_masks

    _, size, _, settings = CONFIGS[name]()
    image_size = 448 if name == "paper" else int(settings.get("image_size", 112))
    dm = SyntheticDataModule(category=["assembly"], num_train=n, num_val=0, num_test=0, image_size=image_size,
                             num_workers=0)
    dm.setup("fit")
    settings = {**settings, "progress": False, "image_size": image_size}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        attach_component_masks(dm, "fit", cache_dir=cache, **settings)
    return 1000 * (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--prepare", type=int, default=0, help="images for the prepare-step timing (0 = skip)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "anomalymoe.md"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = [bench(name, device, args.repeats) for name in args.configs]
    prepare = {name: bench_prepare(name, args.prepare) for name in args.configs} if args.prepare else {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# AnomalyMoE speed", "",
        f"Device: {device.type}, {torch.get_num_threads()} threads; torch {torch.__version__}; 1-min load average at "
        f"the end: {load:.1f} (above the core count = shared CPU). Best of {args.repeats} alternating rounds.", "",
        "| config | image | batch | trainable params | picks patch/global/component | backbone ms/img "
        "| AnomalyMoE ms/img (selected) | ratio (goal ≤ 1.5) | run-all ms/img | run-all ratio | speed-up | prepare ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        prep = f"{prepare[r['config']]:.0f}" if r["config"] in prepare else "–"
        lines.append(
            f"| {r['config']} | {r['image']} | {r['batch']} | {r['params'] / 1e6:.1f} M | {'/'.join(map(str, r['picks']))} "
            f"| {r['backbone_ms']:.1f} | {r['selected_ms']:.1f} | {r['ratio']:.2f}× | {r['all_ms']:.1f} "
            f"| {r['ratio_all']:.2f}× | {r['speedup']:.2f}× | {prep} |")
    lines += ["", "Inference = frozen ViT, the selected experts, per-level maps, fusion, resize to 256, blur, top-1 % "
              "score. Run-all = every expert on every image (the authors' code). Prepare = DINO-v1 features, "
              "k-means, CRF, threshold, cache write, per training image.", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
