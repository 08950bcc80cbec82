"""MoECLIPModel: the plain ``nn.Module`` of MoECLIP (no Lightning, files or metrics).

Frozen OpenCLIP towers; MoE adapters (routed FOFS LoRA experts) after the configured vision blocks, whose
outputs are the levels; PAA at r ∈ {1, 3, 5} per level → ``ln_post`` → the level's seg projection → 12 patch
feature maps; a detection head on the last level; the adapted text features T = [t_normal, t_anomalous].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from anomaly_zoo.models.moeclip.clip_backbone import OPTION_PREFIX, FrozenCLIP, create_clip
from anomaly_zoo.models.moeclip.detection_head import DetectionHead
from anomaly_zoo.models.moeclip.etf_loss import etf_loss
from anomaly_zoo.models.moeclip.load_balance import load_balance_loss
from anomaly_zoo.models.moeclip.losses import segmentation_loss
from anomaly_zoo.models.moeclip.maps import (
    DOMAINS,
    LOGIT_SCALE,
    anomaly_map,
    detection_score,
    training_probabilities,
)
from anomaly_zoo.models.moeclip.moe_adapter import MoEAdapter, MoEOutput
from anomaly_zoo.models.moeclip.paa import patch_average_aggregation
from anomaly_zoo.models.moeclip.prompts import class_description
from anomaly_zoo.models.moeclip.text import PromptFeatureCache, TextAdapter, class_text_features

#: A tiny open_clip architecture (random init, no download) for the demo and the tests.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 96, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@dataclass
class MoECLIPOutput:
    """``logits``: the 12 maps' 100·f·T, each (B, 2, h, w), ordered (level, r); ``detection`` d (B, C);
    ``text`` T per image (B, C, 2); ``moe``: each adapter layer's :class:`MoEOutput`."""

    logits: list[torch.Tensor]
    detection: torch.Tensor
    text: torch.Tensor
    moe: list[MoEOutput]


