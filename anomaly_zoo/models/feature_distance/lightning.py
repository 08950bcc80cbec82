"""Lightning wrapper of the feature-distance baseline: one pass over the training set, no optimiser.

Under DDP every rank accumulates the statistics of its shard and ``on_train_epoch_end`` sums them over the
ranks; the module is never wrapped in ``DistributedDataParallel`` (it has nothing to train by gradient,
see ``components/distributed.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from anomaly_zoo.data.sampler import is_filler
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.components.distributed import keep_unwrapped_under_ddp
from anomaly_zoo.models.feature_distance.model import FeatureDistanceModel
from anomaly_zoo.registry import MODELS


@MODELS.register("feature_distance")
class FeatureDistance(AnomalyModule):
    """Baseline: per-position Gaussian on frozen features (see ``FeatureDistanceModel``).

    Train with ``trainer.max_epochs=1``: more epochs only re-count the same images.
    """

    image_score_rule = "max of the anomaly map"

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: tuple[int, ...] = (1, 2),
        pretrained: bool = True,
        backbone_weights: str | None = None,
        eps: float = 1e-3,
        pixel_metrics: str = "streaming",
        fpr_limit: float = 0.3,
        results_dir: str | None = None,
    ) -> None:
        super().__init__(pixel_metrics=pixel_metrics, fpr_limit=fpr_limit, results_dir=results_dir)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = FeatureDistanceModel(backbone, tuple(layers), pretrained, backbone_weights, eps)

    #: Read by the DataModules: the training pass sees every image once (no shuffle, no dropped last batch,
    #: no DDP padding), so the statistics of N processes equal those of one.
    single_pass_training = True

    def setup(self, stage: str) -> None:
        if stage == "fit":
            keep_unwrapped_under_ddp(self.trainer)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        filler = is_filler(batch)  # a DDP rank with no image of its own gets a filler: it counts nothing
        images = batch["image"] if filler is None else batch["image"][~filler]
        if images.shape[0]:
            self.model.accumulate(images)

    def on_train_epoch_start(self) -> None:
        # Each epoch is one full pass that recomputes the statistics (a second epoch does not count twice).
        self.model.reset_statistics()

    def on_train_epoch_end(self) -> None:
        # Every rank saw a different shard: sum the statistics so all ranks hold the full-data model.
        if self.trainer.world_size > 1:
            self.model.reduce_statistics(lambda t, op: self.trainer.strategy.reduce(t, reduce_op=op))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        if not self.model.fitted:  # Lightning's sanity check runs before the statistics exist
            return None
        return super().validation_step(batch, batch_idx)

    def configure_optimizers(self) -> None:
        return None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The statistics buffers start empty; give them the checkpoint's shapes before loading.
        state = checkpoint["state_dict"]
        for name in ("feature_sum", "feature_sq_sum"):
            setattr(self.model, name, torch.empty_like(state[f"model.{name}"]))
        super().on_load_checkpoint(checkpoint)

    def predict_anomaly(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)
