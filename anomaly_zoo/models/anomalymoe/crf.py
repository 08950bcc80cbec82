"""Fully connected CRF (Krähenbühl & Koltun 2011) that sharpens AnomalyMoE's cluster maps to image edges.

The authors' ``segment_image.py`` runs ``pydensecrf`` for 2 mean-field iterations with a smoothness
kernel (``sxy=1``, Potts weight 3) and an appearance kernel (``sxy=67``, ``srgb=3``, weight 4) on the
448-px image, starting from the softmax of the upsampled cluster similarities.

Two backends give the same mean-field update:

- ``"pydensecrf"``: the maintained fork ``pydensecrf2`` (optional extra ``pip install anomaly-zoo[crf]``;
  it builds from source, so it needs a C++ compiler). Its permutohedral lattice is what the authors ran.
- ``"torch"``: a small dense implementation here (:func:`dense_crf_torch`), for users without a compiler;
  ~50× slower. Hand-written because no maintained pure-Python dense CRF exists on PyPI.

``"auto"`` uses pydensecrf when it imports, else torch. The backends are not bit-identical (the lattice is
itself an approximation of the Gaussian); the masks are cached per backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("auto", "pydensecrf", "torch")


@dataclass(frozen=True)
class CRFParams:
    """Kernel parameters, the authors' values (``addPairwiseGaussian`` / ``addPairwiseBilateral``)."""

    iterations: int = 2
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    #: pydensecrf's ``unary_from_softmax`` clips probabilities at this value before ``-log``.
    clip: float = 1e-5


def pydensecrf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``"auto"`` → ``"pydensecrf"`` if importable, else ``"torch"``; an explicit choice is checked."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown CRF backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "pydensecrf" if pydensecrf_available() else "torch"
    if backend == "pydensecrf" and not pydensecrf_available():
        raise ImportError(
            "CRF backend 'pydensecrf' needs the package pydensecrf2 (`pip install pydensecrf2`, builds from "
            "source with a C++ compiler); or use crf_backend 'torch'."
        )
    return backend


def dense_crf(
    image: np.ndarray,
    probabilities: np.ndarray | torch.Tensor,
    params: CRFParams = CRFParams(),
    backend: str = "auto",
    source_stride: int | None = None,
) -> np.ndarray:
    """Mean-field posterior ``Q`` (K, H, W) of a dense CRF.

    Args:
        image: uint8 RGB image (H, W, 3) whose colours drive the appearance kernel.
        probabilities: per-label probabilities (K, H, W) summing to 1 over K (the unary is ``-log p``).
        params: kernel widths and Potts weights.
        backend: ``"auto"``, ``"pydensecrf"`` or ``"torch"`` (module docstring).
        source_stride: torch backend only: grid step of the appearance kernel's sources
            (see :func:`dense_crf_torch`).
    """
    probs = probabilities.detach().cpu().numpy() if isinstance(probabilities, torch.Tensor) else probabilities
    probs = np.array(probs, dtype=np.float32)  # a writable copy: torch.from_numpy below
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}.")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probabilities {probs.shape} do not match image {image.shape[:2]}: expected (K, H, W).")
    if resolve_backend(backend) == "pydensecrf":
        return _dense_crf_pydensecrf(image, probs, params)
    return dense_crf_torch(torch.from_numpy(image.copy()), torch.from_numpy(probs), params, source_stride).numpy()


def _dense_crf_pydensecrf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    import pydensecrf.utils as dcrf_utils

    labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(dcrf_utils.unary_from_softmax(probs, clip=params.clip)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=np.array(image, order="C"),  # writable copy
        compat=params.bilateral_compat,
    )
    return np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(labels, height, width)


