"""UniAD's LightningModule: MSE feature reconstruction, AdamW + StepLR, the paper's map and score."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.components.feature_cache import FrozenFeatureCache, random_steps
from anomaly_zoo.models.uniad.convert import load_official_file, load_official_state_dict, split_official
from anomaly_zoo.models.uniad.model import UniADModel
from anomaly_zoo.registry import MODELS


@MODELS.register("uniad")
class UniAD(AnomalyModule):
    """UniAD — "A Unified Model for Multi-class Anomaly Detection" (You et al., NeurIPS 2022).

    One model for all categories: a frozen EfficientNet-B4 gives multi-level features, a transformer with
    neighbour-masked attention and layer-wise learned queries reconstructs them from jittered inputs, and the
    reconstruction error is the anomaly map. Defaults are the paper's; gradient clipping (0.1) belongs in the
    Trainer config (``gradient_clip_val``).

    Args:
        backbone: timm model (``tf_efficientnet_b4.aa_in1k``: TF-ported ImageNet weights, AutoAugment).
        taps: flattened backbone blocks whose outputs are used (1, 5, 9, 21 → 24+32+56+160 = 272 channels);
            for non-EfficientNet timm models, ``features_only`` stage indices.
        feature_size: side of the token grid all taps are resized to (14 for 224 px images).
        hidden_dim, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout: transformer.
        neighbor_size: side of the masked attention window (odd); ``None`` disables the mask.
        mask_attentions: neighbour mask in [encoder, decoder→encoder output, decoder→previous layer].
        jitter_scale, jitter_prob: feature jitter (training only).
        score_pool_size: image score = max of the anomaly map average-pooled with this window (stride 1).
        image_score: ``max_pool`` (the above, the paper's MVTec AD rule) or ``mean`` (mean of the map, the
            key metric of the authors' CIFAR-10 configs).
        lr, weight_decay: AdamW (betas 0.9, 0.999).
        lr_step_epochs, lr_gamma: StepLR; the LR is multiplied by ``lr_gamma`` from epoch ``lr_step_epochs``
            (0-based) on — the authors' loop applies it one epoch later.
        pretrained: load the backbone's ImageNet weights through timm (``false`` = random init).
        backbone_weights: a local weights file for the backbone instead of timm's hub/cache.
        authors_padding: static TF-'same' padding for 380 px like the authors' backbone (changes one conv at
            224/256/320 px); ``false`` = timm's dynamic padding.
        official_checkpoint: the authors' ``ckpt.pth.tar``; loaded at construction (its backbone weights too,
            then no timm download is needed).
        feature_cache: the frozen backbone's features computed once per training image and reused every epoch
            (``auto`` = ``float16`` unless the training images are augmented; ``float32``: exact; ``off``).
            Exact for UniAD because the feature jitter comes after the backbone.
    """

    image_score_rule = "max of the 16×16 average-pooled anomaly map, stride 1 (UniAD)"  # per instance: see __init__
    #: The backbone sees the loader's images unchanged (jitter is applied to its features): features can be cached.
    backbone_input_deterministic = True

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        taps: tuple[int, ...] = (1, 5, 9, 21),
        feature_size: int = 14,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        neighbor_size: int | None = 7,
        mask_attentions: tuple[bool, bool, bool] = (True, True, True),
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        score_pool_size: int = 16,
        image_score: str = "max_pool",
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_step_epochs: int = 800,
        lr_gamma: float = 0.1,
        pretrained: bool = True,
        backbone_weights: str | None = None,
        authors_padding: bool = True,
        official_checkpoint: str | None = None,
        feature_cache: str = "auto",
        pixel_metrics: str = "streaming",
        fpr_limit: float = 0.3,
        results_dir: str | None = None,
    ) -> None:
        super().__init__(pixel_metrics=pixel_metrics, fpr_limit=fpr_limit, results_dir=results_dir)
        self.save_hyperparameters()
        official = load_official_file(official_checkpoint) if official_checkpoint else None
        # The authors' file carries its backbone weights: then timm's are not needed (nor a network).
        backbone_in_file = official is not None and bool(split_official(official)[0])
        self.model = UniADModel(
            backbone=backbone,
            taps=taps,
            feature_size=feature_size,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            neighbor_size=neighbor_size,
            mask_attentions=mask_attentions,
            jitter_scale=jitter_scale,
            jitter_prob=jitter_prob,
            score_pool_size=score_pool_size,
            image_score=image_score,
            pretrained=pretrained and not backbone_in_file,
            backbone_weights=None if backbone_in_file else backbone_weights,
            authors_padding=authors_padding,
        )
        if image_score == "mean":
            self.image_score_rule = "mean of the anomaly map (UniAD's CIFAR-10 rule)"
        else:
            self.image_score_rule = f"max of the {score_pool_size}×{score_pool_size} average-pooled anomaly map, stride 1 (UniAD)"
        self.feature_cache = FrozenFeatureCache(feature_cache)
        if official is not None:
            info = load_official_state_dict(self.model, official)
            rank_zero_info(
                f"Loaded the authors' UniAD checkpoint '{official_checkpoint}' "
                f"({len(info['ignored'])} backbone tensors after the last tap not needed)."
            )

    # ---- inference -------------------------------------------------------------------------------
    def predict_anomaly(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.predict(images)

    # ---- training --------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        self.feature_cache.reset(len(dataset) if dataset is not None else 0, self.backbone_input_deterministic,
                                 random_steps(dataset), pin_memory=self.device.type == "cuda")
        rank_zero_info(self.feature_cache.describe())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        if "index" in batch:
            features = self.feature_cache.features(batch["index"], images, self.model.extract_features)
        else:
            features = self.model.extract_features(images)
        loss = self.model.reconstruction_loss(features)
        # sync_dist: the logged loss is the mean over every rank's batch, not rank 0's alone.
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0],
                 sync_dist=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]  # the transformer only
        optimizer = torch.optim.AdamW(params, lr=hp.lr, betas=(0.9, 0.999), weight_decay=hp.weight_decay)
        # Stepped once at the end of every epoch: epochs 0..lr_step_epochs-1 run at lr, then lr·gamma.
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_step_epochs, gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
