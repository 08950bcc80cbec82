from anomaly_zoo.models.feature_distance.lightning import FeatureDistance
from anomaly_zoo.models.feature_distance.model import FeatureDistanceModel

__all__ = ["FeatureDistance", "FeatureDistanceModel"]