def _gaussian_message(q: torch.Tensor, sxy: float) -> torch.Tensor:
    """Symmetric-normalised Gaussian filtering D^-½ K D^-½ q, K the spatial Gaussian (zero outside the image)."""
    radius = max(1, int(np.ceil(3 * sxy)))
    offsets = torch.arange(-radius, radius + 1, dtype=q.dtype)
    taps = torch.exp(-0.5 * (offsets / sxy) ** 2)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable: rows then columns, zero padding
        x = x.unsqueeze(1)
        x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, radius))
        x = F.conv2d(x, taps.view(1, 1, -1, 1), padding=(radius, 0))
        return x.squeeze(1)

    norm = blur(torch.ones_like(q[:1])).clamp_min(1e-20).rsqrt()
    return norm * blur(norm * q)


def _bilateral_features(image: torch.Tensor, sxy: float, srgb: float) -> torch.Tensor:
    height, width = image.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.cat([xs[..., None] / sxy, ys[..., None] / sxy, image.float() / srgb], dim=-1)  # (H, W, 5)


def _appearance_kernel(targets: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """exp(-½|t - s|²) for every target/source pair, through the expanded square (one matmul, no 3-D tensor)."""
    sq = (targets * targets).sum(1, keepdim=True) + (sources * sources).sum(1) - 2.0 * targets @ sources.T
    # Capped at exp(-30) ≈ 1e-13: far-apart pairs would otherwise underflow to denormals, which make exp
    # about 10× slower on CPUs, for a contribution no float32 sum can see.
    return sq.clamp_(0, 60).mul_(-0.5).exp_()


def dense_crf_torch(
    image: torch.Tensor, probs: torch.Tensor, params: CRFParams = CRFParams(), source_stride: int | None = None,
    chunk: int = 2048,
) -> torch.Tensor:
    """The torch backend of :func:`dense_crf` (same arguments, tensors in and out).

    Mean field as in pydensecrf: ``Q ← softmax(log p + Σ_m w_m · D_m^-½ K_m D_m^-½ Q)`` (Potts
    compatibility; symmetric normalisation, pydensecrf's default), starting from ``Q = p``. The smoothness
    kernel is an exact Gaussian convolution. The appearance kernel is evaluated exactly, at full
    resolution, from every pixel to sources on a grid of step ``source_stride`` (default ``sxy / 4``,
    17 px for the authors' 67): the 67-px-wide spatial Gaussian is sampled finely and the symmetric
    normalisation cancels the sources' density. Sources are pixels with their own colours (never block
    averages, which would blur the edges the CRF is there to find). Cost: about 10 s for a 448-px image
    on one CPU core, against 0.2 s for pydensecrf2's lattice — the fallback for machines without a compiler.
    """
    labels, height, width = probs.shape
    log_p = probs.float().clamp(params.clip, 1.0).log()
    stride = source_stride or max(1, round(params.bilateral_sxy / 4))
    features = _bilateral_features(image, params.bilateral_sxy, params.bilateral_srgb)
    offset = stride // 2
    sources = features[offset::stride, offset::stride].reshape(-1, 5)
    targets = features.reshape(-1, 5)
    source_norm = _appearance_kernel(sources, sources).sum(1).clamp_min(1e-20).rsqrt()  # D^-½ at the sources
    target_norm: torch.Tensor | None = None

    q = log_p.softmax(0)
    for _ in range(params.iterations):
        q_sources = q[:, offset::stride, offset::stride].reshape(labels, -1)
        # A ones column gives the targets' normaliser D_i in the same pass as the first message.
        values = torch.cat([(q_sources * source_norm).T, torch.ones(len(sources), 1)], dim=1)
        sums = torch.empty(targets.shape[0], labels + 1)
        for start in range(0, targets.shape[0], chunk):
            sums[start : start + chunk] = _appearance_kernel(targets[start : start + chunk], sources) @ values
        if target_norm is None:
            target_norm = sums[:, labels].clamp_min(1e-20).rsqrt()
        appearance = (sums[:, :labels] * target_norm[:, None]).T.reshape(labels, height, width)
        smooth = _gaussian_message(q, params.gaussian_sxy)
        q = (log_p + params.gaussian_compat * smooth + params.bilateral_compat * appearance).softmax(0)
    return q
