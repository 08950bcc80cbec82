"""Import of the authors' AnomalyMoE checkpoint (github CASIA-LMC-Lab/AnomalyMoE, ``model_final.pth``).

Their file is ``model.module.state_dict()`` of their ``AnomalyMoE``: 1092 tensors — 176 ``encoder.*`` (DINOv2's
own ViT-B/14-reg4: ``cls_token``, ``pos_embed`` (1, 1370, C) with the class token's entry first,
``register_tokens``, ``mask_token``, blocks, ``norm``) and 916 expert / router tensors. The expert layouts
are the same as ours (the Sequential indices were kept on purpose); the router is ``gating_network.*`` there
and ``router.*`` here, and the encoder becomes timm's layout (``reg_token``; the class token's position
embedding folded into ``cls_token``, as timm's own DINOv2 conversion; ``mask_token`` is unused and dropped).
The CLUB estimator is not in their file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_EXPERT_RULES = (
    re.compile(r"patch_experts\.\d+\.bottleneck\.0\.(fc1|fc2)\.(weight|bias)"),
    re.compile(r"patch_experts\.\d+\.decoder\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"),
    re.compile(r"global_experts\.\d+\.(autoencoder|student)\.\d+\.(weight|bias)"),
    re.compile(r"component_experts\.\d+\.(encoder|decoder)\.\d+\.(weight|bias)"),
)
_ENCODER_RULE = re.compile(
    r"(patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1"
    r"|mlp\.fc2)\.(weight|bias)|blocks\.\d+\.(ls1|ls2)\.gamma)"
)


class OfficialCheckpointError(ValueError):
    """The authors' checkpoint does not fit (unknown or missing tensors, inconsistent shapes)."""


def load_official_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in the authors' ``.pth`` (a bare state dict; a ``state_dict``/``model`` entry also works)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"AnomalyMoE official checkpoint '{path}' does not exist (check `official_checkpoint`).")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OfficialCheckpointError(f"'{path}' is not an AnomalyMoE checkpoint: no state dict of tensors found.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def convert_official_state_dict(official: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' keys → ``AnomalyMoEModel.state_dict()`` keys; raises on any tensor it does not know."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    encoder = {k[len("encoder."):]: v for k, v in official.items() if k.startswith("encoder.")}
    for k, v in official.items():
        if k.startswith("encoder."):
            continue
        if k.startswith("gating_network.gate."):
            out["router.gate." + k[len("gating_network.gate."):]] = v
        elif any(rule.fullmatch(k) for rule in _EXPERT_RULES):
            out[k] = v
        else:
            unknown.append(k)
    if encoder:
        for needed in ("cls_token", "pos_embed", "register_tokens"):
            if needed not in encoder:
                raise OfficialCheckpointError(f"the checkpoint's encoder lacks 'encoder.{needed}'.")
        pos = encoder["pos_embed"]
        out["encoder.module.cls_token"] = encoder["cls_token"] + pos[:, :1]
        out["encoder.module.pos_embed"] = pos[:, 1:]
        out["encoder.module.reg_token"] = encoder["register_tokens"]
        for k, v in encoder.items():
            if k in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
                continue
            if _ENCODER_RULE.fullmatch(k):
                out["encoder.module." + k] = v
            else:
                unknown.append("encoder." + k)
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (" …" if len(unknown) > 8 else "")
        raise OfficialCheckpointError(f"{len(unknown)} tensors of the checkpoint are not AnomalyMoE's: {shown}")
    return out


def load_official_state_dict(model: nn.Module, official: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Convert and load strictly into ``model`` (an ``AnomalyMoEModel``). The backbone may be absent from the
    file (then the model's own frozen weights stay); every other tensor must be there with its shape."""
    converted = convert_official_state_dict(official)
    own = model.state_dict()
    has_encoder = any(k.startswith("encoder.") for k in converted)
    missing = [k for k in own if k not in converted and (has_encoder or not k.startswith("encoder."))]
    extra = [k for k in converted if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:4])})")
        if extra:
            parts.append(f"not in this model {len(extra)} (e.g. {', '.join(extra[:4])}; check the expert counts "
                         "and widths)")
        raise OfficialCheckpointError("The AnomalyMoE checkpoint does not fit the model: " + "; ".join(parts) + ".")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in converted.items() if v.shape != own[k].shape]
    if wrong:
        raise OfficialCheckpointError(f"{len(wrong)} tensors have other shapes than the model's: {'; '.join(wrong[:4])}")
    model.load_state_dict(converted, strict=has_encoder)
    if hasattr(model, "encoder") and hasattr(model.encoder, "_pos_cache"):
        model.encoder._pos_cache = {}
    return {"loaded": sorted(converted)}
