"""The text side of MoECLIP (§3.1): frozen encoder features of the prompt ensemble, cached, + the trainable adapter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.moeclip.prompts import prompt_sentences


class TextAdapter(nn.Module):
    """Linear(width → width, no bias, xavier-uniform) + LeakyReLU(0.01): the only trainable text part."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width, bias=False)
        nn.init.xavier_uniform_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.proj(x), 0.01)


def class_text_features(adapter: nn.Module, normal: torch.Tensor, anomalous: torch.Tensor) -> torch.Tensor:
    """T = [t_normal, t_anomalous] (width, 2): adapter → L2-normalise → mean per state → L2-normalise.

    ``normal`` / ``anomalous``: the frozen encoder's features (n, width) of each state's sentences.
    """
    states = []
    for features in (normal, anomalous):
        mean = F.normalize(adapter(features), dim=-1).mean(dim=0)
        states.append(mean / mean.norm())
    return torch.stack(states, dim=1)


class PromptFeatureCache:
    """The frozen text encoder's features of each description's sentences, computed once and kept.

    The encoder is frozen, so these never change during training; only the adapter runs per step. Call
    :meth:`clear` when the encoder's weights are replaced (``MoECLIPModel`` does on ``load_state_dict``).
    """

    def __init__(self) -> None:
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self._features.clear()

    def __len__(self) -> int:
        return len(self._features)

    def get(self, description: str, encode) -> tuple[torch.Tensor, torch.Tensor]:
        """(normal (6, width), anomalous (10, width)) for ``description``; ``encode(list[str]) -> (n, width)``."""
        if description not in self._features:
            normal, anomalous = prompt_sentences(description)
            # Normal tensors even when first asked inside ``inference_mode`` (Lightning's test loop): the
            # cache is reused by training steps, which cannot save inference tensors for backward.
            with torch.inference_mode(False), torch.no_grad():
                features = encode(normal + anomalous)
            self._features[description] = (features[: len(normal)], features[len(normal) :])
        return self._features[description]
