"""Importing this package registers every DataModule in ``anomaly_zoo.registry.DATAMODULES``."""

from anomaly_zoo.data import (  # noqa: F401
    bmad,  # noqa: F401
    btad,
    cifar10,
    cross_dataset,
    dtd_synthetic,  # noqa: F401
    folder,
    images,  # noqa: F401
    isic,  # noqa: F401
    medical_classification,  # noqa: F401
    mpdd,
    multi_dataset,  # noqa: F401
    mvtec_3d,  # noqa: F401
    mvtec_ad,
    mvtec_ad2,  # noqa: F401
    mvtec_loco,
    ped2,  # noqa: F401
    polyp,  # noqa: F401
    real_iad,  # noqa: F401
    rsdd,  # noqa: F401
    synthetic,
    visa,
)
from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError

__all__ = ["AnomalyDataModule", "AnomalyDataset", "DatasetError", "Sample"]
