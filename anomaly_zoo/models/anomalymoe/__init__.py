"""AnomalyMoE (AAAI 2026): a language-free generalist anomaly detector with patch, global and component experts.

``AnomalyMoE`` is the LightningModule registered as ``--model anomalymoe``; ``AnomalyMoEModel`` the plain
``nn.Module``; ``convert_official_state_dict`` maps the authors' released checkpoint onto its state dict.
"""

from anomaly_zoo.models.anomalymoe.convert import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_file,
    load_official_state_dict,
)
from anomaly_zoo.models.anomalymoe.lightning import AnomalyMoE
from anomaly_zoo.models.anomalymoe.model import AnomalyMoEModel

__all__ = [
    "AnomalyMoE",
    "AnomalyMoEModel",
    "OfficialCheckpointError",
    "convert_official_state_dict",
    "load_official_file",
    "load_official_state_dict",
]
