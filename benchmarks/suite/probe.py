"""``BenchmarkProbe``: a Lightning callback that measures a real CLI run from the inside.

Added to the run with ``--trainer.callbacks+=benchmarks.suite.probe.BenchmarkProbe``; it changes nothing the
run computes. It writes ``probe.json`` (timings, throughput, memory) and ``curves.npz`` (per-category image
ROC, pixel ROC and PRO curves, read from the run's own metric states) to ``$ANOMALY_ZOO_PROBE_DIR``.

What is timed (wall clock, CUDA synchronised on GPU):
- training: every ``training_step`` + backward + optimiser step (``on_train_batch_start`` → ``_end``), so
  data loading is excluded; fit time is the whole ``fit`` call, validation included.
- inference: the model's own calls during ``test`` (``predict_anomaly``, or ``predict_set_statistics`` and
  ``finish_set`` for set-level protocols);
- frozen backbone: the time spent inside the outermost ``FrozenModule`` forwards during ``test`` (forward
  hooks), i.e. the floor that no head can go below;
- evaluation suite: ``AnomalyMetrics.update`` and ``compute`` during ``test``, as a share of the test loop
  (``on_test_start`` → ``on_test_end``, data loading and map resizing included).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from anomaly_zoo.metrics.pro import pro_curve_points
from anomaly_zoo.models.components.backbone import FrozenModule

PROBE_DIR_ENV = "ANOMALY_ZOO_PROBE_DIR"
#: Curves are stored at most this many points each (linear interpolation on the FPR axis keeps their shape).
CURVE_POINTS = 512


class _Clock:
    """Accumulates wall-clock seconds of wrapped calls."""

    def __init__(self, device: torch.device) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed


def _outermost_frozen(module: torch.nn.Module) -> list[torch.nn.Module]:
    found: list[torch.nn.Module] = []

    def visit(m: torch.nn.Module) -> None:
        for child in m.children():
            if isinstance(child, FrozenModule):
                found.append(child)
            else:
                visit(child)

    visit(module)
    return found


def _thin(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= n:
        return x, y
    grid = np.linspace(0.0, 1.0, n)
    return grid, np.interp(grid, x, y)


def _roc(counts) -> tuple[np.ndarray, np.ndarray]:
    tp, fp = counts.cumulative()
    tpr = np.concatenate([[0.0], tp.double().cpu().numpy() / max(counts.n_pos, 1)])
    fpr = np.concatenate([[0.0], fp.double().cpu().numpy() / max(counts.n_neg, 1)])
    return fpr, tpr


class BenchmarkProbe(pl.Callback):
    """Times, memory and curves of one ``fit`` + ``test`` run (see the module docstring)."""

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = Path(output_dir or os.environ.get(PROBE_DIR_ENV) or ".")
        self.stats: dict[str, Any] = {"train_images": 0, "train_step_s": 0.0, "test_images": 0}
        self._t: dict[str, float] = {}
        self._metrics = None
        self._hooks: list[Any] = []
        self._clocks: dict[str, _Clock] = {}
        self._restore: list[tuple[Any, str]] = []

    # ---- fit ------------------------------------------------------------------------------------
    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t["fit"] = time.perf_counter()
        self.stats["train_batch_size"] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._t["step"] = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.stats["train_step_s"] += time.perf_counter() - self._t.pop("step")
        self.stats["train_images"] += int(batch["image"].shape[0])

    def on_fit_end(self, trainer, pl_module) -> None:
        self.stats["fit_s"] = time.perf_counter() - self._t["fit"]
        self.stats["epochs"] = int(getattr(pl_module, "epochs_trained", trainer.current_epoch))
        self._write()

    # ---- test -----------------------------------------------------------------------------------
    def on_test_start(self, trainer, pl_module) -> None:
        device = pl_module.device
        self._clocks = {k: _Clock(device) for k in ("inference", "backbone", "evaluation")}
        for name in ("predict_anomaly", "predict_set_statistics", "finish_set"):
            original = getattr(pl_module, name)
            setattr(pl_module, name, self._clocks["inference"].wrap(original))
            self._restore.append((pl_module, name))
        backbone = self._clocks["backbone"]
        for module in _outermost_frozen(pl_module):
            def pre(_m, _inputs, _clock=backbone):
                _clock.sync()
                self._t["backbone"] = time.perf_counter()

            def post(_m, _inputs, _output, _clock=backbone):
                _clock.sync()
                _clock.seconds += time.perf_counter() - self._t.pop("backbone", time.perf_counter())
                _clock.calls += 1

            self._hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        self.stats["backbone_modules"] = sorted({type(m).__name__ for m in _outermost_frozen(pl_module)})
        self._metrics = None
        self._sync(pl_module)
        self._t["test"] = time.perf_counter()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        metrics = getattr(pl_module, "metrics", None)
        if metrics is not None and metrics is not self._metrics:  # created in the module's epoch start
            self._metrics = metrics
            for name in ("update", "compute"):
                setattr(metrics, name, self._clocks["evaluation"].wrap(getattr(metrics, name)))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.stats["test_images"] += int(batch["image"].shape[0])
        if self._clocks["backbone"].calls == 0:
            self._time_tower_alone(pl_module, batch["image"])

    def _time_tower_alone(self, pl_module: pl.LightningModule, images: torch.Tensor) -> None:
        """Models that run a frozen tower block by block with adapters in between (MoECLIP's CLIP) never call
        the frozen wrapper as a whole: time its plain ``visual`` tower on the same batch, in a separate pass
        that is subtracted from the test-loop time."""
        towers = [m for m in _outermost_frozen(pl_module) if isinstance(getattr(m, "visual", None), torch.nn.Module)]
        if not towers:
            return
        clock = self._clocks.setdefault("tower", _Clock(pl_module.device))
        try:
            with torch.inference_mode():
                clock.wrap(towers[0].visual)(images)
        except Exception as err:  # an input the bare tower does not take: no backbone column, but say why
            self.stats["backbone_error"] = f"{type(err).__name__}: {err}"
            self._clocks["backbone"].calls = -1  # stop trying on later batches
            return
        self.stats["backbone_method"] = f"separate pass of {type(towers[0]).__name__}.visual"

    def on_test_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.stats["test_loop_s"] = time.perf_counter() - self._t["test"]
        for hook in self._hooks:
            hook.remove()
        for obj, name in self._restore:
            if name in vars(obj):
                delattr(obj, name)
        self._hooks, self._restore = [], []
        tower = self._clocks.pop("tower", None)
        if tower is not None:
            self.stats["test_loop_s"] -= tower.seconds
            self._clocks["backbone"].seconds = tower.seconds
        self.stats.setdefault("backbone_method", "forward hooks")
        for key, clock in self._clocks.items():
            self.stats[f"{key}_s"] = clock.seconds
        self.stats["device"] = pl_module.device.type
        self.stats["torch_threads"] = torch.get_num_threads()
        self.stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        if pl_module.device.type == "cuda":
            self.stats["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        try:
            self._save_curves()
        except Exception as err:  # curves are a bonus; the run's table must survive a curve problem
            self.stats["curves_error"] = f"{type(err).__name__}: {err}"
        self._write()

    # ---- output ---------------------------------------------------------------------------------
    def _save_curves(self) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        arrays: dict[str, np.ndarray] = {}
        for i, category in enumerate(metrics.categories):
            image = metrics.image[i].ranked()
            if image.n_pos and image.n_neg:
                arrays[f"image_roc/{category}/fpr"], arrays[f"image_roc/{category}/tpr"] = _thin(*_roc(image))
            pixel = metrics.pixel[i].ranked()
            if pixel.n_pos and pixel.n_neg:
                arrays[f"pixel_roc/{category}/fpr"], arrays[f"pixel_roc/{category}/tpr"] = _thin(*_roc(pixel))
                if pixel.pro is not None and pixel.n_regions:
                    fpr, pro = pro_curve_points(pixel)
                    arrays[f"pro/{category}/fpr"], arrays[f"pro/{category}/pro"] = _thin(
                        fpr.cpu().numpy(), pro.cpu().numpy())
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(self.output_dir / "curves.npz", **arrays)

    def _write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "probe.json").write_text(json.dumps(self.stats, indent=1), encoding="utf-8")
