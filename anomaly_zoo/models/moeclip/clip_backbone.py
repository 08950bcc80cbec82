"""The frozen OpenCLIP towers: creation (pretrained tag, local file or custom config) with clear offline errors.

MoECLIP runs OpenAI's CLIP ViT-L/14@336 in fp32 with exact (erf) GELU in both towers — the authors rebuild
the model without QuickGELU although the weights were trained with it — and patch dropout off. open_clip's
``ViT-L-14-336`` config (not ``-quickgelu``) does exactly that; a different input size interpolates the
positional grid (bicubic, antialias, align_corners off, CLS row kept) when the weights are loaded.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomaly_zoo.models.components.backbone import FrozenModule, PretrainedWeightsError

OPTION_PREFIX = "--model.init_args"


def create_clip(
    name: str = "ViT-L-14-336",
    pretrained: bool = True,
    pretrained_tag: str = "openai",
    backbone_weights: str | Path | None = None,
    image_size: int = 518,
    config: dict[str, Any] | None = None,
) -> nn.Module:
    """An open_clip ``CLIP`` at ``image_size`` with exact GELU and no patch dropout.

    ``config`` (open_clip's model-config dict: ``embed_dim``, ``vision_cfg``, ``text_cfg``) builds a custom
    architecture instead of ``name``; it is random-initialised unless ``backbone_weights`` is given.
    ``backbone_weights`` is a local open_clip/OpenAI checkpoint (no hub); otherwise ``pretrained`` loads
    ``pretrained_tag`` through open_clip's normal cache.
    """
    import open_clip

    if config is not None:
        cfg = copy.deepcopy(dict(config))
        cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": image_size, "patch_dropout": 0.0}
        cfg["quick_gelu"] = False
        model = open_clip.model.CLIP(**cfg)
        if backbone_weights is not None:
            _load_local(model, backbone_weights)
        return model.float().eval()
    if open_clip.get_model_config(name) is None:
        raise ValueError(f"Unknown open_clip model '{name}' (check `{OPTION_PREFIX}.clip_model`).")
    source = None
    if backbone_weights is not None:
        path = Path(backbone_weights).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"CLIP weights file '{path}' does not exist (check `{OPTION_PREFIX}.backbone_weights`).")
        source = str(path)
    elif pretrained:
        source = pretrained_tag
    kwargs = {"force_image_size": image_size, "force_patch_dropout": 0.0, "precision": "fp32"}
    try:
        with warnings.catch_warnings():
            # Exact GELU with weights trained under QuickGELU is the authors' choice (see the module docstring).
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
            model = open_clip.create_model(name, pretrained=source, **kwargs)
    except Exception as err:  # open_clip raises RuntimeError/OSError/HF errors for cache and network failures
        if source is None:
            raise
        if backbone_weights is not None:
            raise PretrainedWeightsError(
                f"CLIP weights '{source}' do not fit open_clip model '{name}' ({type(err).__name__}: {err}); "
                f"check `{OPTION_PREFIX}.backbone_weights`."
            ) from err
        raise PretrainedWeightsError(
            f"Could not load open_clip '{name}' weights '{pretrained_tag}' ({type(err).__name__}). With no network, put "
            f"them in the Hugging Face cache, pass a local file with `{OPTION_PREFIX}.backbone_weights PATH`, or "
            f"use random initialisation with `{OPTION_PREFIX}.pretrained false`."
        ) from err
    return model.float().eval()


def _load_local(model: nn.Module, path: str | Path) -> None:
    """A local checkpoint into a custom-config CLIP (open_clip's loader: key fixes + positional-grid resize)."""
    from open_clip.factory import load_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"CLIP weights file '{path}' does not exist (check `{OPTION_PREFIX}.backbone_weights`).")
    try:
        load_checkpoint(model, str(path), strict=True)
    except Exception as err:
        raise PretrainedWeightsError(
            f"CLIP weights '{path}' do not fit the custom `clip_config` ({type(err).__name__}: {err}); "
            f"check `{OPTION_PREFIX}.backbone_weights`."
        ) from err


class FrozenCLIP(FrozenModule):
    """Both CLIP towers, frozen (no gradients into their weights) and in eval mode even inside ``fit``.

    Gradients still flow *through* the vision blocks after the first adapter: only the weights are frozen,
    so this wrapper is not called as a whole (``FrozenModule.forward`` would cut the graph).
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__(clip)
        visual = clip.visual
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError("MoECLIP needs an open_clip vision transformer run batch-first.")
        self.grid_size: tuple[int, int] = tuple(int(g) for g in visual.grid_size)
        self.image_size: tuple[int, int] = tuple(int(s) for s in visual.image_size)
        self.vision_width: int = int(visual.transformer.width)
        self.vision_depth: int = len(visual.transformer.resblocks)
        self.text_width: int = int(clip.transformer.width)
        self.context_length: int = int(clip.context_length)

    @property
    def visual(self) -> nn.Module:
        return self.module.visual

    def forward(self, *args, **kwargs):
        raise RuntimeError("FrozenCLIP is not called directly; MoECLIPModel runs its blocks one by one.")

    @torch.no_grad()
    def text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_final`` at the EOT token, WITHOUT CLIP's text projection (the authors' text feature)."""
        from open_clip.transformer import text_global_pool

        clip = self.module
        x = clip.token_embedding(tokens) + clip.positional_embedding
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        return text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
