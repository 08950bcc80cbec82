from anomaly_zoo.viz.heatmap import overlay_heatmap
from anomaly_zoo.viz.writer import PredictionWriter

__all__ = ["PredictionWriter", "overlay_heatmap"]
