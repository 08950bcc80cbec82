"""Importing this package registers every model in ``anomaly_zoo.registry.MODELS``."""

from anomaly_zoo.models.anomalymoe import AnomalyMoE
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.feature_distance import FeatureDistance
from anomaly_zoo.models.moeclip import MoECLIP
from anomaly_zoo.models.uniad import UniAD

__all__ = ["AnomalyMoE", "AnomalyModule", "FeatureDistance", "MoECLIP", "UniAD"]
