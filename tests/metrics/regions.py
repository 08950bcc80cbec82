"""Test helper: the 8-connected regions of a batch of masks as a label image (the library only needs weights)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor


def label_regions(masks: Tensor) -> tuple[Tensor, Tensor]:
    """8-connected components of each binary mask in a batch.

    Args:
        masks: uint8 0/1 tensor (N, H, W), any device.

    Returns:
        ``(labels, sizes)`` on CPU: int32 (N, H, W) with 0 = background and regions numbered 1..R across
        the batch, and int64 (R + 1,) region pixel counts (``sizes[0]`` is not meaningful).
    """
    n, h, w = masks.shape
    # One tall image with a zero row under each mask: one OpenCV call, no region crosses into the next image.
    tall = np.zeros((n, h + 1, w), dtype=np.uint8)
    tall[:, :h] = masks.cpu().numpy()
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        tall.reshape(n * (h + 1), w), connectivity=8, ltype=cv2.CV_32S
    )
    labels = np.ascontiguousarray(labels.reshape(n, h + 1, w)[:, :h])
    return torch.from_numpy(labels), torch.from_numpy(stats[:, cv2.CC_STAT_AREA].astype(np.int64))
