"""AnomalyModule: the validation / test / predict loop all detectors share.

A subclass implements ``predict_anomaly(images) -> {"anomaly_map": (B,1,h,w), "pred_score": (B,)}``
plus its ``training_step`` and ``configure_optimizers``; evaluation, map resizing, result tables and
logging live here once.

Set-level post-processing (protocols that normalise over a category's whole test set): a subclass whose
``set_level_protocol()`` is true provides ``predict_set_statistics`` (compact per-image statistics, and the
final map when it is already known) and ``finish_set`` (the scores, and the map if needed, from a
category's statistics and their set-wide ranges). Validation and test then keep those statistics until the
epoch ends (``components/set_level.py``), never full-size maps; ``predict`` always uses ``predict_anomaly``.

Deployment (``components/thresholds.py``, ``viz/report.py``, ``anomaly_zoo/export``): after ``fit`` the image
and pixel thresholds are calibrated on the validation split (or the normal training images), never on test
data, and stored in the checkpoint with the preprocessing; ``test`` adds F1 / precision / recall at them and
writes ``report.html``; ``predict`` reports decisions (and normalised scores on request).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from anomaly_zoo.data.sampler import is_filler
from anomaly_zoo.metrics import COLUMNS, AnomalyMetrics, format_results_table, save_results
from anomaly_zoo.metrics.thresholded import ThresholdedMetrics
from anomaly_zoo.models.components.preprocessing import preprocessing_of
from anomaly_zoo.models.components.set_level import SetLevelBuffer
from anomaly_zoo.models.components.thresholds import (
    ThresholdCalibrator,
    ThresholdOptions,
    Thresholds,
    normalize_scores,
)
from anomaly_zoo.models.components.upsample import resize_map
from anomaly_zoo.viz.outputs import globally_decided_note
from anomaly_zoo.viz.report import ReportCollector, write_report
from anomaly_zoo.viz.writer import PredictionWriter

if TYPE_CHECKING:  # pandas is imported where a table is built: start-up (e.g. `predict`) never needs it
    import pandas as pd


class AnomalyModule(pl.LightningModule):
    """Base class of every detector.

    Args:
        pixel_metrics: ``"streaming"`` (bounded memory, documented error bound) or ``"exact"``.
        fpr_limit: integration limit of AUPRO.
        results_dir: where test result tables (CSV + Markdown) go; default: the logger's directory.
    """

    #: How the image score is computed, stated in every results caption.
    image_score_rule: str = "max of the anomaly map"
    #: Names of ``predict_set_statistics``' ``set_stats`` whose per-category (min, max) ``finish_set`` needs.
    set_statistics: tuple[str, ...] = ()
    #: How the thresholds are chosen after ``fit``; set on the instance (the CLI's ``--threshold.*``).
    threshold_options: ThresholdOptions = ThresholdOptions()
    #: Keyword arguments of the PredictionWriter ``predict`` uses (the CLI's ``--output_dir``, ``--save_maps``, ...).
    prediction_options: dict[str, Any] = {}
    #: The centred fraction of each input image side the anomaly map covers: a model that centre-crops its
    #: input sets it, so native-size overlays and maps put the map where it belongs.
    map_coverage: float = 1.0

    def __init__(self, pixel_metrics: str = "streaming", fpr_limit: float = 0.3, results_dir: str | None = None) -> None:
        super().__init__()
        if pixel_metrics not in ("streaming", "exact"):
            raise ValueError(f"pixel_metrics must be 'streaming' or 'exact', got '{pixel_metrics}'.")
        self.pixel_metrics = pixel_metrics
        self.fpr_limit = fpr_limit
        self.results_dir = results_dir
        self.metrics = None
        self._set_buffer: SetLevelBuffer | None = None
        self.results: dict[str, pd.DataFrame] = {}
        self.epochs_trained = 0
        #: Calibrated after fit (``calibrate_thresholds``), saved in and restored from checkpoints.
        self.thresholds: Thresholds | None = None
        #: The input format the model was fitted on (size, normalisation, interpolation), from the DataModule.
        self.preprocessing: dict[str, Any] | None = None
        self._thresholded: ThresholdedMetrics | None = None
        self._report_data: ReportCollector | None = None

    # ---- what a detector provides ------------------------------------------------------------
    def predict_anomaly(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Anomaly map (B, 1, h, w) at any resolution and image score (B,) for a batch of images."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predict_anomaly(images)

    # ---- set-level post-processing (optional) ------------------------------------------------------
    def set_level_protocol(self) -> bool:
        """True when scores are finished over each category's whole evaluated set (a transductive protocol)."""
        return False

    def predict_set_statistics(self, images: torch.Tensor) -> dict[str, Any]:
        """``{"set_stats": {name: (B, ...)}}``, plus ``"anomaly_map"`` (B,1,h,w) when it is final already.

        The statistics are kept on CPU until the epoch ends: keep them compact (scalars, token-grid maps).
        """
        raise NotImplementedError(f"{type(self).__name__} has no set-level protocol.")

    def finish_set(
        self, set_stats: dict[str, torch.Tensor], ranges: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Scores ``{"pred_score": (N,)}`` (and ``"anomaly_map"`` if not given per batch) for N images of one
        category, from their stacked ``set_stats`` and the (min, max) of each ``set_statistics`` entry over
        the category's whole set (every DDP rank)."""
        raise NotImplementedError(f"{type(self).__name__} has no set-level protocol.")

    def protocol_caption(self) -> str:
        """Appended to the results caption: say here when a transductive protocol ran."""
        return ""

    def export_anomaly(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What exporters trace; default ``predict_anomaly``. Override with a static-graph equivalent when the
        per-image path branches on data (e.g. run every expert densely, weighted by the router, instead of
        only the selected ones): the parity check compares the export with ``predict_anomaly``."""
        return self.predict_anomaly(images)

    def export_limitations(self, export_format: str) -> str | None:
        """Why this model cannot be exported to ``export_format`` (``onnx`` | ``torchscript``); None = it can.

        The exporter traces ``predict_anomaly``; a model whose inference takes data-dependent Python branches
        (e.g. routing that picks experts per image) overrides this to say so, instead of a silently wrong graph.
        """
        return None

    # ---- shared evaluation -----------------------------------------------------------------------
    def anomaly_output(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The Output contract: the detector's map brought to the mask's resolution."""
        output = self.predict_anomaly(batch["image"])
        anomaly_map, pred_score = output["anomaly_map"], output["pred_score"]
        batch_size = batch["image"].shape[0]
        anomaly_map = self._checked_map(anomaly_map, batch)
        if pred_score.shape != (batch_size,):
            raise RuntimeError(f"{type(self).__name__} returned pred_score of shape {tuple(pred_score.shape)}, "
                               f"expected ({batch_size},).")
        output = dict(output)
        output["anomaly_map"] = anomaly_map
        output["pred_score"] = pred_score.float()
        return output

    def _checked_map(self, anomaly_map: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        batch_size = batch["image"].shape[0]
        if anomaly_map.ndim != 4 or anomaly_map.shape[:2] != (batch_size, 1):
            raise RuntimeError(f"{type(self).__name__} returned anomaly_map of shape {tuple(anomaly_map.shape)}, "
                               f"expected ({batch_size}, 1, h, w).")
        return resize_map(anomaly_map.float(), tuple(batch["mask"].shape[-2:]))

    def _start_metrics(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        dataset = getattr(datamodule, f"{stage}_dataset", None) if datamodule is not None else None
        if dataset is None:  # plain dataloaders passed to trainer.test(...)
            loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            dataset = getattr(loader, "dataset", None)
        categories = getattr(dataset, "categories", None)
        if not categories:
            raise RuntimeError(
                "Evaluation needs the test set's category names: use an anomaly_zoo DataModule or a dataset "
                "with a `categories` attribute (see anomaly_zoo.data.AnomalyDataset)."
            )
        self.metrics = AnomalyMetrics(categories, pixel_mode=self.pixel_metrics, fpr_limit=self.fpr_limit).to(self.device)
        self._set_buffer = None
        if self.set_level_protocol():
            self._set_buffer = SetLevelBuffer(categories, self.set_statistics, keep_masks=True)
        self._start_test_extras(stage, categories, datamodule)

    # ---- deployment: thresholds at test time, the HTML report ------------------------------------------
    def _start_test_extras(self, stage: str, categories: list[str], datamodule: Any) -> None:
        self._thresholded, self._report_data = None, None
        if stage != "test":
            return
        # Stored thresholds are on the per-image rule's scale; a set-level protocol rescales scores.
        if self.thresholds is not None and not self.set_level_protocol():
            own = {c: (t.image, t.pixel) for c, t in self.thresholds.per_category.items()}
            self._thresholded = ThresholdedMetrics(categories, self.thresholds.image, self.thresholds.pixel,
                                                   own if self.thresholds.per_category_active else None).to(self.device)
        self._report_data = ReportCollector(categories, normalization=preprocessing_of(datamodule).get("normalization"))

    def _update_test_extras(self, output: dict[str, Any], batch: dict[str, Any]) -> None:
        if self._thresholded is not None:
            self._thresholded.update(output, batch)
        if self._report_data is not None:
            self._report_data.update(output, batch)

    def _eval_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if is_filler(batch) is not None:  # the filler of an empty DDP shard (data/sampler.py): counts nothing
            return {}
        if self._set_buffer is not None:
            return self._set_level_step(batch)
        output = self.anomaly_output(batch)
        self.metrics.update(output, batch)
        self._update_test_extras(output, batch)
        return output

    def _set_level_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        output = self.predict_set_statistics(batch["image"])
        if "anomaly_map" in output:  # final already: stream it into the pixel metrics, keep no masks
            self._set_buffer.keep_masks = False
            self.metrics.update({"anomaly_map": self._checked_map(output["anomaly_map"], batch)}, batch)
        self._set_buffer.add(output["set_stats"], batch)
        return output

    def _finish_set_level(self) -> None:
        buffer, self._set_buffer = self._set_buffer, None
        if buffer is None or self.metrics is None:
            return

        def update(output: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
            if "anomaly_map" in output:
                output = {**output, "anomaly_map": resize_map(output["anomaly_map"].float(),
                                                              tuple(batch["mask"].shape[-2:]))}
            self.metrics.update(output, batch)
            self._update_test_extras(output, batch)

        with torch.no_grad():
            buffer.finish(self.finish_set, update, device=self.device)

    def _finish_metrics(self, stage: str) -> pd.DataFrame | None:
        import pandas as pd
        self._finish_set_level()
        metrics, self.metrics = self.metrics, None
        if metrics is None or self.trainer.sanity_checking:
            return None  # a few sanity batches make no meaningful table
        table = metrics.compute()
        self.results[stage] = table
        prefix = "val" if stage == "val" else stage
        mean = table.loc["mean"]
        for column in COLUMNS:
            if column in mean and pd.notna(mean[column]):
                self.log(f"{prefix}/{column}", float(mean[column]), prog_bar=column in ("I-AUROC", "P-AUROC"))
        if stage == "test":
            # Per-category values go to the loggers only: Lightning's console summary keeps to the means.
            per_category = {
                f"test/{category}/{column}": float(row[column])
                for category, row in table.drop(index="mean").iterrows()
                for column in COLUMNS
                if pd.notna(row[column])
            }
            for logger in self.loggers:
                logger.log_metrics(per_category, step=self.global_step)
            table = self._with_thresholded(table)
            self.results[stage] = table
            self._report(table, metrics)
        return table

    def _with_thresholded(self, table: pd.DataFrame) -> pd.DataFrame:
        """The table plus F1 / precision / recall at the stored thresholds (columns after mAD)."""
        import pandas as pd
        thresholded, self._thresholded = self._thresholded, None
        if thresholded is None:
            return table
        extra = thresholded.compute()
        if "mean" in extra.index:
            for column, value in extra.loc["mean"].items():
                if pd.notna(value):
                    self.log(f"test/{column}", float(value))
        return table.join(extra, how="left")

    def results_caption(self) -> str:
        datamodule = self.trainer.datamodule
        size = getattr(datamodule, "image_size", None)
        resolution = f"{size[0]}×{size[1]}" if size else "native resolution"
        if size and self.map_coverage < 1:  # the model centre-crops its input: metrics see the crop
            crop = tuple(int(side * self.map_coverage + 1e-6) for side in size)
            resolution = f"{crop[0]}×{crop[1]} (centre crop of {resolution})"
        seed = os.environ.get("PL_GLOBAL_SEED", "not set")
        name = getattr(type(self), "registry_name", type(self).__name__)
        data = getattr(type(datamodule), "registry_name", type(datamodule).__name__) if datamodule else "?"
        return (
            f"{name} on {data}, evaluated at {resolution}; epochs trained: {self.epochs_trained}; seed: {seed}; "
            f"device: {self.device.type}; image score: {self.image_score_rule}; pixel metrics: {self.pixel_metrics} mode; "
            f"AUPRO up to FPR {self.fpr_limit}.{(' ' + self.protocol_caption()) if self.protocol_caption() else ''} "
            f"{self._threshold_caption()}Values in %."
        )

    def _threshold_caption(self) -> str:
        if self.thresholds is None:
            return "No stored thresholds (fit calibrates them): no thresholded columns. "
        if self.set_level_protocol():
            return (f"{self.thresholds.describe()} Not applied here: the set-level protocol rescales the "
                    "scores (the thresholds serve predict / export, which use the per-image rule). ")
        where = " (each category's own where stored)" if self.thresholds.mode == "per-category" else ""
        return f"{self.thresholds.describe()} I-/P-F1, Precision, Recall at these thresholds{where}. "

    def _report(self, table: pd.DataFrame, metrics: AnomalyMetrics | None = None) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, not only the one that writes.
        directory = self.results_dir or self.trainer.log_dir or "results"
        report_data, self._report_data = self._report_data, None
        # The curves' states are synced over ranks (a collective: every rank takes part).
        curves = report_data.curves(metrics) if report_data is not None and metrics is not None else None
        if not self.trainer.is_global_zero:
            return
        caption = self.results_caption()
        rank_zero_info("\n" + format_results_table(table, caption))
        csv_path, _ = save_results(table, Path(directory), "test_results", caption)
        rank_zero_info(f"Results written to {csv_path} (+ .md)")
        self._report_per_dataset(table, Path(directory), caption)
        if report_data is not None:
            html = write_report(Path(directory) / "report.html", table, caption, report_data, curves,
                                self.thresholds if not self.set_level_protocol() else None)
            rank_zero_info(f"Report written to {html}")
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_table(key="test/results", dataframe=table.reset_index(names="category"))

    def _report_per_dataset(self, table: pd.DataFrame, directory: Path, caption: str) -> None:
        """Composite DataModules that test several datasets (``multi_dataset``) get one table per dataset
        (``test_results_<dataset>``) and a summary of the datasets' means (``test_results_datasets``)."""
        by_dataset = getattr(self.trainer.datamodule, "results_by_dataset", None)
        if by_dataset is None:
            return
        tables, summary = by_dataset(table)
        for name, part in tables.items():
            save_results(part, directory, f"test_results_{name}", f"{caption} Dataset: {name}.")
        summary_caption = f"{caption} Per-dataset means; the last row is the mean over all categories."
        rank_zero_info("\n" + format_results_table(summary, summary_caption))
        save_results(summary, directory, "test_results_datasets", summary_caption)

    def on_validation_epoch_start(self) -> None:
        self._start_metrics("val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._start_metrics("test")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._finish_metrics("test")

    def on_predict_start(self) -> None:
        self._globally_decided: set[str] = set()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        output = self.decide(self.anomaly_output(batch), batch.get("category"))
        thresholds = self.thresholds
        if thresholds is not None and thresholds.mode == "per-category":
            self._globally_decided.update(c for c in batch["category"] if c not in thresholds.per_category)
        return {**output, "path": batch["path"], "label": batch["label"], "mask": batch["mask"],
                "category": batch["category"]}

    def on_predict_end(self) -> None:
        unnamed = sorted(getattr(self, "_globally_decided", ()))
        if unnamed:
            rank_zero_info(globally_decided_note(unnamed, list(self.thresholds.per_category), "--data.category"))

    def decide(self, output: dict[str, torch.Tensor], categories: Sequence[str] | str | None = None
               ) -> dict[str, torch.Tensor]:
        """Add ``pred_label`` (B,) and ``pred_mask`` (B,1,H,W) at the stored thresholds; normalise on request.

        Each image is decided by its category's thresholds when per-category thresholds are in use and its
        category (``categories``: B names or one) has them, else by the global ones. With
        ``thresholds.normalize`` the map and score are replaced by their [0, 1] versions (0.5 = the deciding
        threshold, over that threshold's calibration range) and the raw score is kept as ``raw_score``.
        Without stored thresholds the output is unchanged.
        """
        thresholds = self.thresholds
        if thresholds is None:
            return output
        output = dict(output)
        score, anomaly_map = output["pred_score"], output["anomaly_map"]
        per = {k: v.to(score.device) for k, v in thresholds.per_image(categories, score.shape[0]).items()}
        column = (-1,) + (1,) * (anomaly_map.ndim - 1)  # per-image values broadcast over a map
        if thresholds.normalize:
            output["raw_score"] = score
            output["pred_score"] = normalize_scores(score, per["image"], per["image_low"], per["image_high"])
            output["anomaly_map"] = normalize_scores(anomaly_map, per["pixel"].reshape(column),
                                                     per["pixel_low"].reshape(column), per["pixel_high"].reshape(column))
            output["pred_label"] = (output["pred_score"] >= 0.5).long()
            output["pred_mask"] = output["anomaly_map"] >= 0.5
        else:
            output["pred_label"] = (score.double() >= per["image"]).long()
            output["pred_mask"] = anomaly_map.double() >= per["pixel"].reshape(column)
        return output

    # ---- deployment: threshold calibration after fit -------------------------------------------------
    def calibration_dataloader(self, datamodule: Any) -> tuple[Any, str] | None:
        """(loader, description) of the calibration set: the validation split, else the normal training images.

        The training images are read with the evaluation transform (no augmentation). Never the test split.
        """
        from anomaly_zoo.models.components.calibration_data import calibration_loader

        return calibration_loader(datamodule)

    @torch.inference_mode()
    def calibrate_thresholds(self, dataloader: Any, source: str, options: ThresholdOptions | None = None) -> Thresholds:
        """Score ``dataloader`` with the per-image rule (as ``predict`` does) and store the chosen thresholds."""
        options = options or self.threshold_options
        calibrator = ThresholdCalibrator(options.method, options.quantile, options.per_category,
                                         options.min_category_images)
        was_training = self.training
        self.eval()
        try:
            for i, batch in enumerate(dataloader):
                # The batch hooks Lightning runs in predict (models crop there, or read the batch's categories).
                batch = self.on_before_batch_transfer(batch, 0)
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                batch = self.on_after_batch_transfer(batch, 0)
                self.on_predict_batch_start(batch, i)
                # In the run's precision (bf16-mixed: autocast), as predict makes its maps; float32 without one.
                with self._trainer.precision_plugin.forward_context() if self._trainer else nullcontext():
                    output = self.anomaly_output(batch)
                calibrator.update(output["pred_score"], output["anomaly_map"], batch["label"], batch["mask"],
                                  batch.get("category"))
        finally:
            self.train(was_training)
        self.thresholds = calibrator.compute(source, normalize=options.normalize)
        rank_zero_info(self.thresholds.describe())
        if len(self.thresholds.per_category) >= 2 or self.thresholds.mode == "per-category":
            rank_zero_info(f"Per-category thresholds ({self.thresholds.mode} in use):\n"
                           f"{self.thresholds.category_table()}")
        return self.thresholds

    def _calibrate_after_fit(self) -> None:
        datamodule = self.trainer.datamodule
        self.preprocessing = preprocessing_of(datamodule) or self.preprocessing
        found = self.calibration_dataloader(datamodule) if datamodule is not None else None
        if found is None:
            rank_zero_info("No validation split or training images to calibrate thresholds on: none stored.")
            return
        self.calibrate_thresholds(*found)

    def configure_callbacks(self) -> list[pl.Callback]:
        # `predict` writes scores and overlays. Lightning lets callbacks returned here replace the Trainer's
        # of the same type, so a user-given PredictionWriter is kept by returning none.
        trainer = self._trainer
        if trainer is not None and any(isinstance(c, PredictionWriter) for c in trainer.callbacks):
            return []
        return [PredictionWriter(**self.prediction_options)]

    # ---- bookkeeping -----------------------------------------------------------------------------
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Counted at the epoch's last batch, not at epoch end: ModelCheckpoint saves after validation,
        # which runs before on_train_epoch_end.
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self.epochs_trained = self.current_epoch + 1

    def on_fit_end(self) -> None:
        # Statistics-only models (no optimiser) take no optimiser step, and Lightning's ModelCheckpoint
        # never saves at global step 0: write the final weights ourselves so `test --ckpt_path` works.
        if self.epochs_trained > 0:
            self._calibrate_after_fit()
        callback = self.trainer.checkpoint_callback
        if callback is not None and self.trainer.global_step == 0 and self.epochs_trained > 0 and callback.dirpath:
            self.trainer.save_checkpoint(os.path.join(callback.dirpath, "last.ckpt"))
        elif self.thresholds is not None:
            for checkpoint_callback in self.trainer.checkpoint_callbacks:
                self._rewrite_final_checkpoints(checkpoint_callback)

    def _rewrite_final_checkpoints(self, callback: Any) -> None:
        """Write the thresholds into the checkpoints that hold the final weights (those saved at this step)."""
        final = getattr(callback, "_last_global_step_saved", None) == self.trainer.global_step
        paths = {getattr(callback, "last_model_path", "")}
        if final and getattr(callback, "monitor", None) is None:  # without a monitor "best" is the latest save
            paths.add(getattr(callback, "best_model_path", ""))
        paths = sorted(p for p in paths if p and (final or p == getattr(callback, "last_model_path", "")))
        for path in paths:
            self.trainer.save_checkpoint(path)
        if paths:
            rank_zero_info(f"Thresholds stored in {', '.join(paths)}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["epochs_trained"] = self.epochs_trained
        checkpoint["anomaly_zoo"] = {
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "thresholds": self.thresholds.to_dict() if self.thresholds is not None else None,
            "preprocessing": self.preprocessing,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.epochs_trained = checkpoint.get("epochs_trained", checkpoint.get("epoch", 0))
        deploy = checkpoint.get("anomaly_zoo") or {}
        self.thresholds = Thresholds.from_dict(deploy["thresholds"]) if deploy.get("thresholds") else None
        chosen = self.threshold_options.per_category  # --threshold.per_category at test / predict overrides
        if self.thresholds is not None and chosen is not None:
            self.thresholds.per_category_active = bool(chosen and self.thresholds.per_category)
        self.preprocessing = deploy.get("preprocessing")
