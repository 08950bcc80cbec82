"""Global-level expert (EfficientAD-like autoencoder + student, no teacher; AnomalyMoE §3.2).

Both read ``image_ae`` (the colour-jittered copy, 392 px). The autoencoder squeezes the image to 1×1
(4×4/s2 convs 3→32→64→128, 3×3, then two 9×9/s7/p1 convs: 49→7→1) and decodes through bilinear resizes to
3, 7, 15, 31, 63, 31, each followed by a 4×4/p2 conv, ReLU and dropout 0.2, then resize to 28, 3×3 + ReLU
and 3×3 → C. The student is a small CNN: 3×3 3→256, avgpool 2, 3×3 →512, avgpool 7, 1×1, 3×3, 3×3 → C (ReLU
each), 1×1 C→C. Both give (B, C, 28, 28) at 392 px. Layer indices match the authors' ``nn.Sequential``s.

Other input sizes S (``input_size``; image_ae is resized to it when it differs): the second bottleneck conv
gets the kernel that still maps its input to 1×1 (m + 2 for an m×m input: 9 at 392 px, the authors' value)
and the decoder ends at S/14 (28 at 392), the student's output size. Works down to S = 56.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: The decoder's intermediate sizes (the authors' ``nn.Upsample`` sizes).
DECODER_SIZES = (3, 7, 15, 31, 63, 31)


def _code_input_side(input_size: int) -> int:
    """Side after the first 9×9/s7/p1 bottleneck conv (7 at 392 px)."""
    side = input_size
    for _ in range(3):
        side = (side + 2 - 4) // 2 + 1
    if side < 7:
        raise ValueError(f"the global expert needs images of at least 56 px, got global_input_size {input_size}.")
    return (side + 2 - 9) // 7 + 1


def global_autoencoder(
    out_channels: int, channels: Sequence[int] = (32, 64, 128), dropout: float = 0.2, input_size: int = 392
) -> nn.Sequential:
    c1, c2, c3 = channels
    output_size = input_size // 14
    last_kernel = _code_input_side(input_size) + 2
    layers: list[nn.Module] = [
        nn.Conv2d(3, c1, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, c3, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c3, 3, stride=1, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c3, 9, stride=7, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c3, last_kernel, stride=7, padding=1),  # the code, 1×1: no ReLU
    ]
    for size in DECODER_SIZES:
        layers += [nn.Upsample(size=size, mode="bilinear", align_corners=False),
                   nn.Conv2d(c3, c3, 4, stride=1, padding=2), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    layers += [nn.Upsample(size=output_size, mode="bilinear", align_corners=False),
               nn.Conv2d(c3, c3, 3, stride=1, padding=1), nn.ReLU(inplace=True),
               nn.Conv2d(c3, out_channels, 3, stride=1, padding=1)]
    return nn.Sequential(*layers)


def global_student(out_channels: int, channels: Sequence[int] = (256, 512)) -> nn.Sequential:
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(7, 7),
        nn.Conv2d(c2, c2, 1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1),
    )


class GlobalExpert(nn.Module):
    """``autoencoder`` and ``student``; ``input_size``: image_ae is bilinearly resized to it when it differs."""

    def __init__(
        self, out_channels: int, ae_channels: Sequence[int] = (32, 64, 128), student_channels: Sequence[int] = (256, 512),
        dropout: float = 0.2, input_size: int = 392,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.autoencoder = global_autoencoder(out_channels, ae_channels, dropout, input_size)
        self.student = global_student(out_channels, student_channels)

    def prepare(self, image_ae: torch.Tensor) -> torch.Tensor:
        if tuple(image_ae.shape[-2:]) == (self.input_size, self.input_size):
            return image_ae
        return F.interpolate(image_ae, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)

    def forward(self, image_ae: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prepare(image_ae)
        return self.autoencoder(x), self.student(x)


def global_distance_map(ae_out: torch.Tensor, student_out: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mean_C (AE − student)², resized to the token grid (bilinear, align_corners=False); (n, 1, h, w)."""
    error = (ae_out - student_out).pow(2).mean(dim=1, keepdim=True)
    if tuple(error.shape[-2:]) != tuple(size):
        error = F.interpolate(error, size=size, mode="bilinear", align_corners=False)
    return error
