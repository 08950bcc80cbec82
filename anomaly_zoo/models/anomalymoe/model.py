"""AnomalyMoE as a plain ``nn.Module``: frozen DINOv2-reg taps → router → patch / global / component experts.

"Towards a Language-free Generalist Model for Unified Visual Anomaly Detection" (AAAI 2026). No Lightning,
files or metrics here (see ``lightning.py``). The authors run all 18 experts on every image and let the
routing weights zero most of them; here every expert runs only on the images that need it — in eval the
images that selected it, in training those plus, for the experts of the EIR draw, every image (and only the
decoder blocks the EIR feature needs). ``run_all=True`` runs everything (the reference the tests compare to).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.anomalymoe.backbone import DINOv2Encoder, Encoded
from anomaly_zoo.models.anomalymoe.component_expert import (
    ComponentExpert,
    component_distance,
    component_features,
)
from anomaly_zoo.models.anomalymoe.global_expert import GlobalExpert, global_distance_map
from anomaly_zoo.models.anomalymoe.patch_expert import PatchExpert, cosine_distance_map, hard_mined_loss
from anomaly_zoo.models.anomalymoe.router import Router

FAMILIES = ("patch", "global", "component")
#: Encoder-tap groups of the patch loss (indices into the 8 taps): G0 = blocks 2-5, G1 = blocks 6-9. Decoder
#: outputs are reversed first, so G0 pairs with decoder blocks 7..4 and G1 with 3..0.
TRAIN_GROUPS = ((0, 1, 2, 3), (4, 5, 6, 7))
TEST_GROUPS = ("authors", "dinomaly")
HARD_MINING_SCOPES = ("routed", "batch")


def trunc_normal_linears_(module: nn.Module, std: float = 0.01, bound: float = 0.03) -> None:
    """The authors' init of every Linear of the experts and router: trunc-normal(0, std, ±bound), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-bound, b=bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(tensors), dim=0).mean(dim=0)


