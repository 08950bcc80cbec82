"""Frozen pretrained backbones: creation with clear offline errors, and a wrapper that stays frozen."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be loaded (no network, empty cache, bad file)."""


def create_timm_model(
    name: str,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
    option_prefix: str = "--model.init_args",
    **kwargs,
) -> nn.Module:
    """``timm.create_model`` that fails with instructions instead of a long hub traceback.

    ``weights_path`` loads a local file (no hub); otherwise ``pretrained`` uses timm's normal cache.
    """
    import timm

    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"Weights file '{path}' does not exist (check `{option_prefix}.backbone_weights`).")
        try:
            # timm loads a local file through its normal pretrained path (head adaptation, feature pruning).
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (RuntimeError, KeyError, ValueError) as err:
            raise PretrainedWeightsError(f"Weights '{path}' do not fit timm model '{name}': {err}") from err
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # timm raises many types for hub/cache failures
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"Could not load pretrained weights for timm model '{name}' ({type(err).__name__}: {err}). "
            "With no network, put the weights in the Hugging Face / timm cache, or pass a local file with "
            f"`{option_prefix}.backbone_weights PATH`, or train from random initialisation with "
            f"`{option_prefix}.pretrained false`."
        ) from err


class FrozenModule(nn.Module):
    """Wraps a module so it never trains: no gradients, and eval mode even inside ``fit``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.training = False
        self.module = module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenModule:
        # Lightning calls .train() on the whole model at the start of fit; BatchNorm must keep its statistics.
        return super().train(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


class TimmFeatureExtractor(FrozenModule):
    """Multi-level features of a frozen timm model (``features_only`` stage outputs ``out_indices``)."""

    def __init__(
        self,
        name: str = "resnet18",
        out_indices: tuple[int, ...] = (1, 2),
        pretrained: bool = True,
        weights_path: str | None = None,
    ) -> None:
        model = create_timm_model(
            name, pretrained=pretrained, weights_path=weights_path, features_only=True, out_indices=out_indices
        )
        super().__init__(model)
        self.channels: list[int] = list(model.feature_info.channels())
        self.reductions: list[int] = list(model.feature_info.reduction())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return super().forward(images)
