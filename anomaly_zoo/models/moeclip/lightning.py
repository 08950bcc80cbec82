"""MoECLIP's LightningModule: the loss weighting, Adam with the per-iteration LR step, routing statistics,
and the image-score protocols (per-image default, or the authors' per-category min-max over the test set)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from anomaly_zoo.data.images import UNNAMED_CATEGORIES
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.moeclip.convert import load_official_file, load_official_state_dict
from anomaly_zoo.models.moeclip.maps import fixed_range_image_score, map_value_range, transductive_image_score
from anomaly_zoo.models.moeclip.model import MoECLIPModel
from anomaly_zoo.registry import MODELS

SCORE_NORMALIZATIONS = ("fixed_range", "test_set")
#: Category used when ``predict_anomaly`` is called without one (plain Python use): the authors' generic name.
DEFAULT_CATEGORY = "object"


@MODELS.register("moeclip")
class MoECLIP(AnomalyModule):
    """MoECLIP — "Patch-Specialized Experts for Zero-shot Anomaly Detection" (CVPR 2026).

    Frozen CLIP ViT-L/14@336 (exact GELU, 518 px) with routed LoRA experts after blocks 6/12/18/24 whose
    down-projections are frozen orthonormal subspaces (FOFS), patch average aggregation, seg projections, a
    detection head and an adapted text prompt ensemble. Trained once on an auxiliary labelled set, tested
    zero-shot on unseen categories (``cross_dataset`` with ``train_split: test``). Defaults are the paper's.

    Args:
        clip_model: open_clip model name (``ViT-L-14-336``: exact GELU; not ``-quickgelu``).
        clip_config: a custom open_clip model-config dict instead (``embed_dim``, ``vision_cfg``, ``text_cfg``);
            random-initialised unless ``backbone_weights`` is given (demo / tests).
        pretrained: load ``pretrained_tag`` through open_clip's cache (``false`` = random init).
        pretrained_tag: open_clip pretrained tag (``openai``).
        backbone_weights: a local CLIP checkpoint file instead of open_clip's hub/cache.
        image_size: input side; the positional grid is interpolated to it (bicubic, antialias).
        adapter_blocks: 1-based vision blocks followed by a MoE adapter; their outputs are the levels.
        num_experts, rank, lora_alpha, top_k, expert_dropout: the experts (4, 8, 16, 2, 0.05).
        mix_weight: λ of the residual mixing x ← λ·rescaled y + (1 − λ)·x (0.1).
        fofs: frozen orthonormal disjoint down-projections (``false``: trainable dense A, plain LoRA).
        paa_sizes: PAA neighbourhoods per level (1, 3, 5) → 12 maps.
        detection_kernel: depthwise conv kernel of the detection head (3).
        domain: ``industrial`` (blur 7×7 σ 1; image score 0.5·max(map) + 0.5·s) or ``medical`` (9×9 σ 1.5; max).
        class_descriptions: category → prompt description, over the authors' table (see ``prompts.py``).
        etf_weight: weight of the ETF loss (0.01 = the paper; 0 = the authors' release, which never applies it).
        lb_weight: weight of the load-balancing loss (0 = default; the release never applies it either).
        lr, betas: Adam (5e-5, (0.5, 0.999)), no weight decay.
        lr_milestones, lr_gamma: MultiStepLR stepped every ITERATION (16000, 32000; 0.5) as the authors'.
        gradient_checkpointing: recompute the frozen blocks after the first adapter in the backward pass.
        score_normalization: ``fixed_range`` (default, per image: the map's max rescaled by its a-priori range
            to [0, 1], fused with s) or ``test_set`` (the authors' transductive protocol: min-max over each
            category's whole test set, then fused).
        official_checkpoint: a checkpoint of the authors' ``train.py`` (adapters only), loaded at construction.
    """

    set_statistics = ("map_min", "map_max", "detection_score")

    def __init__(
        self,
        clip_model: str = "ViT-L-14-336",
        clip_config: dict[str, Any] | None = None,
        pretrained: bool = True,
        pretrained_tag: str = "openai",
        backbone_weights: str | None = None,
        image_size: int = 518,
        adapter_blocks: tuple[int, ...] = (6, 12, 18, 24),
        num_experts: int = 4,
        rank: int = 8,
        lora_alpha: float = 16.0,
        top_k: int = 2,
        expert_dropout: float = 0.05,
        mix_weight: float = 0.1,
        fofs: bool = True,
        paa_sizes: tuple[int, ...] = (1, 3, 5),
        detection_kernel: int = 3,
        domain: str = "industrial",
        class_descriptions: dict[str, str] | None = None,
        etf_weight: float = 0.01,
        lb_weight: float = 0.0,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.5, 0.999),
        lr_milestones: tuple[int, ...] = (16000, 32000),
        lr_gamma: float = 0.5,
        gradient_checkpointing: bool = False,
        score_normalization: str = "fixed_range",
        official_checkpoint: str | None = None,
        pixel_metrics: str = "streaming",
        fpr_limit: float = 0.3,
        results_dir: str | None = None,
    ) -> None:
        super().__init__(pixel_metrics=pixel_metrics, fpr_limit=fpr_limit, results_dir=results_dir)
        if score_normalization not in SCORE_NORMALIZATIONS:
            raise ValueError(f"score_normalization must be one of {SCORE_NORMALIZATIONS}, got '{score_normalization}'.")
        self.save_hyperparameters()
        self.model = MoECLIPModel(
            clip_model=clip_model, clip_config=clip_config, pretrained=pretrained, pretrained_tag=pretrained_tag,
            backbone_weights=backbone_weights, image_size=image_size, adapter_blocks=adapter_blocks,
            num_experts=num_experts, rank=rank, lora_alpha=lora_alpha, top_k=top_k, expert_dropout=expert_dropout,
            mix_weight=mix_weight, fofs=fofs, paa_sizes=paa_sizes, detection_kernel=detection_kernel,
            gradient_checkpointing=gradient_checkpointing, class_descriptions=class_descriptions, domain=domain,
        )
        self.score_normalization = score_normalization
        fused = "0.5·max(map) + 0.5·s" if domain == "industrial" else "max(map)"
        if score_normalization == "test_set":
            self.image_score_rule = f"{fused}, map and s min-max normalised over each category's test set (MoECLIP)"
        else:
            low, high = map_value_range(self.model.num_maps)
            self.image_score_rule = f"{fused}, map rescaled by its a-priori range [{low:g}, {high:g}] to [0, 1], per image"
        self._categories: list[str] | None = None
        self._eval_routing: torch.Tensor | None = None
        if official_checkpoint:
            info = load_official_state_dict(self.model, load_official_file(official_checkpoint))
            rank_zero_info(f"Loaded the authors' MoECLIP checkpoint '{official_checkpoint}' ({len(info['loaded'])} tensors).")

    # ---- categories of the current batch (the prompts depend on them) ---------------------------------------
    def _batch_categories(self, batch: dict[str, Any]) -> None:
        self._categories = list(batch["category"]) if isinstance(batch, dict) and "category" in batch else None

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_categories(batch)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_categories(batch)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_categories(batch)

    def _categories_for(self, images: torch.Tensor, categories: list[str] | None) -> list[str]:
        categories = categories if categories is not None else self._categories
        if categories is None:
            return [DEFAULT_CATEGORY] * images.shape[0]
        if len(categories) != images.shape[0]:
            raise ValueError(f"{len(categories)} categories for {images.shape[0]} images.")
        # `predict imgs/` or `--data folder` without --data.category: the category is unknown, so the generic
        # prompt (the one an exported graph, which has no category input, uses), not "a photo of a images".
        return [DEFAULT_CATEGORY if c in UNNAMED_CATEGORIES else c for c in categories]

    # ---- inference -------------------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor, categories: list[str] | None) -> dict[str, torch.Tensor]:
        output = self.model.predict(images, self._categories_for(images, categories))
        counts = output["expert_counts"]
        self._eval_routing = counts if self._eval_routing is None else self._eval_routing + counts
        return output

    def predict_anomaly(self, images: torch.Tensor, categories: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-image rule (``predict`` and ``score_normalization: fixed_range``); ``categories`` default to the
        current batch's (set by Lightning's batch hooks), else the generic "object"."""
        output = self._predict(images, categories)
        score = fixed_range_image_score(output["map_max"], output["detection_score"], self.model.num_maps, self.model.domain)
        return {"anomaly_map": output["anomaly_map"], "pred_score": score}

    def set_level_protocol(self) -> bool:
        return self.score_normalization == "test_set"

    def predict_set_statistics(self, images: torch.Tensor, categories: list[str] | None = None) -> dict[str, Any]:
        # Per-category min-max is affine with a positive slope: the pixel metrics see the raw map at once.
        output = self._predict(images, categories)
        stats = {name: output[name] for name in self.set_statistics}
        return {"set_stats": stats, "anomaly_map": output["anomaly_map"]}

    def finish_set(self, set_stats: dict[str, torch.Tensor], ranges: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        map_range = (ranges["map_min"][0], ranges["map_max"][1])
        score = transductive_image_score(set_stats["map_max"], set_stats["detection_score"], map_range,
                                     ranges["detection_score"], self.model.domain)
        return {"pred_score": score}

    def protocol_caption(self) -> str:
        if self.score_normalization == "test_set":
            return ("Transductive protocol (the authors'): maps and detection scores min-max normalised over each "
                    "category's whole test set before fusing.")
        return "Non-transductive: every image scored on its own (fixed-range map rescale)."

    def results_caption(self) -> str:
        etf = self.hparams.etf_weight
        note = " (the paper)" if etf == 0.01 else " (the authors' release: ETF never applied)" if etf == 0 else ""
        return (f"{super().results_caption()} Losses: etf_weight {etf:g}{note}, lb_weight {self.hparams.lb_weight:g}; "
                f"domain {self.model.domain}.")

    # ---- routing statistics in evaluation -------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._eval_routing = None
        super().on_validation_epoch_start()

    def on_test_epoch_start(self) -> None:
        self._eval_routing = None
        super().on_test_epoch_start()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        counts = self._eval_routing
        if counts is None:
            return
        counts = self.trainer.strategy.reduce(counts.to(self.device).float(), reduce_op="sum")
        directory = self.results_dir or self.trainer.log_dir or "results"
        if self.trainer.is_global_zero:
            path = write_routing_statistics(counts, Path(directory) / "routing_statistics.csv", self.model.adapter_blocks)
            rank_zero_info(f"Routing statistics written to {path}")

    # ---- training --------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        images = batch["image"]
        terms = self.model.training_losses(images, batch["mask"], batch["label"], list(batch["category"]),
                                           with_etf=hp.etf_weight > 0)
        loss = self.weighted_loss(terms)
        size = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name in ("ce", "seg", "etf", "lb"):
            if terms[name] is not None:
                self.log(f"train/{name}", terms[name].detach(), on_step=False, on_epoch=True, batch_size=size)
        shares = routing_shares(terms["expert_counts"])
        for layer, block in enumerate(self.model.adapter_blocks):
            for expert in range(shares.shape[1]):
                self.log(f"train/routing/block{block}/expert{expert}", shares[layer, expert],
                         on_step=False, on_epoch=True, batch_size=size)
        return loss

    def weighted_loss(self, terms: dict[str, Any]) -> torch.Tensor:
        """CE + Σ seg + etf_weight·ETF + lb_weight·LB (the ETF term is only computed when its weight is > 0)."""
        hp = self.hparams
        loss = terms["ce"] + terms["seg"] + hp.lb_weight * terms["lb"]
        if hp.etf_weight > 0:
            loss = loss + hp.etf_weight * terms["etf"]
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]  # adapters/heads; never the CLIP towers
        optimizer = torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.lr_milestones), gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def routing_shares(counts: torch.Tensor) -> torch.Tensor:
    """Per layer, the share of routing slots (token × top-k rank) each expert received: rows sum to 1."""
    counts = counts.float()
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def write_routing_statistics(counts: torch.Tensor, path: Path, blocks: tuple[int, ...]) -> Path:
    """CSV ``block, expert, slots, share`` (one row per MoE layer and expert) of an evaluation run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shares = routing_shares(counts)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["block", "expert", "slots", "share"])
        for layer, block in enumerate(blocks):
            for expert in range(counts.shape[1]):
                writer.writerow([block, expert, int(counts[layer, expert]), f"{float(shares[layer, expert]):.6f}"])
    return path
