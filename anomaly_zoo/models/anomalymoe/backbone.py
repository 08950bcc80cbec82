"""AnomalyMoE's frozen encoder: a DINOv2-with-registers ViT through timm, taps of blocks 2..9, last-block CLS.

The authors use DINOv2's own code at 392 px, whose positional embedding is resampled from the pretrained
37×37 grid with ``F.interpolate(scale_factor=(h0 + 0.1) / 37, mode="bicubic", antialias=False)`` (the
``interpolate_offset`` of DINOv2). timm's default resampling (antialiased, to an exact size) differs by up to
0.06 in the tokens; this wrapper keeps timm's weights at the pretrained grid and resamples the DINOv2 way,
once per input size (cached). Outputs are the raw block outputs — no final norm (spec: Input and backbone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anomaly_zoo.models.components.backbone import FrozenModule, create_timm_model


@dataclass
class Encoded:
    """Frozen features of a batch: ``taps`` [(B, N, C)] with N = 1 CLS + registers + h·w patches."""

    taps: list[torch.Tensor]
    cls: torch.Tensor  # (B, C): CLS token of the last block (the router's input)
    grid: tuple[int, int]
    num_prefix: int


def dinov2_resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1) -> torch.Tensor:
    """DINOv2's ``interpolate_pos_encoding`` for patch position embeddings (1, S·S, C) → (1, h·w, C).

    Bicubic with a *scale factor* of (h + offset) / S (not a target size), no antialias, in float32.
    """
    num, dim = pos_embed.shape[1], pos_embed.shape[2]
    side = int(math.sqrt(num))
    if side * side != num:
        raise ValueError(f"positional embedding of {num} tokens is not a square grid.")
    h, w = grid
    if (h, w) == (side, side):
        return pos_embed
    square = pos_embed.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = (float(h + offset) / math.sqrt(num), float(w + offset) / math.sqrt(num))
    out = F.interpolate(square, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != (h, w):
        raise RuntimeError(f"DINOv2 resampling gave a {tuple(out.shape[-2:])} grid, expected {(h, w)}.")
    return out.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)


class DINOv2Encoder(FrozenModule):
    """Frozen timm ViT with registers (``vit_base_patch14_reg4_dinov2`` by default).

    Args:
        name: timm model name (a ViT with ``reg_token`` and ``no_embed_class``, as timm's DINOv2-reg models).
        taps: 0-based blocks whose raw outputs are returned (the authors: 2..9).
        pretrained, weights_path: as :func:`create_timm_model`.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``embed_dim``/``depth``/``num_heads`` for a
            tiny random-initialised ViT in tests and the demo).
        pos_embed_offset: DINOv2's ``interpolate_offset``.
    """

    def __init__(
        self,
        name: str = "vit_base_patch14_reg4_dinov2",
        taps: Sequence[int] = (2, 3, 4, 5, 6, 7, 8, 9),
        pretrained: bool = True,
        weights_path: str | None = None,
        model_kwargs: dict | None = None,
        pos_embed_offset: float = 0.1,
    ) -> None:
        model = create_timm_model(name, pretrained=pretrained, weights_path=weights_path, **dict(model_kwargs or {}))
        for attr in ("patch_embed", "blocks", "cls_token", "pos_embed"):
            if getattr(model, attr, None) is None:
                raise ValueError(f"timm model '{name}' is not a ViT with a class token (no `{attr}`).")
        if not getattr(model, "no_embed_class", False):
            raise ValueError(f"timm model '{name}' adds position embeddings to its class token; AnomalyMoE needs a "
                             "DINOv2-style ViT (timm `no_embed_class=True`), e.g. vit_base_patch14_reg4_dinov2.")
        super().__init__(model)
        depth = len(model.blocks)
        self.taps = [int(t) for t in taps]
        if not self.taps or max(self.taps) >= depth or min(self.taps) < 0:
            raise ValueError(f"taps {self.taps} must be blocks of '{name}' (0..{depth - 1}).")
        self.name = name
        self.embed_dim = int(model.embed_dim)
        self.patch_size = int(model.patch_embed.proj.kernel_size[0])
        self.num_prefix = int(model.num_prefix_tokens)
        self.pos_embed_offset = pos_embed_offset
        self._pos_cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}

    def _pos_embed(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        key = (*grid, str(like.device), like.dtype)
        if key not in self._pos_cache:  # the frozen embedding never changes: resample once per size
            pos = dinov2_resample_pos_embed(self.module.pos_embed.detach(), grid, self.pos_embed_offset)
            self._pos_cache[key] = pos.to(device=like.device, dtype=like.dtype)
        return self._pos_cache[key]

    def _apply(self, fn, recurse: bool = True):
        self._pos_cache = {}  # device/dtype moves invalidate the cache
        return super()._apply(fn, recurse)

    def forward(self, images: torch.Tensor) -> Encoded:
        """(B, 3, H, W) → taps and last-block CLS; H, W multiples of the patch size (else floored)."""
        m = self.module
        with torch.no_grad():
            x = m.patch_embed.proj(images)  # the conv directly: timm's PatchEmbed insists on its img_size
            grid = (x.shape[-2], x.shape[-1])
            x = m.patch_embed.norm(x.flatten(2).transpose(1, 2))
            x = x + self._pos_embed(grid, x)
            prefix = [m.cls_token.expand(x.shape[0], -1, -1)]
            if m.reg_token is not None:
                prefix.append(m.reg_token.expand(x.shape[0], -1, -1))
            x = m.norm_pre(torch.cat(prefix + [x], dim=1))
            wanted = set(self.taps)
            taps: dict[int, torch.Tensor] = {}
            for index, block in enumerate(m.blocks):
                x = block(x)
                if index in wanted:
                    taps[index] = x
            return Encoded(taps=[taps[t] for t in self.taps], cls=x[:, 0], grid=grid, num_prefix=self.num_prefix)
