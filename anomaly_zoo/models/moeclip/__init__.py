"""MoECLIP (CVPR 2026): zero-shot anomaly detection with patch-routed LoRA experts on a frozen CLIP.

``MoECLIP`` is the LightningModule registered as ``--model moeclip``; ``MoECLIPModel`` the plain ``nn.Module``;
the pieces (``TopKRouter``, ``MoEAdapter``, ``fofs_down_projections``, ``etf_loss``, ``load_balance_loss``,
``patch_average_aggregation``, ``DetectionHead``, the text side and the map/score rules) are importable on their
own; ``convert_official_state_dict`` maps the authors' ``train.py`` checkpoints onto ``MoECLIPModel``.
"""

from anomaly_zoo.models.moeclip.convert import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_file,
    load_official_state_dict,
)
from anomaly_zoo.models.moeclip.detection_head import DetectionHead
from anomaly_zoo.models.moeclip.etf_loss import etf_loss
from anomaly_zoo.models.moeclip.fofs import fofs_down_projections
from anomaly_zoo.models.moeclip.lightning import MoECLIP
from anomaly_zoo.models.moeclip.load_balance import load_balance_loss
from anomaly_zoo.models.moeclip.model import TINY_CLIP_CONFIG, MoECLIPModel
from anomaly_zoo.models.moeclip.moe_adapter import MoEAdapter
from anomaly_zoo.models.moeclip.paa import patch_average_aggregation
from anomaly_zoo.models.moeclip.router import TopKRouter

__all__ = [
    "TINY_CLIP_CONFIG",
    "DetectionHead",
    "MoEAdapter",
    "MoECLIP",
    "MoECLIPModel",
    "OfficialCheckpointError",
    "TopKRouter",
    "convert_official_state_dict",
    "etf_loss",
    "fofs_down_projections",
    "load_balance_loss",
    "load_official_file",
    "load_official_state_dict",
    "patch_average_aggregation",
]
