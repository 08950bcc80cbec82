"""UniAD's frozen multi-level features: block taps of a timm EfficientNet, resized to one grid and concatenated.

For EfficientNet-style timm models (``conv_stem`` → ``bn1`` → ``blocks[stage][block]``) the taps are indices of
the flattened blocks (UniAD: blocks 1, 5, 9, 21 of EfficientNet-B4's 32), and the network is truncated after
the last tap. Any other timm model is used through ``features_only`` and the taps are its ``out_indices``.

The authors' EfficientNet wrapper (lukemelas' port) pads every strided conv statically, with the TF "same"
padding computed for the model's native resolution (380 px for B4); timm's ``tf_`` models compute it from the
actual input. ``authors_padding=True`` reproduces the static form; at 224/256/320 px this changes exactly one
conv of tf_efficientnet_b4, ``blocks[2][0].conv_dw`` (symmetric padding 2 instead of (1, 2)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.components.backbone import FrozenModule, create_timm_model


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'same' padding (before, after) for one spatial dimension of the given input size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class StaticPadConv2d(nn.Conv2d):
    """A conv with a fixed, possibly asymmetric zero padding (left, right, top, bottom) applied first."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]) -> None:
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups,
            conv.bias is not None,
        )
        self.pad = pad
        self.weight = conv.weight
        if conv.bias is not None:
            self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", static_pad={self.pad}"


def _static_conv(conv: nn.Conv2d, input_hw: tuple[int, int]) -> nn.Conv2d:
    (pt, pb), (pl, pr) = (
        _same_padding(input_hw[i], conv.kernel_size[i], conv.stride[i], conv.dilation[i]) for i in range(2)
    )
    if pt == pb and pl == pr:  # symmetric: a plain conv, no separate pad op
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, (pt, pl),
                        conv.dilation, conv.groups, conv.bias is not None)
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new
    return StaticPadConv2d(conv, (pl, pr, pt, pb))


def apply_static_same_padding(model: nn.Module, native_hw: tuple[int, int]) -> list[str]:
    """Replace every dynamic-'same' conv (timm ``Conv2dSame``) by its static form for ``native_hw`` inputs.

    Each conv's input size at the native resolution is recorded with one forward pass; returns the names of the
    replaced convs.
    """
    from timm.layers import Conv2dSame

    dynamic = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    if not dynamic:
        return []
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, m in dynamic.items()
    ]
    was_training = model.training
    model.eval()  # the probe must not touch BatchNorm running statistics
    try:
        with torch.no_grad():
            _forward_blocks(model, torch.zeros(1, 3, *native_hw), range(len(_flat_blocks(model))))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for name, conv in dynamic.items():
        if name not in sizes:  # not reached by the kept blocks
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _static_conv(conv, sizes[name]))
    return sorted(sizes)


def _is_blockwise(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks")) and isinstance(model.blocks, nn.Sequential)


def _flat_blocks(model: nn.Module) -> list[nn.Module]:
    return [block for stage in model.blocks for block in stage]


def _forward_blocks(model: nn.Module, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
    x = model.bn1(model.conv_stem(x))
    wanted = set(taps)
    out = {}
    for index, block in enumerate(_flat_blocks(model)):
        x = block(x)
        if index in wanted:
            out[index] = x
    return [out[t] for t in taps]


def _truncate_after(model: nn.Module, last: int) -> None:
    """Keep the stem and blocks[…] up to flattened block ``last``; drop later blocks and the head."""
    stages = []
    seen = 0
    for stage in model.blocks:
        keep = min(len(stage), last + 1 - seen)
        if keep <= 0:
            break
        stages.append(stage if keep == len(stage) else nn.Sequential(*list(stage)[:keep]))
        seen += len(stage)
    model.blocks = nn.Sequential(*stages)
    for head in ("conv_head", "bn2", "global_pool", "classifier"):
        if hasattr(model, head):
            setattr(model, head, nn.Identity())


class UniADBackbone(FrozenModule):
    """Frozen timm backbone → taps resized to ``feature_size`` (bilinear, align_corners=True) → concatenated.

    Args:
        name: timm model name (UniAD: ``tf_efficientnet_b4.aa_in1k``).
        taps: flattened block indices (EfficientNet-style models) or ``features_only`` out_indices (others).
        feature_size: side of the common grid (14 for 224 px inputs).
        pretrained / weights_path: as ``create_timm_model``.
        authors_padding: static TF-'same' padding for the model's native resolution, as the authors' wrapper.
    """

    def __init__(
        self,
        name: str = "tf_efficientnet_b4.aa_in1k",
        taps: Sequence[int] = (1, 5, 9, 21),
        feature_size: int | tuple[int, int] = 14,
        pretrained: bool = True,
        weights_path: str | None = None,
        authors_padding: bool = True,
    ) -> None:
        taps = [int(t) for t in taps]
        if not taps:
            raise ValueError("`taps` is empty: name at least one backbone block.")
        if sorted(set(taps)) != taps:
            raise ValueError(f"`taps` must be strictly increasing block indices, got {taps}.")
        model = create_timm_model(name, pretrained=pretrained, weights_path=weights_path)
        blockwise = _is_blockwise(model)
        padded: list[str] = []
        if blockwise:
            num_blocks = len(_flat_blocks(model))
            if taps[-1] >= num_blocks:
                raise ValueError(f"tap {taps[-1]} does not exist: '{name}' has {num_blocks} blocks (0..{num_blocks - 1}).")
            _truncate_after(model, taps[-1])
            if authors_padding:
                native = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-2:])
                padded = apply_static_same_padding(model, native)
        else:  # any other timm model: its feature stages
            model = create_timm_model(
                name, pretrained=pretrained, weights_path=weights_path, features_only=True, out_indices=taps
            )
        super().__init__(model)
        self.name = name
        self.taps = taps
        self.blockwise = blockwise
        self.static_padded_convs = padded
        self.feature_size = (feature_size, feature_size) if isinstance(feature_size, int) else tuple(feature_size)
        with torch.no_grad():
            probe_out = self.taps_forward(torch.zeros(1, 3, 64, 64))
        self.channels: list[int] = [f.shape[1] for f in probe_out]

    @property
    def out_channels(self) -> int:
        return sum(self.channels)

    def taps_forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The raw tap outputs (no resize)."""
        with torch.no_grad():
            if self.blockwise:
                return _forward_blocks(self.module, images, self.taps)
            return list(self.module(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, sum(channels), *feature_size); no gradients."""
        with torch.no_grad():
            feats = [
                F.interpolate(f, size=self.feature_size, mode="bilinear", align_corners=True, antialias=False)
                if tuple(f.shape[-2:]) != self.feature_size else f
                for f in self.taps_forward(images)
            ]
            return torch.cat(feats, dim=1)