class MoECLIPModel(nn.Module):
    """MoECLIP — "Patch-Specialized Experts for Zero-shot Anomaly Detection" (CVPR 2026), as an ``nn.Module``.

    Args: see :class:`anomaly_zoo.models.moeclip.MoECLIP` (the LightningModule passes them through).
    """

    def __init__(
        self,
        clip_model: str = "ViT-L-14-336",
        clip_config: Mapping[str, Any] | None = None,
        pretrained: bool = True,
        pretrained_tag: str = "openai",
        backbone_weights: str | None = None,
        image_size: int = 518,
        adapter_blocks: Sequence[int] = (6, 12, 18, 24),
        num_experts: int = 4,
        rank: int = 8,
        lora_alpha: float = 16.0,
        top_k: int = 2,
        expert_dropout: float = 0.05,
        mix_weight: float = 0.1,
        fofs: bool = True,
        paa_sizes: Sequence[int] = (1, 3, 5),
        detection_kernel: int = 3,
        gradient_checkpointing: bool = False,
        class_descriptions: Mapping[str, str] | None = None,
        domain: str = "industrial",
    ) -> None:
        super().__init__()
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got '{domain}' (check `{OPTION_PREFIX}.domain`).")
        self.clip = FrozenCLIP(create_clip(clip_model, pretrained, pretrained_tag, backbone_weights, image_size,
                                           dict(clip_config) if clip_config is not None else None))
        blocks = tuple(int(b) for b in adapter_blocks)
        if not blocks or list(blocks) != sorted(set(blocks)) or blocks[0] < 1 or blocks[-1] > self.clip.vision_depth:
            raise ValueError(f"adapter_blocks must be increasing block numbers in 1..{self.clip.vision_depth}, got {blocks} "
                             f"(check `{OPTION_PREFIX}.adapter_blocks`).")
        self.adapter_blocks = blocks
        self.paa_sizes = tuple(int(r) for r in paa_sizes)
        self.gradient_checkpointing = gradient_checkpointing
        self.domain = domain
        self.class_descriptions = dict(class_descriptions or {})
        width, text_width = self.clip.vision_width, self.clip.text_width
        self.adapters = nn.ModuleList(
            MoEAdapter(width, num_experts, rank, lora_alpha, top_k, expert_dropout, mix_weight, fofs) for _ in blocks
        )
        self.seg_projections = nn.ModuleList(nn.Linear(width, text_width, bias=False) for _ in blocks)
        for projection in self.seg_projections:
            nn.init.xavier_uniform_(projection.weight)
        self.detection_head = DetectionHead(width, text_width, detection_kernel)
        self.text_adapter = TextAdapter(text_width)
        self.prompt_cache = PromptFeatureCache()
        self._eval_text: dict[str, torch.Tensor] = {}

    @property
    def num_maps(self) -> int:
        return len(self.adapter_blocks) * len(self.paa_sizes)

    @property
    def num_experts(self) -> int:
        return self.adapters[0].num_experts

    # ---- caches ------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> MoECLIPModel:
        # The adapter may change between evaluations: eval-time text features are recomputed once per run.
        self._eval_text.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # New weights (frozen encoder included) invalidate both text caches.
        self.prompt_cache.clear()
        self._eval_text.clear()
        super()._load_from_state_dict(*args, **kwargs)

    # ---- text ---------------------------------------------------------------------------------------------
    def _encode_sentences(self, sentences: list[str]) -> torch.Tensor:
        import open_clip

        tokens = open_clip.tokenize(sentences, context_length=self.clip.context_length)
        return self.clip.text_tokens(tokens.to(self.text_adapter.proj.weight.device))

    def description(self, category: str) -> str:
        return class_description(category, self.class_descriptions)

    def class_text(self, category: str) -> torch.Tensor:
        """T (C, 2) for one category: cached frozen features → the trainable adapter (with grad in training)."""
        description = self.description(category)
        cacheable = not self.training and not torch.is_grad_enabled()
        if cacheable and description in self._eval_text:
            return self._eval_text[description]
        device = self.text_adapter.proj.weight.device
        normal, anomalous = (t.to(device) for t in self.prompt_cache.get(description, self._encode_sentences))
        text = class_text_features(self.text_adapter, normal, anomalous)
        if cacheable:
            self._eval_text[description] = text
        return text

    def text_features(self, categories: Sequence[str]) -> torch.Tensor:
        """T per image (B, C, 2); each distinct category's T computed once per call."""
        per_class = {c: self.class_text(c) for c in dict.fromkeys(categories)}
        return torch.stack([per_class[c] for c in categories])

    # ---- vision -------------------------------------------------------------------------------------------
    def _check_input(self, images: torch.Tensor) -> None:
        if tuple(images.shape[-2:]) != self.clip.image_size:
            raise ValueError(
                f"MoECLIP was built for {self.clip.image_size[0]}×{self.clip.image_size[1]} inputs but got "
                f"{images.shape[-2]}×{images.shape[-1]}: set `{OPTION_PREFIX}.image_size` to the data's image_size."
            )

    def encode_image(self, images: torch.Tensor, return_expert_outputs: bool = False) -> tuple[list[torch.Tensor], list[MoEOutput]]:
        """The level tokens (B, 1 + h·w, D) after each adapter's mixing, and the adapters' outputs.

        Blocks up to the first adapter run without autograd (nothing trainable before them); later frozen
        blocks carry gradients to the earlier adapters, optionally with activation checkpointing. Blocks after
        the last adapter are not run (their output is never used).
        """
        self._check_input(images)
        visual = self.clip.visual
        first, last = self.adapter_blocks[0], self.adapter_blocks[-1]
        with torch.no_grad():
            x = visual._embeds(images)
            for block in visual.transformer.resblocks[:first]:
                x = block(x)
        levels, moe_outputs = [], []
        for number in range(first, last + 1):
            if number > first:
                block = visual.transformer.resblocks[number - 1]
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if number in self.adapter_blocks:
                moe = self.adapters[len(levels)](x, return_expert_outputs=return_expert_outputs)
                x = moe.hidden
                levels.append(x)
                moe_outputs.append(moe)
        return levels, moe_outputs

    def forward(self, images: torch.Tensor, categories: Sequence[str], return_expert_outputs: bool = False) -> MoECLIPOutput:
        levels, moe_outputs = self.encode_image(images, return_expert_outputs)
        visual, grid = self.clip.visual, self.clip.grid_size
        text = self.text_features(categories)
        # All levels × PAA sizes at once (one pooling per size, one ln_post, one batched projection and one
        # similarity matmul instead of 12 of each): the same per-token operations, fewer small kernel calls.
        batch, num_levels = images.shape[0], len(levels)
        stacked = torch.cat(levels)  # (L·B, 1 + h·w, D), level-major
        normed = torch.stack([visual.ln_post(patch_average_aggregation(stacked, size, grid)[:, 1:])
                              for size in self.paa_sizes], dim=1)  # (L·B, S, h·w, D); LN per token: CLS dropped first
        normed = normed.unflatten(0, (num_levels, batch))  # (L, B, S, h·w, D)
        weights = torch.stack([p.weight for p in self.seg_projections])  # (L, C, D)
        features = F.normalize(normed @ weights.transpose(1, 2)[:, None, None], dim=-1)  # (L, B, S, h·w, C)
        scores = LOGIT_SCALE * features @ text[None, :, None]  # (L, B, S, h·w, 2)
        maps = scores.transpose(-1, -2).unflatten(-1, grid).transpose(1, 2)  # (L, S, B, 2, h, w)
        logits = list(maps.flatten(0, 1).unbind(0))  # ordered (level, r)
        # r = 1 leaves the tokens as they are, so the detection head's ln_post(last level) is already computed.
        last = normed[-1, :, self.paa_sizes.index(1)] if 1 in self.paa_sizes else visual.ln_post(levels[-1][:, 1:])
        detection = self.detection_head(last)
        return MoECLIPOutput(logits=logits, detection=detection, text=text, moe=moe_outputs)

    # ---- training -----------------------------------------------------------------------------------------
    def training_losses(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        categories: Sequence[str],
        with_etf: bool = True,
    ) -> dict[str, Any]:
        """The loss terms (unweighted): ``ce`` on raw cosines d·T, ``seg`` = Σ over the maps of focal + 2 dice,
        ``etf`` summed over the layers (``None`` unless ``with_etf``), ``lb`` summed over the layers; plus
        ``expert_counts`` (layers, K) routing slots per expert."""
        output = self(images, categories, return_expert_outputs=with_etf)
        cosines = (output.detection.unsqueeze(1) @ output.text).squeeze(1)
        size = tuple(masks.shape[-2:])
        seg = sum(segmentation_loss(training_probabilities(logits, size), masks) for logits in output.logits)
        etf = sum(etf_loss(m.expert_outputs) for m in output.moe) if with_etf else None
        lb = sum(load_balance_loss(m.routing.probs) for m in output.moe)
        counts = torch.stack([m.routing.expert_counts(self.num_experts) for m in output.moe])
        return {"ce": F.cross_entropy(cosines, labels), "seg": seg, "etf": etf, "lb": lb, "expert_counts": counts}

    # ---- inference ----------------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor, categories: Sequence[str]) -> dict[str, torch.Tensor]:
        """``anomaly_map`` (B, 1, H, W): Σ of the maps, blurred per domain, at the input size; ``detection_score``
        s (B,); ``map_max`` / ``map_min`` (B,) per image; ``expert_counts`` (layers, K)."""
        output = self(images, categories)
        amap = anomaly_map(output.logits, self.domain, tuple(images.shape[-2:]))
        flat = amap.flatten(1)
        return {
            "anomaly_map": amap,
            "detection_score": detection_score(output.detection, output.text),
            "map_max": flat.amax(dim=1),
            "map_min": flat.amin(dim=1),
            "expert_counts": torch.stack([m.routing.expert_counts(self.num_experts) for m in output.moe]),
        }
