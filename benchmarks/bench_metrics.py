"""Benchmark the evaluation suite against a plain numpy global-sort implementation of the MVTec reference.

Usage::

    python benchmarks/bench_metrics.py            # 200 x 256^2 (all methods) + 1000 x 512^2 (streaming)
    python benchmarks/bench_metrics.py --quick    # smaller sets, a smoke run of a minute
    python benchmarks/bench_metrics.py --full     # also the numpy reference and exact mode on 1000 x 512^2
                                                  # (~10 GB RAM for the reference, several minutes)
    python benchmarks/bench_metrics.py --threads 0  # torch's default thread count instead of 1

Each method runs in its own subprocess (fresh memory), ``--repeats`` times; the best time is kept. Torch runs
single-threaded by default, like the numpy reference (and robust on a shared machine, where OpenMP threads
of parallel ops wait on each other).
Time covers every ``update`` and the final ``compute`` (for the reference: its whole computation from
in-memory numpy maps); generating the synthetic data is never timed. Peak memory is the largest RSS
increase over the process's RSS just before the metric work starts (sampled every 2 ms), plus the size
of the metric's own states. Writes ``benchmarks/results/metrics.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


# ----------------------------------------------------------------------------- data
def make_image(seed: int, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic (map, mask): smooth noise in ~[0, 30], every other image with 1-3 defects."""
    import cv2

    rng = np.random.default_rng([seed, i])
    sigma = size / 64
    amap = (
        cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma) * 4 * sigma + 10
    )
    mask = np.zeros((size, size), np.uint8)
    if i % 2:
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = (int(v) for v in rng.integers(size // 10, size - size // 10, 2))
            ay, ax = (int(v) for v in rng.integers(1, size // 10, 2))
            cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        amap += cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma) * float(rng.uniform(1, 8))
    return amap, mask


def make_batch(seed: int, start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [make_image(seed, i, size) for i in range(start, stop)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------- worker
class PeakRSS:
    """Largest RSS increase over the value at start, sampled in a background thread."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def state_mb(metric) -> float:
    total = 0
    for name in metric._defaults:
        value = getattr(metric, name)
        for t in value if isinstance(value, list) else [value]:
            total += t.numel() * t.element_size()
    return total / 2**20


def run_worker(spec: dict) -> dict:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from anomaly_zoo.metrics import AUPRO, PixelAUROC, PixelMetrics
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the numpy reference is test code
    from tests.metrics.reference import reference_aupro, reference_auroc

    n, size, seed, method = spec["n"], spec["size"], spec["seed"], spec["method"]
    slices = [(s, min(s + BATCH, n)) for s in range(0, n, BATCH)]
    if method.startswith("reference") or method == "anomalib_aupro" or not spec["on_the_fly"]:
        data = [make_batch(seed, a, b, size) for a, b in slices]
    else:
        data = None
        first = make_batch(seed, *slices[0], size)  # the RSS baseline includes one input batch
    result: dict = {"method": method, "n": n, "size": size}

    if method in ("reference_aupro", "reference_auroc"):
        maps = [m for batch in data for m in batch[0]]
        masks = [m for batch in data for m in batch[1]]
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            if method == "reference_aupro":
                value = reference_aupro(maps, masks, 0.3)
            else:
                value = reference_auroc(
                    np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])
                )
            elapsed = time.perf_counter() - t0
        return {
            **result,
            "time": elapsed,
            "value": value,
            "rss_mb": mem.increase_mb,
            "state_mb": float("nan"),
        }

    if method == "anomalib_aupro":
        from anomalib.metrics import AUPRO as AnomalibAUPRO  # noqa: N811

        metric = AnomalibAUPRO(fpr_limit=0.3)
    else:
        mode = "exact" if method.startswith("exact") else "streaming"
        kind = method.split("_", 1)[1]
        metric = {
            "aupro": lambda: AUPRO(mode=mode),
            "auroc": lambda: PixelAUROC(mode=mode),
            "all": lambda: PixelMetrics(mode=mode),
        }[kind]()

    elapsed = 0.0
    with PeakRSS() as mem:
        for k, (a, b) in enumerate(slices):
            if data is not None:
                maps, masks = data[k]
            elif k == 0:
                maps, masks = first
                del first
            else:
                maps, masks = make_batch(seed, a, b, size)
            tm, tk = torch.from_numpy(maps).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1)
            t0 = time.perf_counter()
            metric.update(tm, tk)
            elapsed += time.perf_counter() - t0
            del maps, masks, tm, tk  # at most one input batch alive at a time
        result["state_mb"] = state_mb(metric)
        t0 = time.perf_counter()
        out = metric.compute()
        elapsed += time.perf_counter() - t0
    value = float(out["aupro"]) if isinstance(out, dict) else float(out)
    bound = float("nan")
    if method.startswith("streaming"):  # the documented bound on |value - exact value| (not timed)
        bound = metric.error_bounds()["aupro"] if isinstance(out, dict) else metric.error_bound()
    return {**result, "time": elapsed, "value": value, "bound": bound, "rss_mb": mem.increase_mb}


# --------------------------------------------------------------------------- driver
def run_in_subprocess(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(spec: dict, repeats: int) -> dict:
    runs = [run_in_subprocess(spec) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["time"])
    best["rss_mb"] = max(r["rss_mb"] for r in runs)
    return best


def scenario(
    name: str, n: int, size: int, methods: list[str], repeats: int, threads: int, on_the_fly: bool
) -> list[dict]:
    rows = []
    for method in methods:
        spec = {
            "n": n,
            "size": size,
            "seed": 0,
            "method": method,
            "threads": threads,
            "on_the_fly": on_the_fly,
        }
        print(f"[{name}] {method} ...", flush=True)
        row = best_of(spec, repeats)
        print(f"    {row['time']:.3f} s  value {row['value']:.6f}  +RSS {row['rss_mb']:.0f} MB", flush=True)
        rows.append(row)
    return rows


def fmt_table(rows: list[dict], baselines: dict[str, float]) -> str:
    lines = [
        "| method | time (s) | speed-up vs numpy reference | value | abs. diff vs reference | streaming error bound "
        "| peak RSS increase (MB) | metric state (MB) |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        base_key = "reference_auroc" if r["method"].endswith("auroc") else "reference_aupro"
        base_time = baselines.get(f"{base_key}:time")
        base_val = baselines.get(f"{base_key}:value")
        ratio = f"{base_time / r['time']:.1f}x" if base_time else "–"
        diff = (
            f"{abs(r['value'] - base_val):.1e}"
            if base_val is not None and not r["method"].startswith("reference")
            else "–"
        )
        state = "–" if r["state_mb"] != r["state_mb"] else f"{r['state_mb']:.1f}"
        bound = "–" if r.get("bound", float("nan")) != r.get("bound", float("nan")) else f"{r['bound']:.1e}"
        lines.append(
            f"| {r['method']} | {r['time']:.3f} | {ratio} | {r['value']:.6f} | {diff} | {bound} "
            f"| {r['rss_mb']:.0f} | {state} |"
        )
    return "\n".join(lines)


def baselines_of(rows: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rows:
        if r["method"].startswith("reference"):
            out[f"{r['method']}:time"] = r["time"]
            out[f"{r['method']}:value"] = r["value"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sets (smoke run)")
    parser.add_argument("--full", action="store_true", help="also reference and exact mode on the big set")
    parser.add_argument("--repeats", type=int, default=None, help="runs per method (best time kept)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, like the single-threaded numpy reference; 0: torch default)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "metrics.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    small_n, big_n, big_size = (50, 100, 512) if args.quick else (200, 1000, 512)
    repeats = args.repeats or (1 if args.quick else 3)
    has_anomalib = importlib.util.find_spec("anomalib") is not None
    ours = ["exact_aupro", "streaming_aupro", "exact_auroc", "streaming_auroc", "exact_all", "streaming_all"]
    small_methods = ["reference_aupro", "reference_auroc", *ours] + (
        ["anomalib_aupro"] if has_anomalib else []
    )
    big_methods = ["streaming_aupro", "streaming_all"]
    if args.full:
        big_methods = ["reference_aupro", "reference_auroc", "exact_aupro", "exact_all", *big_methods]

    load_before = os.getloadavg()
    started = time.perf_counter()
    small = scenario(f"{small_n}x256", small_n, 256, small_methods, repeats, args.threads, on_the_fly=False)
    big = scenario(f"{big_n}x{big_size}", big_n, big_size, big_methods, 1, args.threads, on_the_fly=True)
    scaling = []
    for n in (64, 256) if args.quick else (64, 256, 1024):
        scaling += scenario(
            f"{n}x256 scaling", n, 256, ["streaming_all", "exact_all"], 1, args.threads, on_the_fly=True
        )
    load_after = os.getloadavg()

    import torch

    small_base = baselines_of(small)
    big_base = baselines_of(big) or {}
    text = [
        "# Metric benchmark",
        "",
        f"Generated by `python benchmarks/bench_metrics.py{' --quick' if args.quick else ''}{' --full' if args.full else ''}` "
        f"on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, no GPU, torch {torch.__version__}, numpy {np.__version__}, "
        f"torch threads {args.threads or torch.get_num_threads()}. Load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (other jobs share the machine: absolute times are noisy, ratios within one run less so). "
        f"Total run time {time.perf_counter() - started:.0f} s.",
        "",
        "Synthetic maps (smooth noise, every other image with 1-3 elliptic defects), batches of 32, float32 maps, "
        "uint8 masks. Time = all `update` calls + `compute` (best of "
        f"{repeats} for the first table). `reference_*` is the plain numpy global-sort port of the MVTec AD "
        "evaluation code in `tests/metrics/reference.py` (AUPRO) and a numpy global-sort ROC AUC. "
        "`*_all` computes P-AUROC, P-AP, P-F1max and AUPRO together (value shown: AUPRO@0.3). "
        f"anomalib: {'timed' if has_anomalib else 'not installed, not timed'}; scikit-learn: not installed, not timed.",
        "",
        f"## {small_n} images of 256x256 ({small_n * 256 * 256 / 1e6:.1f} M pixels)",
        "",
        fmt_table(small, small_base),
        "",
        f"## {big_n} images of {big_size}x{big_size} ({big_n * big_size * big_size / 1e6:.0f} M pixels)",
        "",
        "One run per method. Streaming runs generate each batch just before its `update` (generation not "
        "timed), so their RSS increase is what the metric needs; reference and exact runs hold every map in "
        "memory. "
        + (
            ""
            if args.full
            else "Reference and exact mode are skipped here: run with `--full` (~10 GB RAM, minutes)."
        ),
        "",
        fmt_table(big, big_base if big_base else {}),
        "",
        "## Peak memory against the number of images (256x256, data generated per batch)",
        "",
        "| method | images | peak RSS increase (MB) | metric state (MB) | time (s) |",
        "|:--|--:|--:|--:|--:|",
        *[
            f"| {r['method']} | {r['n']} | {r['rss_mb']:.0f} | {r['state_mb']:.1f} | {r['time']:.3f} |"
            for r in scaling
        ],
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(text), encoding="utf-8")
    print("\n".join(text))
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
