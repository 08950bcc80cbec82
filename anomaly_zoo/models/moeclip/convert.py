"""Import of checkpoints saved by the authors' ``train.py`` (github CoCoRessa/MoECLIP, ``moe_epoch_N.pth`` /
``moe_last.pth``; no trained checkpoint is published).

Their file is ``{"epoch", "optimizer_state_dict", "text_adapter", "image_adapter"}``: the trainable parts only
(the frozen CLIP weights come from ``pretrained`` / ``backbone_weights``). ``image_adapter`` holds, for level
j and expert i::

    seg_proj.{j}.fc.weight                    (768, 1024)  → seg_projections.{j}.weight
    det_proj.ln.{weight,bias}                 (1024,)      → detection_head.norm.{weight,bias}
    det_proj.adapter.0.weight                 (1024, 1, 3) → detection_head.depthwise.weight
    det_proj.adapter.2.weight                 (768, 1024, 1) → detection_head.pointwise.weight
    moe_adapters.{j}.gate.weight              (4, 1024)    → adapters.{j}.router.gate.weight
    moe_adapters.{j}.experts.{i}.lora_A.weight (8, 1024)   → adapters.{j}.down[i]   (FOFS, frozen)
    moe_adapters.{j}.experts.{i}.lora_B.weight (1024, 8)   → adapters.{j}.up[i]

and ``text_adapter`` ``0.fc.0.weight`` (768, 768) → ``text_adapter.proj.weight``. Runs with ``--relu``
(LeakyReLU after the seg projections, ``seg_proj.j.fc.0.weight``) or ``--seg_proj_sharing_strategy separate``
(12 projections) have no counterpart here and are refused with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_IMAGE_RULES: list[tuple[str, str]] = [
    (r"seg_proj\.(\d+)\.fc\.weight", r"seg_projections.\1.weight"),
    (r"det_proj\.ln\.(weight|bias)", r"detection_head.norm.\1"),
    (r"det_proj\.adapter\.0\.weight", r"detection_head.depthwise.weight"),
    (r"det_proj\.adapter\.2\.weight", r"detection_head.pointwise.weight"),
    (r"moe_adapters\.(\d+)\.gate\.weight", r"adapters.\1.router.gate.weight"),
]
_EXPERT = re.compile(r"moe_adapters\.(\d+)\.experts\.(\d+)\.lora_(A|B)\.weight")
_TEXT_RULES: list[tuple[str, str]] = [(r"0\.fc\.0\.weight", "text_adapter.proj.weight")]


class OfficialCheckpointError(ValueError):
    """The authors' checkpoint does not fit (unknown or missing tensors, inconsistent shapes)."""


def load_official_file(path: str | Path) -> dict:
    """Read the authors' ``.pth`` (plain tensors and an optimiser state: safe with ``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise OfficialCheckpointError(f"Official checkpoint '{path}' does not exist (check `--model.init_args.official_checkpoint`).")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping) or not {"image_adapter", "text_adapter"} <= set(checkpoint):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise OfficialCheckpointError(f"'{path}' is not a MoECLIP train.py checkpoint: expected 'image_adapter' and "
                                      f"'text_adapter', found {keys}.")
    return dict(checkpoint)


def _apply(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, template in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    return None


def convert_official_state_dict(checkpoint: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The authors' ``{"image_adapter": …, "text_adapter": …}`` as :class:`MoECLIPModel` state-dict entries.

    Fails on any tensor it does not know, on an expert set with gaps, and on experts of different shapes.
    """
    if "seg_proj.0.fc.0.weight" in checkpoint["image_adapter"]:
        raise OfficialCheckpointError("The checkpoint was trained with --relu (LeakyReLU after the seg projections); "
                                      "this implementation has linear seg projections (the authors' default).")
    converted: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    unknown = []
    for key, value in checkpoint["image_adapter"].items():
        match = _EXPERT.fullmatch(key)
        if match:
            experts.setdefault((int(match[1]), match[3]), {})[int(match[2])] = value
            continue
        target = _apply(_IMAGE_RULES, key)
        if target is None:
            unknown.append(f"image_adapter.{key}")
        else:
            converted[target] = value
    for key, value in checkpoint["text_adapter"].items():
        target = _apply(_TEXT_RULES, key)
        if target is None:
            unknown.append(f"text_adapter.{key}")
        else:
            converted[target] = value
    if unknown:
        raise OfficialCheckpointError(f"Unknown tensors in the official checkpoint: {unknown[:6]}"
                                      f"{' …' if len(unknown) > 6 else ''}")
    for (layer, kind), by_index in sorted(experts.items()):
        if sorted(by_index) != list(range(len(by_index))):
            raise OfficialCheckpointError(f"Layer {layer}: lora_{kind} experts {sorted(by_index)} are not 0..K-1.")
        shapes = {tuple(t.shape) for t in by_index.values()}
        if len(shapes) != 1:
            raise OfficialCheckpointError(f"Layer {layer}: lora_{kind} experts have different shapes {sorted(shapes)}.")
        stacked = torch.stack([by_index[i] for i in range(len(by_index))])
        converted[f"adapters.{layer}.{'down' if kind == 'A' else 'up'}"] = stacked
    return converted


def load_official_state_dict(model: nn.Module, checkpoint: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, list[str]]:
    """Convert and load into ``model`` (a :class:`MoECLIPModel`): every trainable/FOFS tensor must be present
    with our shape; the frozen CLIP weights are kept. Returns ``{"loaded": [...]}``."""
    converted = convert_official_state_dict(checkpoint)
    own = model.state_dict()
    expected = [k for k in own if not k.startswith("clip.")]
    missing = [k for k in expected if k not in converted]
    extra = [k for k in converted if k not in own]
    if missing or extra:
        raise OfficialCheckpointError(
            "The official checkpoint does not match this model's configuration"
            + (f"; missing: {missing[:6]}" if missing else "")
            + (f"; not in this model: {extra[:6]}" if extra else "")
            + " (check adapter_blocks / num_experts / rank and the CLIP widths)."
        )
    wrong = [f"{k}: {tuple(v.shape)} vs ours {tuple(own[k].shape)}" for k, v in converted.items() if v.shape != own[k].shape]
    if wrong:
        raise OfficialCheckpointError(f"Shape mismatch in the official checkpoint: {wrong[:4]}")
    own.update({k: v.to(own[k].dtype) for k, v in converted.items()})
    model.load_state_dict(own, strict=True)
    return {"loaded": sorted(converted)}