def component_map_from_scores(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """max_c score_c · mask_c: (B, K) scores (≥ 0), (B, K, H, W) binary masks → (B, 1, H, W)."""
    return (scores[:, :, None, None] * masks.to(scores.dtype)).amax(dim=1, keepdim=True)


class AnomalyMoEModel(nn.Module):
    """AnomalyMoE; defaults are the authors'. See ``AnomalyMoE`` (lightning.py) for every option."""

    def __init__(
        self,
        backbone: str = "vit_base_patch14_reg4_dinov2",
        backbone_kwargs: dict | None = None,
        pretrained: bool = True,
        backbone_weights: str | None = None,
        taps: Sequence[int] = (2, 3, 4, 5, 6, 7, 8, 9),
        num_patch_experts: int = 6,
        num_global_experts: int = 6,
        num_component_experts: int = 6,
        top_k: int = 3,
        router_hidden: int = 256,
        decoder_depth: int = 8,
        decoder_heads: int | None = None,
        bottleneck_dropout: float = 0.2,
        global_ae_channels: Sequence[int] = (32, 64, 128),
        global_student_channels: Sequence[int] = (256, 512),
        global_dropout: float = 0.2,
        global_input_size: int = 392,
        component_hidden: int = 256,
        component_inner: int = 64,
        component_code: int = 64,
        component_dropout: float = 0.1,
        mask_dilation: int = 5,
        test_groups: str = "authors",
        hard_mining_p: float = 0.9,
        hard_mining_factor: float = 0.1,
        hard_mining_masks: str = "authors",
        hard_mining_scope: str = "routed",
    ) -> None:
        super().__init__()
        if test_groups not in TEST_GROUPS:
            raise ValueError(f"test_groups must be one of {TEST_GROUPS}, got '{test_groups}'.")
        if hard_mining_scope not in HARD_MINING_SCOPES:
            raise ValueError(f"hard_mining_scope must be one of {HARD_MINING_SCOPES}, got '{hard_mining_scope}'.")
        if hard_mining_masks not in ("authors", "own"):
            raise ValueError(f"hard_mining_masks must be 'authors' or 'own', got '{hard_mining_masks}'.")
        if len(taps) != 8 or decoder_depth != 8:
            raise ValueError("AnomalyMoE pairs 8 encoder taps with 8 decoder blocks (two groups of 4); "
                             f"got {len(taps)} taps and decoder_depth {decoder_depth}.")
        counts = (num_patch_experts, num_global_experts, num_component_experts)
        if min(counts) < 0 or sum(counts) < 1:
            raise ValueError(f"expert counts must be >= 0 with at least one expert, got {counts}.")
        self.encoder = DINOv2Encoder(backbone, taps, pretrained, backbone_weights, backbone_kwargs)
        dim = self.encoder.embed_dim
        heads = decoder_heads or max(1, dim // 64)
        self.counts = counts
        self.offsets = (0, counts[0], counts[0] + counts[1])
        self.test_groups = test_groups
        self.hard_mining = {"p": hard_mining_p, "factor": hard_mining_factor, "masks": hard_mining_masks}
        self.hard_mining_scope = hard_mining_scope
        self.mask_dilation = mask_dilation
        self.patch_experts = nn.ModuleList(
            [PatchExpert(dim, decoder_depth, heads, 4.0, 4.0, bottleneck_dropout) for _ in range(counts[0])]
        )
        self.global_experts = nn.ModuleList([
            GlobalExpert(dim, global_ae_channels, global_student_channels, global_dropout, global_input_size)
            for _ in range(counts[1])
        ])
        self.component_experts = nn.ModuleList([
            ComponentExpert(dim, component_hidden, component_inner, component_code, component_dropout)
            for _ in range(counts[2])
        ])
        self.router = Router(dim, sum(counts), router_hidden, top_k)
        for module in (self.patch_experts, self.global_experts, self.component_experts, self.router):
            trunc_normal_linears_(module)
        # Decoder blocks whose outputs form G1 (the EIR feature): reversed indices 4..7 → blocks 3..0.
        self._g1_blocks = max(decoder_depth - 1 - i for i in TRAIN_GROUPS[-1]) + 1

    @property
    def num_experts(self) -> int:
        return sum(self.counts)

    def expert_slice(self, family: str) -> slice:
        index = FAMILIES.index(family)
        return slice(self.offsets[index], self.offsets[index] + self.counts[index])

    # ---- features ------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> Encoded:
        return self.encoder(images)

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(n, P + h·w, C) → patch tokens as (n, C, h, w), t = h·W + w."""
        patches = tokens[:, self.encoder.num_prefix:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

    def _en_groups(self, enc: Encoded) -> list[torch.Tensor]:
        return [self._to_map(_mean([enc.taps[i] for i in g]), enc.grid) for g in TRAIN_GROUPS]

    # ---- which images each expert sees ------------------------------------------------------------------
    @staticmethod
    def _rows(mask: torch.Tensor) -> torch.Tensor:
        return mask.nonzero(as_tuple=True)[0]

    # ---- training -----------------------------------------------------------------------------------------
    def forward_train(
        self,
        images: torch.Tensor,
        image_ae: torch.Tensor | None = None,
        component_masks: torch.Tensor | None = None,
        component_valid: torch.Tensor | None = None,
        eir_draw: dict[str, tuple[int, int]] | None = None,
        run_all: bool = False,
    ) -> dict:
        """Per-level reconstruction losses (Σ_i mean_b w_bi·L_i(b), unscaled), routing and EIR features.

        ``eir_draw``: {"patch": (i, j), "global": (k, l)} within-family expert indices whose features the EIR
        term needs for every image. ``image_ae`` defaults to ``images`` (no jitter).
        """
        enc = self.encode(images)
        routing = self.router(enc.cls)
        batch = images.shape[0]
        eir_draw = eir_draw or {}
        fused = _mean(enc.taps)
        en_groups = self._en_groups(enc)
        out: dict = {"routing": routing, "fused_tokens": fused, "eir_features": {}}
        weights, selected = routing.weights, routing.selected
        everyone = torch.ones(batch, dtype=torch.bool, device=images.device)

        # patch experts
        loss = images.new_zeros(())
        sl = self.expert_slice("patch")
        for i, expert in enumerate(self.patch_experts):
            routed = selected[:, sl.start + i]
            in_eir = i in eir_draw.get("patch", ())
            whole_batch = run_all or self.hard_mining_scope == "batch"
            if not routed.any() and not in_eir:
                continue
            rows = everyone if (in_eir or whole_batch) else routed
            deep = everyone if whole_batch else routed  # rows that need every decoder block
            row_idx = self._rows(rows)
            deep_local = self._rows(deep[rows])
            outs = expert(fused[row_idx], deep_rows=None if bool(deep[rows].all()) else deep_local,
                          shallow_blocks=self._g1_blocks)
            shallow = self._g1_blocks
            if in_eir:
                g1_all = _mean(outs[:shallow])
                out["eir_features"].setdefault("patch", {})[i] = g1_all[:, self.encoder.num_prefix:].mean(dim=1)
            if routed.any():
                rev = [o if k >= shallow else o[deep_local] for k, o in enumerate(outs)][::-1]
                de_groups = [self._to_map(_mean([rev[j] for j in g]), enc.grid) for g in TRAIN_GROUPS]
                deep_idx = self._rows(deep)
                threshold_rows = None if self.hard_mining_scope == "batch" else routed[deep_idx]
                loss_vec = hard_mined_loss([e[deep_idx] for e in en_groups], de_groups,
                                           threshold_rows=threshold_rows, **self.hard_mining)
                loss = loss + (weights[deep_idx, sl.start + i] * loss_vec).sum() / batch
        out["patch"] = loss

        # global experts
        loss = images.new_zeros(())
        sl = self.expert_slice("global")
        image_ae = images if image_ae is None else image_ae
        needs_target = selected[:, sl].any(dim=1) if not run_all else everyone
        target = None
        if self.counts[1] and needs_target.any():
            target_rows = self._rows(needs_target)
            if image_ae is images:
                taps_ae = [t[target_rows] for t in enc.taps]
                grid = enc.grid
            else:
                enc_ae = self.encode(image_ae[target_rows])
                taps_ae, grid = enc_ae.taps, enc_ae.grid
            target = torch.zeros(batch, self.encoder.embed_dim, *grid, device=images.device, dtype=images.dtype)
            target[target_rows] = self._to_map(_mean([taps_ae[j] for j in TRAIN_GROUPS[-1]]), grid)
        for i, expert in enumerate(self.global_experts):
            routed = selected[:, sl.start + i]
            in_eir = i in eir_draw.get("global", ())
            if not routed.any() and not in_eir and not run_all:
                continue
            loss_rows = everyone if run_all else routed
            x = expert.prepare(image_ae)
            student_rows = everyone if (in_eir or run_all) else routed
            student = expert.student(x[self._rows(student_rows)])
            if in_eir:
                out["eir_features"].setdefault("global", {})[i] = student.mean(dim=(2, 3))
            if loss_rows.any():
                idx = self._rows(loss_rows)
                ae = expert.autoencoder(x[idx])
                st = student[self._rows(loss_rows[student_rows])]
                tgt = target[idx]
                ae_resized = F.interpolate(ae, size=tgt.shape[-2:], mode="bilinear", align_corners=False) \
                    if ae.shape[-2:] != tgt.shape[-2:] else ae
                per_image = F.mse_loss(ae_resized, tgt, reduction="none").mean(dim=(1, 2, 3)) + \
                    F.mse_loss(st, ae, reduction="none").mean(dim=(1, 2, 3))
                loss = loss + (weights[idx, sl.start + i] * per_image).sum() / batch
        out["global"] = loss

        # component experts
        loss = images.new_zeros(())
        out["num_components"] = 0
        if self.counts[2] and component_masks is not None:
            valid = self._valid(component_masks, component_valid)
            total = int(valid.sum())
            out["num_components"] = total
            if total:
                feats = component_features(self._to_map(fused, enc.grid), component_masks, self.mask_dilation)
                sl = self.expert_slice("component")
                for i, expert in enumerate(self.component_experts):
                    routed = (selected[:, sl.start + i] if not run_all else everyone) & valid.any(dim=1)
                    if not routed.any():
                        continue
                    idx = self._rows(routed)
                    f = feats[idx][valid[idx]]
                    w = weights[idx, sl.start + i].unsqueeze(1).expand(-1, valid.shape[1])[valid[idx]]
                    loss = loss + (w * component_distance(expert(f), f)).sum() / total
        out["component"] = loss
        # in the order of the draw: CLUB(x → y) is not symmetric
        out["eir_features"] = {k: (v[eir_draw[k][0]], v[eir_draw[k][1]]) for k, v in out["eir_features"].items()}
        return out

    @torch.no_grad()
    def eir_features(
        self, fused_tokens: torch.Tensor, image_ae: torch.Tensor, eir_draw: dict[str, tuple[int, int]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Only the features a draw needs, for every image (the estimator's no-grad forward): G1 decoder
        means of patch experts (first decoder blocks only), spatial means of global students."""
        feats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if "patch" in eir_draw:
            pair = []
            for i in eir_draw["patch"]:
                expert = self.patch_experts[i]
                x = fused_tokens
                for block in expert.bottleneck:
                    x = block(x)
                outs = []
                for block in list(expert.decoder)[: self._g1_blocks]:
                    x = block(x)
                    outs.append(x)
                pair.append(_mean(outs)[:, self.encoder.num_prefix:].mean(dim=1))
            feats["patch"] = (pair[0], pair[1])
        if "global" in eir_draw:
            pair = [self.global_experts[i].student(self.global_experts[i].prepare(image_ae)).mean(dim=(2, 3))
                    for i in eir_draw["global"]]
            feats["global"] = (pair[0], pair[1])
        return feats

    @staticmethod
    def _valid(masks: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if masks.ndim != 4:
            raise ValueError(f"component_masks must be (B, K, H, W), got shape {tuple(masks.shape)}.")
        if valid is None:
            return masks.flatten(2).any(dim=2)
        return valid.bool()

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def level_maps(
        self,
        images: torch.Tensor,
        component_masks: torch.Tensor | None = None,
        component_valid: torch.Tensor | None = None,
        run_all: bool = False,
    ) -> dict:
        """Raw per-level maps: patch and global (B, 1, h, w) on the token grid, component (B, 1, H, W) at the
        image resolution (zeros without masks), and the routing. Each expert runs on its selected images."""
        enc = self.encode(images)
        routing = self.router(enc.cls)
        batch = images.shape[0]
        weights, selected = routing.weights, routing.selected
        everyone = torch.ones(batch, dtype=torch.bool, device=images.device)
        grid = enc.grid
        prefix = self.encoder.num_prefix
        fused = _mean(enc.taps)

        patch_map = images.new_zeros(batch, 1, *grid)
        sl = self.expert_slice("patch")
        if self.test_groups == "authors":
            en_test = [self._to_map(fused, grid)]
        else:
            en_test = self._en_groups(enc)
        for i, expert in enumerate(self.patch_experts):
            rows = everyone if run_all else selected[:, sl.start + i]
            if not rows.any():
                continue
            idx = self._rows(rows)
            outs = expert(fused[idx])
            rev = outs[::-1]
            if self.test_groups == "authors":
                de_test = [self._to_map(_mean(outs), grid)]
            else:
                de_test = [self._to_map(_mean([rev[j] for j in g]), grid) for g in TRAIN_GROUPS]
            err = _mean([cosine_distance_map(e[idx], d) for e, d in zip(en_test, de_test)]).unsqueeze(1)
            # .to(): under autocast (bf16-mixed) the expert's error is bf16; the map accumulates in float32.
            patch_map.index_add_(0, idx, (weights[idx, sl.start + i].view(-1, 1, 1, 1) * err).to(patch_map.dtype))

        global_map = images.new_zeros(batch, 1, *grid)
        sl = self.expert_slice("global")
        for i, expert in enumerate(self.global_experts):
            rows = everyone if run_all else selected[:, sl.start + i]
            if not rows.any():
                continue
            idx = self._rows(rows)
            ae, st = expert(images[idx])
            err = global_distance_map(ae, st, grid)
            global_map.index_add_(0, idx, (weights[idx, sl.start + i].view(-1, 1, 1, 1) * err).to(global_map.dtype))

        component_map = images.new_zeros(batch, 1, *images.shape[-2:])
        component_scores = None
        if self.counts[2] and component_masks is not None:
            valid = self._valid(component_masks, component_valid)
            if valid.any():
                feats = component_features(self._to_map(fused, grid), component_masks, self.mask_dilation)
                scores = images.new_zeros(valid.shape)
                sl = self.expert_slice("component")
                for i, expert in enumerate(self.component_experts):
                    rows = (everyone if run_all else selected[:, sl.start + i]) & valid.any(dim=1)
                    if not rows.any():
                        continue
                    idx = self._rows(rows)
                    dist = component_distance(expert(feats[idx]), feats[idx])
                    scores.index_add_(0, idx, (weights[idx, sl.start + i].unsqueeze(1) * dist).to(scores.dtype))
                component_scores = scores * valid  # filtered/absent clusters never contribute
                component_map = component_map_from_scores(component_scores, component_masks)
        return {"patch": patch_map, "global": global_map, "component": component_map, "routing": routing,
                "component_scores": component_scores, "grid": grid, "num_prefix": prefix}
