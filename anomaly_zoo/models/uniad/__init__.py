"""UniAD (You et al., NeurIPS 2022): unified multi-class anomaly detection by feature reconstruction.

``UniAD`` is the LightningModule registered as ``--model uniad``; ``UniADModel`` the plain ``nn.Module``;
``convert_official_state_dict`` maps the authors' released checkpoints onto ``UniADModel.state_dict()``.
"""

from anomaly_zoo.models.uniad.convert import (
    OfficialCheckpointError,
    convert_official_state_dict,
    load_official_file,
    load_official_state_dict,
)
from anomaly_zoo.models.uniad.lightning import UniAD
from anomaly_zoo.models.uniad.model import UniADModel

__all__ = [
    "OfficialCheckpointError",
    "UniAD",
    "UniADModel",
    "convert_official_state_dict",
    "load_official_file",
    "load_official_state_dict",
]
