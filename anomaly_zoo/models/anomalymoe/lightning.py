"""AnomalyMoE's LightningModule: the losses' weighting, StableAdamW + warm-up/cosine, the CLUB estimator's own
step, map fusion with per-category normalisation (training-set statistics or the authors' test-set protocol)
and the routing statistics written beside the test results."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from anomaly_zoo.data.transforms import NORMALIZATIONS
from anomaly_zoo.models.anomalymoe.ae_jitter import jitter_for_autoencoder
from anomaly_zoo.models.anomalymoe.eir import EIREstimator
from anomaly_zoo.models.anomalymoe.esb_loss import esb_terms
from anomaly_zoo.models.anomalymoe.fusion import (
    LEVELS,
    finish_map,
    fuse_levels,
    level_weights,
    top_percent_score,
)
from anomaly_zoo.models.anomalymoe.model import AnomalyMoEModel, component_map_from_scores
from anomaly_zoo.models.anomalymoe.routing_stats import RoutingStatistics
from anomaly_zoo.models.anomalymoe.stable_adamw import StableAdamW, warm_cosine_factor
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.registry import MODELS

NORMALIZATION_MODES = ("training", "test_set")


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's CenterCrop offsets (round((H − h)/2)) on the last two dimensions."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return x[..., top:top + size[0], left:left + size[1]]


@MODELS.register("anomalymoe")
class AnomalyMoE(AnomalyModule):
    """AnomalyMoE — "Towards a Language-free Generalist Model for Unified Visual Anomaly Detection" (AAAI 2026).

    A frozen DINOv2-reg ViT; a router on the last block's CLS picks ``top_k`` of 18 experts per image: 6 patch
    experts (Dinomaly-style feature reconstruction), 6 global experts (EfficientAD-like autoencoder + student
    on pixels), 6 component experts (autoencoders of the mean feature under each component mask). Losses:
    reconstruction per level, ESB (router balance) and EIR (CLUB mutual-information repulsion between experts).

    Args (the authors' values are the defaults):
        backbone, backbone_kwargs: timm ViT with registers; ``backbone_kwargs`` e.g. ``{embed_dim: 32, depth: 12,
            num_heads: 2}`` for a tiny random ViT. pretrained, backbone_weights: as every model.
        official_checkpoint: the authors' ``model_final.pth``; loaded at construction (backbone included).
        center_crop: the data resize is cropped centrally to this fraction (448 → 392 = 0.875, the authors'
            pipeline); image, mask and component masks alike. 1.0 = no crop.
        num_patch_experts, num_global_experts, num_component_experts, top_k, router_hidden: the mixture.
        decoder_heads, bottleneck_dropout, global_*, component_*, mask_dilation: expert shapes (see model.py).
        test_groups: ``authors`` (one group: mean of all taps vs all decoder outputs) or ``dinomaly`` (mean of
            the two training-group maps).
        hard_mining_masks: ``authors`` (every group uses G1's mask, their closure bug) or ``own``.
        hard_mining_scope: ``routed`` (the k-th largest distance among the images routed to the expert) or
            ``batch`` (over the whole batch, as the authors, who run every expert on every image; slower).
        patch_weight, global_weight, component_weight, esb_weight, eir_weight: loss weights.
        eir_log_variance: add the +s/2 term of a Gaussian NLL to the estimator's loss (the authors lack it).
        ae_jitter: strength of the colour jitter of ``image_ae`` in training (0 = off); never at test.
        lr, final_lr, weight_decay, warmup_iters, total_iters, grad_clip: StableAdamW (amsgrad, eps 1e-10,
            update-RMS clip 1) with linear warm-up and cosine by iteration (``total_iters`` default: the
            trainer's estimated steps); grad-norm clip of the experts + router.
        eir_lr, eir_weight_decay, eir_grad_clip: the CLUB estimator's Adam.
        step_unrouted_experts: give every expert a gradient each step, exactly 0 when no image routed to it
            (:meth:`gradient_anchor`), so the optimiser steps it as in the authors' code (momentum, decay) and
            plain DDP works. ``false``: unrouted experts are skipped by the optimiser, whose state then exists
            only for experts that were routed at least once (much less memory at paper width); DDP then needs
            ``--trainer.strategy ddp_find_unused_parameters_true``.
        normalization: ``training`` (per-category level ranges of the training images, computed at the end of
            fit, saved in the checkpoint) or ``test_set`` (min–max over each category's test set: the authors'
            transductive protocol).
        component_masks: prepare and attach component masks (needs the mask module); ``false`` = patch and
            global levels only in practice (component experts then see no components).
        mask_settings: keyword arguments for ``attach_component_masks``.
        map_size, blur_sigma, top_fraction: final map side (256), Gaussian σ (4) and the image-score fraction.
    """

    image_score_rule = "mean of the top 1 % of the blurred 256×256 fused map (AnomalyMoE)"

    def __init__(
        self,
        backbone: str = "vit_base_patch14_reg4_dinov2",
        backbone_kwargs: dict | None = None,
        pretrained: bool = True,
        backbone_weights: str | None = None,
        official_checkpoint: str | None = None,
        center_crop: float = 0.875,
        num_patch_experts: int = 6,
        num_global_experts: int = 6,
        num_component_experts: int = 6,
        top_k: int = 3,
        router_hidden: int = 256,
        decoder_heads: int | None = None,
        bottleneck_dropout: float = 0.2,
        global_ae_channels: tuple[int, int, int] = (32, 64, 128),
        global_student_channels: tuple[int, int] = (256, 512),
        global_dropout: float = 0.2,
        global_input_size: int = 392,
        component_hidden: int = 256,
        component_inner: int = 64,
        component_code: int = 64,
        component_dropout: float = 0.1,
        mask_dilation: int = 5,
        test_groups: str = "authors",
        hard_mining_masks: str = "authors",
        hard_mining_scope: str = "routed",
        hard_mining_p: float = 0.9,
        hard_mining_factor: float = 0.1,
        patch_weight: float = 1.0,
        global_weight: float = 0.1,
        component_weight: float = 0.1,
        esb_weight: float = 0.01,
        eir_weight: float = 1e-4,
        capacity_factor: float = 4.0,
        eir_log_variance: bool = False,
        ae_jitter: float = 0.2,
        lr: float = 5e-4,
        final_lr: float = 5e-6,
        weight_decay: float = 1e-4,
        warmup_iters: int = 100,
        total_iters: int | None = None,
        grad_clip: float | None = 0.1,
        eir_lr: float = 5e-4,
        eir_weight_decay: float = 1e-4,
        eir_grad_clip: float | None = 0.1,
        step_unrouted_experts: bool = True,
        normalization: str = "training",
        component_masks: bool = True,
        mask_settings: dict | None = None,
        map_size: int = 256,
        blur_sigma: float = 4.0,
        top_fraction: float = 0.01,
        pixel_metrics: str = "streaming",
        fpr_limit: float = 0.3,
        results_dir: str | None = None,
    ) -> None:
        super().__init__(pixel_metrics=pixel_metrics, fpr_limit=fpr_limit, results_dir=results_dir)
        self.save_hyperparameters()
        if normalization not in NORMALIZATION_MODES:
            raise ValueError(f"normalization must be one of {NORMALIZATION_MODES}, got '{normalization}'.")
        if not 0 < center_crop <= 1:
            raise ValueError(f"center_crop must be a fraction in (0, 1], got {center_crop}.")
        self.map_coverage = float(center_crop)  # the maps cover the centre crop: overlays and caption place them
        from anomaly_zoo.models.anomalymoe.convert import load_official_file, load_official_state_dict

        official = load_official_file(official_checkpoint) if official_checkpoint else None
        self.model = AnomalyMoEModel(
            backbone=backbone, backbone_kwargs=backbone_kwargs,
            pretrained=pretrained and official is None, backbone_weights=None if official is not None else backbone_weights,
            num_patch_experts=num_patch_experts, num_global_experts=num_global_experts,
            num_component_experts=num_component_experts, top_k=top_k, router_hidden=router_hidden,
            decoder_heads=decoder_heads, bottleneck_dropout=bottleneck_dropout,
            global_ae_channels=global_ae_channels, global_student_channels=global_student_channels,
            global_dropout=global_dropout, global_input_size=global_input_size,
            component_hidden=component_hidden, component_inner=component_inner, component_code=component_code,
            component_dropout=component_dropout, mask_dilation=mask_dilation, test_groups=test_groups,
            hard_mining_p=hard_mining_p, hard_mining_factor=hard_mining_factor,
            hard_mining_masks=hard_mining_masks, hard_mining_scope=hard_mining_scope,
        )
        if official is not None:
            load_official_state_dict(self.model, official)
            rank_zero_info(f"Loaded the authors' AnomalyMoE checkpoint '{official_checkpoint}'.")
        self.eir = EIREstimator(self.model.encoder.embed_dim, with_log_variance=eir_log_variance)
        self.automatic_optimization = False  # two optimisers stepped in one iteration (experts, then estimator)
        self.eir_optimizer: torch.optim.Optimizer | None = None
        self.train_stats: dict[str, torch.Tensor] = {}  # category → (3 levels, [min, max])
        #: The fit's component-mask k-means centres and kept clusters per (dataset, category) + settings
        #: (prepare_masks.MaskPreparer.stored_centres), saved in the checkpoint for `predict` on new images.
        self.mask_centres: dict[str, Any] | None = None
        self._predict_masks_error: Exception | None = None
        self._stash: dict[str, Any] = {}
        self._mean_std = NORMALIZATIONS["imagenet"]
        self._eval_size: tuple[int, int] | None = None
        self._warned: set[str] = set()
        self.routing_stats: RoutingStatistics | None = None
        self.set_statistics = tuple(f"{level}_{b}" for level in LEVELS for b in ("min", "max"))

    # ---- data plumbing ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        normalization = getattr(datamodule, "normalization", "imagenet")
        if isinstance(normalization, str) and normalization in NORMALIZATIONS:
            self._mean_std = NORMALIZATIONS[normalization]
        if self.hparams.component_masks and self.model.counts[2] and datamodule is not None:
            from anomaly_zoo.data.base import AnomalyDataModule
            from anomaly_zoo.models.anomalymoe.prepare_masks import attach_component_masks

            if not isinstance(datamodule, AnomalyDataModule):
                self._warn_once("dm", "AnomalyMoE: component masks need an anomaly_zoo DataModule; component "
                                "experts get no components.")
                return
            settings = self._mask_settings()
            if stage == "predict":
                self._attach_predict_masks(datamodule)
                return
            preparer = attach_component_masks(datamodule, stage, **settings)
            if stage == "fit":
                # Saved in the checkpoint: `predict` on new images needs these, not the training images.
                self.mask_centres = preparer.stored_centres()

    def _mask_settings(self) -> dict[str, Any]:
        return {"weights_option": "--model.init_args.mask_settings.weights", **dict(self.hparams.mask_settings or {})}

    def _attach_predict_masks(self, datamodule) -> None:
        """Predict-stage masks: from the fit's stored centres when known, else the category's training images.

        Lightning calls ``setup`` before it loads ``--ckpt_path``: without stored centres yet, a DataModule with
        no training images (``predict imgs/``) waits for :meth:`on_load_checkpoint`, which attaches them.
        """
        from anomaly_zoo.data.errors import DatasetError
        from anomaly_zoo.models.anomalymoe.prepare_masks import (
            attach_component_masks,
            attach_stored_component_masks,
        )

        self._predict_masks_error = None
        if self.mask_centres:
            attach_stored_component_masks(datamodule, "predict", self.mask_centres, **self._mask_settings())
            return
        try:
            attach_component_masks(datamodule, "predict", **self._mask_settings())
        except DatasetError as err:
            self._predict_masks_error = err

    def on_predict_start(self) -> None:
        error = getattr(self, "_predict_masks_error", None)
        if error is not None:
            raise type(error)(f"{error} Nor does the model hold stored component-mask centres (a fit stores them "
                              "in its checkpoint; this one predates that, or no --ckpt_path was given): re-fit, or "
                              "predict with a DataModule that has the category's training images.") from None
        super().on_predict_start()

    def _crop_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        f = self.hparams.center_crop
        return (int(hw[0] * f + 1e-6), int(hw[1] * f + 1e-6))

    def crop_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Centre-crop image, mask and component masks to ``center_crop`` of the resized size."""
        if self.hparams.center_crop >= 1 or not isinstance(batch, dict) or "image" not in batch:
            return batch
        size = self._crop_size(tuple(batch["image"].shape[-2:]))
        batch = dict(batch)
        for key in ("image", "mask", "component_masks"):
            if key in batch and torch.is_tensor(batch[key]) and batch[key].ndim >= 3:
                batch[key] = center_crop(batch[key], size)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = self.crop_batch(batch)
        if isinstance(batch, dict) and "image" in batch:
            # predict_anomaly(images) only sees the images: its masks and categories come from here, matched
            # by identity of the image tensor (a direct call with other images gets none).
            self._stash = {k: batch.get(k) for k in ("image", "component_masks", "component_valid", "category")}
        return batch

    def _extras(self, images: torch.Tensor) -> dict[str, Any]:
        return self._stash if self._stash.get("image") is images else {}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    # ---- inference -------------------------------------------------------------------------------------
    def _level_maps(self, images: torch.Tensor) -> dict:
        extras = self._extras(images)
        out = self.model.level_maps(images, extras.get("component_masks"), extras.get("component_valid"))
        weights = level_weights(out["routing"].weights, self.model.counts)
        if self.routing_stats is not None and extras.get("category") is not None:
            self.routing_stats.update(extras["category"], out["routing"])
        out["level_weights"] = weights
        return out

    def _train_ranges(self, categories: list[str] | None, batch: int, device) -> tuple[torch.Tensor, bool]:
        """(B, 3, 2) level ranges for the rows' categories; False if no statistics exist."""
        if not self.train_stats:
            return torch.tensor([[0.0, 1.0]] * 3, device=device).expand(batch, 3, 2), False
        overall = torch.stack(list(self.train_stats.values()))
        overall = torch.stack([overall[:, :, 0].amin(0), overall[:, :, 1].amax(0)], dim=1)
        rows = []
        for c in categories or [None] * batch:
            if c not in self.train_stats:
                self._warn_once(f"cat:{c}", f"AnomalyMoE: no training statistics for category '{c}'; using the "
                                "ranges over all training categories.")
            rows.append(self.train_stats.get(c, overall))
        return torch.stack(rows).to(device), True

    def predict_anomaly(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._level_maps(images)
        categories = self._extras(images).get("category")
        ranges, known = self._train_ranges(categories, images.shape[0], images.device)
        if not known:
            self._warn_once("nostats", "AnomalyMoE: no training-set level statistics yet (fit computes them at its "
                            "end); fusing unnormalised level maps.")
        size = tuple(images.shape[-2:])
        level_ranges = [(ranges[:, i, 0].view(-1, 1, 1, 1), ranges[:, i, 1].view(-1, 1, 1, 1)) for i in range(3)]
        fused = fuse_levels([out[level] for level in LEVELS], out["level_weights"], level_ranges, size)
        return self._finish(fused)

    def _finish(self, fused: torch.Tensor) -> dict[str, torch.Tensor]:
        final = finish_map(fused, self.hparams.map_size, 5, self.hparams.blur_sigma)
        return {"anomaly_map": final, "pred_score": top_percent_score(final, self.hparams.top_fraction)}

    @staticmethod
    def _crop_res_maps(out: dict, size: tuple[int, int]) -> list[torch.Tensor]:
        return [F.interpolate(out[level], size=size, mode="bilinear", align_corners=False)
                if tuple(out[level].shape[-2:]) != size else out[level] for level in LEVELS]

    # ---- the authors' transductive protocol (set-level hook of models/base.py) ---------------------------
    def set_level_protocol(self) -> bool:
        return self.hparams.normalization == "test_set" or not self.train_stats

    def protocol_caption(self) -> str:
        if self.set_level_protocol():
            return "Transductive: each level min–max normalised over each category's whole test set (the authors' protocol)."
        return "Levels normalised with per-category ranges of the training images (non-transductive)."

    def predict_set_statistics(self, images: torch.Tensor) -> dict[str, Any]:
        out = self._level_maps(images)
        size = tuple(images.shape[-2:])
        self._eval_size = size
        maps = self._crop_res_maps(out, size)
        stats: dict[str, torch.Tensor] = {}
        for level, m in zip(LEVELS, maps):
            stats[f"{level}_min"] = m.flatten(1).amin(1)
            stats[f"{level}_max"] = m.flatten(1).amax(1)
        stats["patch_map"] = out["patch"][:, 0].float()
        stats["global_map"] = out["global"][:, 0].float()
        # The component map is exact and compact as its scores (B, K) plus the binary masks, bit-packed.
        masks = self._extras(images).get("component_masks")
        if out["component_scores"] is not None and masks is not None:
            stats["component_scores"] = out["component_scores"].float()
            bits = np.packbits(masks.detach().cpu().numpy().astype(bool).reshape(masks.shape[0], -1), axis=1)
            stats["component_bits"] = torch.from_numpy(bits)
        else:
            stats["component_scores"] = images.new_zeros(images.shape[0], 1)
            stats["component_bits"] = torch.zeros(images.shape[0], 0, dtype=torch.uint8)
        stats["level_weights"] = out["level_weights"].float()
        return {"set_stats": stats}

    def finish_set(self, set_stats: dict[str, torch.Tensor], ranges: dict[str, tuple]) -> dict[str, torch.Tensor]:
        size = self._eval_size
        scores, bits = set_stats["component_scores"], set_stats["component_bits"]
        if bits.shape[1]:
            k = scores.shape[1]
            masks = np.unpackbits(bits.cpu().numpy(), axis=1, count=k * size[0] * size[1])
            masks = torch.from_numpy(masks.reshape(-1, k, *size)).to(scores.device)
            component = component_map_from_scores(scores, masks)
        else:
            component = scores.new_zeros(scores.shape[0], 1, *size)
        set_stats = {**set_stats, "component_map": component[:, 0]}
        maps = [set_stats[f"{level}_map"].unsqueeze(1) for level in LEVELS]
        level_ranges = [(ranges[f"{level}_min"][0].to(maps[0]), ranges[f"{level}_max"][1].to(maps[0]))
                        for level in LEVELS]
        fused = fuse_levels(maps, set_stats["level_weights"], level_ranges, size)
        return self._finish(fused)

    def export_limitations(self, export_format: str) -> str | None:
        return ("its inference picks the top-k experts per image (data-dependent routing) and its component "
                "masks come from a DINO + k-means + CRF step outside the network, so there is no static graph; "
                "use `anomaly-zoo predict --ckpt_path CKPT images/` instead")

    # ---- training-set statistics (the non-transductive default) -----------------------------------------
    @torch.no_grad()
    def compute_train_stats(self, loader) -> dict[str, torch.Tensor]:
        """Per category, min and max of each level's map (at the crop resolution) over the training images."""
        was_training = self.training
        self.eval()
        stats: dict[str, torch.Tensor] = {}
        try:
            for batch in loader:
                batch = self.crop_batch(self.transfer_batch_to_device(batch, self.device, 0))
                images = batch["image"]
                out = self.model.level_maps(images, batch.get("component_masks"), batch.get("component_valid"))
                maps = self._crop_res_maps(out, tuple(images.shape[-2:]))
                low = torch.stack([m.flatten(1).amin(1) for m in maps], 1)
                high = torch.stack([m.flatten(1).amax(1) for m in maps], 1)
                cats = batch["category"]
                cats = [cats] * images.shape[0] if isinstance(cats, str) else list(cats)
                for i, c in enumerate(cats):
                    row = torch.stack([low[i], high[i]], 1).cpu()
                    if c in stats:
                        row = torch.stack([torch.minimum(stats[c][:, 0], row[:, 0]),
                                           torch.maximum(stats[c][:, 1], row[:, 1])], 1)
                    stats[c] = row
        finally:
            self.train(was_training)
        return self._reduce_over_ranks(stats)

    def _reduce_over_ranks(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Under DDP each rank saw its own training shard: MIN of the mins and MAX of the maxes over the ranks,
        per category (the union of every rank's categories; a rank without one contributes +inf / -inf)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return stats
        names: list = [None] * dist.get_world_size()
        dist.all_gather_object(names, sorted(stats))
        categories = sorted({c for rank in names for c in rank})
        if not categories:
            return stats
        low = torch.full((len(categories), len(LEVELS)), math.inf, dtype=torch.float64)
        high = torch.full((len(categories), len(LEVELS)), -math.inf, dtype=torch.float64)
        for i, c in enumerate(categories):
            if c in stats:
                low[i], high[i] = stats[c][:, 0].double(), stats[c][:, 1].double()
        low, high = low.to(self.device), high.to(self.device)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dtype = next(iter(stats.values())).dtype if stats else torch.float32
        return {c: torch.stack([low[i], high[i]], 1).to("cpu", dtype) for i, c in enumerate(categories)}

    def _refresh_train_stats(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        self.train_stats = self.compute_train_stats(datamodule.train_dataloader())
        self._stats_step = self.global_step
        rank_zero_info(f"AnomalyMoE: level ranges of the training images for {len(self.train_stats)} categories.")

    def _is_last_batch(self, batch_idx: int) -> bool:
        t = self.trainer
        last_epoch = t.max_epochs is not None and t.max_epochs > 0 and self.current_epoch + 1 >= t.max_epochs
        last_in_epoch = batch_idx + 1 >= t.num_training_batches
        last_step = t.max_steps is not None and t.max_steps > 0 and t.global_step >= t.max_steps
        return (last_epoch and last_in_epoch) or last_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        # Before the epoch-end checkpoint, so the saved file carries the statistics.
        if self._is_last_batch(batch_idx):
            self._refresh_train_stats()

    def on_fit_end(self) -> None:
        if getattr(self, "_stats_step", None) != self.global_step and self.trainer.num_training_batches:
            self._refresh_train_stats()  # stopped early (time limit, interrupt): recompute and re-save
            callback = self.trainer.checkpoint_callback
            path = getattr(callback, "last_model_path", "") or (getattr(callback, "best_model_path", "")
                                                                if getattr(callback, "monitor", 1) is None else "")
            if path and Path(path).is_file():
                self.trainer.save_checkpoint(path)
        super().on_fit_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["anomalymoe_train_stats"] = {k: v.clone() for k, v in self.train_stats.items()}
        if self.mask_centres:
            checkpoint["anomalymoe_mask_centres"] = self.mask_centres
        if self.eir_optimizer is not None:
            checkpoint["anomalymoe_eir_optimizer"] = self.eir_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.train_stats = dict(checkpoint.get("anomalymoe_train_stats", {}))
        self._eir_optimizer_state = checkpoint.get("anomalymoe_eir_optimizer")
        trainer = self._trainer
        stored = checkpoint.get("anomalymoe_mask_centres")
        # A resumed fit keeps the centres its own setup just computed on the current training images.
        if stored and not (trainer is not None and trainer.state.fn == "fit" and self.mask_centres):
            self.mask_centres = stored
        if trainer is not None and trainer.predicting and self.mask_centres and self.hparams.component_masks \
                and self.model.counts[2]:
            from anomaly_zoo.data.base import AnomalyDataModule
            from anomaly_zoo.models.anomalymoe.prepare_masks import attach_stored_component_masks

            # `setup` ran before the checkpoint was read (Lightning's order): attach the stored-centre masks now,
            # before the predict DataLoader is built.
            if isinstance(trainer.datamodule, AnomalyDataModule):
                attach_stored_component_masks(trainer.datamodule, "predict", self.mask_centres,
                                              **self._mask_settings())
                self._predict_masks_error = None

    # ---- training ---------------------------------------------------------------------------------------
    def draw_eir_pairs(self) -> dict[str, tuple[int, int]]:
        """Two distinct patch and two distinct global experts (a family with fewer than 2 has no pair)."""
        draw = {}
        for family, count in (("patch", self.model.counts[0]), ("global", self.model.counts[1])):
            if count >= 2:
                pair = torch.randperm(count)[:2].tolist()
                draw[family] = (pair[0], pair[1])
        return draw

    def compute_losses(self, batch: dict[str, Any], eir_draw: dict | None = None, run_all: bool = False) -> dict:
        """Every loss term of one batch (the experts' step), weighted and summed into ``total``."""
        hp = self.hparams
        images = batch["image"]
        image_ae = images
        if self.training and hp.ae_jitter > 0 and self.model.counts[1]:
            image_ae = jitter_for_autoencoder(images, *self._mean_std, strength=hp.ae_jitter)
        if eir_draw is None:
            eir_draw = self.draw_eir_pairs() if hp.eir_weight else {}
        out = self.model.forward_train(images, image_ae, batch.get("component_masks"), batch.get("component_valid"),
                                       eir_draw=eir_draw, run_all=run_all)
        esb = esb_terms(out["routing"].logits, out["routing"].selected, hp.capacity_factor)
        eir = self.eir.eir(out["eir_features"]) if hp.eir_weight and out["eir_features"] else images.new_zeros(())
        total = (hp.patch_weight * out["patch"] + hp.global_weight * out["global"]
                 + hp.component_weight * out["component"] + hp.eir_weight * eir + hp.esb_weight * esb["total"])
        return {"total": total, "patch": out["patch"], "global": out["global"], "component": out["component"],
                "esb": esb["total"], "eir": eir, "image_ae": image_ae, "out": out}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        if "component_masks" not in batch and self.model.counts[2] and hp.component_masks:
            self._warn_once("nomasks", "AnomalyMoE: training batches carry no component_masks; the component "
                            "experts do not train.")
        losses = self.compute_losses(batch)
        optimizer.zero_grad()
        anchor = self.gradient_anchor() if hp.step_unrouted_experts else 0.0
        self.manual_backward(losses["total"] + anchor)
        if hp.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler.step()
        estimator_loss = self._estimator_step(losses)
        size = batch["image"].shape[0]
        self.log("train/loss", losses["total"].detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for key in ("patch", "global", "component", "esb", "eir"):
            self.log(f"train/{key}", losses[key].detach(), on_step=False, on_epoch=True, batch_size=size)
        self.log("train/estimator", estimator_loss, on_step=False, on_epoch=True, batch_size=size)
        return losses["total"].detach()

    def gradient_anchor(self) -> torch.Tensor:
        """0 × one element of every trainable tensor (experts, router, CLUB estimator), added to the loss.

        Every trainable tensor then gets a gradient each step — exactly 0 for the experts no image selected — as
        in the authors' code, which runs all 18 experts and lets the routing weights zero them: their
        StableAdamW keeps stepping those experts (momentum, weight decay), which it skips for a ``None``
        gradient. It is also what DDP needs: every parameter it syncs takes part in the loss, so no
        ``find_unused_parameters`` (and no per-step graph search) is needed. Costs a zero fill per tensor.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return torch.zeros((), device=self.device)
        return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0

    def _estimator_step(self, losses: dict) -> torch.Tensor:
        """The CLUB estimator's own step: a no-grad forward of a NEW draw with the updated experts (as the
        authors'), then Adam on the estimator's NLL; the experts are untouched."""
        if not self.hparams.eir_weight or self.eir_optimizer is None:
            return torch.zeros(())
        draw = self.draw_eir_pairs()
        if not draw:
            return torch.zeros(())
        feats = self.model.eir_features(losses["out"]["fused_tokens"], losses["image_ae"], draw)
        loss = self.eir.estimator_loss(feats)
        self.eir_optimizer.zero_grad()
        # autograd.grad, not backward(): the estimator's parameters are inside the DDP-wrapped module, whose
        # gradient hooks must fire once per forward (the experts' backward); its gradients are averaged over
        # the ranks here instead, so every rank's estimator stays the same.
        params = [p for p in self.eir.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads) if g is not None]
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1 and used:
            flat = torch.cat([g.reshape(-1) for _, g in used])
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
            grads_synced = flat.split([g.numel() for _, g in used])
            used = [(p, s.view_as(g)) for (p, g), s in zip(used, grads_synced)]
        for p, g in used:
            p.grad = g
        if self.hparams.eir_grad_clip:
            torch.nn.utils.clip_grad_norm_(self.eir.parameters(), self.hparams.eir_grad_clip)
        self.eir_optimizer.step()
        return loss.detach()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        m = self.model
        modules = (m.patch_experts, m.global_experts, m.component_experts, m.router)
        return [p for module in modules for p in module.parameters()]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = StableAdamW(self.trainable_parameters(), lr=hp.lr, betas=(0.9, 0.999), eps=1e-10,
                                weight_decay=hp.weight_decay, amsgrad=True)
        total = hp.total_iters or int(self.trainer.estimated_stepping_batches)
        if not total or total == math.inf:
            total = 100_000
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warm_cosine_factor(step, total, hp.warmup_iters, hp.lr, hp.final_lr))
        # The estimator's optimiser is stepped by hand and kept out of Lightning's list, so global_step
        # counts expert steps only; its state is saved in on_save_checkpoint.
        self.eir_optimizer = torch.optim.Adam(self.eir.parameters(), lr=hp.eir_lr, weight_decay=hp.eir_weight_decay)
        state = getattr(self, "_eir_optimizer_state", None)
        if state:
            self.eir_optimizer.load_state_dict(state)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation bookkeeping -------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self.routing_stats = RoutingStatistics(self.model.counts)
        super().on_test_epoch_start()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        stats, self.routing_stats = self.routing_stats, None
        if stats is None or self.trainer.sanity_checking:
            return
        stats.sync(self)
        directory = self.results_dir or self.trainer.log_dir or "results"
        if self.trainer.is_global_zero and stats.images:
            paths = stats.save(Path(directory))
            rank_zero_info(f"Routing statistics written to {', '.join(str(p) for p in paths)}")
            for logger in self.loggers:
                if hasattr(logger, "log_metrics"):
                    logger.log_metrics(stats.as_metrics(), step=self.global_step)

    def results_caption(self) -> str:
        hp = self.hparams
        caption = super().results_caption()
        crop = f"centre crop {hp.center_crop:g} of the resize (448 → 392 in the paper); " if hp.center_crop < 1 else ""
        switches = (f"AnomalyMoE switches: {crop}hard_mining_masks={hp.hard_mining_masks}, "
                    f"hard_mining_scope={hp.hard_mining_scope}, test_groups={hp.test_groups}, "
                    f"eir_log_variance={str(hp.eir_log_variance).lower()}, normalization={hp.normalization}, "
                    f"step_unrouted_experts={str(hp.step_unrouted_experts).lower()}, "
                    f"component masks {'on' if hp.component_masks and self.model.counts[2] else 'off'}, "
                    f"no colour jitter at test.")
        return caption.replace(" Values in %.", f" {switches} Values in %.")
